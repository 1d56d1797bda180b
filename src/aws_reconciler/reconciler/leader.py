"""Leader election with fencing, run in its own thread so long cycles cannot starve renewals.

A replica acts only while its last successful renewal is younger than ``renew_deadline``,
which is shorter than ``lease_duration``: an ex-leader stops acting before anyone else can
acquire the expired lease (controller-runtime's rule). The renewal is timed on this process's
monotonic clock from *before* the renewal was sent, and the lease's expiry is the database's
clock, so neither a skewed nor a jumping wall clock can make two replicas act at once. Every
AWS call that changes something checks :meth:`LeaderElector.is_leader` right before it is sent
and is bounded by ``aws_call_timeout``; since ``renew_deadline + aws_call_timeout <
lease_duration``, it has landed before a successor can hold the lease. Store writes carry a
:class:`~aws_reconciler.store.lease.Fence` on top.

Takeover bound: a standby tries every ``retry_period`` and acquires once the lease has expired,
so after a leader dies without releasing (SIGKILL, node loss) the standby leads at most
``lease_duration + retry_period`` after the dead leader's last renewal. On SIGTERM the leader
releases the lease and the standby takes over at its next try (within ``retry_period``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..store.lease import Fence, LeaseStore

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
        monotonic: Callable[[], float] = time.monotonic,
        on_acquired: Callable[[], None] | None = None,
    ) -> None:
        self.leases = leases
        self.name = name
        self.holder = holder
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._monotonic = monotonic
        # Called from the lease thread when this replica becomes the leader (wakes the loop).
        self.on_acquired = on_acquired
        self._renewed_at: float | None = None
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current_holder: str | None = None
        self.last_error: str | None = None

    def try_once(self) -> bool:
        """One acquire-or-renew round; returns whether we hold the lease now."""
        started = self._monotonic()
        try:
            state = self.leases.acquire_or_renew(name=self.name, holder=self.holder, duration=self.lease_duration)
        except Exception as exc:
            self.last_error = f"lease store unreachable: {type(exc).__name__}"
            log.warning("lease renewal failed: %s", self.last_error)
            return self.is_leader()
        self.last_error = None
        self.current_holder = state.holder
        was_leader = self._renewed_at is not None
        # Count from before the call: the lease was written no earlier than that.
        self._renewed_at = started if state.held else None
        self._generation = state.generation if state.held else None
        if state.held and not was_leader:
            log.info("became the active reconciler (lease %s, generation %s)", self.name, state.generation)
            if self.on_acquired is not None:
                self.on_acquired()
        elif was_leader and not state.held:
            log.warning("lost the lease %s to %s", self.name, state.holder)
        return state.held

    def is_leader(self) -> bool:
        """True only while the last successful renewal is within ``renew_deadline`` (fencing)."""
        renewed = self._renewed_at
        return renewed is not None and self._monotonic() - renewed < self.renew_deadline

    def fence(self) -> Fence | None:
        """The fence store writes must carry while leading; ``None`` when not leading (write nothing)."""
        generation = self._generation
        if generation is None or not self.is_leader():
            return None
        return Fence(name=self.name, holder=self.holder, generation=generation)

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
                if self.leases.release(name=self.name, holder=self.holder):
                    log.info("released the lease %s: a standby may take over at once", self.name)
            except Exception as exc:
                log.warning("could not release the lease %s: %s", self.name, type(exc).__name__)
        self._renewed_at = None
        self._generation = None
