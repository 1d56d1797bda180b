"""What every backend offers the reconciler, and what it reports back."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..model import Backend, Phase
from .errors import AwsError


@dataclass(frozen=True)
class Stuck:
    """A task/job that will not make progress by itself: the reconciler stops it and fails its row.

    ``code`` is a short, low-cardinality metric label (``runnable_timeout``); ``reason`` is what
    the Airflow user reads as the task's failure.
    """

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
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
    # Not finished, but past the backend's patience (a Batch job RUNNABLE for too long).
    stuck: Stuck | None = None
    # When AWS created the task/job (its own clock): an orphan's grace counts from here, so it
    # survives restarts of the reconciler.
    created_at: datetime | None = None
    # ECS numbers every change of a task (``version``, in DescribeTasks and in its events): of two
    # reports of one task the higher version is the newer. None where the service has no such number.
    version: int | None = None


@dataclass(frozen=True)
class Observed:
    """One observe pass: what each answered batch said, and the errors of batches that failed.

    The ids of a failed batch are simply absent: nothing is known about them this cycle, which is
    not the same as AWS not knowing them (``Observation.missing``).
    """

    observations: dict[str, Observation]
    errors: tuple[AwsError, ...] = ()


class TaskBackend(Protocol):
    """Launch / observe / discover / stop for one AWS service. Errors are classified
    (:mod:`.errors`): :class:`RetriableError` or :class:`TerminalError`."""

    kind: Backend
    #: Seconds after a launch that may have reached AWS (lost answer, crash) before launching
    #: the same attempt again is safe: 0 where AWS deduplicates (ECS clientToken), the time a
    #: lookup needs to see a new job where the backend looks it up first (Batch).
    relaunch_delay: float

    def launch(
        self, *, record_id: str, attempt: int, spec: Mapping[str, Any], in_time: Callable[[], bool] | None = None
    ) -> str:
        """Start attempt ``attempt`` of a record idempotently; returns the external id.

        ``in_time``: checked right before the request is sent (after every rate-limit wait); once
        it says no, nothing is sent and :class:`~.calls.TooLate` is raised."""
        ...

    def observe(self, *, targets: Mapping[str, str | None]) -> Observed:
        """Describe the given external ids (mapped to their cluster/queue), batch by batch: a
        failed batch is reported in ``errors`` and the others still count."""
        ...

    def discover(self) -> list[Observation]:
        """Every task/job this deployment owns on AWS, with tags."""
        ...

    def stop(self, *, external_id: str, target: str | None, reason: str) -> None:
        """Ask AWS to stop the task/job."""
        ...

    def launch_capacity(self, *, within: float) -> int:
        """Launches the client-side buckets let through in the next ``within`` seconds."""
        ...

    def observe_event(self, detail: Mapping[str, Any]) -> Observation:
        """What one state-change event (the ``detail`` of an EventBridge event of this service) says,
        mapped exactly as a describe of the same task/job would be; ``KeyError``/``ValueError``
        when it is not such a detail."""
        ...


def batched(items: Sequence[str], size: int) -> list[Sequence[str]]:
    """Split ids into AWS-sized batches (DescribeTasks / DescribeJobs take 100)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
