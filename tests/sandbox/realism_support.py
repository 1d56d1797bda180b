"""A clock and a sleep for driving the sandbox's realism by hand (``SandboxServer(clock=, sleep=)``)."""

from __future__ import annotations

import threading


class ManualClock:
    """Monotonic seconds that move only when ``advance`` says so."""

    def __init__(self) -> None:
        self._now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class RecordingSleep:
    """Records every wait the sandbox asks for. Latency-sized waits return at once; a wait of
    ``blocking`` seconds or more (a held answer) lasts until ``release``, so that a client with a
    shorter read timeout really gives up first."""

    def __init__(self, blocking: float = 1.0) -> None:
        self.blocking = blocking
        self.waits: list[float] = []
        self._lock = threading.Lock()
        self._released = threading.Event()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
        if seconds >= self.blocking:
            self._released.wait(seconds)

    def clear(self) -> None:
        with self._lock:
            self.waits.clear()

    def release(self) -> None:
        self._released.set()
