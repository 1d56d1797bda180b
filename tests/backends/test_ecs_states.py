"""ECS task -> observation mapping, including the pre-start failures that allow a relaunch."""

from __future__ import annotations

from typing import Any

from aws_reconciler.backends.ecs.states import observe_task
from aws_reconciler.model import Phase

OURS = [{"key": "aws-reconciler:deployment", "value": "prod"}, {"key": "aws-reconciler:id", "value": "rec-1"}]


def task(**fields: Any) -> dict[str, Any]:
    return {"taskArn": "arn:task/1", "clusterArn": "arn:cluster/main", "startedBy": "prod", "tags": OURS, **fields}


def observe(**fields: Any):  # type: ignore[no-untyped-def]
    return observe_task(task(**fields), container_name="base", deployment="prod")


def test_starting_and_running() -> None:
    for status in ("PROVISIONING", "PENDING", "ACTIVATING"):
        assert observe(lastStatus=status).phase is Phase.PROVISIONING
    running = observe(lastStatus="RUNNING")
    assert running.phase is Phase.RUNNING and running.owned and running.record_id == "rec-1"


def test_exit_codes_decide_success() -> None:
    ok = observe(
        lastStatus="STOPPED", stopCode="EssentialContainerExited", containers=[{"name": "base", "exitCode": 0}]
    )
    assert ok.phase is Phase.SUCCEEDED and not ok.never_started
    oom = observe(
        lastStatus="STOPPED",
        stopCode="EssentialContainerExited",
        containers=[
            {"name": "sidecar", "exitCode": 0},
            {"name": "base", "exitCode": 137, "reason": "OutOfMemoryError"},
        ],
    )
    assert oom.phase is Phase.FAILED and oom.exit_code == 137 and "OutOfMemoryError" in (oom.reason or "")


def test_failed_to_start_with_empty_containers_is_relaunchable() -> None:
    obs = observe(lastStatus="STOPPED", stopCode="TaskFailedToStart", stoppedReason="Timeout waiting", containers=[])
    assert obs.phase is Phase.FAILED and obs.never_started and "TaskFailedToStart" in (obs.reason or "")


def test_image_pull_error_is_relaunchable() -> None:
    obs = observe(
        lastStatus="STOPPED",
        stopCode="TaskFailedToStart",
        containers=[{"name": "base", "reason": "CannotPullContainerError: pull access denied"}],
    )
    assert obs.never_started


def test_other_deployments_are_not_owned() -> None:
    other = observe_task(
        task(startedBy="other", tags=[{"key": "aws-reconciler:deployment", "value": "other"}], lastStatus="RUNNING"),
        container_name="base",
        deployment="prod",
    )
    assert not other.owned and other.record_id is None
    untagged = observe_task(task(tags=[], lastStatus="RUNNING"), container_name="base", deployment="prod")
    assert not untagged.owned
