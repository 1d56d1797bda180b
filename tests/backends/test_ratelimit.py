"""Token buckets with an injected clock: rate, burst and throttling penalties."""

from __future__ import annotations

import pytest

from aws_reconciler.backends.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_then_sustained_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(rate=40, burst=100, clock=t.clock, sleep=t.sleep)
    for _ in range(100):
        assert bucket.acquire() == 0
    for _ in range(40):
        bucket.acquire()
    # 140 calls: 100 from the burst, 40 more need one second at 40/s.
    assert t.now == pytest.approx(1.0)


def test_penalize_pauses_every_caller() -> None:
    t = FakeTime()
    bucket = TokenBucket(rate=10, burst=10, clock=t.clock, sleep=t.sleep)
    bucket.penalize(2.0)
    assert bucket.try_acquire() == pytest.approx(2.1)
    bucket.acquire()
    assert t.now >= 2.0


def test_refill_is_capped_at_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(rate=5, burst=3, clock=t.clock, sleep=t.sleep)
    t.now = 1000
    for _ in range(3):
        assert bucket.try_acquire() == 0
    assert bucket.try_acquire() == pytest.approx(0.2)


def test_invalid_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0, burst=1)
