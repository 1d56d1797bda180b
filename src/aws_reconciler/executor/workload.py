"""Turn an Airflow 3 workload (``ExecuteTask``, ``ExecuteCallback``, ``TestConnection``) into the
container command, its kind, its record id and the key stored for it.

Kept free of Airflow imports (duck-typed) so it is unit-testable and cheap to import.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from ..model import TiKey, WorkloadKind

EXECUTE_WORKLOAD_MODULE = "airflow.sdk.execution_time.execute_workload"


def workload_command(workload: Any) -> list[str]:
    """The command every task container runs: Airflow's own workload entry point.

    The JSON carries the workload's short-lived token. It travels inside the RunTask / SubmitJob
    request (AWS shows that request to whoever may describe the task: docs/security.md); the task
    record keeps it apart from the stored request, sealed (:mod:`aws_reconciler.store.sealing`),
    and it never reaches a log.
    """
    return ["python", "-m", EXECUTE_WORKLOAD_MODULE, "--json-string", workload.model_dump_json()]


#: Airflow's ``workload.type`` of each kind it sends to executors.
_KINDS = {
    "ExecuteTask": WorkloadKind.TASK,
    "ExecuteCallback": WorkloadKind.CALLBACK,
    "TestConnection": WorkloadKind.CONNECTION_TEST,
}
#: ``task_id`` prefix of the keys stored for callbacks and connection tests: Airflow's task ids
#: cannot contain a colon, so these keys never match a task instance's.
KEY_PREFIX = {WorkloadKind.CALLBACK: "callback:", WorkloadKind.CONNECTION_TEST: "connection_test:"}


def workload_kind(workload: Any) -> WorkloadKind:
    """What the workload is; ``ValueError`` for a type this release does not run."""
    kind = _KINDS.get(str(getattr(workload, "type", "")))
    if kind is None:
        raise ValueError(f"workload type {getattr(workload, 'type', type(workload).__name__)!r} is not supported")
    return kind


def record_id_of(workload: Any) -> str | None:
    """The id the workload is stored under: the task's pre-assigned ``external_executor_id``
    (``None`` before Airflow 3.3), the callback's id, the connection test's id. Each is the id
    Airflow itself keys the workload by, so a workload handed over twice is stored once."""
    kind = workload_kind(workload)
    if kind is WorkloadKind.TASK:
        return workload.ti.external_executor_id or None
    if kind is WorkloadKind.CALLBACK:
        return str(workload.callback.id)
    return str(workload.connection_test_id)


def stored_key(workload: Any, record_id: str) -> TiKey:
    """The key columns of the workload's row: a task instance's own key; for a callback its DAG
    and run with ``task_id`` ``callback:<id>``; for a connection test ``connection_test:<id>``."""
    kind = workload_kind(workload)
    if kind is WorkloadKind.TASK:
        return ti_key(workload)
    dag_id = run_id = ""
    if kind is WorkloadKind.CALLBACK:
        data = workload.callback.data or {}
        dag_id = str(data.get("dag_id") or "")
        context = (data.get("kwargs") or {}).get("context") or {}
        dag_run = context.get("dag_run") or {} if isinstance(context, dict) else {}
        run_id = str(dag_run.get("dag_run_id") or dag_run.get("run_id") or "")
    return TiKey(dag_id=dag_id, task_id=f"{KEY_PREFIX[kind]}{record_id}", run_id=run_id, map_index=-1, try_number=1)


def ti_key(workload: Any) -> TiKey:
    """Our copy of Airflow's TaskInstanceKey."""
    ti = workload.ti
    return TiKey(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        map_index=int(ti.map_index if ti.map_index is not None else -1),
        try_number=int(ti.try_number),
    )


def ti_key_of_model(ti: Any) -> TiKey:
    """The key of an Airflow TaskInstance (ORM) as given to adoption and revoke."""
    return TiKey(ti.dag_id, ti.task_id, ti.run_id, int(ti.map_index), int(ti.try_number))


def token_expiry(token: str | None) -> datetime | None:
    """The ``exp`` claim of the workload's JWT, read WITHOUT verifying the signature.

    Only the deadline is wanted (the scheduler signed the token a moment ago; the API server
    verifies it). ``None`` when the value is not a JWT with a numeric ``exp``. Neither the token
    nor its claims are ever logged or kept.
    """
    if not token:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims["exp"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
