"""Exponential backoff with full jitter, so rows that failed together do not retry together."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(*, attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [base/2, min(cap, base*2**(attempt-1))]."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    floor = min(base / 2, ceiling)
    return floor + (ceiling - floor) * rng()
