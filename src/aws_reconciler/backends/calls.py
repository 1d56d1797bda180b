"""One AWS call through a rate-limit bucket, with classification and fencing.

Shared by every backend so throttling, error classification and the leadership check behave
the same for ECS and Batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import Outcome, classify
from .ratelimit import TokenBucket

T = TypeVar("T")


class NotLeader(Exception):
    """The replica lost its lease while waiting for a rate-limit token: the call was not made.

    Checked *after* the bucket wait, because that wait can last seconds: a check before it
    would let a fenced ex-leader launch or stop tasks once its turn came.
    """


class TooLate(Exception):
    """A launch's deadline passed while it waited for a rate-limit token: the call was not made.

    Checked after the bucket wait for the same reason as :class:`NotLeader`: the workload token
    must still be valid, with a margin, when the call leaves, not when it was queued.
    """


def always() -> bool:
    """The default ``may_act``: a backend used without leader election always acts."""
    return True


class Caller:
    """Makes calls for one backend: wait for a token, check leadership for changes, classify errors."""

    def __init__(self, *, throttle_pause: float = 1.0, may_act: Callable[[], bool] = always) -> None:
        self.throttle_pause = throttle_pause
        self.may_act = may_act

    def __call__(
        self,
        bucket: TokenBucket,
        fn: Callable[..., T],
        *,
        mutating: bool = False,
        in_time: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> T:
        """Call ``fn(**kwargs)``; ``mutating`` calls (launch, stop) are fenced by ``may_act``, and
        a call with ``in_time`` is not made once that says its deadline has passed."""
        bucket.acquire()
        if mutating and not self.may_act():
            raise NotLeader(f"not the active reconciler any more: {getattr(fn, '__name__', 'call')} not sent")
        if in_time is not None and not in_time():
            raise TooLate(f"{getattr(fn, '__name__', 'call')} not sent: its deadline passed while it waited")
        try:
            return fn(**kwargs)
        except Exception as exc:
            error = classify(exc)
            if error.outcome is Outcome.THROTTLED:
                # Slow every caller of this bucket, not only the one AWS refused.
                bucket.penalize(self.throttle_pause)
            raise error from exc
