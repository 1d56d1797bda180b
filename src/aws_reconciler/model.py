"""Domain value types every part shares, and the clock.

A leaf: it imports nothing of the project, so backends, the store, the executor and the
reconciler can all speak of phases and task-instance keys without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

Clock = Callable[[], datetime]
"""What every time-dependent part takes instead of reading the wall clock itself."""


def utcnow() -> datetime:
    """The default clock: this process's wall clock, in UTC."""
    return datetime.now(UTC)


#: A JWT (Airflow's workload token is one): three base64url parts, the first two JSON ("eyJ").
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def redact_tokens(text: str) -> str:
    """``text`` with anything shaped like a JWT replaced by ``***``.

    For free text that may echo a request (AWS's error messages, a database's "failing row"
    detail) on its way into a reason, a log line or an error message.
    """
    return JWT_PATTERN.sub("***", text)


class Phase(StrEnum):
    """Lifecycle of one queueing of a task instance (see DESIGN.md)."""

    PENDING = "pending"  # wants a launch, at `next_attempt_at`
    LAUNCHING = "launching"  # attempt `attempt` may have reached AWS: relaunch only idempotently
    PROVISIONING = "provisioning"  # AWS accepted it; container not running yet
    RUNNING = "running"
    STOPPING = "stopping"  # we asked AWS to stop it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Airflow stopped wanting the try (revoke_task, cleared while running, a newer queueing of the
    # same try): neither a success nor a failure of the task, so counted apart from both.
    REVOKED = "revoked"

    @property
    def terminal(self) -> bool:
        """No further work happens on AWS for a row in this phase."""
        return self in TERMINAL

    @property
    def waiting_for_launch(self) -> bool:
        """The row wants a launch (or may have reached AWS and must be relaunched idempotently)."""
        return self in WAITING_FOR_LAUNCH

    @property
    def on_aws(self) -> bool:
        """AWS has the task or job: the reconciler observes it."""
        return self in ON_AWS


TERMINAL = (Phase.SUCCEEDED, Phase.FAILED, Phase.REVOKED)
WAITING_FOR_LAUNCH = (Phase.PENDING, Phase.LAUNCHING)
ON_AWS = (Phase.PROVISIONING, Phase.RUNNING, Phase.STOPPING)


class Desired(StrEnum):
    """What Airflow wants of the row."""

    RUNNING = "running"
    STOPPED = "stopped"


class Backend(StrEnum):
    """Which AWS service runs the row."""

    ECS = "ecs"
    BATCH = "batch"


class WorkloadKind(StrEnum):
    """What Airflow asked the executor to run: what a row's key means and how its end is reported."""

    #: A task instance (``ExecuteTask``): the key is Airflow's TaskInstanceKey; its outcome is
    #: what the task reported through the Execution API, not the container's exit code.
    TASK = "task"
    #: An executor callback (``ExecuteCallback``, e.g. a deadline alert): the key is the callback
    #: id; the container's exit code is the outcome (Airflow's callback supervisor exits non-zero
    #: when the callback raised).
    CALLBACK = "callback"
    #: A connection test (``TestConnection``): the container reports the result to the API
    #: server itself; the executor only frees the slot.
    CONNECTION_TEST = "connection_test"


@dataclass(frozen=True, order=True, slots=True)
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
