"""Planned faults and call counting: what tests use to make the fake AWS misbehave and to watch it.

``FaultPlan`` holds faults a test asks for, consumed in order; ``realism.Realism`` draws faults at
random. Both say what to do to a request with a ``Decision``, which ``SandboxApp`` carries out.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DEFAULT_START_FAILURE", "CallCounter", "Decision", "ErrorAnswer", "FaultPlan", "InjectedError"]

#: What ``fail_next_start`` reports unless told otherwise: Fargate's wording for a failed pull.
DEFAULT_START_FAILURE = "CannotPullContainerError: pull image manifest has been retried 5 time(s)"


@dataclass(frozen=True)
class ErrorAnswer:
    """An AWS error to answer with: botocore raises ``ClientError`` with ``code``."""

    code: str
    message: str
    status: int = 400


@dataclass(frozen=True)
class Decision:
    """What happens to one AWS request, in order: wait ``delay`` seconds; close the connection
    without an answer (``reset``); execute the operation (``execute``); wait ``hold`` seconds;
    answer ``error`` instead of the operation's response. The default lets the request through."""

    delay: float = 0.0
    error: ErrorAnswer | None = None
    execute: bool = True
    hold: float = 0.0
    reset: bool = False

    def __post_init__(self) -> None:
        if not self.execute and self.error is None and not self.reset:
            raise ValueError("a request that is not executed needs an error to answer or a reset")


def _check_times(times: int | None) -> None:
    if times is not None and times < 1:
        raise ValueError("times must be >= 1, or None for 'until cleared'")


@dataclass
class InjectedError:
    """One planned error answer for an operation.

    ``operation`` is ``"RunTask"`` (any service) or ``"ecs:RunTask"`` (one service).
    ``remaining`` is how many more requests it answers; ``None`` means every request until cleared.
    With ``phantom`` the request is executed and only the answer is replaced: the caller cannot
    tell whether it happened, like a response lost on the network after AWS acted on it.
    """

    operation: str
    code: str
    message: str
    status: int = 400
    remaining: int | None = 1
    phantom: bool = False

    def __post_init__(self) -> None:
        _check_times(self.remaining)
        if not self.operation or not self.code:
            raise ValueError("operation and code are required")
        if not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")

    def decision(self) -> Decision:
        """This error as a ``Decision``: answered instead of the response, executed if phantom."""
        return Decision(error=ErrorAnswer(self.code, self.message, self.status), execute=self.phantom)

    def matches(self, service: str, operation: str) -> bool:
        """Whether this error applies to ``service:operation``."""
        if ":" in self.operation:
            return self.operation == f"{service}:{operation}"
        return self.operation == operation


@dataclass
class _PlannedFailure:
    reason: str
    remaining: int | None


class FaultPlan:
    """Planned faults, consumed first-in first-out as matching requests arrive. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: list[InjectedError] = []
        self._run_task_failures: list[_PlannedFailure] = []
        self._start_failures: list[_PlannedFailure] = []
        self._runnable_holds: list[_PlannedFailure] = []

    def inject_error(self, error: InjectedError) -> None:
        """Answer the next ``error.remaining`` requests of ``error.operation`` with ``error``."""
        with self._lock:
            self._errors.append(error)

    def fail_run_task(self, *, reason: str = "RESOURCE:MEMORY", times: int | None = 1) -> None:
        """Make the next ``times`` RunTask calls launch nothing and report ``failures``."""
        _check_times(times)
        with self._lock:
            self._run_task_failures.append(_PlannedFailure(reason, times))

    def fail_next_start(self, *, reason: str, times: int | None = 1) -> None:
        """Make the next ``times`` tasks launched fail to start (``TaskFailedToStart``) with ``reason``.

        Consumed by the task runner, one per task, in launch order.
        """
        _check_times(times)
        if not reason:
            raise ValueError("reason is required")
        with self._lock:
            self._start_failures.append(_PlannedFailure(reason, times))

    def hold_runnable(self, *, times: int | None = 1) -> None:
        """Keep the next ``times`` Batch jobs submitted in RUNNABLE, as a queue without capacity.

        Consumed by the task runner, one per job, in submission order.
        """
        _check_times(times)
        with self._lock:
            self._runnable_holds.append(_PlannedFailure("RUNNABLE", times))

    def take_error(self, service: str, operation: str) -> InjectedError | None:
        """Consume one use of the first error planned for this operation, if any."""
        with self._lock:
            for planned in self._errors:
                if planned.matches(service, operation):
                    if planned.remaining is not None:
                        planned.remaining -= 1
                        if planned.remaining == 0:
                            self._errors.remove(planned)
                    return planned
        return None

    def take_run_task_failure(self) -> str | None:
        """Consume one planned RunTask failure and return its reason, if any is planned."""
        return self._take(self._run_task_failures)

    def take_start_failure(self) -> str | None:
        """Consume one planned start failure and return its reason, if any is planned."""
        return self._take(self._start_failures)

    def take_runnable_hold(self) -> str | None:
        """Consume one planned RUNNABLE hold; not None if one was planned."""
        return self._take(self._runnable_holds)

    def _take(self, planned: list[_PlannedFailure]) -> str | None:
        with self._lock:
            if not planned:
                return None
            entry = planned[0]
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining == 0:
                    planned.pop(0)
            return entry.reason

    def pending(self) -> dict[str, Any]:
        """What is still planned (for the control API and for debugging a test)."""
        with self._lock:
            return {
                "errors": [asdict(e) for e in self._errors],
                "run_task_failures": [asdict(f) for f in self._run_task_failures],
                "start_failures": [asdict(f) for f in self._start_failures],
                "runnable_holds": [asdict(f) for f in self._runnable_holds],
            }

    def clear(self) -> None:
        """Forget every planned fault."""
        with self._lock:
            self._errors.clear()
            self._run_task_failures.clear()
            self._start_failures.clear()
            self._runnable_holds.clear()


class CallCounter:
    """Counts requests by ``service:Operation``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str) -> None:
        """Count one request."""
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._counts.clear()
