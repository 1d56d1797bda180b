"""No workload token in any error path: failing inserts and updates on every database, tracebacks
formatted at every level, the scheduler's and the reconciler's log lines, ``status`` and
``config show``, AWS error messages that quote the request, and what Airflow shows of a try that
never ran (its event log entry, its task log).

The token is a JWT-shaped canary; the store URL carries a canary password."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from aws_reconciler import cli
from aws_reconciler.cli import RedactingFormatter
from aws_reconciler.executor import EcsExecutor
from aws_reconciler.executor.base import NEVER_RAN_EVENT, _one_line
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.reconciler.factory import build_manager
from aws_reconciler.store import NewTask, TaskStore, create_store_engine, migrate
from aws_reconciler.store.sealing import TokenSealer
from aws_reconciler_sandbox import SandboxServer
from support.stores import make_settings
from support.waiting import wait_for
from support.workloads import FakeTI, airflow_ti, clear_airflow_tis, make_workload, rid

SRC = Path(__file__).resolve().parents[2] / "src" / "aws_reconciler"
TOKEN = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJlcnJvci1wYXRoLWNhbmFyeSJ9.RXJyb3ItcGF0aC1zaWduYXR1cmUtOWMyYg"
PASSWORD = "Canary-Error-Pa55word-9c2b"
FAST = {
    "AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL": "0.2",
    "AIRFLOW__AWS_RECONCILER__LEASE_DURATION": "3",
    "AIRFLOW__AWS_RECONCILER__RENEW_DEADLINE": "2",
    "AIRFLOW__AWS_RECONCILER__RETRY_PERIOD": "0.5",
    "AIRFLOW__AWS_RECONCILER__BACKOFF_BASE": "0.2",
}


def assert_clean(what: str, text: str) -> None:
    # Its payload and signature alone count too: PostgreSQL cuts long values it quotes.
    _, payload, signature = TOKEN.split(".")
    assert payload not in text and signature not in text, f"{what} contains (part of) the workload token"
    assert PASSWORD not in text, f"{what} contains the store password"


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated store on each database Airflow supports."""
    fixture = {"sqlite": "sqlite_url", "postgres": "pg_schema_url", "mariadb": "mariadb_url"}[request.param]
    url = str(request.getfixturevalue(fixture))
    engine = create_store_engine(url)
    migrate(engine)
    engine.dispose()
    return url


# ---- every engine -----------------------------------------------------------------------------


def test_every_engine_of_the_product_hides_statement_parameters(database_url: str) -> None:
    """The only engine factory sets ``hide_parameters``, and nothing else creates engines."""
    creators = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in ("create_engine", "create_async_engine", "engine_from_config"):
                    creators.append(str(path.relative_to(SRC)))
    assert creators == ["store/database.py"]
    engine = create_store_engine(database_url)
    assert engine.hide_parameters is True
    engine.dispose()


# ---- failing inserts and updates --------------------------------------------------------------


def _task(**changes: Any) -> NewTask:
    record_id = str(uuid.uuid4())
    values: dict[str, Any] = {
        "id": record_id,
        "backend": Backend.ECS,
        "owner": "1",
        "key": TiKey("dag", f"t-{record_id[:8]}", "run", -1, 1),
        "queue": "default",
        "target": "cluster",
        "spec": {"overrides": {"containerOverrides": [{"command": ["--json-string", json.dumps({"token": TOKEN})]}]}},
        "workload_token": TokenSealer().seal(TOKEN),
        "status_reason": f"quoted {TOKEN}",
    }
    return NewTask(**{**values, **changes})


def _failures(store: TaskStore) -> Iterator[tuple[str, Callable[[], object], bool]]:
    """(what, a failing write carrying the token, whether the database quotes the failing row)."""
    postgres = store.engine.dialect.name == "postgresql"
    if store.engine.dialect.name != "sqlite":  # SQLite does not enforce lengths
        yield "insert of a too long value", lambda: store.add([_task(queue="q" * 300)]), False
        pending = _task()
        store.add([pending])
        yield (
            "update with a too long value",
            lambda: store.transition(
                pending.id, expect_phases=[Phase.PENDING], stop_code="x" * 100, status_reason=f"r {TOKEN}"
            ),
            False,
        )
    # PostgreSQL's message quotes every value of a row that breaks a NOT NULL constraint.
    yield "insert of a NULL key", lambda: store.add([_task(key=TiKey(None, "t", "r", -1, 1))]), postgres  # type: ignore[arg-type]
    other = _task()
    store.add([other])
    yield (
        "update to a NULL key",
        lambda: store.transition(other.id, expect_phases=[Phase.PENDING], dag_id=None, last_error=f"e {TOKEN}"),
        postgres,
    )


def test_failing_inserts_and_updates_show_no_parameter(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = TaskStore(create_store_engine(database_url))
    formatter = RedactingFormatter("%(levelname)s %(name)s: %(message)s")
    seen = 0
    for what, write, quotes_row in _failures(store):
        caplog.clear()
        # SQLAlchemy logs each statement and its parameters at INFO/DEBUG when asked to.
        with (
            caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"),
            pytest.raises(sa.exc.SQLAlchemyError) as raised,
        ):
            write()
        exc = raised.value
        seen += 1
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
            exc_info = (type(exc), exc, exc.__traceback__)
            record = logging.LogRecord("aws_reconciler", level, __file__, 1, "%s failed", (what,), exc_info)
            assert_clean(f"the reconciler's log line at {logging.getLevelName(level)}", formatter.format(record))
        assert_clean("the scheduler's one-line error", _one_line(exc))
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(exc)
        if quotes_row:
            quoted = TOKEN.split(".")[1]
            assert quoted in str(exc.orig), "the server quotes the row: only the masking keeps the token out"
        else:
            assert_clean(f"{what}: the exception", str(exc) + repr(exc))
            assert_clean(f"{what}: the traceback", "".join(traceback.format_exception(exc)))
        statements = [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")]
        assert statements, "SQLAlchemy logged the statements"
        assert_clean(f"{what}: SQLAlchemy's statement log", "\n".join(statements))
    assert seen >= 2
    store.engine.dispose()


@pytest.mark.airflow
@pytest.mark.postgres
def test_a_failing_insert_in_the_scheduler_logs_one_line_without_the_token(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL quotes the whole failing row; the scheduler's line masks the token in it."""
    engine = create_store_engine(pg_schema_url)
    migrate(engine)
    insert_values = TaskStore._insert_values
    # A row the database refuses (as a bug would write it): NULL where NOT NULL is required.
    monkeypatch.setattr(
        TaskStore, "_insert_values", lambda self, t, now: {**insert_values(self, t, now), "dag_id": None}
    )
    workload = make_workload("breaks", token=TOKEN)
    with structlog.testing.capture_logs() as logs:
        executor = EcsExecutor(parallelism=4)
        executor.job_id = 1
        executor._settings = make_settings(pg_schema_url)
        executor.start()
        executor.queue_workload(workload, session=None)  # type: ignore[arg-type]
        executor.heartbeat()
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1 and "task store unavailable, 1 task(s) stay queued" in errors[0]["event"], errors
    for entry in logs:
        assert_clean("a scheduler log line", json.dumps(entry, default=str))
    assert set(executor.queued_tasks) == {workload.ti.key}
    executor.store.engine.dispose()
    engine.dispose()


def test_the_reconciler_masks_tokens_in_what_it_logs_tracebacks_included() -> None:
    """``aws-reconciler``'s own logging setup, in a process of its own."""
    script = f"""
import logging
from aws_reconciler import cli
cli.configure_logging("DEBUG")
log = logging.getLogger("aws_reconciler.test")
log.debug("request: %s", {{"command": ["--json-string", '{{"token": "{TOKEN}"}}']}})
try:
    raise RuntimeError("the server said: failing row contains ({TOKEN})")
except RuntimeError:
    log.exception("a cycle failed")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert_clean("the reconciler's stderr", result.stderr)
    assert result.stderr.count("***") == 2 and "Traceback" in result.stderr


# ---- status and config show ----------------------------------------------------------------------


@pytest.mark.postgres
def test_status_and_config_show_show_neither_password_nor_token_nor_key(
    pg_schema_url: str,
    token_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    url = sa.engine.make_url(pg_schema_url).set(password=PASSWORD).render_as_string(hide_password=False)
    engine = create_store_engine(url)
    migrate(engine)
    store = TaskStore(engine)
    failed = _task()
    store.add([failed])
    store.transition(failed.id, expect_phases=[Phase.PENDING], phase=Phase.FAILED, status_reason=f"echo '{TOKEN}'")
    store.add([_task(status_reason=None)])
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", url)
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__TOKEN_KEY", token_key)
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__CLUSTER", "airflow")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION", "airflow-task")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME", "base")
    for argv in (["status"], ["status", "--json"], ["config", "show"], ["config", "show", "--json"]):
        assert cli.main(argv) == 0, argv
        out = capsys.readouterr()
        assert_clean(" ".join(argv), out.out + out.err)
        assert token_key not in out.out + out.err, f"{' '.join(argv)} shows the token key"
        if argv[0] == "status":
            assert "echo '***'" in out.out
        else:
            assert "token_key" in out.out and "***" in out.out
    engine.dispose()


# ---- AWS quoting the request, and what Airflow shows of a try that never ran --------------------------


@pytest.mark.airflow
@pytest.mark.postgres
def test_an_aws_error_quoting_the_token_reaches_no_reason_log_or_task_log(
    sandbox: SandboxServer,
    aws_env: dict[str, str],
    pg_schema_url: str,
    token_key: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    from airflow.utils.state import TaskInstanceState

    clear_airflow_tis()
    for name, value in aws_env.items():
        if not name.startswith("AIRFLOW__"):
            monkeypatch.setenv(name, value)
    env = {k: v for k, v in aws_env.items() if k.startswith("AIRFLOW__")}
    settings = make_settings(pg_schema_url, **env, **FAST, AIRFLOW__AWS_RECONCILER__TOKEN_KEY=token_key)
    engine = create_store_engine(pg_schema_url)
    migrate(engine)
    store = TaskStore(engine)
    workload = make_workload("quoted", token=TOKEN).model_copy(
        update={"log_path": f"dag_id=example_dag/run_id=r/task_id=quoted/attempt=1-{tmp_path.name}.log"}
    )
    airflow_ti(workload, TaskInstanceState.QUEUED)
    executor = EcsExecutor(parallelism=4)
    executor.job_id = 1
    executor._settings = settings
    executor.start()
    executor.queue_workload(workload, session=None)  # type: ignore[arg-type]
    executor.heartbeat()

    # AWS refuses the request and quotes it (its messages are free text).
    sandbox.inject_error(
        operation="ecs:RunTask",
        code="InvalidParameterException",
        message=f'Container.command contains an invalid value: --json-string {{"token":"{TOKEN}"}}',
        times=1,
    )
    caplog.set_level(logging.DEBUG)
    manager = build_manager(settings)
    thread = threading.Thread(target=manager.run, name="reconciler", daemon=True)
    thread.start()
    try:

        def failed() -> bool:
            record = store.get(rid(workload))
            return record is not None and record.phase is Phase.FAILED

        wait_for(failed, timeout=60, what="the refused task to fail")
    finally:
        manager.request_stop()
        thread.join(timeout=30)
    record = store.get(rid(workload))
    assert record is not None and record.status_reason is not None
    assert "InvalidParameterException" in record.status_reason and "***" in record.status_reason
    assert_clean("the stored reason", record.status_reason)
    ours = [r for r in caplog.records if r.name.startswith("aws_reconciler")]
    assert ours
    for log_record in ours:
        text = log_record.getMessage()
        if log_record.exc_info:
            text += logging.Formatter().formatException(log_record.exc_info)
        assert_clean(f"log line of {log_record.name}", text)

    # The scheduler reports the failure; Airflow's event log and the try's own log say why.
    executor.heartbeat()
    ((state, info),) = [v for k, v in executor.get_event_buffer().items() if k == workload.ti.key]
    assert state == TaskInstanceState.FAILED
    assert_clean("the failure Airflow records", str(info))
    events = [e for e in executor._task_event_logs if e.event == NEVER_RAN_EVENT]
    assert events and all(TOKEN not in (e.extra or "") for e in events)
    task_log = (executor.never_ran_log().base_log_folder / (workload.log_path or "")).read_text()
    assert "This try never ran: launch failed: InvalidParameterException" in task_log
    assert_clean("the try's task log", task_log)
    sources, lines = executor.get_task_log(FakeTI.of(workload), 1)  # type: ignore[arg-type]
    assert_clean("the log view", "\n".join(sources + lines))
    executor.end()
    executor.store.engine.dispose()
    engine.dispose()
