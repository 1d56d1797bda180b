"""Exponential backoff with full jitter, so rows that failed together do not retry together."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(*, attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [base/2, min(cap, base*2**(attempt-1))]."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    floor = min(base / 2, ceiling)
    return floor + (ceiling - floor) * rng()


def grown_delay(*, previous: float, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Delay of a retry that keeps no count, grown from the ``previous`` delay.

    An ambiguous launch is retried with the same attempt number, so ``attempt`` cannot say how
    often it was retried; the previous delay (stored as ``next_attempt_at - updated_at``) can.
    The first delay (``previous`` 0) is :func:`backoff_delay`'s first; each later one is uniform
    in [2 * previous, 4 * previous], within [base, cap]: at least doubled whatever the jitter drew.
    """
    if previous <= 0:
        return backoff_delay(attempt=1, base=base, cap=cap, rng=rng)
    low = min(cap, max(base, 2 * previous))
    high = min(cap, 2 * low)
    return low + (high - low) * rng()
