"""Fencing is checked after the rate-limit wait, right before a launch or stop is sent."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from aws_reconciler.backends.calls import Caller, NotLeader
from aws_reconciler.backends.errors import Outcome, RetriableError
from aws_reconciler.backends.ratelimit import TokenBucket


class LeaseLostWhileWaiting(TokenBucket):
    """A bucket whose wait outlasts the lease: leadership is lost during acquire()."""

    def __init__(self, leader: dict[str, bool]) -> None:
        super().__init__(rate=1, burst=1)
        self.leader = leader

    def acquire(self, tokens: float = 1.0) -> float:
        self.leader["now"] = False
        return 0.0


def test_a_mutating_call_is_not_sent_after_losing_the_lease_in_the_wait() -> None:
    leader = {"now": True}
    caller = Caller(may_act=lambda: leader["now"])
    sent: list[str] = []
    with pytest.raises(NotLeader):
        caller(LeaseLostWhileWaiting(leader), lambda **kw: sent.append("RunTask"), mutating=True)
    assert sent == []
    # Reads are still allowed: a standby may describe, it never launches or stops.
    assert caller(LeaseLostWhileWaiting(leader), lambda **kw: "described") == "described"


def test_throttling_is_classified_and_pauses_the_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=10)
    caller = Caller(throttle_pause=5.0)

    def throttled(**_: object) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "RunTask")

    with pytest.raises(RetriableError) as info:
        caller(bucket, throttled, mutating=True)
    assert info.value.outcome is Outcome.THROTTLED
    assert bucket.try_acquire() > 4.0  # every caller of the bucket now waits
