"""The task record as plain typed values, independent of SQLAlchemy rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """Lifecycle of one queueing of a task instance (see DESIGN.md)."""

    PENDING = "pending"  # wants a launch, at `next_attempt_at`
    LAUNCHING = "launching"  # attempt `attempt` may have reached AWS: relaunch only idempotently
    PROVISIONING = "provisioning"  # AWS accepted it; container not running yet
    RUNNING = "running"
    STOPPING = "stopping"  # we asked AWS to stop it
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """No further work happens on AWS for a row in this phase."""
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Desired(StrEnum):
    """What Airflow wants of the row."""

    RUNNING = "running"
    STOPPED = "stopped"


class Backend(StrEnum):
    """Which AWS service runs the row."""

    ECS = "ecs"
    BATCH = "batch"


@dataclass(frozen=True, order=True)
class TiKey:
    """Airflow's task-instance key, stored as columns so rows are found without Airflow."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int

    def as_tuple(self) -> tuple[str, str, str, int, int]:
        """The key in column order."""
        return (self.dag_id, self.task_id, self.run_id, self.map_index, self.try_number)


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
