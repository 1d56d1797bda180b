"""The real ``/metrics`` of a reconciler that reconciled tasks on the sandbox passes ``promtool check
metrics``, carries every family the code defines, and keeps its labels low-cardinality."""

from __future__ import annotations

import subprocess
import uuid
from typing import TYPE_CHECKING

import pytest
from metrics_support import add_rows, exported_series_names, require_binary, task_command
from prometheus_client.parser import text_string_to_metric_families

from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.model import Phase
from aws_reconciler.reconciler.factory import build_manager
from aws_reconciler.store import TaskStore, create_store_engine
from aws_reconciler_sandbox import SandboxServer
from support.waiting import wait_for

if TYPE_CHECKING:
    from conftest import ReplicaFactory, SettingsFactory

# Every label the reconciler may export, and the values of the closed sets.
ALLOWED_LABELS = {"backend", "phase", "result", "reason", "service", "operation", "outcome", "version", "le", "mode"}
CLOSED_VALUES = {
    "mode": {"poll", "events"},
    "backend": {"ecs", "batch"},
    "phase": {p.value for p in Phase},
    "outcome": {"success", "throttled", "error"},
    "result": {"success", "error", "throttled", "retriable_error", "terminal_error"},
}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def _start_orphan(sandbox: SandboxServer, aws_env: dict[str, str]) -> str:
    """A task of this deployment (startedBy and tags) that no record knows: an orphan."""
    ecs = sandbox.client("ecs")
    answer = ecs.run_task(
        cluster="airflow",
        taskDefinition="airflow-task",
        launchType="FARGATE",
        startedBy="airflow",
        tags=[{"key": DEPLOYMENT_TAG, "value": "airflow"}, {"key": ID_TAG, "value": str(uuid.uuid4())}],
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": aws_env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(","),
                "securityGroups": [aws_env["AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS"]],
            }
        },
        overrides={"containerOverrides": [{"name": "base", "command": task_command("orphan", sleep=60)}]},
    )
    return str(answer["tasks"][0]["taskArn"])


def is_events_series(name: str) -> bool:
    """A series only a reconciler observing by events exports."""
    return name.startswith(("aws_reconciler_event", "aws_reconciler_resync_drift", "aws_reconciler_last_resync_drift"))


def test_promtool_checks_the_exposition_of_a_reconciler_that_ran(
    promtool: str,
    sandbox: SandboxServer,
    aws_env: dict[str, str],
    settings_for: SettingsFactory,
    migrated_sqlite: str,
    replicas: ReplicaFactory,
) -> None:
    """Launches (one throttled, one out of capacity, one that never starts), a revoke, an orphan and
    a failing cycle: every family has samples, promtool finds nothing to lint, labels stay bounded."""
    settings = settings_for(
        migrated_sqlite,
        AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="0.5",
        AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="0",
        AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS="3",
    )
    store = TaskStore(create_store_engine(migrated_sqlite))
    replica = replicas("a", settings=settings, store_url=migrated_sqlite)

    orphan = _start_orphan(sandbox, aws_env)
    sandbox.inject_error(operation="ecs:RunTask", code="ThrottlingException", message="Rate exceeded", times=1)
    sandbox.fail_run_task(reason="RESOURCE:MEMORY", times=1)
    sandbox.fail_next_start(times=1)
    quick = add_rows(store, settings, [task_command("hello", sleep=0.5) for _ in range(3)])
    [revoked] = add_rows(store, settings, [task_command("long", sleep=60)])
    replica.start()

    wait_for(lambda: replica.sample("aws_reconciler_leader") == 1, timeout=20, what="replica a leading")

    def phase(record_id: str) -> Phase:
        record = store.get(record_id)
        assert record is not None
        return record.phase

    wait_for(lambda: all(phase(r) is Phase.SUCCEEDED for r in quick), timeout=60, what="quick tasks succeeded")
    wait_for(lambda: phase(revoked) is Phase.RUNNING, timeout=30, what="long task running")
    store.revoke(ids=[revoked])
    wait_for(lambda: phase(revoked) is Phase.REVOKED, timeout=30, what="revoked task stopped")
    wait_for(
        lambda: next(t for t in sandbox.tasks() if t["arn"] == orphan)["lastStatus"] == "STOPPED",
        timeout=30,
        what="orphan stopped",
    )
    # A failing cycle: discovery (every 0.5 s) gets a 500.
    sandbox.inject_error(operation="ecs:ListTasks", code="ServerException", message="Internal failure", status=500)
    wait_for(
        lambda: (replica.sample("aws_reconciler_reconcile_total", {"result": "error"}) or 0) >= 1,
        timeout=20,
        what="a failed cycle",
    )

    status, exposition = replica.get("/metrics")
    assert status == 200
    check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"
    assert not check.stdout.strip() and not check.stderr.strip(), f"lint findings:\n{check.stdout}{check.stderr}"

    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    sampled = {s.name for f in families.values() for s in f.samples}
    # This reconciler polls: the series of observation by events are exported only in events mode
    # (tests/metrics/test_events_exposition.py checks them there).
    missing = {n for n in exported_series_names(Metrics().registry) - sampled if not is_events_series(n)}
    assert not missing, f"series the code defines but this run never exported: {sorted(missing)}"
    expected = {
        ("aws_reconciler_launches_total", ("ecs", "success")),
        ("aws_reconciler_launches_total", ("ecs", "throttled")),
        ("aws_reconciler_launches_total", ("ecs", "retriable_error")),
        ("aws_reconciler_launch_retries_total", ("ecs", "throttled")),
        ("aws_reconciler_launch_retries_total", ("ecs", "capacity")),
        ("aws_reconciler_launch_retries_total", ("ecs", "never_started")),
        ("aws_reconciler_stops_total", ("ecs", "revoked")),
        ("aws_reconciler_stops_total", ("ecs", "orphan")),
    }
    seen = {
        (s.name, (s.labels.get("backend"), s.labels.get("result") or s.labels.get("reason")))
        for f in families.values()
        for s in f.samples
        if s.value > 0
    }
    assert expected <= seen, f"missing: {expected - seen}"
    assert any(
        s.labels.get("operation") == "RunTask" and s.value >= 1
        for s in families["aws_reconciler_aws_throttled"].samples
    )
    assert any(
        s.labels.get("operation") == "ListTasks" and s.labels.get("outcome") == "error"
        for s in families["aws_reconciler_aws_requests"].samples
    )

    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, f"{sample.name} has labels {sorted(sample.labels)}"
            for label, allowed in CLOSED_VALUES.items():
                if label in sample.labels:
                    assert sample.labels[label] in allowed, f"{sample.name} {label}={sample.labels[label]}"
            for value in sample.labels.values():
                assert not any(r in value for r in [*quick, revoked]), f"{sample.name} names a record: {value}"


def test_build_runner_exports_engines_and_aws_calls_through_one_registry(
    aws_env: dict[str, str],
    settings_for: SettingsFactory,
    migrated_sqlite: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``aws-reconciler run`` serves: the registry handed to ``build_manager`` receives the
    engines' gauges and counters and the AWS calls of the clients it creates."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, aws_env[name])
    metrics = Metrics()
    runner = build_manager(settings_for(migrated_sqlite), metrics=metrics)
    assert runner.elector.try_once()
    runner.cycle()
    assert all(engine.metrics is metrics for engine in runner.engines)
    registry = metrics.registry
    assert registry.get_sample_value("aws_reconciler_leader") == 1
    assert registry.get_sample_value("aws_reconciler_tasks", {"backend": "ecs", "phase": "pending"}) == 0
    listed = registry.get_sample_value(
        "aws_reconciler_aws_requests_total", {"service": "ecs", "operation": "ListTasks", "outcome": "success"}
    )
    assert listed is not None and listed >= 1, "the factory's ECS client is instrumented"
    # Shutting down hands leadership over: a stopped replica must not look like a leader.
    assert runner.run(once=True) == 0
    assert registry.get_sample_value("aws_reconciler_leader") == 0
    assert registry.get_sample_value("aws_reconciler_tasks", {"backend": "ecs", "phase": "pending"}) is None
