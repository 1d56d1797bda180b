"""One reconcile cycle for one backend: observe, diff, act, record.

Level-based and idempotent: every decision is taken from the rows and what AWS reports now,
never from remembered events, so a cycle can be re-run, interrupted or run by a new process
after a crash with the same outcome. Each row is handled in isolation: an exception on one row
is logged and counted, and the others go on.

Launch attempts and idempotency:
- ``attempt`` numbers the launch attempts of a row; ``clientToken`` = ``<id>-<attempt>`` on ECS,
  the job name ``af-<id>-<attempt>`` on Batch.
- A row is set to ``launching`` (write-ahead) before RunTask; a ``launching`` row found at the
  start of a cycle may have reached AWS, so it is relaunched with the SAME attempt: ECS returns
  the task it already started instead of a second one, and the Batch backend finds the job by
  its name before submitting.
- A definite "nothing launched" (capacity ``failures``, a task stopped before its container
  started) moves to the next attempt with backoff, up to ``max_launch_attempts``.
- Throttling costs no attempt; an ambiguous failure (5xx, timeout, unexpected exception)
  retries the same attempt, because the first call may have started a task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ..backends.base import Observation, Stuck, TaskBackend
from ..backends.calls import NotLeader
from ..backends.errors import AwsError, RetriableError, TerminalError, classify
from ..metrics.definitions import Metrics
from ..model import Desired, Phase, utcnow
from ..store.records import TaskRecord
from ..store.tasks import TaskStore
from .backoff import backoff_delay
from .orphans import OrphanTracker
from .result import CycleStats, Result

log = logging.getLogger(__name__)

OBSERVED_PHASES = (Phase.PROVISIONING, Phase.RUNNING, Phase.STOPPING)
LAUNCH_PHASES = (Phase.PENDING, Phase.LAUNCHING)


@dataclass(frozen=True)
class EngineSettings:
    """The knobs one engine needs, copied out of :class:`~aws_reconciler.config.Settings`."""

    deployment: str
    max_launch_attempts: int
    task_queued_timeout: float
    reconcile_interval: float
    resync_interval: float
    orphan_grace: float
    retention: float
    backoff_base: float
    backoff_max: float
    launch_concurrency: int


class _Counter:
    """Thread-safe counters that become the cycle's :class:`CycleStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] = self.values.get(name, 0) + n

    def stats(self) -> CycleStats:
        return CycleStats(**self.values)


class Engine:
    """Reconciles the rows of one backend against what that backend reports."""

    def __init__(
        self,
        *,
        store: TaskStore,
        backend: TaskBackend,
        settings: EngineSettings,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self._kind = backend.kind.value
        # Series exist from the start at zero, so increase() sees their first event.
        for result in ("success", "retriable_error", "terminal_error", "throttled"):
            self.metrics.launches.labels(self._kind, result)
        self.metrics.orphans_found.labels(self._kind)
        self.backend = backend
        self.settings = settings
        self.is_leader = is_leader
        self.clock = clock
        self.rng = rng
        self.orphans = OrphanTracker(grace=settings.orphan_grace)
        self._last_discovery: datetime | None = None
        self._pool = ThreadPoolExecutor(max_workers=settings.launch_concurrency, thread_name_prefix="launch")
        self.stopping = threading.Event()

    def close(self) -> None:
        """Let in-flight AWS calls finish, then release the worker threads."""
        self.stopping.set()
        self._pool.shutdown(wait=True)

    # ---- the cycle ------------------------------------------------------------------------

    def reconcile(self) -> Result:
        """Run one cycle. Store or AWS trouble in observe/discover raises (the loop backs off);
        trouble with single rows is contained."""
        now = self.clock()
        counter = _Counter()
        rows = self.store.open_tasks(backend=self.backend.kind)
        self._export_snapshot(rows, now)
        observed = self._observe(rows)
        if self._discovery_due(now):
            rows = self._discover(rows, observed, now, counter)
        due_launches: list[TaskRecord] = []
        for row in rows:
            try:
                if self._reconcile_row(row, observed.get(row.external_id or ""), now, counter):
                    due_launches.append(row)
            except NotLeader:
                break  # fenced mid-cycle: the next leader picks up from the rows as they are
            except Exception:
                counter.add("row_errors")
                log.exception("reconciling task %s failed; continuing with the others", row.id)
        self._launch_all(due_launches, counter)
        self.store.delete_reported_before(now - timedelta(seconds=self.settings.retention))
        stats = counter.stats()
        requeue = self.settings.reconcile_interval
        if stats.throttled:
            requeue = max(requeue, self.settings.backoff_base)
        return Result(requeue_after=requeue, stats=stats)

    def _export_snapshot(self, rows: list[TaskRecord], now: datetime) -> None:
        """Gauges of open rows by phase and the oldest row waiting for a launch (from rows already read)."""
        counts = {phase: 0 for phase in Phase if not phase.terminal}
        oldest: datetime | None = None
        for row in rows:
            counts[row.phase] = counts.get(row.phase, 0) + 1
            if row.phase in LAUNCH_PHASES and (oldest is None or row.created_at < oldest):
                oldest = row.created_at
        for phase, count in counts.items():
            self.metrics.tasks.labels(self._kind, phase.value).set(count)
        age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        self.metrics.oldest_pending.labels(self._kind).set(age)

    def _observe(self, rows: list[TaskRecord]) -> dict[str, Observation]:
        targets = {r.external_id: r.target for r in rows if r.external_id and r.phase in OBSERVED_PHASES}
        if not targets:
            return {}
        return self.backend.observe(targets=targets)

    def _discovery_due(self, now: datetime) -> bool:
        last = self._last_discovery
        return last is None or (now - last).total_seconds() >= self.settings.resync_interval

    def _discover(
        self, rows: list[TaskRecord], observed: dict[str, Observation], now: datetime, counter: _Counter
    ) -> list[TaskRecord]:
        """Find lost launches (fill in their ARN) and orphans (stop them after the grace)."""
        found = [o for o in self.backend.discover() if o.owned]
        self._last_discovery = now
        by_external = {r.external_id: r for r in rows if r.external_id}
        waiting_for_arn = {r.id: r for r in rows if r.external_id is None and r.phase is Phase.LAUNCHING}
        # A pending row may own a running task: an ambiguous launch whose retry was throttled gave
        # its attempt back, and its next RunTask (same clientToken) returns that task. Not an orphan.
        relaunching = {
            r.id for r in rows if r.external_id is None and r.phase is Phase.PENDING and r.desired is Desired.RUNNING
        }
        updated: dict[str, TaskRecord] = {}
        orphans: dict[str, Observation] = {}
        for obs in found:
            if obs.external_id in by_external:
                continue
            row = waiting_for_arn.pop(obs.record_id or "", None)
            if row is not None and row.desired is Desired.RUNNING:
                # The launch reached AWS but its answer was lost: adopt the task.
                if self.store.transition(
                    row.id,
                    expect_phases=[Phase.LAUNCHING],
                    expect_attempt=row.attempt,
                    phase=Phase.PROVISIONING,
                    external_id=obs.external_id,
                    launched_at=now,
                ):
                    updated[row.id] = replace(row, phase=Phase.PROVISIONING, external_id=obs.external_id)
                    observed[obs.external_id] = obs
                continue
            if obs.phase.terminal or obs.record_id in relaunching:
                continue
            orphans[obs.external_id] = obs
        new_orphans = set(orphans) - self.orphans.tracked()
        if new_orphans:
            self.metrics.orphans_found.labels(self._kind).inc(len(new_orphans))
        for external_id in self.orphans.due(orphans, now=now):
            obs = orphans[external_id]
            if not self.is_leader():
                break
            try:
                self.backend.stop(
                    external_id=external_id,
                    target=obs.target,
                    reason=f"aws-reconciler: orphan of deployment {self.settings.deployment} (no open task record)",
                )
                self.orphans.forget(external_id)
                counter.add("orphans_stopped")
                self.metrics.stops.labels(self._kind, "orphan").inc()
                log.warning("stopped orphan task %s (record %s)", external_id, obs.record_id)
            except NotLeader:
                break
            except AwsError as exc:
                log.warning("could not stop orphan %s: %s", external_id, exc.reason)
        return [updated.get(r.id, r) for r in rows]

    # ---- one row --------------------------------------------------------------------------

    def _expired(self, row: TaskRecord, now: datetime) -> bool:
        return (now - row.created_at).total_seconds() > self.settings.task_queued_timeout

    def _reconcile_row(self, row: TaskRecord, obs: Observation | None, now: datetime, counter: _Counter) -> bool:
        """Act on one row; returns True when it should be launched in this cycle."""
        if row.desired is Desired.STOPPED:
            self._reconcile_stop(row, obs, now, counter)
            return False
        if row.phase in LAUNCH_PHASES:
            if self._expired(row, now):
                self._fail(
                    row,
                    f"not launched: the Airflow workload token expired ({self.settings.task_queued_timeout:.0f} s "
                    f"after queueing, [scheduler] task_queued_timeout)"
                    + (f"; last error: {row.last_error}" if row.last_error else ""),
                    counter,
                )
                return False
            return row.next_attempt_at is None or row.next_attempt_at <= now
        if obs is not None:
            self._record_observation(row, obs, now, counter)
        return False

    def _reconcile_stop(self, row: TaskRecord, obs: Observation | None, now: datetime, counter: _Counter) -> None:
        if row.external_id is None:
            # Never launched, or launched with its answer lost: an orphan sweep stops the latter.
            self._fail(row, "revoked by Airflow before launch", counter)
            return
        if obs is not None and (obs.phase.terminal or obs.missing):
            self._finish(row, obs, counter, reason_prefix="revoked by Airflow")
            return
        if not self.is_leader():
            return
        if row.phase is Phase.STOPPING and (now - row.updated_at).total_seconds() < self.settings.resync_interval:
            # Asked already. A stop that did not take (its answer lost, or a Batch job that started
            # between DescribeJobs and CancelJob) is sent again once per resync_interval.
            return
        self.backend.stop(external_id=row.external_id, target=row.target, reason="aws-reconciler: revoked by Airflow")
        # Also rewrites a stopping row, which restarts its resend timer (updated_at).
        self.store.transition(row.id, expect_phases=[row.phase], phase=Phase.STOPPING)
        counter.add("stopped")
        self.metrics.stops.labels(self._kind, "revoked").inc()

    def _record_observation(self, row: TaskRecord, obs: Observation, now: datetime, counter: _Counter) -> None:
        if obs.never_started and obs.phase.terminal and not obs.missing:
            self._retry_or_fail(row, f"task stopped before its container started: {obs.reason}", now, counter)
            return
        if obs.phase.terminal or obs.missing:
            self._finish(row, obs, counter)
            return
        if obs.stuck is not None:
            self._stop_stuck(row, obs.stuck, counter)
            return
        if obs.phase is not row.phase or (obs.started_at and row.started_at is None):
            started_at = obs.started_at or row.started_at
            if obs.phase is Phase.RUNNING and started_at is None:
                started_at = now
            if (
                self.store.transition(
                    row.id,
                    expect_phases=[row.phase],
                    expect_attempt=row.attempt,
                    phase=obs.phase if row.phase is not Phase.STOPPING else Phase.STOPPING,
                    started_at=started_at,
                )
                and row.started_at is None
                and started_at is not None
                and row.launched_at is not None
            ):
                self.metrics.launch_to_running.labels(self._kind).observe(
                    max(0.0, (started_at - row.launched_at).total_seconds())
                )

    def _stop_stuck(self, row: TaskRecord, stuck: Stuck, counter: _Counter) -> None:
        """A task/job that will not progress by itself (a Batch job RUNNABLE for too long): stop
        it, then fail the row with the backend's reason. The row fails at once rather than when
        AWS confirms the stop, which for a job waiting for capacity can take long; should the stop
        not take, the job is an orphan of ours and the orphan sweep stops it again."""
        if not self.is_leader() or row.external_id is None:
            return
        self.backend.stop(external_id=row.external_id, target=row.target, reason=f"aws-reconciler: {stuck.reason}")
        counter.add("stopped")
        self.metrics.stops.labels(self._kind, stuck.code).inc()
        self._fail(row, stuck.reason, counter)

    def _finish(self, row: TaskRecord, obs: Observation, counter: _Counter, reason_prefix: str | None = None) -> None:
        reason = obs.reason or ""
        if reason_prefix:
            reason = f"{reason_prefix}: {reason}" if reason else reason_prefix
        phase = Phase.FAILED if reason_prefix else obs.phase
        if obs.missing:
            phase = Phase.FAILED
        if self.store.transition(
            row.id,
            expect_phases=[row.phase],
            expect_attempt=row.attempt,
            phase=phase,
            exit_code=obs.exit_code,
            stop_code=obs.stop_code,
            status_reason=reason or None,
            started_at=obs.started_at or row.started_at,
            finished_at=obs.finished_at or self.clock(),
        ):
            counter.add("finished" if phase is Phase.SUCCEEDED else "failed")

    def _fail(self, row: TaskRecord, reason: str, counter: _Counter) -> None:
        if self.store.transition(row.id, expect_phases=[row.phase], phase=Phase.FAILED, status_reason=reason):
            counter.add("failed")
            log.info("task %s failed: %s", row.id, reason)

    def _retry_or_fail(
        self, row: TaskRecord, reason: str, now: datetime, counter: _Counter, *, reason_label: str = "never_started"
    ) -> None:
        """Nothing ran: try a new attempt after backoff, unless the budget or the token is spent."""
        if row.attempt >= self.settings.max_launch_attempts:
            self._fail(row, f"gave up after {row.attempt} launch attempts: {reason}", counter)
            return
        delay = self._backoff(row.attempt)
        if self.store.transition(
            row.id,
            expect_phases=[row.phase],
            expect_attempt=row.attempt,
            phase=Phase.PENDING,
            external_id=None,
            next_attempt_at=now + timedelta(seconds=delay),
            last_error=reason,
        ):
            counter.add("launch_retries")
            self.metrics.launch_retries.labels(self._kind, reason_label).inc()
            log.info("task %s: %s; attempt %d in %.1f s", row.id, reason, row.attempt + 1, delay)

    def _backoff(self, attempt: int) -> float:
        kwargs: dict[str, Any] = {} if self.rng is None else {"rng": self.rng}
        return backoff_delay(attempt=attempt, base=self.settings.backoff_base, cap=self.settings.backoff_max, **kwargs)

    # ---- launches -------------------------------------------------------------------------

    def _launch_all(self, rows: list[TaskRecord], counter: _Counter) -> None:
        if not rows or self.stopping.is_set() or not self.is_leader():
            return
        claimed = self.store.claim_for_launch([r.id for r in rows if r.phase is Phase.PENDING])
        batch = [
            replace(r, phase=Phase.LAUNCHING, attempt=claimed[r.id]) if r.phase is Phase.PENDING else r
            for r in rows
            if r.phase is Phase.LAUNCHING or r.id in claimed
        ]
        specs = self.store.specs([r.id for r in batch])
        futures = [self._pool.submit(self._launch_one, row, specs.get(row.id), counter) for row in batch]
        for future in futures:
            # _launch_one contains every Exception; anything else (a crash) propagates.
            future.result()

    def _launch_one(self, row: TaskRecord, spec: Mapping[str, Any] | None, counter: _Counter) -> None:
        """Launch one claimed (``launching``) row and record the outcome."""
        if self.stopping.is_set() or not self.is_leader():
            # Stays `launching`: whoever leads next relaunches it with the same client token.
            return
        try:
            if spec is None:
                self._fail(row, "task record has no launch request", counter)
                return
            external_id = self.backend.launch(record_id=row.id, attempt=row.attempt, spec=spec)
        except NotLeader:
            return  # fenced: stays `launching` for the next leader, same client token
        except Exception as exc:
            self._launch_failed(row, classify(exc), counter)
            return
        launched_at = self.clock()
        if self.store.transition(
            row.id,
            expect_phases=[Phase.LAUNCHING],
            expect_attempt=row.attempt,
            phase=Phase.PROVISIONING,
            external_id=external_id,
            launched_at=launched_at,
            last_error=None,
        ):
            counter.add("launched")
            self.metrics.launches.labels(self._kind, "success").inc()
            self.metrics.queue_to_launch.labels(self._kind).observe(
                max(0.0, (launched_at - row.created_at).total_seconds())
            )

    def _launch_failed(self, row: TaskRecord, error: AwsError, counter: _Counter) -> None:
        now = self.clock()
        kind = self._kind
        if isinstance(error, TerminalError):
            self.metrics.launches.labels(kind, "terminal_error").inc()
            self._fail(row, f"launch failed: {error.reason}", counter)
            return
        assert isinstance(error, RetriableError)
        self.metrics.launches.labels(kind, "throttled" if error.throttled else "retriable_error").inc()
        if error.throttled or error.credentials:
            if error.throttled:
                counter.add("throttled")
            self.metrics.launch_retries.labels(kind, "throttled" if error.throttled else "credentials").inc()
            # Refused before anything started, and not this task's fault: give the attempt back.
            self.store.transition(
                row.id,
                expect_phases=[Phase.LAUNCHING],
                expect_attempt=row.attempt,
                phase=Phase.PENDING,
                attempt=row.attempt - 1,
                next_attempt_at=now + timedelta(seconds=self._backoff(1)),
                last_error=error.reason,
            )
            return
        if error.rejected:
            # Definitely no task (capacity): the next attempt gets a new client token.
            self._retry_or_fail(row, f"launch failed: {error.reason}", now, counter, reason_label="capacity")
            return
        # Ambiguous: the call may have started a task. Retry the SAME attempt (same clientToken).
        counter.add("launch_retries")
        self.metrics.launch_retries.labels(kind, "ambiguous").inc()
        delay = self._backoff(row.attempt)
        self.store.transition(
            row.id,
            expect_phases=[Phase.LAUNCHING],
            expect_attempt=row.attempt,
            next_attempt_at=now + timedelta(seconds=delay),
            last_error=error.reason,
        )
        log.warning(
            "task %s: launch outcome unknown (%s); retrying attempt %d in %.1f s",
            row.id,
            error.reason,
            row.attempt,
            delay,
        )
