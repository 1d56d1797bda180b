"""What every backend offers the reconciler, and what it reports back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ..model import Backend, Phase


@dataclass(frozen=True)
class Stuck:
    """A task/job that will not make progress by itself: the reconciler stops it and fails its row.

    ``code`` is a short, low-cardinality metric label (``runnable_timeout``); ``reason`` is what
    the Airflow user reads as the task's failure.
    """

    code: str
    reason: str


@dataclass(frozen=True)
class Observation:
    """What AWS says about one task/job, already mapped to our phases."""

    external_id: str
    target: str | None
    phase: Phase
    record_id: str | None = None  # from our identity tag, when the tags were fetched
    owned: bool = False  # carries this deployment's tag (and startedBy, on ECS)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    stop_code: str | None = None
    reason: str | None = None
    # Stopped before its container ran the task: safe to launch again.
    never_started: bool = False
    # AWS no longer knows the task (stopped long ago, or never existed).
    missing: bool = False
    raw_status: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    # Not finished, but past the backend's patience (a Batch job RUNNABLE for too long).
    stuck: Stuck | None = None


class TaskBackend(Protocol):
    """Launch / observe / discover / stop for one AWS service. Errors are classified
    (:mod:`.errors`): :class:`RetriableError` or :class:`TerminalError`."""

    kind: Backend

    def launch(self, *, record_id: str, attempt: int, spec: Mapping[str, Any]) -> str:
        """Start attempt ``attempt`` of a record idempotently; returns the external id."""
        ...

    def observe(self, *, targets: Mapping[str, str | None]) -> dict[str, Observation]:
        """Describe the given external ids (mapped to their cluster/queue)."""
        ...

    def discover(self) -> list[Observation]:
        """Every task/job this deployment owns on AWS, with tags."""
        ...

    def stop(self, *, external_id: str, target: str | None, reason: str) -> None:
        """Ask AWS to stop the task/job."""
        ...


def batched(items: Sequence[str], size: int) -> list[Sequence[str]]:
    """Split ids into AWS-sized batches (DescribeTasks / DescribeJobs take 100)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
