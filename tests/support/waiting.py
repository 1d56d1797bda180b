"""Waiting on conditions with deadlines: the only way the tests wait for another process or thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE = 30.0


def wait_for(condition: Callable[[], T | None], *, what: str, timeout: float = DEADLINE, every: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after ``timeout`` s.

    ``what`` names the awaited state in the failure ("the sandbox's env file"), so a timeout says
    what never happened rather than only that something did not.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
