"""DescribeJobs answers mapped to phases: success, failure, start failures, RUNNABLE timeout, ownership."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aws_reconciler.backends.batch.states import exit_code_of, observe_job
from aws_reconciler.model import Phase

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
OURS = {"aws-reconciler:deployment": "prod", "aws-reconciler:id": "rec-1"}


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def job(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "jobId": "job-1",
        "jobQueue": "arn:aws:batch:us-east-1:123456789012:job-queue/main",
        "status": status,
        "createdAt": ms(NOW - timedelta(seconds=100)),
        "tags": OURS,
        **fields,
    }


def observe(data: dict[str, Any], timeout: float | None = None) -> Any:
    return observe_job(data, deployment="prod", runnable_timeout=timeout, now=NOW)


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("SUBMITTED", Phase.PROVISIONING),
        ("PENDING", Phase.PROVISIONING),
        ("RUNNABLE", Phase.PROVISIONING),
        ("STARTING", Phase.PROVISIONING),
        ("RUNNING", Phase.RUNNING),
    ],
)
def test_active_statuses(status: str, phase: Phase) -> None:
    obs = observe(job(status, startedAt=ms(NOW)))
    assert (obs.phase, obs.raw_status, obs.record_id, obs.owned) == (phase, status, "rec-1", True)
    assert obs.stuck is None and not obs.never_started


def test_succeeded_and_failed_with_exit_codes_and_times() -> None:
    ok = observe(job("SUCCEEDED", container={"exitCode": 0}, startedAt=ms(NOW), stoppedAt=ms(NOW)))
    assert (ok.phase, ok.exit_code, ok.finished_at) == (Phase.SUCCEEDED, 0, NOW)
    assert ok.started_at == NOW
    failed = observe(job("FAILED", statusReason="Essential container in task exited", container={"exitCode": 137}))
    assert (failed.phase, failed.exit_code, failed.never_started) == (Phase.FAILED, 137, False)
    assert failed.reason == "Essential container in task exited; exit code 137"


def test_the_exit_code_is_found_in_the_last_attempt_when_the_container_lacks_it() -> None:
    # What moto alone (and some Batch paths) report: the code only in the attempts.
    data = job("FAILED", container={}, attempts=[{"container": {"exitCode": 2}}, {"container": {"exitCode": 3}}])
    assert exit_code_of(data) == 3
    assert observe(data).exit_code == 3


@pytest.mark.parametrize(
    "data",
    [
        {
            "statusReason": "Task failed to start",
            "container": {"reason": "CannotPullContainerError: pull access denied"},
        },
        {
            "statusReason": "Task failed to start",
            "attempts": [{"container": {"reason": "ResourceInitializationError: unable to pull secrets"}}],
        },
        {"statusReason": "Task failed to start"},
    ],
    ids=["container-reason", "attempt-reason", "status-reason"],
)
def test_failed_before_the_container_started_is_never_started(data: dict[str, Any]) -> None:
    obs = observe(job("FAILED", **data))
    assert (obs.phase, obs.never_started, obs.exit_code) == (Phase.FAILED, True, None)
    assert "Task failed to start" in (obs.reason or "")


@pytest.mark.parametrize(
    "data",
    [
        {"statusReason": "Cancelled by the operator", "isCancelled": True},
        {"statusReason": "Task failed to start", "container": {"exitCode": 1}},
        {"statusReason": "Host EC2 (instance i-0abc) terminated."},
    ],
    ids=["cancelled", "has-exit-code", "host-terminated"],
)
def test_other_failures_are_final(data: dict[str, Any]) -> None:
    """Only positive evidence of a start failure relaunches: a job that may have run never does."""
    obs = observe(job("FAILED", **data))
    assert (obs.phase, obs.never_started) == (Phase.FAILED, False)


def test_runnable_longer_than_the_timeout_is_stuck_with_batchs_reason() -> None:
    waited = job("RUNNABLE", createdAt=ms(NOW - timedelta(seconds=601)), statusReason="CAPACITY:INSUFFICIENT")
    obs = observe(waited, timeout=600)
    assert obs.phase is Phase.PROVISIONING
    assert obs.stuck is not None and obs.stuck.code == "runnable_timeout"
    assert "601 s" in obs.stuck.reason and "(600 s)" in obs.stuck.reason
    assert "CAPACITY:INSUFFICIENT" in obs.stuck.reason
    assert observe(waited, timeout=602).stuck is None
    assert observe(waited, timeout=None).stuck is None
    # Only RUNNABLE: a job starting or running is making progress.
    assert observe(job("STARTING", createdAt=waited["createdAt"]), timeout=600).stuck is None
    assert observe(job("RUNNING", createdAt=waited["createdAt"]), timeout=600).stuck is None


@pytest.mark.parametrize(
    ("tags", "owned"),
    [(OURS, True), ({**OURS, "aws-reconciler:deployment": "other"}, False), ({}, False)],
    ids=["ours", "other-deployment", "untagged"],
)
def test_ownership_is_the_deployment_tag(tags: dict[str, str], owned: bool) -> None:
    obs = observe(job("RUNNING", tags=tags))
    assert obs.owned is owned
    assert (obs.record_id == "rec-1") is owned
