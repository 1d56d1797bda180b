"""Leader election with fencing, run in its own thread so long cycles cannot starve renewals.

A replica acts only while its last successful renewal is younger than ``renew_deadline``,
which is shorter than ``lease_duration``: an ex-leader stops acting before anyone else can
acquire the expired lease (controller-runtime's rule).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from ..model import utcnow
from ..store.lease import LeaseStore

log = logging.getLogger(__name__)


class LeaderElector:
    """Keeps trying to hold the lease ``name`` as ``holder``."""

    def __init__(
        self,
        *,
        leases: LeaseStore,
        name: str,
        holder: str,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.name = name
        self.holder = holder
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock = clock
        self._monotonic = monotonic
        self._renewed_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current_holder: str | None = None
        self.last_error: str | None = None

    def try_once(self) -> bool:
        """One acquire-or-renew round; returns whether we hold the lease now."""
        started = self._monotonic()
        try:
            state = self.leases.acquire_or_renew(
                name=self.name, holder=self.holder, now=self._clock(), duration=self.lease_duration
            )
        except Exception as exc:
            self.last_error = f"lease store unreachable: {type(exc).__name__}"
            log.warning("lease renewal failed: %s", self.last_error)
            return self.is_leader()
        self.last_error = None
        self.current_holder = state.holder
        was_leader = self._renewed_at is not None
        # Count from before the call: the lease was written no earlier than that.
        self._renewed_at = started if state.held else None
        if state.held and not was_leader:
            log.info("became the active reconciler (lease %s)", self.name)
        elif was_leader and not state.held:
            log.warning("lost the lease %s to %s", self.name, state.holder)
        return state.held

    def is_leader(self) -> bool:
        """True only while the last successful renewal is within ``renew_deadline`` (fencing)."""
        renewed = self._renewed_at
        return renewed is not None and self._monotonic() - renewed < self.renew_deadline

    def start(self) -> None:
        """Renew every ``retry_period`` in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.try_once()
            self._stop.wait(self.retry_period)

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; release the lease so a standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_period + 5)
        if release and self._renewed_at is not None:
            try:
                self.leases.release(name=self.name, holder=self.holder, now=self._clock())
            except Exception as exc:
                log.warning("could not release the lease: %s", type(exc).__name__)
        self._renewed_at = None
