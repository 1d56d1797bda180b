"""Map a Batch job (as DescribeJobs returns it) to an :class:`Observation`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from ...model import Phase
from ..base import Observation, Stuck
from ..ecs.states import PRE_START_REASONS as ECS_PRE_START_REASONS
from ..tags import owned_record_id

#: Statuses ListJobs is asked for during discovery: every job that can still use capacity.
ACTIVE_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
#: Not started yet: CancelJob applies (TerminateJob is for STARTING and RUNNING).
CANCELLABLE_STATUSES = frozenset({"SUBMITTED", "PENDING", "RUNNABLE"})
PROVISIONING_STATUSES = frozenset({"SUBMITTED", "PENDING", "RUNNABLE", "STARTING"})
# Batch runs containers as ECS tasks, so their start failures read the same; Batch itself
# says "Task failed to start" in statusReason.
PRE_START_REASONS = (*ECS_PRE_START_REASONS, "Task failed to start", "TaskFailedToStart")
RUNNABLE_TIMEOUT = "runnable_timeout"


def epoch_ms(value: Any) -> datetime | None:
    """Batch reports times as epoch milliseconds (a number, not a timestamp)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromtimestamp(float(value) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def exit_code_of(job: Mapping[str, Any]) -> int | None:
    """The container's exit code: in ``container`` or, on some paths, only in the last attempt."""
    code = (job.get("container") or {}).get("exitCode")
    if code is None:
        for attempt in reversed(job.get("attempts") or []):
            code = (attempt.get("container") or {}).get("exitCode")
            if code is not None:
                break
    return int(code) if code is not None else None


def _reasons(job: Mapping[str, Any]) -> Iterator[str]:
    yield job.get("statusReason") or ""
    yield (job.get("container") or {}).get("reason") or ""
    for attempt in job.get("attempts") or []:
        yield attempt.get("statusReason") or ""
        yield (attempt.get("container") or {}).get("reason") or ""


def observe_job(
    job: Mapping[str, Any],
    *,
    deployment: str,
    runnable_timeout: float | None = None,
    now: datetime | None = None,
    team: str | None = None,
) -> Observation:
    """One job's state. ``runnable_timeout`` (seconds since submission) marks a RUNNABLE job stuck."""
    status = str(job.get("status", ""))
    tags = {str(k): str(v) for k, v in (job.get("tags") or {}).items()}
    record_id = owned_record_id(tags, deployment=deployment, team=team)
    common: dict[str, Any] = {
        "external_id": job["jobId"],
        "target": job.get("jobQueue"),
        "record_id": record_id,
        # Batch has no startedBy: the deployment tag alone says the job is ours.
        "owned": record_id is not None,
        "started_at": epoch_ms(job.get("startedAt")),
        "created_at": epoch_ms(job.get("createdAt")),
        "raw_status": status,
    }
    if status in PROVISIONING_STATUSES:
        stuck = None
        if status == "RUNNABLE" and runnable_timeout is not None:
            stuck = _runnable_timeout(job, runnable_timeout, now or datetime.now(UTC))
        return Observation(phase=Phase.PROVISIONING, stuck=stuck, **common)
    if status == "RUNNING":
        return Observation(phase=Phase.RUNNING, **common)

    exit_code = exit_code_of(job)
    reasons = [r for r in dict.fromkeys(_reasons(job)) if r]
    # Only positive evidence counts: a job that ran is never launched again, and a job somebody
    # cancelled (no exit code either) is a failure, not a start problem.
    never_started = (
        status == "FAILED"
        and exit_code is None
        and any(marker in reason for reason in reasons for marker in PRE_START_REASONS)
    )
    parts = list(reasons)
    if exit_code is not None:
        parts.append(f"exit code {exit_code}")
    succeeded = status == "SUCCEEDED" and exit_code in (0, None)
    return Observation(
        phase=Phase.SUCCEEDED if succeeded else Phase.FAILED,
        finished_at=epoch_ms(job.get("stoppedAt")),
        exit_code=exit_code,
        reason="; ".join(parts) or status.lower() or "stopped",
        never_started=never_started,
        **common,
    )


def _runnable_timeout(job: Mapping[str, Any], timeout: float, now: datetime) -> Stuck | None:
    created = epoch_ms(job.get("createdAt"))
    if created is None:
        return None
    waited = (now - created).total_seconds()
    if waited <= timeout:
        return None
    reason = (
        f"the Batch job waited {waited:.0f} s in RUNNABLE, over [aws_reconciler_batch] runnable_timeout "
        f"({timeout:.0f} s): no compute environment of its job queue could run it"
    )
    if job.get("statusReason"):
        reason += f" (Batch: {job['statusReason']})"
    return Stuck(code=RUNNABLE_TIMEOUT, reason=reason)
