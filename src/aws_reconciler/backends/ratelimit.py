"""Client-side token buckets shaped like AWS's own API buckets.

Staying under AWS's sustained rates avoids throttling storms; when AWS throttles anyway, the
bucket is drained and paused so every caller slows down, not just the one that was refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Thread-safe token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        # Waiters queue here one at a time: without it every blocked thread wakes for each token.
        self._turn = threading.Lock()

    def _refill(self, now: float) -> None:
        if now < self._paused_until:
            self._updated = now
            return
        start = max(self._updated, self._paused_until)
        self._tokens = min(float(self.burst), self._tokens + (now - start) * self.rate)
        self._updated = now

    def try_acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` if available and return 0, else return the seconds to wait first."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if now < self._paused_until:
                return self._paused_until - now + max(0.0, tokens - self._tokens) / self.rate
            # The epsilon absorbs float rounding, which could otherwise ask for a wait so small
            # that adding it to the clock changes nothing, forever.
            if self._tokens >= tokens - 1e-9:
                self._tokens = max(0.0, self._tokens - tokens)
                return 0.0
            return (tokens - self._tokens) / self.rate

    def capacity(self, within: float) -> int:
        """Calls this bucket lets through in the next ``within`` seconds (tokens now plus refill,
        nothing while paused): what a cycle can send without queueing past its interval."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            refilling = max(0.0, within - max(0.0, self._paused_until - now))
            return int(self._tokens + refilling * self.rate + 1e-9)

    def acquire(self, tokens: float = 1.0) -> float:
        """Block until ``tokens`` are taken; returns the seconds spent waiting."""
        waited = 0.0
        with self._turn:
            while True:
                wait = self.try_acquire(tokens)
                if wait <= 0:
                    return waited
                self._sleep(wait)
                waited += wait

    def penalize(self, seconds: float) -> None:
        """AWS throttled us: empty the bucket and pause it for ``seconds``."""
        with self._lock:
            now = self._clock()
            self._tokens = 0.0
            self._paused_until = max(self._paused_until, now + seconds)
            self._updated = now
