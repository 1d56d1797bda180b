"""Simulated network latency: a fixed delay before every AWS request this process sends.

The sandbox answers in milliseconds from localhost; AWS answers from across a network. With a
delay, a launcher that calls RunTask one at a time is bound by latency, and one that keeps
several calls in flight is bound by its rate limits. The delay is a ``time.sleep`` (it releases
the GIL, like waiting on a socket) in botocore's ``Endpoint._send``, which every client of both
executors goes through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.endpoint import Endpoint


@contextmanager
def added_latency(seconds: float) -> Iterator[None]:
    """Delay every AWS request by ``seconds`` while the block runs (no-op for 0)."""
    if seconds <= 0:
        yield
        return
    original = Endpoint._send

    def delayed(self: Endpoint, request: Any) -> Any:
        time.sleep(seconds)
        return original(self, request)

    setattr(Endpoint, "_send", delayed)  # noqa: B010 (a method patched for the block only)
    try:
        yield
    finally:
        setattr(Endpoint, "_send", original)  # noqa: B010
