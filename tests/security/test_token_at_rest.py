"""No Airflow workload token is left in the task store once tasks started or finished.

The real parts: the ECS executor records workloads as the scheduler hands them over (real
JWTs), the reconciler (``build_manager``, as ``aws-reconciler run`` builds it) launches them on
the sandbox, which runs each container command as a local process (``TASK_IMAGE`` stands in for
Airflow's task runner), and the store is PostgreSQL. The store is then read as an operator with
``SELECT`` on it would read it: every column of every row of every table.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from aws_reconciler.executor import EcsExecutor
from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.model import Phase
from aws_reconciler.reconciler.factory import build_manager
from aws_reconciler.store import TaskStore, create_store_engine, migrate
from aws_reconciler_sandbox import SandboxServer
from support.stores import make_settings
from support.waiting import wait_for
from support.workloads import FakeTI, jwt_expiring_at, make_workload, rid

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

# Any JWT at all (Airflow's workload tokens are HS512 JWTs): header and payload are base64 JSON.
ANY_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
FAST = {
    "AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL": "0.2",
    "AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL": "5",
    "AIRFLOW__AWS_RECONCILER__LEASE_DURATION": "3",
    "AIRFLOW__AWS_RECONCILER__RENEW_DEADLINE": "2",
    "AIRFLOW__AWS_RECONCILER__RETRY_PERIOD": "0.5",
    "AIRFLOW__AWS_RECONCILER__BACKOFF_BASE": "0.2",
    "AIRFLOW__AWS_RECONCILER__BACKOFF_MAX": "2",
}


def dump(engine: sa.engine.Engine) -> str:
    """Every column of every row of every table of the store, as text."""
    parts: list[str] = []
    with engine.connect() as conn:
        for table in ("aws_reconciler_task", "aws_reconciler_lease", "aws_reconciler_alembic_version"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")).mappings():
                parts.extend(f"{table}.{column}={value}" for column, value in row.items())
    return "\n".join(parts)


def tasks_of(sandbox: SandboxServer, record_id: str) -> list[dict[str, Any]]:
    return [t for t in sandbox.tasks() if t["tags"].get("aws-reconciler:id") == record_id]


@pytest.mark.parametrize("encrypted", [True, False], ids=["with token_key", "without token_key"])
def test_no_jwt_is_in_the_store_once_tasks_started_or_finished(
    sandbox: SandboxServer,
    aws_env: dict[str, str],
    pg_schema_url: str,
    token_key: str,
    encrypted: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in aws_env.items():
        if not name.startswith("AIRFLOW__"):
            monkeypatch.setenv(name, value)  # the reconciler's boto3 clients reach the sandbox
    env = {k: v for k, v in aws_env.items() if k.startswith("AIRFLOW__")}
    if encrypted:
        env["AIRFLOW__AWS_RECONCILER__TOKEN_KEY"] = token_key
    settings = make_settings(pg_schema_url, **env, **FAST)
    engine = create_store_engine(pg_schema_url)
    migrate(engine)
    store = TaskStore(engine)
    container = settings.ecs.container_name

    def workload(task_id: str, *, seconds: float = 0, exit_code: int = 0, **extra: Any) -> Any:
        environment = [
            {"name": "TASK_SECONDS", "value": str(seconds)},
            {"name": "TASK_EXIT", "value": str(exit_code)},
        ]
        config = {"overrides": {"containerOverrides": [{"name": container, "environment": environment}]}}
        exp = datetime.now(UTC) + timedelta(minutes=10)
        return make_workload(task_id, token=jwt_expiring_at(exp), executor_config={**config, **extra})

    ok, fails, runs = workload("ok"), workload("fails", exit_code=3), workload("runs", seconds=120)
    invalid = workload("invalid", clientToken="mine")
    workloads = [ok, fails, runs, invalid]
    tokens = [w.token for w in workloads]

    executor = EcsExecutor(parallelism=8)
    executor.job_id = 1
    executor._settings = settings
    executor.start()
    for w in workloads:
        executor.queue_workload(w, session=None)  # type: ignore[arg-type]
    executor.heartbeat()
    queued = dump(engine)
    # Until a task starts its token is needed: sealed with the key, in clear (with a warning) without.
    in_clear = [token for token in tokens if token in queued]
    assert in_clear == ([] if encrypted else tokens[:3]), "the invalid task's token is never stored"
    assert queued.count("workload_token=fernet:" if encrypted else "workload_token=plain:") == 3
    assert queued.count("<aws-reconciler:workload-token>") == 3, "the requests hold a placeholder"

    # The first RunTask starts its task but its answer is lost: that attempt is relaunched with
    # the same client token, and ECS (the sandbox checks the parameters) answers with that task.
    sandbox.inject_error(
        operation="ecs:RunTask", code="ServerException", message="lost", status=500, times=1, phantom=True
    )
    metrics = Metrics()
    manager = build_manager(settings, metrics=metrics)
    thread = threading.Thread(target=manager.run, name="reconciler", daemon=True)
    thread.start()
    try:

        def phase(workload: Any) -> Phase:
            record = store.get(rid(workload))
            assert record is not None
            return record.phase

        wait_for(lambda: phase(ok) is Phase.SUCCEEDED, timeout=60, what="the task to succeed")
        wait_for(lambda: phase(fails) is Phase.FAILED, timeout=60, what="the failing task to fail")
        wait_for(lambda: phase(runs) is Phase.RUNNING, timeout=60, what="the long task to run")
        started = dump(engine)

        # Airflow's task log view of the running task: the container's output, never its token.
        def task_log() -> tuple[list[str], list[str]] | None:
            sources, lines = executor.get_task_log(FakeTI.of(runs), 1)  # type: ignore[arg-type]
            return (sources, lines) if any("read from" in line for line in lines) else None

        sources, lines = wait_for(task_log, timeout=30, what="the running task's output in the log view")
        assert not any(token in text for token in tokens for text in sources + lines)
        assert not ANY_JWT.search("\n".join(sources + lines))
        store.revoke(ids=[rid(runs)])
        wait_for(lambda: phase(runs) is Phase.REVOKED, timeout=60, what="the revoked task to stop")
    finally:
        manager.request_stop()
        thread.join(timeout=30)
    finished = dump(engine)

    for moment, text in (("a task runs", started), ("all finished", finished)):
        assert not ANY_JWT.search(text), f"a JWT is in the store when {moment}"
        assert "workload_token=None" in text and "workload_token=plain" not in text
        assert "workload_token=fernet" not in text
    assert sandbox.pending_faults()["errors"] == [], "the lost answer happened"
    ambiguous = metrics.registry.get_sample_value(
        "aws_reconciler_launch_retries_total", {"backend": "ecs", "reason": "ambiguous"}
    )
    assert ambiguous == 1, "one launch was retried with the same client token"
    for w in (ok, fails, runs):
        record = store.get(rid(w))
        assert record is not None and record.attempt == 1, "no second attempt"
        [task] = tasks_of(sandbox, rid(w))
        # What ECS got is the workload Airflow queued, token included.
        (override,) = task["overrides"]["containerOverrides"]
        assert w.token in override["command"][-1]
    assert tasks_of(sandbox, rid(invalid)) == []
    engine.dispose()
    executor.store.engine.dispose()
