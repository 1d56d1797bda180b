"""Scenario harness pieces shared by the ECS and Batch reconciler scenarios (no fixtures here)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class FakeClock:
    """A settable UTC clock shared by the engine, the backend, the store and the lease; thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC).replace(microsecond=0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds``; returns the new time."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, when: datetime) -> None:
        """Jump forward to ``when``."""
        with self._lock:
            assert when >= self._now, "the fake clock only moves forward"
            self._now = when


class Crash(BaseException):
    """The process dies here (not an error the engine may contain)."""
