"""The reconciler's decisions, as pure functions of what one cycle read.

:func:`plan` takes the open rows, what AWS said about them, what a discovery found (when one
ran), the time and the settings, and returns a frozen :class:`Plan`: compare-and-set transitions
of rows, stops, launches, and when to come back. It touches no store, AWS, metrics, log or clock;
the effector (:mod:`.engine`) executes plans, and what a launch it sent comes to is decided here
too (:func:`launch_succeeded`, :func:`launch_failed`). Every decision is therefore a row of a
table in ``tests/reconciler/test_plan.py``.

Level-based and idempotent: a decision depends on the rows and what AWS reports now, never on
remembered events, so a cycle can be re-run, interrupted or run by a new process after a crash
with the same outcome.

Launch attempts and idempotency:

- ``attempt`` numbers the launch attempts of a row; ``clientToken`` = ``<id>-<attempt>`` on ECS,
  the job name ``af-<id>-<attempt>`` on Batch.
- A row is set to ``launching`` (write-ahead) before RunTask; a ``launching`` row found later may
  have reached AWS, so it is relaunched with the SAME attempt, and only ``relaunch_delay`` after it
  may have been sent: ECS returns the task it already started (no delay needed), the Batch
  backend looks the job's name up first, which ListJobs answers truthfully only after a while.
- A definite "nothing launched" (capacity ``failures``, a task stopped before its container
  started) moves to the next attempt with backoff, up to ``max_launch_attempts``.
- Throttling and credential trouble cost no attempt; an ambiguous failure (5xx, timeout,
  unexpected exception) retries the same attempt with a delay that doubles each time.
- AWS is eventually consistent: a task it does not know (yet) within ``missing_grace`` of its
  launch is not taken for gone.

The workload token (a row whose token's ``exp`` is known; rows without one keep the older rule,
``task_queued_timeout`` after ``created_at`` on this process's clock):

- Its expiry is compared with the DATABASE's time (``database_now``), the one clock the
  scheduler that signed it and every reconciler replica share.
- A row is not launched within ``token_margin`` of the expiry (a container has to start and call
  the API server before it), and is checked again right before the call leaves.
- Capacity shortages are retried until then, however many attempts that takes.
- At the expiry the row fails, never launched. The executor holds that report while Airflow still
  has the try QUEUED, so Airflow's stuck-in-queued handling revokes it and queues it again with
  a fresh token (``[scheduler] num_stuck_in_queued_retries``) instead of a failure burning a try.
  A row that may have reached AWS (``launching``) ends only once a discovery, run
  ``missing_grace`` after its last send, has not found its task.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Any, assert_never

from ..backends.base import Observation
from ..backends.errors import AwsError, Outcome, RetriableError
from ..model import Desired, Phase, TiKey
from ..store.records import TaskRecord
from .backoff import backoff_delay, grown_delay
from .orphans import sweep


@dataclass(frozen=True)
class ControllerSettings:
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
    missing_grace: float = 120.0
    #: The backend's :attr:`~aws_reconciler.backends.base.TaskBackend.relaunch_delay`.
    relaunch_delay: float = 0.0
    #: No launch within this many seconds of the workload token's expiry.
    token_margin: float = 30.0
    #: Seconds between discoveries and full describes when observing by events (None: polling,
    #: and ``resync_interval`` is the period). Stops are resent every ``resync_interval`` either way.
    events_resync_interval: float | None = None
    #: Polling, a running task wanted as it is is described only this often (0: every cycle).
    running_describe_interval: float = 0.0


class Effect(Enum):
    """What a transition means: the effector counts, measures and logs by it."""

    PROGRESS = "progress"  # provisioning -> running, or the start time learnt
    ADOPTED = "adopted"  # a launch whose answer was lost, found by discovery
    REPOINTED = "repointed"  # the row now follows the most advanced of several tasks of its own
    LAUNCHED = "launched"
    STOPPING = "stopping"  # the stop was sent
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVOKED = "revoked"  # ended because Airflow no longer wants it
    RETRY = "retry"  # launched again after backoff (a new attempt, or the same one)
    TOO_LATE = "too_late"  # not sent: its token expires within token_margin; it waits for the expiry


class Retry(StrEnum):
    """Why a launch is retried: the ``reason`` label of ``aws_reconciler_launch_retries_total``."""

    NEVER_STARTED = "never_started"
    CAPACITY = "capacity"
    THROTTLED = "throttled"
    CREDENTIALS = "credentials"
    AMBIGUOUS = "ambiguous"


class StopWhy(StrEnum):
    """Why a task is stopped: the ``reason`` label of ``aws_reconciler_stops_total`` (a backend's
    :class:`~aws_reconciler.backends.base.Stuck` code is the label of a stuck task)."""

    REVOKED = "revoked"
    SUPERSEDED = "superseded"
    ORPHAN = "orphan"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Transition:
    """A compare-and-set update of one row: ``changes`` apply only while the row is still in one
    of ``expect_phases`` (and at ``expect_attempt``)."""

    row: TaskRecord  # the row as the decision saw it
    effect: Effect
    changes: Mapping[str, Any]
    expect_phases: tuple[Phase, ...]
    expect_attempt: int | None = None
    retry: Retry | None = None

    @property
    def record_id(self) -> str:
        """The row's id."""
        return self.row.id


@dataclass(frozen=True)
class Stop:
    """Ask AWS to stop a task; ``then`` is applied to its row once the stop was sent."""

    external_id: str
    target: str | None
    reason: str  # what AWS records (and shows in its console)
    why: str  # a StopWhy or a Stuck code
    record_id: str | None = None  # None: an orphan, no row of ours points at it
    then: Transition | None = None

    @property
    def orphan(self) -> bool:
        """No open row follows this task."""
        return self.why in (StopWhy.ORPHAN, StopWhy.DUPLICATE)


@dataclass(frozen=True)
class Plan:
    """What one cycle should do, in order: transitions, stops, launches."""

    requeue_after: float
    transitions: tuple[Transition, ...] = ()
    stops: tuple[Stop, ...] = ()
    # Rows to launch, oldest due first: pending ones are claimed first, launching ones relaunched.
    launches: tuple[TaskRecord, ...] = ()
    # Due launches left for a later cycle by the launch budget.
    deferred: int = 0
    # First-seen times of the orphans this discovery found; None when no discovery ran.
    orphans: Mapping[str, datetime] | None = None
    new_orphans: int = 0


def plan(
    rows: Sequence[TaskRecord],
    observations: Mapping[str, Observation],
    *,
    discovered: Sequence[Observation] | None,
    now: datetime,
    settings: ControllerSettings,
    orphans_seen: Mapping[str, datetime] | None = None,
    busy: Collection[str] = (),
    launch_budget: int | None = None,
    rng: Callable[[], float] = random.random,
    database_now: datetime | None = None,
) -> Plan:
    """Decide one cycle.

    ``observations``: external id -> what DescribeTasks/DescribeJobs said (ids whose batch failed
    are absent: unknown, nothing is decided for them). ``discovered``: every task/job of the
    deployment a discovery found, or None when none ran. ``orphans_seen``: the previous
    discovery's first-seen times. ``busy``: record and external ids with a launch or stop still
    in flight (left alone). ``launch_budget``: launches the rate limits let out within one
    interval (None: no bound). ``database_now``: the database's time, which workload token
    expiries are compared with (None: ``now``).
    """
    planner = _Planner(
        settings=settings,
        now=now,
        rng=rng,
        busy=frozenset(busy),
        token_now=database_now or now,
        discovered=discovered is not None,
    )
    observed = dict(observations)
    rows = list(rows)
    orphans: dict[str, tuple[Observation, StopWhy]] = {}
    planner.mark_superseded(rows)
    if discovered is not None:
        rows = planner.discover(rows, observed, discovered, orphans)
    for row in rows:
        if row.id not in planner.busy:
            planner.row(row, observed.get(row.external_id) if row.external_id else None)
    launches, deferred = planner.take_launches(launch_budget)
    found: Mapping[str, datetime] | None = None
    new = 0
    if discovered is not None:
        swept = sweep(
            {e: o for e, (o, _) in orphans.items()},
            previous=orphans_seen or {},
            now=now,
            grace=settings.orphan_grace,
        )
        found, new = swept.first_seen, swept.new
        for external_id in swept.due:
            if external_id not in planner.busy:
                obs, why = orphans[external_id]
                planner.stops.append(_orphan_stop(obs, why, settings.deployment))
    return Plan(
        requeue_after=planner.requeue(launches, deferred),
        transitions=tuple(planner.transitions),
        stops=tuple(planner.stops),
        launches=launches,
        deferred=deferred,
        orphans=found,
        new_orphans=new,
    )


def to_describe(rows: Sequence[TaskRecord], *, steady: bool, again: Collection[str] = ()) -> dict[str, str | None]:
    """The tasks a polling cycle describes (external id -> target): every task of a row that is
    starting, being stopped or no longer wanted; one that runs as wanted only in a round of
    looks (``steady``, every ``running_describe_interval``) or when its last describe failed
    (``again``): such a task only has its end left to tell, and Airflow hears of that from the
    task itself."""
    targets: dict[str, str | None] = {}
    for row in rows:
        if not row.external_id or not row.phase.on_aws:
            continue
        quiet = row.phase is Phase.RUNNING and row.desired is Desired.RUNNING and row.superseded_at is None
        if quiet and not steady and row.external_id not in again:
            continue
        targets[row.external_id] = row.target
    return targets


def requeue_after(
    plan: Plan,
    *,
    throttled: bool,
    settings: ControllerSettings,
    now: datetime | None = None,
    retries_due: Collection[datetime] = (),
) -> float:
    """When the next cycle is wanted once ``plan`` ran: no later than the soonest retry its
    launches scheduled (``retries_due``, seen at ``now``); after AWS throttled us, not sooner than
    ``backoff_base`` (hammering a throttled API only prolongs the throttling)."""
    wanted = plan.requeue_after
    if retries_due and now is not None:
        wanted = min(wanted, max(0.0, (min(retries_due) - now).total_seconds()))
    return max(wanted, settings.backoff_base) if throttled else wanted


# ---- the outcome of one launch ----------------------------------------------------------------


def launch_succeeded(row: TaskRecord, external_id: str, *, now: datetime) -> Transition:
    """The launch of claimed (``launching``) ``row`` returned ``external_id``."""
    return Transition(
        row=row,
        effect=Effect.LAUNCHED,
        changes={"phase": Phase.PROVISIONING, "external_id": external_id, "launched_at": now, "last_error": None},
        expect_phases=(Phase.LAUNCHING,),
        expect_attempt=row.attempt,
    )


def launch_failed(
    row: TaskRecord,
    error: AwsError,
    *,
    now: datetime,
    settings: ControllerSettings,
    rng: Callable[[], float],
    token_now: datetime | None = None,
) -> Transition:
    """The launch of claimed ``row`` failed with ``error``: fail, give the attempt back, move to the
    next attempt, or retry the same one (the call may have started a task). ``token_now``: the
    database's time, for the row's token deadline (None: ``now``)."""
    match error.outcome:
        case Outcome.TERMINAL:
            return _fail(row, f"launch failed: {error.reason}")
        case Outcome.THROTTLED | Outcome.CREDENTIALS:
            # Refused before anything started, and not this task's fault: give the attempt back.
            delay = backoff_delay(attempt=1, base=settings.backoff_base, cap=settings.backoff_max, rng=rng)
            return Transition(
                row=row,
                effect=Effect.RETRY,
                changes={
                    "phase": Phase.PENDING,
                    "attempt": row.attempt - 1,
                    "next_attempt_at": now + timedelta(seconds=delay),
                    "last_error": error.reason,
                },
                expect_phases=(Phase.LAUNCHING,),
                expect_attempt=row.attempt,
                retry=Retry.THROTTLED if error.outcome is Outcome.THROTTLED else Retry.CREDENTIALS,
            )
        case Outcome.REJECTED:
            # Certainly nothing started (capacity): the next attempt gets a new client token.
            return _retry_or_fail(
                row,
                f"launch failed: {error.reason}",
                Retry.CAPACITY,
                now=now,
                settings=settings,
                rng=rng,
                token_now=token_now or now,
            )
        case Outcome.AMBIGUOUS:
            # The call may have started a task: retry the SAME attempt (same clientToken / job
            # name), later each time, and not before a lookup could see what it started.
            previous = 0.0
            if row.next_attempt_at is not None:
                previous = max(0.0, (row.next_attempt_at - row.updated_at).total_seconds())
            delay = grown_delay(previous=previous, base=settings.backoff_base, cap=settings.backoff_max, rng=rng)
            delay = max(delay, settings.relaunch_delay)
            return Transition(
                row=row,
                effect=Effect.RETRY,
                changes={"next_attempt_at": now + timedelta(seconds=delay), "last_error": error.reason},
                expect_phases=(Phase.LAUNCHING,),
                expect_attempt=row.attempt,
                retry=Retry.AMBIGUOUS,
            )
        case _:
            assert_never(error.outcome)


def launch_too_late(row: TaskRecord, *, now: datetime, claimed: bool) -> Transition | None:
    """The launch of ``row`` was not sent: right before the call its token was within
    ``token_margin`` of its expiry. A freshly claimed attempt reached nothing: it is given back,
    and the row waits for the expiry. A relaunch (``claimed`` false) may have reached AWS before:
    the row stays ``launching`` for discovery to find what it started (None: nothing to write)."""
    if not claimed:
        return None
    return Transition(
        row=row,
        effect=Effect.TOO_LATE,
        changes={
            "phase": Phase.PENDING,
            "attempt": row.attempt - 1,
            "next_attempt_at": now,
            "last_error": "not launched: its Airflow workload token expires within [aws_reconciler] token_margin",
        },
        expect_phases=(Phase.LAUNCHING,),
        expect_attempt=row.attempt,
    )


def launch_impossible(row: TaskRecord, reason: str) -> Transition:
    """The row cannot be launched at all (no launch request stored)."""
    return _fail(row, reason)


def launch_without_token(
    row: TaskRecord, reason: str, *, lost: bool, now: datetime, settings: ControllerSettings, rng: Callable[[], float]
) -> Transition:
    """The workload token of claimed ``row`` cannot be put back into its request.

    ``lost``: the token was discarded, the row can never launch: it fails. Otherwise this
    reconciler cannot open it (no ``token_key``, or another key than the scheduler's): its
    configuration, not the task, is at fault, so the attempt is given back as for missing AWS
    credentials and the row waits for the key to be fixed (or for its token to expire).
    """
    if lost:
        return _fail(row, f"not launched: {reason}")
    error = RetriableError(f"not launched: {reason}", outcome=Outcome.CREDENTIALS)
    return launch_failed(row, error, now=now, settings=settings, rng=rng)


# ---- the planner --------------------------------------------------------------------------------


def _fail(row: TaskRecord, reason: str) -> Transition:
    return Transition(
        row=row,
        effect=Effect.FAILED,
        changes={"phase": Phase.FAILED, "status_reason": reason},
        expect_phases=(row.phase,),
    )


def _retry_or_fail(
    row: TaskRecord,
    reason: str,
    why: Retry,
    *,
    now: datetime,
    settings: ControllerSettings,
    rng: Callable[[], float],
    token_now: datetime | None = None,
) -> Transition:
    """Nothing ran: a new attempt after backoff, unless the attempts are spent.

    A capacity shortage of a row whose token deadline is known is retried until that deadline,
    each retry at most half-way there, so the last ones come close to it: capacity frees up by
    itself, and a row given up early would fail a try Airflow could have requeued.
    """
    until_deadline = _launchable_for(row, token_now or now, settings) if why is Retry.CAPACITY else None
    if until_deadline is None and row.attempt >= settings.max_launch_attempts:
        return _fail(row, f"gave up after {row.attempt} launch attempts: {reason}")
    delay = backoff_delay(attempt=row.attempt, base=settings.backoff_base, cap=settings.backoff_max, rng=rng)
    if until_deadline is not None:
        delay = min(delay, max(0.0, until_deadline / 2))
    return Transition(
        row=row,
        effect=Effect.RETRY,
        changes={
            "phase": Phase.PENDING,
            "external_id": None,
            "next_attempt_at": now + timedelta(seconds=delay),
            "last_error": reason,
        },
        expect_phases=(row.phase,),
        expect_attempt=row.attempt,
        retry=why,
    )


def _launchable_for(row: TaskRecord, token_now: datetime, settings: ControllerSettings) -> float | None:
    """Seconds left to launch ``row`` before its token is within ``token_margin`` of its expiry
    (negative once past); None when the token's expiry is not known."""
    left = row.token_seconds_left(token_now)
    return None if left is None else left - settings.token_margin


def _expired(row: TaskRecord, token_now: datetime) -> Transition:
    assert row.token_expires_at is not None
    return _fail(
        row,
        f"not launched: its Airflow workload token expired at {row.token_expires_at.isoformat(timespec='seconds')}; "
        "Airflow requeues the task instance with a fresh token ([scheduler] task_queued_timeout)"
        + (f"; last error: {row.last_error}" if row.last_error else ""),
    )


def _orphan_stop(obs: Observation, why: StopWhy, deployment: str) -> Stop:
    if why is StopWhy.DUPLICATE:
        reason = (
            f"aws-reconciler: duplicate of task record {obs.record_id} (another task runs it); "
            f"orphan of deployment {deployment}"
        )
    else:
        reason = f"aws-reconciler: orphan of deployment {deployment} (no open task record)"
    return Stop(external_id=obs.external_id, target=obs.target, reason=reason, why=why)


def _advance(obs: Observation) -> tuple[int, int]:
    """How far along a task is, to keep the most advanced of several of one row."""
    return (2 if obs.phase is Phase.RUNNING else 1, 1 if obs.started_at is not None else 0)


@dataclass
class _Planner:
    settings: ControllerSettings
    now: datetime
    rng: Callable[[], float]
    busy: frozenset[str]
    # The database's time, which token expiries are compared with.
    token_now: datetime
    # A discovery ran this cycle (it would have found the task of a launch whose answer was lost).
    discovered: bool = False
    transitions: list[Transition] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    due: list[tuple[datetime, datetime, TaskRecord]] = field(default_factory=list)
    wake: list[datetime] = field(default_factory=list)
    superseded: set[str] = field(default_factory=set)

    # ---- which rows Airflow still wants ------------------------------------------------------

    def mark_superseded(self, rows: Sequence[TaskRecord]) -> None:
        """Older open rows of a TI key that was queued again: the newest queueing is the one wanted
        (its token is the live one), even where the store has not flagged the older one."""

        def recency(row: TaskRecord) -> tuple[bool, datetime, str]:
            return (row.superseded_at is None, row.created_at, row.id)

        newest: dict[TiKey, TaskRecord] = {}
        for row in rows:
            best = newest.get(row.key)
            if best is None or recency(row) > recency(best):
                newest[row.key] = row
        self.superseded = {r.id for r in rows if r.superseded_at is not None or newest[r.key].id != r.id}

    def wanted(self, row: TaskRecord) -> bool:
        return row.desired is Desired.RUNNING and row.id not in self.superseded and row.phase is not Phase.STOPPING

    def why_unwanted(self, row: TaskRecord) -> StopWhy:
        # Airflow's own revoke comes first: a revoked queueing that was then queued again was
        # revoked, not superseded (the store flags supersedes itself).
        if row.superseded_at is not None:
            return StopWhy.SUPERSEDED
        if row.desired is Desired.STOPPED:
            return StopWhy.REVOKED
        return StopWhy.SUPERSEDED if row.id in self.superseded else StopWhy.REVOKED

    # ---- discovery -----------------------------------------------------------------------------

    def discover(
        self,
        rows: list[TaskRecord],
        observed: dict[str, Observation],
        discovered: Sequence[Observation],
        orphans: dict[str, tuple[Observation, StopWhy]],
    ) -> list[TaskRecord]:
        """Adopt lost launches, follow the most advanced of several tasks of one row, and collect
        orphans (tasks of ours no open row follows). Returns the rows as the adoptions left them."""
        by_external = {r.external_id: r for r in rows if r.external_id}
        by_id = {r.id: r for r in rows}
        extra: dict[str, list[Observation]] = {}
        for obs in discovered:
            if not obs.owned or obs.external_id in self.busy:
                continue
            if obs.external_id in by_external:
                # A row's own task; its observation stands in for a describe batch that failed.
                observed.setdefault(obs.external_id, obs)
                continue
            if obs.phase.terminal:
                continue
            row = by_id.get(obs.record_id or "")
            if row is None or not self.wanted(row):
                orphans[obs.external_id] = (obs, StopWhy.ORPHAN)
            elif row.id in self.busy:
                continue  # its launch is in flight: the answer will say which task it is
            elif row.external_id is None and row.phase is Phase.PENDING:
                # An ambiguous launch whose retry was throttled gave its attempt back; its next
                # launch (same client token / job name) takes this task. Not an orphan.
                continue
            else:
                extra.setdefault(row.id, []).append(obs)
        updated: dict[str, TaskRecord] = {}
        for record_id, found in extra.items():
            row = by_id[record_id]
            current = observed.get(row.external_id) if row.external_id else None
            if row.external_id is not None and current is None:
                continue  # nothing known of the row's own task this cycle: decide next time
            if current is not None and current.phase.terminal and not current.missing:
                # The row's task ended; whatever else carries its id is a duplicate.
                for obs in found:
                    orphans[obs.external_id] = (obs, StopWhy.DUPLICATE)
                continue
            options = list(found)
            if row.external_id is not None and current is not None and not current.missing:
                options.append(current)
            # The most advanced wins; among equals the one the row follows, then the oldest.
            best = max(
                options,
                key=lambda o: (
                    _advance(o),
                    o.external_id == row.external_id,
                    -(o.created_at.timestamp() if o.created_at else 0.0),
                ),
            )
            if row.external_id is None:
                self.transitions.append(
                    Transition(
                        row=row,
                        effect=Effect.ADOPTED,
                        changes={
                            "phase": Phase.PROVISIONING,
                            "external_id": best.external_id,
                            "launched_at": self.now,
                        },
                        expect_phases=(Phase.LAUNCHING,),
                        expect_attempt=row.attempt,
                    )
                )
                updated[row.id] = replace(
                    row, phase=Phase.PROVISIONING, external_id=best.external_id, launched_at=self.now
                )
            elif best.external_id != row.external_id:
                self.transitions.append(
                    Transition(
                        row=row,
                        effect=Effect.REPOINTED,
                        changes={"external_id": best.external_id, "target": best.target or row.target},
                        expect_phases=(row.phase,),
                        expect_attempt=row.attempt,
                    )
                )
                updated[row.id] = replace(row, external_id=best.external_id, target=best.target or row.target)
            observed[best.external_id] = best
            for obs in options:
                if obs.external_id != best.external_id:
                    orphans[obs.external_id] = (obs, StopWhy.DUPLICATE)
        return [updated.get(r.id, r) for r in rows]

    # ---- one row -------------------------------------------------------------------------------

    def row(self, row: TaskRecord, obs: Observation | None) -> None:
        if not self.wanted(row):
            self.unwanted(row, obs)
        elif row.phase.waiting_for_launch:
            self.launch_or_expire(row)
        elif obs is not None:
            self.observed(row, obs)

    def unknown_yet(self, row: TaskRecord, obs: Observation) -> bool:
        """AWS does not know the task, but it was launched too recently to be sure it is gone."""
        if not obs.missing:
            return False
        since = row.launched_at or row.updated_at
        return (self.now - since).total_seconds() < self.settings.missing_grace

    def unwanted(self, row: TaskRecord, obs: Observation | None) -> None:
        why = self.why_unwanted(row)
        prefix = (
            "superseded by a newer queueing of the same task instance"
            if why is StopWhy.SUPERSEDED
            else ("revoked by Airflow")
        )
        if row.external_id is None:
            # Never launched, or launched with its answer lost: an orphan sweep stops the latter.
            self.transitions.append(
                Transition(
                    row=row,
                    effect=Effect.REVOKED,
                    changes={"phase": Phase.REVOKED, "status_reason": f"{prefix} before launch"},
                    expect_phases=(row.phase,),
                )
            )
            return
        if obs is not None and (obs.phase.terminal or obs.missing) and not self.unknown_yet(row, obs):
            self.transitions.append(self.finish(row, obs, prefix=prefix))
            return
        if row.phase is Phase.STOPPING and (self.now - row.updated_at).total_seconds() < self.settings.resync_interval:
            # Asked already. A stop that did not take (its answer lost, or a Batch job that started
            # between DescribeJobs and CancelJob) is sent again once per resync_interval.
            return
        self.stops.append(
            Stop(
                external_id=row.external_id,
                target=row.target,
                reason=f"aws-reconciler: {prefix}",
                why=why,
                record_id=row.id,
                # Also rewrites a stopping row, which restarts its resend timer (updated_at).
                then=Transition(
                    row=row, effect=Effect.STOPPING, changes={"phase": Phase.STOPPING}, expect_phases=(row.phase,)
                ),
            )
        )

    def launch_or_expire(self, row: TaskRecord) -> None:
        if row.token_expires_at is not None:
            self.launch_before_the_token_expires(row)
            return
        if (self.now - row.created_at).total_seconds() > self.settings.task_queued_timeout:
            self.transitions.append(
                _fail(
                    row,
                    f"not launched: the Airflow workload token expired ({self.settings.task_queued_timeout:.0f} s "
                    f"after queueing, [scheduler] task_queued_timeout)"
                    + (f"; last error: {row.last_error}" if row.last_error else ""),
                )
            )
            return
        self.launch_when_due(row)

    def launch_before_the_token_expires(self, row: TaskRecord) -> None:
        """The rules of a row whose token's expiry is known (see the module's docstring)."""
        left = row.token_seconds_left(self.token_now)
        assert left is not None
        if left <= 0:
            if row.phase is Phase.PENDING or (
                self.discovered and (self.now - row.updated_at).total_seconds() >= self.settings.missing_grace
            ):
                self.transitions.append(_expired(row, self.token_now))
            return  # a `launching` row waits for a discovery that would find what it started
        if left <= self.settings.token_margin:
            # Too late for a container to start in time: wait for the expiry, then fail.
            self.wake.append(self.now + timedelta(seconds=left))
            return
        self.launch_when_due(row)

    def launch_when_due(self, row: TaskRecord) -> None:
        due_at = row.next_attempt_at or row.created_at
        if row.phase is Phase.LAUNCHING and self.settings.relaunch_delay > 0:
            # It may have been sent when the row last changed: relaunch once a lookup can see it.
            due_at = max(due_at, row.updated_at + timedelta(seconds=self.settings.relaunch_delay))
        if due_at <= self.now:
            self.due.append((due_at, row.created_at, row))
        else:
            self.wake.append(due_at)

    def observed(self, row: TaskRecord, obs: Observation) -> None:
        if self.unknown_yet(row, obs):
            return
        if obs.never_started and obs.phase.terminal and not obs.missing:
            reason = f"task stopped before its container started: {obs.reason}"
            self.transitions.append(
                _retry_or_fail(row, reason, Retry.NEVER_STARTED, now=self.now, settings=self.settings, rng=self.rng)
            )
        elif obs.phase.terminal or obs.missing:
            self.transitions.append(self.finish(row, obs))
        elif obs.stuck is not None:
            # It will not progress by itself (a Batch job RUNNABLE too long): stop it, then fail the
            # row at once rather than when AWS confirms, which for a job waiting for capacity can
            # take long; should the stop not take, the orphan sweep stops the job again.
            assert row.external_id is not None
            self.stops.append(
                Stop(
                    external_id=row.external_id,
                    target=row.target,
                    reason=f"aws-reconciler: {obs.stuck.reason}",
                    why=obs.stuck.code,
                    record_id=row.id,
                    then=_fail(row, obs.stuck.reason),
                )
            )
        elif obs.phase is not row.phase or (obs.started_at and row.started_at is None):
            started_at = obs.started_at or row.started_at
            if obs.phase is Phase.RUNNING and started_at is None:
                started_at = self.now
            self.transitions.append(
                Transition(
                    row=row,
                    effect=Effect.PROGRESS,
                    changes={"phase": obs.phase, "started_at": started_at},
                    expect_phases=(row.phase,),
                    expect_attempt=row.attempt,
                )
            )

    def finish(self, row: TaskRecord, obs: Observation, *, prefix: str | None = None) -> Transition:
        reason = obs.reason or ""
        if prefix:
            reason = f"{prefix}: {reason}" if reason else prefix
            phase = Phase.REVOKED
        else:
            phase = Phase.FAILED if obs.missing else obs.phase
        effect = {Phase.SUCCEEDED: Effect.SUCCEEDED, Phase.REVOKED: Effect.REVOKED}.get(phase, Effect.FAILED)
        return Transition(
            row=row,
            effect=effect,
            changes={
                "phase": phase,
                "exit_code": obs.exit_code,
                "stop_code": obs.stop_code,
                "status_reason": reason or None,
                "started_at": obs.started_at or row.started_at,
                "finished_at": obs.finished_at or self.now,
            },
            expect_phases=(row.phase,),
            expect_attempt=row.attempt,
        )

    # ---- launches and the next cycle -----------------------------------------------------------

    def take_launches(self, budget: int | None) -> tuple[tuple[TaskRecord, ...], int]:
        """The due rows to launch now, oldest due first, at most ``budget``; and how many wait."""
        ordered = [row for _due, _created, row in sorted(self.due, key=lambda d: (d[0], d[1], d[2].id))]
        if budget is not None:
            budget = max(0, budget)
            return tuple(ordered[:budget]), max(0, len(ordered) - budget)
        return tuple(ordered), 0

    def requeue(self, launches: tuple[TaskRecord, ...], deferred: int) -> float:
        """Back at once while launches wait only for this cycle's to leave, else at the soonest due
        row, at the latest after ``reconcile_interval``."""
        interval = self.settings.reconcile_interval
        if deferred and launches:
            return 0.0
        if not self.wake:
            return interval
        soonest = (min(self.wake) - self.now).total_seconds()
        return max(0.0, min(interval, soonest))
