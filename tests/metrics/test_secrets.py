"""No metric label, log line, health body or ``aws-reconciler status`` output contains the workload
token (a distinctive canary in the workload JSON of every task) or the store URL's password (a
PostgreSQL URL with a password; the test server trusts local connections and ignores it)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from metrics_support import add_rows, task_command
from prometheus_client.parser import text_string_to_metric_families

from aws_reconciler import cli
from aws_reconciler.config import load_settings, redact_url
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.store import NewTask, TaskStore, create_store_engine, migrate
from aws_reconciler_sandbox import SandboxServer
from support.waiting import wait_for

if TYPE_CHECKING:
    from conftest import ReplicaFactory, SettingsFactory

# JWT-shaped like Airflow's workload tokens, and unmistakable.
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnktd29ya2xvYWQtdG9rZW4ifQ.Q2FuYXJ5LXNpZ25hdHVyZS03ZDFl"
PASSWORD = "Canary-Store-Pa55word-7d1e"
# The fake AWS (it sees every request, as AWS does) and botocore, whose DEBUG logging of request
# and response bodies is checked on its own below.
NOT_OURS = ("moto", "werkzeug", "aws_reconciler_sandbox", "botocore")


class TokenLogged(AssertionError):
    """The workload token reached a log line (the known botocore leak below)."""


def _assert_clean(what: str, text: str) -> None:
    assert TOKEN not in text, f"{what} contains the workload token"
    assert PASSWORD not in text, f"{what} contains the store password"


@pytest.fixture
def secret_store_url(pg_schema_url: str) -> Iterator[str]:
    """The test's PostgreSQL schema, reached through a URL that carries a password."""
    url = sa.engine.make_url(pg_schema_url).set(password=PASSWORD).render_as_string(hide_password=False)
    engine = create_store_engine(url)
    migrate(engine)
    engine.dispose()
    yield url


def test_no_secret_in_metrics_logs_or_health_while_launching(
    sandbox: SandboxServer,
    settings_for: SettingsFactory,
    secret_store_url: str,
    replicas: ReplicaFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(secret_store_url)
    replica = replicas("a", settings=settings, store_url=secret_store_url)
    store = TaskStore(create_store_engine(secret_store_url))
    sandbox.fail_run_task(reason="RESOURCE:CPU", times=1)
    sandbox.inject_error(operation="ecs:RunTask", code="ThrottlingException", message="Rate exceeded", times=1)
    ids = add_rows(
        store,
        settings,
        [
            task_command("ok", token=TOKEN),
            task_command("fails", exit_code=3, token=TOKEN),
            task_command("sleeps", sleep=60, token=TOKEN),
        ],
    )
    replica.start()

    def phase(record_id: str) -> Phase:
        record = store.get(record_id)
        assert record is not None
        assert record.spec is not None and TOKEN in str(record.spec), "the canary must be in the launch request"
        return record.phase

    wait_for(lambda: phase(ids[0]) is Phase.SUCCEEDED, timeout=60, what="the task to succeed")
    wait_for(lambda: phase(ids[1]) is Phase.FAILED, timeout=60, what="the failing task to fail")
    wait_for(lambda: phase(ids[2]) is Phase.RUNNING, timeout=60, what="the long task to run")
    store.revoke(ids=[ids[2]])
    wait_for(lambda: phase(ids[2]) is Phase.REVOKED, timeout=60, what="the revoked task to stop")
    assert TOKEN in " ".join(" ".join(t["overrides"]["containerOverrides"][0]["command"]) for t in sandbox.tasks())

    status, exposition = replica.get("/metrics")
    assert status == 200
    _assert_clean("/metrics", exposition)
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for value in sample.labels.values():
                _assert_clean(f"label of {sample.name}", value)
                assert not any(i in value for i in ids), f"{sample.name} has a per-task label {value}"
    for path in ("/healthz", "/readyz"):
        status, body = replica.get(path)
        assert status == 200, body
        _assert_clean(path, body)

    ours = [r for r in caplog.records if not r.name.startswith(NOT_OURS)]
    assert any(r.name.startswith("aws_reconciler") for r in ours), "the capture saw the reconciler's own logs"
    assert any(r.levelno == logging.DEBUG for r in caplog.records), "DEBUG was captured"
    for record in ours:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        _assert_clean(f"log line of {record.name}", text)
    store.engine.dispose()


def test_status_output_shows_neither_password_nor_token(
    secret_store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Even when AWS's free-text reason echoes the request, status masks what looks like a token."""
    store = TaskStore(create_store_engine(secret_store_url))
    record_id = str(uuid.uuid4())
    store.add(
        [
            NewTask(
                id=record_id,
                backend=Backend.ECS,
                owner="1",
                key=TiKey("etl", "leaky", "manual__1", -1, 1),
                queue=None,
                target="airflow",
                spec={"overrides": {"containerOverrides": [{"command": ["--json-string", TOKEN]}]}},
            )
        ]
    )
    store.transition(
        record_id,
        expect_phases=[Phase.PENDING],
        phase=Phase.FAILED,
        status_reason=f"launch failed: InvalidParameterException: bad override '--json-string {TOKEN}'",
    )
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", secret_store_url)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    _assert_clean("aws-reconciler status", out)
    assert f"task store: {redact_url(secret_store_url)}" in out and "***" in out
    assert "launch failed: InvalidParameterException: bad override '--json-string ***'" in out
    store.engine.dispose()


def test_run_at_debug_log_level_logs_no_token(
    sandbox: SandboxServer,
    aws_env: dict[str, str],
    secret_store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """The real entry point: ``aws-reconciler --log-level DEBUG run --once`` launching a task."""
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    environment = {
        **aws_env,
        "AIRFLOW__AWS_RECONCILER__STORE_URL": secret_store_url,
        "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    store = TaskStore(create_store_engine(secret_store_url))
    [record_id] = add_rows(store, settings, [task_command("hello", token=TOKEN)])
    caplog.set_level(logging.DEBUG)
    assert cli.main(["--log-level", "DEBUG", "run", "--once"]) == 0
    record = store.get(record_id)
    assert record is not None and record.external_id, "the task was launched"
    leaks = [r.name for r in caplog.records if not r.name.startswith(NOT_OURS[:3]) and TOKEN in r.getMessage()]
    store.engine.dispose()
    if leaks:
        raise TokenLogged(f"the workload token was logged by {sorted(set(leaks))}")
