"""Observation by events: AWS's state-change events, sorted against the rows, and their queue.

:func:`sort_events` and :func:`resync_drift` are pure: what a batch of events means for the open
rows, and how many rows a resync corrected that events should have told of. :class:`EventFeed`
is the effect around them: it receives from the backend's SQS queue (in a thread that wakes the
loop, or at the start of a cycle in ``run --once``), hands the events to the cycle, and deletes
each message only once the cycle that used it has committed.

Events are at least once and unordered. The order that matters is a row's phase: a task moves
forward (provisioning, running, ended) and never back, so an event that would move a row back
is stale, one that says what the row already says is a duplicate, and of several events of one
task the most advanced wins (ECS numbers its task changes: ``version`` breaks ties).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from prometheus_client import Counter

from ..backends.base import Observation, TaskBackend
from ..backends.errors import AwsError
from ..backends.events import EventQueue, QueuedEvent
from ..metrics.definitions import Metrics
from ..model import Phase, utcnow
from ..store.records import TaskRecord
from .backoff import backoff_delay

log = logging.getLogger(__name__)

# How far along a row or a task is; a task never goes back.
_RANK = {
    Phase.PENDING: 0,
    Phase.LAUNCHING: 0,
    Phase.PROVISIONING: 1,
    Phase.RUNNING: 2,
    # A stopping row's task runs until AWS says it ended.
    Phase.STOPPING: 2,
    Phase.SUCCEEDED: 3,
    Phase.FAILED: 3,
    Phase.REVOKED: 3,
}


def rank(phase: Phase) -> int:
    """0 waiting for a launch, 1 provisioning, 2 running (or being stopped), 3 ended."""
    return _RANK[phase]


def _freshness(obs: Observation) -> tuple[int, int, int]:
    return (rank(obs.phase), obs.version if obs.version is not None else -1, 1 if obs.started_at else 0)


def is_news(row: TaskRecord, obs: Observation) -> bool:
    """Whether ``obs`` tells ``row`` something it does not know: a later phase, or its start time."""
    ahead = rank(obs.phase) - rank(row.phase)
    return ahead > 0 or (ahead == 0 and obs.started_at is not None and row.started_at is None)


class Verdict(StrEnum):
    """What became of one event: the ``aws_reconciler_events_<verdict>_total`` counters."""

    APPLIED = "applied"  # news for an open row: handed to the plan
    STALE = "stale"  # older than what the row (or a newer event of the same task) says
    DUPLICATE = "duplicate"  # says what the row already says
    UNMATCHED = "unmatched"  # no open row follows the task (yet: its launch may not be recorded)
    # Not an event of this backend's service (a misdirected rule, a stray message): left for the
    # dead-letter queue, whose depth is alerted on.
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Sorted:
    """One batch of events against the open rows."""

    # External id -> the freshest news of an open row's task: what a describe would have said.
    observations: dict[str, Observation]
    # Message id -> what became of it.
    verdicts: dict[str, Verdict]


def sort_events(
    rows: Sequence[TaskRecord],
    events: Sequence[tuple[str, Observation]],
    *,
    ended: Collection[str] = (),
) -> Sorted:
    """Decide a batch of ``(message id, observation)`` pairs. ``ended``: external ids of tasks
    whose rows ended or moved on to another task lately (their late events are duplicates, not
    unmatched)."""
    by_external = {r.external_id: r for r in rows if r.external_id}
    best: dict[str, tuple[str, Observation]] = {}
    verdicts: dict[str, Verdict] = {}
    for message_id, obs in events:
        row = by_external.get(obs.external_id)
        if row is None:
            verdicts[message_id] = Verdict.DUPLICATE if obs.external_id in ended else Verdict.UNMATCHED
            continue
        if not is_news(row, obs):
            stale = rank(obs.phase) < rank(row.phase)
            verdicts[message_id] = Verdict.STALE if stale else Verdict.DUPLICATE
            continue
        current = best.get(obs.external_id)
        if current is None or _freshness(obs) > _freshness(current[1]):
            if current is not None:
                verdicts[current[0]] = Verdict.STALE
            best[obs.external_id] = (message_id, obs)
            verdicts[message_id] = Verdict.APPLIED
        else:
            same = _freshness(obs) == _freshness(current[1])
            verdicts[message_id] = Verdict.DUPLICATE if same else Verdict.STALE
    return Sorted(observations={e: obs for e, (_m, obs) in best.items()}, verdicts=verdicts)


def freshest(first: Mapping[str, Observation], second: Mapping[str, Observation]) -> dict[str, Observation]:
    """Both sets of observations, the more advanced where both speak of a task (a describe made
    after the events were received is as new as them, but AWS's reads lag behind its events)."""
    merged = dict(first)
    for external_id, obs in second.items():
        other = merged.get(external_id)
        if other is None or other.missing or (not obs.missing and _freshness(obs) >= _freshness(other)):
            merged[external_id] = obs
    return merged


def resync_drift(
    rows: Sequence[TaskRecord],
    described: Mapping[str, Observation],
    *,
    from_events: Mapping[str, Observation],
    now: datetime,
    missing_grace: float,
) -> int:
    """Rows a resync's describe moves forward that this cycle's events did not: each is an event
    lost (or, rarely, one still on its way). Unknown-yet tasks (launched within ``missing_grace``)
    are not counted: AWS may not list them yet."""
    drift = 0
    for row in rows:
        if not row.external_id or row.phase.terminal:
            continue
        obs = described.get(row.external_id)
        if obs is None:
            continue
        if obs.missing:
            since = row.launched_at or row.updated_at
            if (now - since).total_seconds() < missing_grace:
                continue
        elif not is_news(row, obs):
            continue
        told = from_events.get(row.external_id)
        if told is not None and rank(told.phase) >= rank(obs.phase):
            continue
        drift += 1
    return drift


@dataclass
class _Held:
    event: QueuedEvent
    first_seen: float


@dataclass
class Batch:
    """The events one cycle works on; :meth:`EventFeed.settle` is told what became of them."""

    events: list[QueuedEvent] = field(default_factory=list)


class EventFeed:
    """Receives one backend's events from its queue and deletes them once they are committed.

    Only the leader receives: a standby's receives would hide messages from the leader for their
    visibility timeout. Unmatched events (a task whose launch answer is not recorded yet) are
    held, not deleted, for ``hold_for`` seconds and offered to every cycle until then.
    """

    def __init__(
        self,
        *,
        queue: EventQueue,
        backend: TaskBackend,
        source: str,
        detail_type: str,
        metrics: Metrics,
        is_leader: Callable[[], bool] = lambda: True,
        hold_for: float = 120.0,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = utcnow,
        retry_pause: float = 1.0,
        remember: int = 20_000,
    ) -> None:
        self.queue = queue
        self.backend = backend
        self.source = source
        self.detail_type = detail_type
        self.metrics = metrics
        self._kind = backend.kind.value
        self.is_leader = is_leader
        self.hold_for = hold_for
        self._monotonic = monotonic
        self._clock = clock
        self._retry_pause = retry_pause
        self._lock = threading.Lock()
        self._inbox: dict[str, QueuedEvent] = {}
        self._held: dict[str, _Held] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_error: AwsError | None = None
        self._batch: dict[str, QueuedEvent] = {}
        m = metrics
        by_verdict = {
            Verdict.APPLIED: m.events_applied,
            Verdict.STALE: m.events_stale,
            Verdict.DUPLICATE: m.events_duplicate,
            Verdict.UNMATCHED: m.events_unmatched,
            Verdict.MALFORMED: m.events_malformed,
        }
        # Series exist from the start at zero, so increase() sees their first event.
        self._counters: dict[Verdict, Counter] = {v: c.labels(self._kind) for v, c in by_verdict.items()}
        self.metrics.events_received.labels(self._kind)
        self.metrics.event_receive_errors.labels(self._kind)

    # ---- receiving -------------------------------------------------------------------------

    def start(self, *, wake: Callable[[], None]) -> None:
        """Receive in the background (long polls), calling ``wake`` when events arrived."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(wake,), name=f"{self._kind}-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop receiving (a long poll in progress ends within its wait)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.queue.wait_seconds + 5)
            self._thread = None

    def _run(self, wake: Callable[[], None]) -> None:
        failures = 0
        while not self._stop.is_set():
            if not self.is_leader():
                self._stop.wait(self._retry_pause)
                continue
            try:
                got = self.receive_once()
            except AwsError:
                # A lasting failure (access denied, no route to SQS) must not become a call a
                # second: back off, up to a minute; the cycle reports the error meanwhile.
                failures += 1
                self._stop.wait(backoff_delay(attempt=failures, base=self._retry_pause, cap=60.0))
                continue
            failures = 0
            if got:
                wake()

    def receive_once(self, *, wait_seconds: int | None = None) -> int:
        """One receive into the inbox; returns how many events came. Errors are counted and raised."""
        try:
            received = self.queue.receive(wait_seconds=wait_seconds)
        except AwsError as exc:
            self.metrics.event_receive_errors.labels(self._kind).inc()
            self.last_error = exc
            log.warning("%s events: receiving from the queue failed (%s)", self._kind, exc.reason)
            raise
        self.last_error = None
        for bad in received.malformed:
            self._counters[Verdict.MALFORMED].inc()
            log.warning(
                "%s events: message %s is not an event (%s); left for the dead-letter queue",
                self._kind,
                bad.message_id,
                bad.reason,
            )
        with self._lock:
            for event in received.events:
                # A redelivered message (its visibility timeout ran out) replaces the copy held:
                # only the newest receipt handle can delete it.
                if event.message_id in self._held:
                    self._held[event.message_id].event = event
                else:
                    self._inbox[event.message_id] = event
        self.metrics.events_received.labels(self._kind).inc(len(received.events))
        return len(received.events)

    def drain(self, *, limit: int = 1000) -> None:
        """Receive without waiting until the queue is empty (``run --once``, tests): up to ``limit`` events."""
        got = 0
        while got < limit:
            n = self.receive_once(wait_seconds=0)
            if n == 0:
                return
            got += n

    @property
    def running(self) -> bool:
        """A background receiver runs."""
        return self._thread is not None

    # ---- one cycle -------------------------------------------------------------------------

    def take(self) -> tuple[list[tuple[str, Observation]], dict[str, Verdict]]:
        """The events for this cycle as observations, and the verdicts already known (foreign or
        malformed ones); held events come again."""
        with self._lock:
            events = list(self._inbox.values()) + [h.event for h in self._held.values()]
            self._inbox.clear()
        self._batch = {e.message_id: e for e in events}
        observed: list[tuple[str, Observation]] = []
        verdicts: dict[str, Verdict] = {}
        for event in events:
            if event.source != self.source or event.detail_type != self.detail_type:
                verdicts[event.message_id] = Verdict.MALFORMED
                log.warning(
                    "%s events: message %s is a %r event from %r, not a %r; left for the dead-letter queue",
                    self._kind,
                    event.message_id,
                    event.detail_type,
                    event.source,
                    self.detail_type,
                )
                continue
            try:
                observed.append((event.message_id, self.backend.observe_event(event.detail)))
            except (KeyError, ValueError, TypeError) as exc:
                verdicts[event.message_id] = Verdict.MALFORMED
                log.warning(
                    "%s events: message %s is not a %s (%s)", self._kind, event.message_id, self.detail_type, exc
                )
        return observed, verdicts

    @property
    def ended(self) -> Collection[str]:
        """External ids whose rows ended or moved on lately."""
        return self._ended.keys()

    def forget(self, external_ids: Sequence[str]) -> None:
        """These tasks' rows ended (or moved to a new task): later events of them are duplicates."""
        for external_id in external_ids:
            self._ended[external_id] = None
            self._ended.move_to_end(external_id)
        while len(self._ended) > self._remember:
            self._ended.popitem(last=False)

    def settle(
        self,
        verdicts: Mapping[str, Verdict],
        *,
        retry: Collection[str] = (),
        committed_at: datetime | None = None,
    ) -> None:
        """The cycle committed: delete what it used or recognised, keep holding the unmatched ones
        (until ``hold_for``), leave malformed ones to the dead-letter queue, and offer the events
        in ``retry`` (their rows' writes failed) to the next cycle again, undeleted."""
        now = self._monotonic()
        batch, self._batch = self._batch, {}
        with self._lock:
            for message_id in retry:
                event = batch.get(message_id)
                if event is not None:
                    self._inbox.setdefault(message_id, event)
        delete: list[str] = []
        committed = committed_at or self._clock()
        with self._lock:
            for message_id, verdict in verdicts.items():
                event = batch.get(message_id)
                if event is None or message_id in retry:
                    continue
                if verdict is Verdict.UNMATCHED:
                    held = self._held.get(message_id)
                    if held is None:
                        self._held[message_id] = _Held(event, now)
                        continue
                    if now - held.first_seen < self.hold_for:
                        continue
                    del self._held[message_id]
                else:
                    self._held.pop(message_id, None)
                if verdict is Verdict.MALFORMED:
                    self._counters[verdict].inc()
                    continue
                self._counters[verdict].inc()
                if verdict is Verdict.APPLIED and event.time is not None:
                    lag = max(0.0, (committed - event.time).total_seconds())
                    self.metrics.event_lag.labels(self._kind).observe(lag)
                delete.append(event.receipt)
        if delete:
            try:
                self.queue.delete(delete)
            except AwsError as exc:
                # They come back after their visibility timeout and are then duplicates.
                self.metrics.event_receive_errors.labels(self._kind).inc()
                log.warning("%s events: deleting %d message(s) failed (%s)", self._kind, len(delete), exc.reason)
