"""What the fake AWS knows, in one shape for ECS tasks and Batch jobs.

The suite judges the reconciler by the sandbox's own record of every task and job ever launched
(the control API's ``tasks`` and ``jobs``), never by the reconciler's rows: a row can say
"launched once" while AWS runs two. Pure: snapshots in, :class:`Launched` out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG

__all__ = ["ROLE_TAG", "Launched", "from_batch_job", "from_ecs_task", "launched"]

#: A tag the suite puts on what it launches itself: ``foreign`` (another deployment's) or
#: ``orphan`` (ours, without a row). The reconciler never looks at it.
ROLE_TAG = "chaos:role"

_JOB_NAME = re.compile(r"^af-(?P<id>.+)-(?P<attempt>\d+)$")
_FINISHED_JOB = frozenset({"SUCCEEDED", "FAILED"})


@dataclass(frozen=True)
class Launched:
    """One ECS task or Batch job, as the fake AWS recorded it. Times are epoch seconds."""

    backend: str  # "ecs" or "batch"
    external_id: str  # task ARN or job id
    record_id: str | None  # the aws-reconciler:id tag
    deployment: str | None  # the aws-reconciler:deployment tag
    started_by: str | None  # ECS startedBy (Batch has none)
    attempt: int | None  # from the clientToken <id>-<attempt> or the job name af-<id>-<attempt>
    role: str | None  # ROLE_TAG: what the suite launched itself
    created: float
    stopped: float | None  # None while it lives
    ran: bool  # its container started
    exit_code: int | None
    stopped_on_request: bool  # StopTask, TerminateJob or CancelJob ended it
    reason: str | None

    @property
    def live(self) -> bool:
        """Not stopped yet (any state before STOPPED / SUCCEEDED / FAILED)."""
        return self.stopped is None

    def owned_by(self, deployment: str) -> bool:
        """Whether the reconciler of ``deployment`` may act on it (its identity rule)."""
        if self.deployment != deployment or self.record_id is None:
            return False
        return self.backend == "batch" or self.started_by == deployment

    def overlaps(self, other: Launched) -> bool:
        """Both were alive at some moment."""
        end = self.stopped if self.stopped is not None else float("inf")
        other_end = other.stopped if other.stopped is not None else float("inf")
        return self.created < other_end and other.created < end


def _epoch(value: Any) -> float | None:
    """ISO-8601 (ECS snapshots) or epoch milliseconds (Batch) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0
    return datetime.fromisoformat(str(value)).timestamp()


def _attempt(token: str | None, record_id: str | None) -> int | None:
    if not token or not record_id or not token.startswith(f"{record_id}-"):
        return None
    tail = token[len(record_id) + 1 :]
    return int(tail) if tail.isdigit() else None


def from_ecs_task(task: Mapping[str, Any]) -> Launched:
    """One entry of the control API's ``tasks``."""
    tags = dict(task.get("tags") or {})
    record_id = tags.get(ID_TAG)
    created = _epoch(task.get("createdAt")) or 0.0
    stopped = None
    if task.get("lastStatus") == "STOPPED":
        stopped = _epoch(task.get("stoppedAt")) or created
    containers = task.get("containers") or []
    exit_code = containers[0].get("exitCode") if containers else None
    return Launched(
        backend="ecs",
        external_id=str(task["arn"]),
        record_id=record_id,
        deployment=tags.get(DEPLOYMENT_TAG),
        started_by=task.get("startedBy"),
        attempt=_attempt(task.get("clientToken"), record_id),
        role=tags.get(ROLE_TAG),
        created=created,
        stopped=stopped,
        ran=task.get("startedAt") is not None,
        exit_code=exit_code if stopped is not None else None,
        stopped_on_request=task.get("stopCode") == "UserInitiated",
        reason=task.get("stoppedReason"),
    )


def from_batch_job(job: Mapping[str, Any]) -> Launched:
    """One entry of the control API's ``jobs``."""
    tags = dict(job.get("tags") or {})
    record_id = tags.get(ID_TAG)
    match = _JOB_NAME.match(str(job.get("jobName", "")))
    attempt = int(match["attempt"]) if match and match["id"] == record_id else None
    created = _epoch(job.get("createdAt")) or 0.0
    stopped = None
    if job.get("status") in _FINISHED_JOB:
        stopped = _epoch(job.get("stoppedAt")) or created
    container = job.get("container") or {}
    return Launched(
        backend="batch",
        external_id=str(job["jobId"]),
        record_id=record_id,
        deployment=tags.get(DEPLOYMENT_TAG),
        started_by=None,
        attempt=attempt,
        role=tags.get(ROLE_TAG),
        created=created,
        stopped=stopped,
        ran=job.get("startedAt") is not None,
        exit_code=container.get("exitCode") if stopped is not None else None,
        stopped_on_request=bool(job.get("isCancelled") or job.get("isTerminated")),
        reason=job.get("statusReason"),
    )


def launched(tasks: Iterable[Mapping[str, Any]], jobs: Iterable[Mapping[str, Any]]) -> list[Launched]:
    """Every task and job of two control-API snapshots."""
    return [*map(from_ecs_task, tasks), *map(from_batch_job, jobs)]
