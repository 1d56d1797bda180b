"""The task record as plain typed values, independent of SQLAlchemy rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..model import Backend, Desired, Phase, TiKey


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


@dataclass(frozen=True)
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
    spec: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def open(self) -> bool:
        """The reconciler still has work to do for this row."""
        return not self.phase.terminal
