"""The task record as plain typed values, independent of SQLAlchemy rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..model import Backend, Desired, Phase, TiKey, WorkloadKind


@dataclass(frozen=True)
class NewTask:
    """A row the executor inserts when Airflow queues a workload."""

    id: str
    backend: Backend
    owner: str | None
    key: TiKey
    queue: str | None
    target: str | None
    spec: dict[str, Any] | None
    phase: Phase = Phase.PENDING
    status_reason: str | None = None
    # The workload token's `exp` (see :func:`aws_reconciler.executor.workload.token_expiry`).
    token_expires_at: datetime | None = None
    # What ``key`` is: a task instance's, or the one Airflow gave a callback / connection test.
    kind: WorkloadKind = WorkloadKind.TASK
    # Airflow's relative task log path of the try (``workload.log_path``).
    log_path: str | None = None
    # The sealed workload token (see :mod:`.sealing`); ``spec`` holds a placeholder in its place.
    workload_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One stored row. ``spec`` is only loaded when a launch needs it (it is the largest column)."""

    id: str
    backend: Backend
    owner: str | None
    key: TiKey
    queue: str | None
    target: str | None
    desired: Desired
    phase: Phase
    external_id: str | None
    attempt: int
    next_attempt_at: datetime | None
    last_error: str | None
    exit_code: int | None
    stop_code: str | None
    status_reason: str | None
    created_at: datetime
    launched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    reported_at: datetime | None
    updated_at: datetime
    #: When the workload token expires (its own ``exp``); ``None`` when it had no readable ``exp``.
    #: Compare it with :meth:`TaskStore.database_now`, never with a local clock.
    token_expires_at: datetime | None = None
    #: Set once a newer queueing of the same TI key was recorded: this row is no longer wanted.
    superseded_at: datetime | None = None
    #: Airflow's state of the try when the executor reported the row.
    ti_state: str | None = None
    #: What ``key`` is (a task instance's unless this is a callback or connection test row).
    kind: WorkloadKind = WorkloadKind.TASK
    #: Airflow's team of the executor that wrote the row; ``None`` outside multi-team deployments.
    team: str | None = None
    #: Airflow's relative task log path of the try, when the executor knew it.
    log_path: str | None = None
    spec: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def open(self) -> bool:
        """The reconciler still has work to do for this row."""
        return not self.phase.terminal

    @property
    def launched(self) -> bool:
        """A launch of this row may have reached AWS (anything ran, or could have)."""
        return self.launched_at is not None or self.external_id is not None

    def token_seconds_left(self, now: datetime) -> float | None:
        """Seconds until the workload token expires at ``now`` (database time); ``None`` if unknown."""
        if self.token_expires_at is None:
            return None
        return (self.token_expires_at - now).total_seconds()


@dataclass(frozen=True)
class Report:
    """What the executor records about a row once it has told Airflow (or decided not to tell it).

    ``phase``/``status_reason``: the truthful terminal phase, when Airflow's verdict on the try
    contradicts what the container did (a task Airflow cleared while it ran exits 0 all the same).
    """

    id: str
    ti_state: str | None = None
    phase: Phase | None = None
    status_reason: str | None = None


@dataclass(frozen=True)
class Change:
    """One compare-and-set for :meth:`~.tasks.TaskStore.transitions`: ``values`` are written to
    row ``record_id`` only while it is in one of ``expect_phases`` (and at ``expect_attempt``)."""

    record_id: str
    expect_phases: tuple[Phase, ...]
    values: Mapping[str, Any]
    expect_attempt: int | None = None
