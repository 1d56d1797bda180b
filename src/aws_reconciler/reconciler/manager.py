"""The reconciler process: leader election, the cycle loop, wake-ups, backoff and shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..metrics.definitions import Metrics
from ..metrics.server import HealthStatus
from ..store.notify import Waker
from .backoff import backoff_delay
from .controller import Controller
from .leader import LeaderElector
from .result import Result

log = logging.getLogger(__name__)


@dataclass
class Health:
    """What /healthz and /readyz report: progress of the loop and the last trouble."""

    last_cycle_ok_at: float | None = None
    # The loop's last sign of life: end of a pass (leader or standby) or start of a cycle.
    last_progress_at: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    # Only the type reaches /readyz: messages may name hosts or resources.
    last_error_type: str | None = None
    leader: bool = False
    cycles: int = 0
    history: list[Result] = field(default_factory=list, repr=False)


class Manager:
    """Runs every engine's cycle while this replica leads; standbys only wait."""

    # `run --once` logs its cycle's summary even when it did nothing.
    _log_every_cycle = False

    def __init__(
        self,
        *,
        engines: Sequence[Controller],
        elector: LeaderElector,
        waker: Waker,
        interval: float,
        backoff_base: float,
        backoff_max: float,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        stall_timeout: float | None = None,
        unready_after_failures: int = 3,
        coalesce: float | None = None,
        pause: Callable[[float], object] | None = None,
    ) -> None:
        self.engines = list(engines)
        self.metrics = metrics or Metrics()
        # Long enough for a large launch burst within one cycle, short enough to catch a hang.
        self.stall_timeout = stall_timeout if stall_timeout is not None else max(10 * interval, 600.0)
        self.unready_after_failures = unready_after_failures
        self.elector = elector
        self.waker = waker
        self.interval = interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.health = Health()
        self._monotonic = monotonic
        self._stopping = threading.Event()
        # Wake-ups come in bursts (a NOTIFY per queueing scheduler loop, events ten at a time): one
        # cycle starts at most this often after a wake-up, and takes the whole burst.
        self.coalesce = coalesce if coalesce is not None else min(0.5, interval / 10)
        self._pause = pause or self._stopping.wait
        # A standby that acquires the lease starts its first cycle at once, not a retry_period later.
        if elector.on_acquired is None:
            elector.on_acquired = waker.wake

    def request_stop(self) -> None:
        """Finish the current cycle's in-flight calls, then exit (SIGTERM/SIGINT)."""
        self._stopping.set()
        for engine in self.engines:
            engine.stopping.set()
        self.waker.wake()

    def install_signal_handlers(self) -> None:
        """SIGTERM (Kubernetes) and SIGINT stop the loop cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))

    def _on_signal(self, signum: int) -> None:
        log.info("received %s: finishing in-flight calls, then releasing the lease", signal.Signals(signum).name)
        self.request_stop()

    def cycle(self) -> float:
        """One pass over every engine if leading; returns seconds until the next pass."""
        leading = self.elector.is_leader()
        self.health.leader = leading
        self.metrics.leader.set(1 if leading else 0)
        self.health.last_progress_at = self._monotonic()
        if not leading:
            # A former leader's snapshot would otherwise linger and double-count in dashboards.
            self.metrics.tasks.clear()
            self.metrics.oldest_pending.clear()
            return self.elector.retry_period
        started = self._monotonic()
        # The soonest pass any engine asks for; starting from `interval` would cap every
        # engine's request at it and silently drop a throttled engine's longer requeue.
        requeue: float | None = None
        error: tuple[str, Exception] | None = None
        # AWS trouble a cycle worked around (a describe batch or the discovery failed): it still
        # launched and stopped, so no backoff, but the loop is not healthy while it lasts.
        partial: tuple[str, Exception] | None = None
        for engine in self.engines:
            # Each backend on its own: ECS trouble must not stall Batch launches, nor the reverse.
            kind = engine.backend.kind.value
            try:
                result = engine.reconcile()
            except Exception as exc:
                error = error or (kind, exc)
                log.debug("%s cycle failed", kind, exc_info=True)
                continue
            requeue = result.requeue_after if requeue is None else min(requeue, result.requeue_after)
            self.health.history = [*self.health.history[-9:], result]
            if result.errors:
                partial = partial or (kind, result.errors[0])
            stats = result.stats
            # `run --once` always says what its cycle did; the loop only when something happened.
            if self._log_every_cycle or stats.launched or stats.failed or stats.finished or stats.revoked:
                log.info("%s cycle: %s", kind, stats.summary())
        if error is None and partial is not None:
            kind, failure = partial
            self._record_failure(kind, failure)
            return self.interval if requeue is None else requeue
        if error is not None:
            # AWS or database trouble: stay up, report unready, back off, try again.
            kind, failure = error
            self._record_failure(kind, failure)
            delay = backoff_delay(
                attempt=self.health.consecutive_failures, base=self.backoff_base, cap=self.backoff_max
            )
            log.warning("reconcile cycle failed (%s); retrying in %.1f s", self.health.last_error, delay)
            # A backend that still works is not made to wait for the broken one's backoff.
            return delay if requeue is None else min(delay, requeue)
        finished = self._monotonic()
        self.metrics.reconciles.labels("success").inc()
        self.metrics.reconcile_duration.observe(finished - started)
        self.metrics.last_reconcile.set(time.time())
        self.health.consecutive_failures = 0
        self.health.last_error = None
        self.health.last_cycle_ok_at = finished
        self.health.last_progress_at = finished
        self.health.cycles += 1
        return self.interval if requeue is None else requeue

    def _record_failure(self, kind: str, failure: Exception) -> None:
        self.metrics.reconciles.labels("error").inc()
        self.health.last_progress_at = self._monotonic()
        self.health.consecutive_failures += 1
        self.health.last_error = f"{kind}: {type(failure).__name__}: {failure}"[:500]
        self.health.last_error_type = type(failure).__name__

    def liveness(self) -> HealthStatus:
        """Alive while the loop makes progress (a failing loop is alive but not ready)."""
        last = self.health.last_progress_at
        if last is None:
            return HealthStatus(True, {"status": "starting"})
        idle = self._monotonic() - last
        details = {"seconds_since_progress": round(idle, 1), "stall_timeout": self.stall_timeout}
        return HealthStatus(idle < self.stall_timeout, details)

    def readiness(self) -> HealthStatus:
        """Ready when the store answers and, while leading, cycles succeed; standbys are ready too."""
        role = "active" if self.elector.is_leader() else "standby"
        details: dict[str, object] = {"role": role, "consecutive_failures": self.health.consecutive_failures}
        ok = True
        if self.elector.last_error is not None:
            ok = False
            details["store"] = self.elector.last_error
        if role == "active" and self.health.consecutive_failures >= self.unready_after_failures:
            ok = False
            details["last_error"] = self.health.last_error_type
        return HealthStatus(ok, details)

    def run(self, *, once: bool = False) -> int:
        """Loop until asked to stop; ``once`` acquires the lease, runs one cycle and returns."""
        try:
            if once:
                if not self.elector.try_once():
                    log.error("another reconciler holds the lease (%s); nothing done", self.elector.current_holder)
                    return 1
                self._log_every_cycle = True
                self.cycle()
                return 0 if self.health.consecutive_failures == 0 else 1
            self.elector.start()
            for engine in self.engines:
                engine.start(wake=self.waker.wake)
            while not self._stopping.is_set():
                started = self._monotonic()
                delay = self.cycle()
                if self.waker.wait(delay) and not self._stopping.is_set():
                    gap = self.coalesce - (self._monotonic() - started)
                    if gap > 0:
                        self._pause(gap)
                    self.waker.clear()
            return 0
        finally:
            for engine in self.engines:
                engine.close()
            self.elector.stop(release=True)
            self.metrics.leader.set(0)
            self.metrics.tasks.clear()
            self.metrics.oldest_pending.clear()
            self.waker.close()
