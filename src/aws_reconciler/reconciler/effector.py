"""Executes a :class:`~.plan.Plan`: the only part of a cycle that writes to the store or AWS.

Store transitions run in the cycle's thread, in the plan's order. Launches and stops run in a
thread pool and are NOT waited for beyond one interval: a hung call (it ends at the client's
``aws_call_timeout``) or a burst that waits for rate-limit tokens never holds up the next
observe/stop pass. Their outcomes are collected when they arrive, in this cycle or a later one;
until then their rows are *busy* and the planner leaves them alone.

Stats and metrics are derived here, from what was executed (a transition whose compare-and-set
lost counts for nothing), the way controller-runtime's controller owns the metrics around a
logic-only reconciler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, assert_never

from sqlalchemy.engine import Connection

from ..backends.base import TaskBackend
from ..backends.calls import NotLeader, TooLate
from ..backends.errors import AwsError, Outcome, classify
from ..metrics.definitions import Metrics
from ..model import Phase
from ..store.lease import Fence
from ..store.records import Change, TaskRecord
from ..store.sealing import LaunchRequest, TokenSealer, TokenUnavailable
from ..store.tasks import TaskStore
from .plan import (
    ControllerSettings,
    Effect,
    Plan,
    Retry,
    Stop,
    Transition,
    launch_failed,
    launch_impossible,
    launch_too_late,
    launch_without_token,
)
from .plan import launch_succeeded as launch_succeeded_transition
from .result import CycleStats

log = logging.getLogger(__name__)

# Retries that cost no attempt (AWS refused to act now) are not "launch retries" of the row.
_GIVEN_BACK = (Retry.THROTTLED, Retry.CREDENTIALS)


def launch_result(error: AwsError) -> str:
    """The ``result`` label of ``aws_reconciler_launches_total`` for a failed launch."""
    match error.outcome:
        case Outcome.TERMINAL:
            return "terminal_error"
        case Outcome.THROTTLED:
            return "throttled"
        case Outcome.CREDENTIALS | Outcome.REJECTED | Outcome.AMBIGUOUS:
            return "retriable_error"
        case _:
            assert_never(error.outcome)


@dataclass(frozen=True)
class Done:
    """One executed piece of a plan, as the accounting sees it."""

    transition: Transition | None = None  # applied (its compare-and-set won)
    stop: Stop | None = None  # sent
    launch_result: str | None = None  # a launch call returned (success or an error label)
    row_error: bool = False


@dataclass
class Tally:
    """What one cycle executed, as counts. Only the cycle's thread adds to it: workers return
    :class:`Done` records, accounted when collected."""

    counts: dict[str, int] = field(default_factory=dict)
    stopped_orphans: list[str] = field(default_factory=list)
    # When the retries scheduled by this cycle's launches are due.
    retries_due: list[datetime] = field(default_factory=list)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def stats(self, **extra: int) -> CycleStats:
        return CycleStats(**{**self.counts, **extra})


@dataclass(frozen=True)
class DatabaseTime:
    """The database's time ``at``, read when this process's monotonic clock said ``monotonic``:
    carried forward on the monotonic clock, so token deadlines never meet the local wall clock."""

    at: datetime
    monotonic: float

    def now(self, monotonic: float) -> datetime:
        """The database's time when the monotonic clock says ``monotonic``."""
        return self.at + timedelta(seconds=monotonic - self.monotonic)

    def deadline(self, expires_at: datetime, margin: float) -> float:
        """The monotonic time ``margin`` seconds before ``expires_at`` (database time)."""
        return self.monotonic + (expires_at - self.at).total_seconds() - margin


@dataclass(frozen=True)
class _Call:
    """A launch or stop in flight, and the ids it keeps busy."""

    keys: tuple[str, ...]
    launch: bool


class _BatchLost(Exception):
    """A batch of transitions had one that lost its compare-and-set: roll back, write one by one."""


@dataclass
class _Written:
    """What writing a plan's transitions came to."""

    done: list[Done] = field(default_factory=list)
    # Rows whose compare-and-set lost or whose write failed: their later actions are skipped.
    lost: set[str] = field(default_factory=set)
    # Rows whose write raised (a subset of ``lost``).
    failed: set[str] = field(default_factory=set)


class Effector:
    """Writes what plans decide, for one backend; owns the pool of AWS calls in flight."""

    def __init__(
        self,
        *,
        store: TaskStore,
        backend: TaskBackend,
        settings: ControllerSettings,
        metrics: Metrics,
        clock: Callable[[], datetime],
        rng: Callable[[], float],
        is_leader: Callable[[], bool],
        fence: Callable[[], Fence | None] | None,
        tokens: TokenSealer | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        # Opens the sealed workload tokens (``[aws_reconciler] token_key``); without a key only
        # tokens stored in clear can be opened.
        self.tokens = tokens or TokenSealer()
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        self.is_leader = is_leader
        self._fence = fence
        self._monotonic = monotonic
        self._kind = backend.kind.value
        self._pool = ThreadPoolExecutor(max_workers=settings.launch_concurrency, thread_name_prefix="aws-call")
        self._in_flight: dict[Future[list[Done]], _Call] = {}
        self.stopping = threading.Event()
        self._token_trouble_logged = threading.Event()

    def close(self) -> None:
        """Let in-flight AWS calls finish (each is bounded by the client's timeouts), then release the threads."""
        self.stopping.set()
        self._pool.shutdown(wait=True)

    # ---- what is in flight ------------------------------------------------------------------

    def busy(self) -> frozenset[str]:
        """Record and external ids with a launch or stop in flight."""
        return frozenset(key for call in self._in_flight.values() for key in call.keys)

    def launches_in_flight(self) -> int:
        """Launches sent to the pool and not collected yet (they still draw on the rate limits)."""
        return sum(1 for call in self._in_flight.values() if call.launch)

    def in_flight(self) -> int:
        """Calls not collected yet."""
        return len(self._in_flight)

    def collect(self, tally: Tally) -> None:
        """Account for every call that has finished. A crash in a call (not an Exception) propagates."""
        for future in [f for f in self._in_flight if f.done()]:
            del self._in_flight[future]
            self._account(future.result(), tally)

    def settle(self, timeout: float, tally: Tally, monotonic: Callable[[], float]) -> None:
        """Wait up to ``timeout`` seconds for the calls in flight, collecting each as it ends."""
        deadline = monotonic() + timeout
        while self._in_flight:
            left = deadline - monotonic()
            if left <= 0:
                break
            wait(list(self._in_flight), timeout=left, return_when=FIRST_COMPLETED)
            self.collect(tally)

    # ---- executing a plan ---------------------------------------------------------------------

    def execute(self, plan: Plan, tally: Tally, *, database_time: DatabaseTime | None = None) -> set[str]:
        """Transitions first (in order; a row whose earlier transition lost skips its later ones),
        then stops and launches into the pool. A replica that does not lead writes nothing.

        The transitions are written in one transaction (a burst of changes costs one commit, not
        one per row); should that fail, one by one, so a row the database refuses is the only
        one left behind. Returns the ids of the rows whose write failed.

        ``database_time``: the database's time of the cycle, which the launches' token deadlines
        are measured against (None: no row waiting for a launch has one)."""
        if not self.is_leader():
            return set()
        try:
            # Nothing to record opens no transaction: an idle cycle commits nothing.
            if not plan.transitions:
                written = _Written()
            else:
                with self.store.transaction() as conn:
                    written = self._write_all(plan.transitions, conn=conn, tally=tally)
        except _BatchLost:
            # A compare-and-set lost (a revoke or another writer got there first): normal.
            written = self._write_all(plan.transitions, conn=None, tally=tally)
        except Exception:
            if len(plan.transitions) > 1:
                log.warning("writing %d transitions at once failed; writing them one by one", len(plan.transitions))
            written = self._write_all(plan.transitions, conn=None, tally=tally)
        lost, failed = written.lost, written.failed
        self._account(written.done, tally)
        for stop in plan.stops:
            if stop.record_id in lost:
                continue
            keys = (stop.external_id,) if stop.record_id is None else (stop.external_id, stop.record_id)
            self._submit(keys, False, self._stop, stop)
        self._launch([r for r in plan.launches if r.id not in lost], tally, database_time)
        return failed

    def _write_all(self, transitions: Sequence[Transition], *, conn: Connection | None, tally: Tally) -> _Written:
        """Write ``transitions`` in ``conn``'s transaction (an error raises: the caller retries one
        by one), or each in its own (``conn`` None: an error skips that row)."""
        written = _Written()
        if conn is not None and self._write_batch(transitions, conn=conn, written=written):
            return written
        for transition in transitions:
            if transition.record_id in written.lost:
                continue
            try:
                done = self._write(transition, conn=conn)
            except Exception:
                if conn is not None:
                    raise
                written.lost.add(transition.record_id)
                written.failed.add(transition.record_id)
                tally.add("row_errors")
                log.exception("reconciling task %s failed; continuing with the others", transition.record_id)
                continue
            if done is None:
                written.lost.add(transition.record_id)
            else:
                written.done.append(done)
        return written

    def _write_batch(self, transitions: Sequence[Transition], *, conn: Connection, written: _Written) -> bool:
        """Write ``transitions`` as one batch when they can be (one per row: a row's second
        transition depends on its first). True when that wrote all of them; a change that lost
        raises :class:`_BatchLost` (the caller rolls back and writes them one by one, which says
        which lost); False when the batch was not tried."""
        if len(transitions) < 2 or len({t.record_id for t in transitions}) != len(transitions):
            return False
        fence: Fence | None = None
        if self._fence is not None:
            fence = self._fence()
            if fence is None:
                written.lost.update(t.record_id for t in transitions)
                return True
        changes = [
            Change(
                record_id=t.record_id,
                expect_phases=tuple(t.expect_phases),
                values=t.changes,
                expect_attempt=t.expect_attempt,
            )
            for t in transitions
        ]
        applied = self.store.transitions(changes, conn=conn, fence=fence)
        if applied is None:
            return False
        if not applied:
            raise _BatchLost
        written.done.extend(Done(transition=t) for t in transitions)
        return True

    def _write(self, transition: Transition, *, conn: Connection | None = None) -> Done | None:
        """Apply one transition; None when its compare-and-set lost or leadership is gone."""
        kwargs: dict[str, Any] = {}
        if self._fence is not None:
            fence = self._fence()
            if fence is None:
                return None
            kwargs["fence"] = fence
        applied = self.store.transition(
            transition.record_id,
            conn=conn,
            expect_phases=list(transition.expect_phases),
            expect_attempt=transition.expect_attempt,
            **kwargs,
            **transition.changes,
        )
        return Done(transition=transition) if applied else None

    def _submit(self, keys: tuple[str, ...], launch: bool, fn: Callable[..., list[Done]], *args: Any) -> None:
        self._in_flight[self._pool.submit(fn, *args)] = _Call(keys=keys, launch=launch)

    def _launch(self, rows: Sequence[TaskRecord], tally: Tally, database_time: DatabaseTime | None) -> None:
        if not rows or self.stopping.is_set() or not self.is_leader():
            return
        kwargs: dict[str, Any] = {}
        if self._fence is not None:
            fence = self._fence()
            if fence is None:
                return
            kwargs["fence"] = fence
        # The claim checks the tokens again, on the database's clock, as it writes.
        claimed = self.store.claim_for_launch(
            [r.id for r in rows if r.phase is Phase.PENDING], token_margin=self.settings.token_margin, **kwargs
        )
        now = self.clock()
        batch = [
            # As the claim left it: the attempt's clock (next_attempt_at - updated_at) starts at 0.
            replace(r, phase=Phase.LAUNCHING, attempt=claimed[r.id], next_attempt_at=now, updated_at=now)
            if r.phase is Phase.PENDING
            else r
            for r in rows
            if r.phase is Phase.LAUNCHING or r.id in claimed
        ]
        if not batch:
            return
        requests = self.store.launch_requests([r.id for r in batch])
        for row in batch:
            in_time = self._in_time(row, database_time)
            fresh = row.id in claimed
            self._submit((row.id,), True, self._launch_one, row, requests.get(row.id), fresh, in_time, database_time)

    def _in_time(self, row: TaskRecord, database_time: DatabaseTime | None) -> Callable[[], bool] | None:
        """Whether ``row``'s launch may still leave: its token is not within ``token_margin`` of
        its expiry. Asked right before the call is sent, after every rate-limit wait."""
        if row.token_expires_at is None or database_time is None:
            return None
        deadline = database_time.deadline(row.token_expires_at, self.settings.token_margin)
        return lambda: self._monotonic() < deadline

    # ---- in the pool -------------------------------------------------------------------------

    def _launch_one(
        self,
        row: TaskRecord,
        request: LaunchRequest | None,
        claimed: bool = True,
        in_time: Callable[[], bool] | None = None,
        database_time: DatabaseTime | None = None,
    ) -> list[Done]:
        """Launch one claimed (``launching``) row and record the outcome the planner decides.

        ``claimed``: this cycle claimed the attempt (else it is a relaunch of one that may have
        reached AWS); ``in_time``: see :meth:`_in_time`."""
        if self.stopping.is_set() or not self.is_leader():
            return []  # stays `launching`: whoever leads next relaunches it with the same client token
        try:
            if request is None or request.spec is None:
                done = self._write(launch_impossible(row, "task record has no launch request"))
                return [done] if done else []
            try:
                # Byte for byte the request built at queue time: the same attempt's relaunch
                # must not look like another request under the same client token.
                spec = self.tokens.open_request(request.spec, request.workload_token)
            except TokenUnavailable as exc:
                return self._token_unavailable(row, exc)
            try:
                deadline = {"in_time": in_time} if in_time is not None else {}
                external_id = self.backend.launch(record_id=row.id, attempt=row.attempt, spec=spec, **deadline)
            except NotLeader:
                return []  # fenced: stays `launching` for the next leader, same client token
            except TooLate:
                too_late = launch_too_late(row, now=self.clock(), claimed=claimed)
                written = self._write(too_late) if too_late is not None else None
                return [written] if written else []
            except Exception as exc:
                error = classify(exc)
                token_now = database_time.now(self._monotonic()) if database_time is not None else None
                transition = launch_failed(
                    row, error, now=self.clock(), settings=self.settings, rng=self.rng, token_now=token_now
                )
                if error.outcome is Outcome.AMBIGUOUS:
                    log.warning(
                        "task %s: launch outcome unknown (%s); retrying attempt %d", row.id, error.reason, row.attempt
                    )
                result = Done(launch_result=launch_result(error))
                done = self._write(transition)
                return [result, done] if done else [result]
            done = self._write(launch_succeeded_transition(row, external_id, now=self.clock()))
            return [Done(launch_result="success"), done] if done else []
        except Exception:
            # The store failed to record the outcome: the row stays `launching` and is relaunched
            # (idempotently) later.
            log.exception("recording the launch of task %s failed; it is retried", row.id)
            return [Done(row_error=True)]

    def _token_unavailable(self, row: TaskRecord, error: TokenUnavailable) -> list[Done]:
        """A token this reconciler cannot open is its configuration's fault: said once, loudly."""
        if not error.lost and not self._token_trouble_logged.is_set():
            self._token_trouble_logged.set()
            log.error("task %s: %s; every such task waits until the key is fixed", row.id, error)
        transition = launch_without_token(
            row, str(error), lost=error.lost, now=self.clock(), settings=self.settings, rng=self.rng
        )
        done = self._write(transition)
        return [done] if done else []

    def _stop(self, stop: Stop) -> list[Done]:
        """Send one stop; on success apply its row's transition. AWS trouble is one warning line."""
        if self.stopping.is_set() or not self.is_leader():
            return []
        subject = (
            f"orphan {stop.external_id}" if stop.record_id is None else f"{stop.external_id} of task {stop.record_id}"
        )
        try:
            self.backend.stop(external_id=stop.external_id, target=stop.target, reason=stop.reason)
        except NotLeader:
            return []
        except AwsError as exc:
            log.warning("could not stop %s (%s): %s; retried later", subject, stop.why, exc.reason)
            return []
        except Exception as exc:
            log.warning("could not stop %s (%s): unexpected %s: %s", subject, stop.why, type(exc).__name__, exc)
            return [Done(row_error=True)]
        results = [Done(stop=stop)]
        if stop.then is not None:
            try:
                done = self._write(stop.then)
            except Exception:
                log.exception("recording the stop of task %s failed; it is sent again later", stop.record_id)
                return [*results, Done(row_error=True)]
            if done is not None:
                results.append(done)
        return results

    # ---- accounting -----------------------------------------------------------------------------

    def _account(self, executed: Iterable[Done], tally: Tally) -> None:
        for done in executed:
            if done.row_error:
                tally.add("row_errors")
            if done.launch_result is not None:
                self.metrics.launches.labels(self._kind, done.launch_result).inc()
                if done.launch_result == "throttled":
                    tally.add("throttled")
            if done.stop is not None:
                self._account_stop(done.stop, tally)
            if done.transition is not None:
                self._account_transition(done.transition, tally)

    def _account_stop(self, stop: Stop, tally: Tally) -> None:
        self.metrics.stops.labels(self._kind, stop.why).inc()
        if stop.orphan:
            tally.add("orphans_stopped")
            tally.stopped_orphans.append(stop.external_id)
            log.warning("stopped %s task %s (record %s)", stop.why, stop.external_id, stop.record_id or "none")
        else:
            tally.add("stopped")

    def _account_transition(self, t: Transition, tally: Tally) -> None:
        kind, row, changes = self._kind, t.row, t.changes
        match t.effect:
            case Effect.LAUNCHED:
                tally.add("launched")
                launched_at = changes["launched_at"]
                self.metrics.queue_to_launch.labels(kind).observe(
                    max(0.0, (launched_at - row.created_at).total_seconds())
                )
            case Effect.PROGRESS:
                started_at = changes.get("started_at")
                if row.started_at is None and started_at is not None and row.launched_at is not None:
                    self.metrics.launch_to_running.labels(kind).observe(
                        max(0.0, (started_at - row.launched_at).total_seconds())
                    )
            case Effect.SUCCEEDED:
                tally.add("finished")
            case Effect.FAILED:
                tally.add("failed")
                log.info("task %s failed: %s", row.id, changes.get("status_reason"))
            case Effect.REVOKED:
                tally.add("revoked")
                log.info("task %s ended: %s", row.id, changes.get("status_reason"))
            case Effect.RETRY:
                assert t.retry is not None
                self.metrics.launch_retries.labels(kind, t.retry.value).inc()
                tally.retries_due.append(changes["next_attempt_at"])
                if t.retry not in _GIVEN_BACK:
                    tally.add("launch_retries")
                    log.info(
                        "task %s: %s; attempt %d at %s",
                        row.id,
                        changes.get("last_error"),
                        row.attempt + (1 if changes.get("phase") is Phase.PENDING else 0),
                        changes.get("next_attempt_at"),
                    )
            case Effect.ADOPTED:
                log.info(
                    "task %s: found its task %s, launched before the answer was lost", row.id, changes["external_id"]
                )
            case Effect.REPOINTED:
                log.warning(
                    "task %s: follows %s now, the most advanced of its tasks (was %s)",
                    row.id,
                    changes["external_id"],
                    row.external_id,
                )
            case Effect.STOPPING:
                pass  # counted with its stop
            case Effect.TOO_LATE:
                log.info(
                    "task %s: not launched, its workload token expires within token_margin (%.0f s); "
                    "it waits for Airflow to queue it again",
                    row.id,
                    self.settings.token_margin,
                )
            case _:
                assert_never(t.effect)
