"""The guarantees, checked from the fake AWS's side and from what Airflow was told.

Pure: what the scheduler queued (:class:`Queueing`), the events it read from the executors'
event buffers (:class:`Event`) and every task and job the sandbox ever launched
(:class:`~chaos.facts.Launched`) go in; a :class:`Verdict` per backend comes out, with one line
of detail per finding. The reconciler's own rows are never consulted.

The guarantees (issue 14/15):

- *duplicates*: per record id at most one task/job per attempt, at most one that ran, and never
  two alive at the same moment;
- *lost*: every queueing Airflow waits for gets an event;
- *wrong states*: that event matches what happened on AWS (success exactly when the one task
  that ran exited 0; failed when nothing ran or it exited otherwise), the reconciler never
  stopped a task Airflow still wanted, nothing ran for a queueing that was never recorded, and
  no event reaches a task instance that is not waiting for one;
- *reported twice*: no task instance hears of its outcome more than once;
- *orphans left*: once the run is over, no task or job of the deployment is still alive;
- *foreign touched*: nothing of another deployment was ever stopped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .facts import Launched

__all__ = ["FAILED", "SUCCESS", "Event", "Fate", "Queueing", "Verdict", "check", "expected_state"]

SUCCESS = "success"
FAILED = "failed"


class Fate(StrEnum):
    """What became of one queueing on Airflow's side."""

    WANTED = "wanted"  # Airflow waits for its outcome
    REVOKED = "revoked"  # the scheduler revoked it (stuck in queued) and queued the try again
    RESET = "reset"  # the executor died before recording it; Airflow reset the TI (next try)


@dataclass(frozen=True)
class Queueing:
    """One workload handed to an executor: a record id for one TI key."""

    record_id: str
    backend: str
    key: str
    fate: Fate


@dataclass(frozen=True)
class Event:
    """One event the scheduler read from an executor's event buffer."""

    key: str
    state: str  # SUCCESS or FAILED
    awaited: bool  # the task instance was queued, waiting for an outcome, when it arrived


_COUNTS = ("tasks", "duplicates", "lost", "wrong_states", "reported_twice", "orphans_left", "foreign_touched")


@dataclass
class Verdict:
    """The findings for one backend; ``details`` says what each one was."""

    backend: str
    tasks: int = 0
    duplicates: int = 0
    lost: int = 0
    wrong_states: int = 0
    reported_twice: int = 0
    orphans_left: int = 0
    foreign_touched: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def violations(self) -> int:
        """Every finding together: 0 when all guarantees held."""
        return (
            self.duplicates
            + self.lost
            + self.wrong_states
            + self.reported_twice
            + self.orphans_left
            + self.foreign_touched
        )

    def add(self, other: Verdict) -> None:
        """Accumulate ``other`` (another run of the same scenario and backend)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.details.extend(other.details)


def expected_state(items: Sequence[Launched]) -> str | None:
    """The event one queueing's tasks call for; None when they do not decide it (two ran, or one
    is still alive)."""
    ran = [item for item in items if item.ran]
    if len(ran) > 1:
        return None
    if ran:
        return None if ran[0].live else (SUCCESS if ran[0].exit_code == 0 else FAILED)
    if any(item.live for item in items):
        return None
    # Nothing ever ran: the launch attempts were spent, or the job never got capacity.
    return FAILED


def _duplicate(items: Sequence[Launched]) -> str | None:
    attempts: dict[int | None, int] = defaultdict(int)
    for item in items:
        attempts[item.attempt] += 1
    twice = sorted(str(a) for a, n in attempts.items() if n > 1)
    if twice:
        return f"{len(items)} launched, attempt(s) {', '.join(twice)} more than once"
    ran = [item for item in items if item.ran]
    if len(ran) > 1:
        return f"{len(ran)} of its tasks ran the container"
    for i, item in enumerate(items):
        for other in items[i + 1 :]:
            if item.overlaps(other):
                return f"{item.external_id} and {other.external_id} were alive at the same time"
    return None


def _short(external_id: str) -> str:
    return external_id.rsplit("/", 1)[-1]


def check(
    *,
    backend: str,
    deployment: str,
    queueings: Iterable[Queueing],
    events: Iterable[Event],
    launched: Iterable[Launched],
) -> Verdict:
    """Judge one backend's run (see the module docstring)."""
    verdict = Verdict(backend)
    mine = [item for item in launched if item.backend == backend]
    by_record: dict[str, list[Launched]] = defaultdict(list)
    for item in mine:
        if item.owned_by(deployment) and item.role is None and item.record_id is not None:
            by_record[item.record_id].append(item)
    by_key: dict[str, list[Queueing]] = defaultdict(list)
    for queueing in queueings:
        if queueing.backend == backend:
            by_key[queueing.key].append(queueing)
            verdict.tasks += 1
    heard: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event.key in by_key:
            heard[event.key].append(event)

    for record_id, items in sorted(by_record.items()):
        why = _duplicate(items)
        if why is not None:
            verdict.duplicates += 1
            verdict.details.append(f"duplicate: record {record_id}: {why}")

    wrong: dict[str, str] = {}
    for key, queueings_of_key in by_key.items():
        for queueing in queueings_of_key:
            if queueing.fate is Fate.RESET and by_record.get(queueing.record_id):
                wrong.setdefault(key, f"record {queueing.record_id} was never recorded, yet AWS ran it")
        final = queueings_of_key[-1]
        got = heard.get(key, [])
        # Events before the one the try waited for; those after it are reports twice.
        first = next((i for i, e in enumerate(got) if e.awaited), len(got))
        stale = got[:first]
        if stale:
            wrong.setdefault(key, f"{len(stale)} event(s) reached it while it waited for none ({stale[0].state})")
        if final.fate is not Fate.WANTED:
            if got:
                wrong.setdefault(key, f"reported {got[0].state} for a queueing Airflow had given up")
            continue
        items = by_record.get(final.record_id, [])
        if not got:
            verdict.lost += 1
            where = ", ".join(f"{_short(i.external_id)} {'alive' if i.live else 'stopped'}" for i in items)
            verdict.details.append(f"lost: {key} (record {final.record_id}): no event; AWS: {where or 'nothing'}")
        elif len(got) > 1:
            verdict.reported_twice += 1
            verdict.details.append(
                f"reported twice: {key} (record {final.record_id}): {', '.join(e.state for e in got)}"
            )
        expected = expected_state(items)
        if got and expected is not None and any(e.state != expected for e in got):
            wrong.setdefault(key, f"reported {got[0].state}, AWS says {expected} (record {final.record_id})")
        for item in items:
            if item.ran and item.stopped_on_request:
                wrong.setdefault(
                    key, f"{_short(item.external_id)} was stopped while Airflow still wanted it: {item.reason}"
                )
    verdict.wrong_states = len(wrong)
    verdict.details.extend(f"wrong state: {key}: {why}" for key, why in sorted(wrong.items()))

    for item in mine:
        if item.owned_by(deployment) and item.live:
            verdict.orphans_left += 1
            what = "planted orphan" if item.role == "orphan" else f"record {item.record_id}"
            verdict.details.append(f"orphan left: {_short(item.external_id)} ({what}) still alive")
        if item.role == "foreign" and item.stopped_on_request:
            verdict.foreign_touched += 1
            verdict.details.append(f"foreign touched: {_short(item.external_id)} stopped: {item.reason}")
    return verdict
