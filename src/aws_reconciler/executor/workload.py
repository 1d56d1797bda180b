"""Turn an Airflow 3 ``ExecuteTask`` workload into the container command and the TI key.

Kept free of Airflow imports (duck-typed) so it is unit-testable and cheap to import.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from ..model import TiKey

EXECUTE_WORKLOAD_MODULE = "airflow.sdk.execution_time.execute_workload"


def workload_command(workload: Any) -> list[str]:
    """The command every task container runs: Airflow's own workload entry point.

    The JSON carries the workload's short-lived token; it travels only inside the RunTask
    request and the task record, never into logs.
    """
    return ["python", "-m", EXECUTE_WORKLOAD_MODULE, "--json-string", workload.model_dump_json()]


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
