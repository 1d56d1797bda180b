"""End-to-end tests: each module starts its own local stack (see ``aws_reconciler_sandbox.demo.stack``).

They need PostgreSQL (``AWS_RECONCILER_TEST_DATABASE_URL``) and skip without it, unless
``AWS_RECONCILER_REQUIRE_POSTGRES=1``. Run them alone with ``pytest -m e2e``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest


@pytest.fixture(scope="session", autouse=True)
def _sigterm_tears_down() -> Iterator[None]:
    """A SIGTERM (CI cancelling the job, ``timeout``) becomes a KeyboardInterrupt, on which pytest
    still runs the fixtures' teardown: every stack stops its processes and drops its database."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
