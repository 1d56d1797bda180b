"""One reconcile cycle for one backend: read, plan, execute.

A cycle reads the open rows, observes their tasks (DescribeTasks / DescribeJobs, batch by
batch: a failed batch leaves its rows unknown and the cycle goes on), discovers every
``resync_interval``, and hands all of it to the pure :func:`~.plan.plan`. The
:class:`~.effector.Effector` executes the plan; launches and stops in flight are collected when
they arrive, so no call holds up the next pass. Decisions and their reasons are documented in
:mod:`.plan`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from ..backends.base import Observation, Observed, TaskBackend
from ..backends.errors import AwsError, Outcome
from ..metrics.definitions import Metrics
from ..model import Phase, utcnow
from ..store.lease import Fence
from ..store.records import TaskRecord
from ..store.sealing import TokenSealer
from ..store.tasks import TaskStore
from .effector import DatabaseTime, Effector, Tally
from .events import EventFeed, Verdict, freshest, resync_drift, sort_events
from .plan import ControllerSettings, Plan, plan, requeue_after, to_describe
from .result import Result

__all__ = ["Controller", "ControllerSettings"]

log = logging.getLogger(__name__)

#: Seconds between two retention sweeps (see :meth:`Controller._sweep`).
_SWEEP_EVERY = 60.0


class Controller:
    """Reconciles the rows of one backend against what that backend reports."""

    def __init__(
        self,
        *,
        store: TaskStore,
        backend: TaskBackend,
        settings: ControllerSettings,
        is_leader: Callable[[], bool] = lambda: True,
        fence: Callable[[], Fence | None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] | None = None,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        tokens: TokenSealer | None = None,
        events: EventFeed | None = None,
    ) -> None:
        self.store = store
        # Observation by events (None: by polling): the feed of this backend's queue.
        self.events = events
        self.metrics = metrics or Metrics()
        self._kind = backend.kind.value
        # Series exist from the start at zero, so increase() sees their first event.
        for result in ("success", "retriable_error", "terminal_error", "throttled"):
            self.metrics.launches.labels(self._kind, result)
        self.metrics.orphans_found.labels(self._kind)
        mode = "poll" if events is None else "events"
        for each in ("poll", "events"):
            self.metrics.observation_mode.labels(self._kind, each).set(1 if each == mode else 0)
        if events is not None:
            self.metrics.resync_drift_total.labels(self._kind)
        self.backend = backend
        self.settings = replace(settings, relaunch_delay=backend.relaunch_delay)
        self.is_leader = is_leader
        self.clock = clock
        self._rng = rng or random.random
        self._monotonic = monotonic
        self.effector = Effector(
            store=store,
            backend=backend,
            settings=self.settings,
            metrics=self.metrics,
            clock=clock,
            rng=self._rng,
            is_leader=is_leader,
            fence=fence,
            tokens=tokens,
            monotonic=monotonic,
        )
        self.stopping = self.effector.stopping
        self._orphans: dict[str, datetime] = {}
        self._last_discovery: datetime | None = None
        # Polling: when the tasks that run as wanted were last described, all at once (a process
        # that starts describes them in its first cycle), and those whose describe failed since.
        self._last_round: datetime | None = None
        self._look_again: set[str] = set()
        self._last_sweep: datetime | None = None

    def start(self, *, wake: Callable[[], None]) -> None:
        """Start receiving events in the background (events mode), waking the loop when they come."""
        if self.events is not None:
            self.events.start(wake=wake)

    def close(self) -> None:
        """Stop receiving events, let in-flight AWS calls finish, then release the worker threads."""
        if self.events is not None:
            self.events.close()
        self.effector.close()

    def reconcile(self) -> Result:
        """Run one cycle. Store trouble raises (the loop backs off); AWS trouble with a describe
        batch or the discovery is worked around and reported in ``Result.errors``; trouble with
        single rows is contained."""
        tally = Tally()
        self.effector.collect(tally)
        self._forget_stopped(tally)
        now = self.clock()
        discovery_due = self._discovery_due(now)
        verdicts: dict[str, Verdict] | None = None
        discovered: list[Observation] | None = None
        errors: list[AwsError] = []
        if discovery_due:
            # First: it describes every task of ours it lists, so the rows' tasks among them need
            # no describe of their own (the ones it does not list, ended ones, still get one).
            try:
                discovered = [o for o in self.backend.discover() if o.owned]
                self._last_discovery = now
            except AwsError as exc:
                errors.append(exc)
                log.warning("%s discovery failed (%s); retried next cycle", self._kind, exc.reason)
        known = {o.external_id: o for o in discovered or ()}
        pairs: list[tuple[str, Observation]] = []
        if self.events is None:
            rows, observed = self._poll(now, known=known, resync=discovery_due)
        else:
            pairs, received, receive_errors = self._receive_events()
            if discovery_due:
                rows = self.store.open_tasks(backend=self.backend.kind)
                self._export_snapshot(rows, now)
            else:
                # Between resyncs a cycle costs what changed: the rows with an action due and
                # those the events are about, not every running task.
                rows = self.store.due_tasks(
                    backend=self.backend.kind, external_ids={obs.external_id for _, obs in pairs}
                )
                self._export_snapshot(rows, now, counts=self.store.open_counts(backend=self.backend.kind))
            observed, verdicts = self._observe_events(
                rows, pairs, received, receive_errors, known=known, now=now, resync=discovery_due
            )
        errors.extend(observed.errors)
        interval = self.settings.reconcile_interval
        budget = self.backend.launch_capacity(within=interval) - self.effector.launches_in_flight()
        database_time = self._database_time(rows)
        decided = plan(
            rows,
            observed.observations,
            discovered=discovered,
            now=now,
            settings=self.settings,
            orphans_seen=self._orphans,
            busy=self.effector.busy(),
            launch_budget=budget,
            rng=self._rng,
            database_now=database_time.at if database_time is not None else None,
        )
        if decided.orphans is not None:
            self._orphans = dict(decided.orphans)
            if decided.new_orphans:
                self.metrics.orphans_found.labels(self._kind).inc(decided.new_orphans)
        failed = self.effector.execute(decided, tally, database_time=database_time)
        if verdicts is not None:
            self._settle_events(decided, verdicts, pairs=pairs, rows=rows, failed=failed)
        # Give the calls just sent one interval to come back, so a healthy cycle reports them;
        # whatever takes longer is collected by a later cycle.
        self.effector.settle(interval, tally, self._monotonic)
        self._forget_stopped(tally)
        self._sweep(now)
        stats = tally.stats(deferred=decided.deferred, in_flight=self.effector.in_flight())
        throttled = bool(stats.throttled) or any(e.outcome is Outcome.THROTTLED for e in errors)
        return Result(
            requeue_after=requeue_after(
                decided, throttled=throttled, settings=self.settings, now=self.clock(), retries_due=tally.retries_due
            ),
            stats=stats,
            errors=tuple(errors),
        )

    def _sweep(self, now: datetime) -> None:
        """Retention, at most once a minute: rows are kept for days, so sweeping every cycle would
        only cost a DELETE and a commit per cycle for nothing."""
        last = self._last_sweep
        if last is not None and (now - last).total_seconds() < _SWEEP_EVERY:
            return
        self.store.delete_reported_before(now - timedelta(seconds=self.settings.retention))
        self._last_sweep = now

    def _database_time(self, rows: list[TaskRecord]) -> DatabaseTime | None:
        """The database's time, read only when a row waiting for a launch has a token deadline
        (which is measured on that clock, shared with the scheduler that signed the token)."""
        if not any(r.token_expires_at is not None and r.phase.waiting_for_launch for r in rows):
            return None
        return DatabaseTime(at=self.store.database_now(), monotonic=self._monotonic())

    def _forget_stopped(self, tally: Tally) -> None:
        for external_id in tally.stopped_orphans:
            self._orphans.pop(external_id, None)

    def _export_snapshot(
        self, rows: list[TaskRecord], now: datetime, *, counts: dict[Phase, int] | None = None
    ) -> None:
        """Gauges of open rows by phase (``counts``, or counted from ``rows`` when they are every
        open row) and the oldest row waiting for a launch (``rows`` hold every such row)."""
        counted = counts is None
        counts = {phase: 0 for phase in Phase if not phase.terminal} | (counts or {})
        oldest: datetime | None = None
        for row in rows:
            if counted:
                counts[row.phase] = counts.get(row.phase, 0) + 1
            if row.phase.waiting_for_launch and (oldest is None or row.created_at < oldest):
                oldest = row.created_at
        for phase, count in counts.items():
            self.metrics.tasks.labels(self._kind, phase.value).set(count)
        age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        self.metrics.oldest_pending.labels(self._kind).set(age)

    def _poll(
        self, now: datetime, *, known: Mapping[str, Observation], resync: bool
    ) -> tuple[list[TaskRecord], Observed]:
        """A polling cycle's rows and what their tasks look like. Every open row is read only in
        a round of looks at the tasks that run as wanted (every ``running_describe_interval``,
        and at a resync); between rounds only the rows with something due, those still
        starting, and those whose describe failed: a cycle's cost follows what can have
        changed, not how many tasks run."""
        last = self._last_round
        round_due = resync or last is None or (now - last).total_seconds() >= self.settings.running_describe_interval
        if round_due:
            rows = self.store.open_tasks(backend=self.backend.kind)
            self._export_snapshot(rows, now)
            self._last_round = now
        else:
            rows = self.store.due_tasks(backend=self.backend.kind, external_ids=self._look_again, starting=True)
            self._export_snapshot(rows, now, counts=self.store.open_counts(backend=self.backend.kind))
        targets = to_describe(rows, steady=round_due, again=self._look_again)
        observed = self._observe(dict(targets), known=known)
        self._look_again = set(targets) - set(observed.observations)
        return rows, observed

    def _observe(self, targets: dict[str, str | None], *, known: Mapping[str, Observation]) -> Observed:
        """Describe ``targets`` (external id -> target); those this cycle's discovery described
        (``known``) are taken from it."""
        found = {e: known[e] for e in targets if e in known}
        for external_id in found:
            del targets[external_id]
        if not targets:
            return Observed(found)
        observed = self.backend.observe(targets=targets)
        observed = Observed({**found, **observed.observations}, observed.errors)
        if observed.errors:
            log.warning(
                "%s: %d describe call(s) failed (%s); their tasks are looked at next cycle",
                self._kind,
                len(observed.errors),
                observed.errors[0].reason,
            )
        return observed

    def _discovery_due(self, now: datetime) -> bool:
        last = self._last_discovery
        every = self.settings.resync_interval
        if self.events is not None and self.settings.events_resync_interval is not None:
            every = self.settings.events_resync_interval
        return last is None or (now - last).total_seconds() >= every

    def _receive_events(self) -> tuple[list[tuple[str, Observation]], dict[str, Verdict], list[AwsError]]:
        """This cycle's events as observations, the verdicts already known, receive errors."""
        feed = self.events
        assert feed is not None
        errors: list[AwsError] = []
        if not feed.running:
            # `run --once` and driven cycles: no receiver in the background, so receive now.
            try:
                feed.drain()
            except AwsError as exc:
                errors.append(exc)
        elif feed.last_error is not None:
            errors.append(feed.last_error)
        pairs, verdicts = feed.take()
        return pairs, verdicts, errors

    def _observe_events(
        self,
        rows: list[TaskRecord],
        pairs: list[tuple[str, Observation]],
        verdicts: dict[str, Verdict],
        errors: list[AwsError],
        *,
        known: Mapping[str, Observation],
        now: datetime,
        resync: bool,
    ) -> tuple[Observed, dict[str, Verdict]]:
        """What this cycle's events say of ``rows`` (and, when a resync is due, a describe of every
        row, whose drift from the events is counted): observations for the plan, verdicts for the feed."""
        feed = self.events
        assert feed is not None
        decided = sort_events(rows, pairs, ended=feed.ended)
        verdicts.update(decided.verdicts)
        observations = decided.observations
        if resync:
            described = self._observe(to_describe(rows, steady=True), known=known)
            errors.extend(described.errors)
            drift = resync_drift(
                rows,
                described.observations,
                from_events=observations,
                now=now,
                missing_grace=self.settings.missing_grace,
            )
            self.metrics.last_resync_drift.labels(self._kind).set(drift)
            if drift:
                self.metrics.resync_drift_total.labels(self._kind).inc(drift)
                log.warning(
                    "%s resync: %d task(s) had changed without an event saying so (events lost or late)",
                    self._kind,
                    drift,
                )
            observations = freshest(observations, described.observations)
        return Observed(observations, tuple(errors)), verdicts

    def _settle_events(
        self,
        decided: Plan,
        verdicts: dict[str, Verdict],
        *,
        pairs: list[tuple[str, Observation]],
        rows: list[TaskRecord],
        failed: set[str],
    ) -> None:
        """Delete the messages the committed cycle used; offer those of rows whose write failed to
        the next cycle, and remember the tasks whose rows ended or moved on."""
        feed = self.events
        assert feed is not None
        retry: set[str] = set()
        if failed:
            record_of = {r.external_id: r.id for r in rows if r.external_id}
            retry = {m for m, obs in pairs if record_of.get(obs.external_id) in failed}
        moved_on = []
        for t in decided.transitions:
            before = t.row.external_id
            phase = t.changes.get("phase")
            if before and (
                ("external_id" in t.changes and t.changes["external_id"] != before)
                or (isinstance(phase, Phase) and phase.terminal)
            ):
                moved_on.append(before)
        feed.forget(moved_on)
        feed.settle(verdicts, retry=retry)
