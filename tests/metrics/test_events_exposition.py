"""A reconciler that observes by events (EventBridge -> SQS on the sandbox), built by the product's
factory: the series of events mode all get samples, promtool finds nothing to lint, and what the
counters say is what happened on the fake AWS (a lost event repaired by the resync and counted
as drift, duplicates, a stray message left in the queue, an unmatched task's events)."""

from __future__ import annotations

import subprocess
import threading
from typing import TYPE_CHECKING

import pytest
from metrics_support import add_rows, exported_series_names, require_binary, task_command
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_exposition import is_events_series

from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.model import Phase
from aws_reconciler.reconciler.factory import build_manager
from aws_reconciler.store import TaskStore, create_store_engine
from aws_reconciler_sandbox import SandboxServer, provision_event_queue
from support.waiting import wait_for

if TYPE_CHECKING:
    from conftest import SettingsFactory


def test_events_mode_exports_what_happened_to_every_event(
    sandbox: SandboxServer,
    aws_env: dict[str, str],
    settings_for: SettingsFactory,
    migrated_sqlite: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    promtool = require_binary("promtool")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, aws_env[name])
    queue_url = provision_event_queue(
        endpoint_url=sandbox.endpoint_url,
        region=aws_env["AWS_DEFAULT_REGION"],
        deployment="airflow",
        clusters=[aws_env["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"]],
    )
    settings = settings_for(
        migrated_sqlite,
        AIRFLOW__AWS_RECONCILER_ECS__OBSERVATION="events",
        AIRFLOW__AWS_RECONCILER_ECS__EVENTS_QUEUE_URL=queue_url,
        AIRFLOW__AWS_RECONCILER__EVENTS_RESYNC_INTERVAL="2",
        AIRFLOW__AWS_RECONCILER__MISSING_GRACE="1",
    )
    store = TaskStore(create_store_engine(migrated_sqlite))
    metrics = Metrics()
    manager = build_manager(settings, metrics=metrics)
    thread = threading.Thread(target=manager.run, name="events-reconciler", daemon=True)
    sqs = sandbox.client("sqs")

    def sample(name: str) -> float:
        return metrics.registry.get_sample_value(name, {"backend": "ecs"}) or 0.0

    def phase(record_id: str) -> Phase:
        record = store.get(record_id)
        assert record is not None
        return record.phase

    try:
        thread.start()
        # Every event of this task is lost: only the resync can tell the row it ended.
        sandbox.configure_realism(event_loss=100)
        [lost] = add_rows(store, settings, [task_command("lost", sleep=0.2)])
        wait_for(lambda: phase(lost) is Phase.SUCCEEDED, timeout=60, what="the lost task recorded by a resync")
        assert sample("aws_reconciler_resync_drift_total") >= 1
        assert sample("aws_reconciler_events_applied_total") == 0

        # Every event twice: the duplicates change nothing.
        sandbox.configure_realism(event_loss=0, event_duplicate=100)
        twice = add_rows(store, settings, [task_command("twice", sleep=0.2) for _ in range(2)])
        sqs.send_message(QueueUrl=queue_url, MessageBody="not an event")
        sandbox.inject_error(operation="sqs:ReceiveMessage", code="InternalError", message="boom", status=500)
        wait_for(lambda: all(phase(r) is Phase.SUCCEEDED for r in twice), timeout=60, what="both tasks recorded")
        wait_for(lambda: sample("aws_reconciler_events_duplicate_total") >= 2, timeout=30, what="duplicates counted")

        # A task of somebody else's on our cluster: its events follow no row, and are deleted after the hold.
        sandbox.configure_realism(event_duplicate=0)
        ecs = sandbox.client("ecs")
        ecs.run_task(
            cluster=aws_env["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"],
            taskDefinition="airflow-task",
            launchType="FARGATE",
            startedBy="somebody-else",
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": aws_env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(","),
                    "securityGroups": [aws_env["AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS"]],
                }
            },
            overrides={"containerOverrides": [{"name": "base", "command": task_command("foreign", sleep=0.2)}]},
        )
        wait_for(lambda: sample("aws_reconciler_events_unmatched_total") >= 1, timeout=60, what="unmatched events")

        def left_in_queue() -> int:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            return int(attributes["ApproximateNumberOfMessages"]) + int(
                attributes["ApproximateNumberOfMessagesNotVisible"]
            )

        # From the queue's side: every event is deleted in the end, but the stray message, left for the DLQ.
        wait_for(lambda: left_in_queue() == 1, timeout=60, what="only the stray message left in the queue")
        for name in ("received", "applied", "malformed"):
            assert sample(f"aws_reconciler_events_{name}_total") >= 1, name
        assert sample("aws_reconciler_event_receive_errors_total") >= 1
        assert (
            metrics.registry.get_sample_value("aws_reconciler_event_lag_seconds_count", {"backend": "ecs"}) or 0
        ) >= 2
        assert (
            metrics.registry.get_sample_value("aws_reconciler_observation_mode", {"backend": "ecs", "mode": "events"})
            == 1
        )
        exposition = generate_latest(metrics.registry).decode()
    finally:
        manager.request_stop()
        thread.join(timeout=60)
    assert not thread.is_alive()

    check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr
    sampled = {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}
    events_series = {n for n in exported_series_names(Metrics().registry) if is_events_series(n)}
    assert events_series and events_series <= sampled, sorted(events_series - sampled)

    # And from ECS's: the tasks ended as their rows say.
    finished = {t["arn"]: t for t in sandbox.tasks()}
    for record_id in [lost, *twice]:
        record = store.get(record_id)
        assert record is not None and record.external_id is not None
        assert finished[record.external_id]["lastStatus"] == "STOPPED"
