"""What the executor tells Airflow about a row it must deal with: a pure function of the row and
of the TI's current state in Airflow's database (no Airflow import, table-tested).

Airflow's scheduler turns an executor event for a TI that is still SCHEDULED, QUEUED, RUNNING or
RESTARTING for the same try into "killed externally" and fails it. So an event must only be sent
when it is this queueing's real outcome, and the row records what the try really ended as.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ..model import Phase
from ..store.records import Report, TaskRecord

# Airflow's TaskInstanceState values (kept as strings: this module never imports Airflow).
QUEUED = "queued"
SCHEDULED = "scheduled"
DEFERRED = "deferred"
UP_FOR_RESCHEDULE = "up_for_reschedule"
RESTARTING = "restarting"
FAILED = "failed"
UP_FOR_RETRY = "up_for_retry"

#: The try goes on in a later queueing (a reschedule poke, a resumed deferral): an event from an
#: earlier queueing of the same try would fail it.
LATER_QUEUEING = frozenset({UP_FOR_RESCHEDULE, SCHEDULED, DEFERRED})
#: Airflow recorded the try as failed (the task failed, or someone failed its run).
FAILED_IN_AIRFLOW = frozenset({FAILED, UP_FOR_RETRY})


@dataclass(frozen=True)
class TryState:
    """A task instance as Airflow's database has it now."""

    try_number: int
    state: str | None


class Action(StrEnum):
    """What happens to one row on this heartbeat."""

    SUCCESS = "success"  # report SUCCESS, free the slot
    FAILED = "failed"  # report FAILED, free the slot
    DROP = "drop"  # no event (it would be stale), free the slot
    HOLD = "hold"  # not yet: leave the row unreported and the slot taken


class Outcome(StrEnum):
    """How the report is counted (Airflow metrics ``aws_reconciler.<backend>.<outcome>``)."""

    SUCCEEDED = "reported_success"
    FAILED = "reported_failed"
    REVOKED = "reported_revoked"
    STALE = "dropped_stale"
    SUPERSEDED = "superseded"
    HELD = "held_expired"


@dataclass(frozen=True)
class Decision:
    """One row's fate: the event (if any), what the store records, how it is counted."""

    action: Action
    outcome: Outcome
    info: str | None = None
    report: Report | None = None


def token_expired(row: TaskRecord, *, now: datetime, task_queued_timeout: float) -> bool:
    """The row's workload token is no longer valid at ``now`` (database time).

    The token's own ``exp`` when it was readable, else Airflow's lifetime for it
    (``task_queued_timeout`` after queueing).
    """
    deadline = row.token_expires_at or row.created_at + timedelta(seconds=task_queued_timeout)
    return now >= deadline


def may_hold(row: TaskRecord, current: TryState | None) -> bool:
    """A row that may have to wait for Airflow's stuck-in-queued handling (see :func:`decide`)."""
    return (
        row.superseded_at is None
        and row.phase is not Phase.SUCCEEDED
        and not row.launched
        and current is not None
        and current.try_number == row.key.try_number
        and current.state == QUEUED
    )


def decide(row: TaskRecord, current: TryState | None, *, now: datetime | None, task_queued_timeout: float) -> Decision:
    """The decision for one finished or superseded, unreported row.

    ``current``: the TI in Airflow now (``None``: not found). ``now``: the database's time, needed
    only when :func:`may_hold` is true for the row.
    """
    if row.superseded_at is not None:
        # A newer queueing of the same try exists (queued by another scheduler): this one's
        # outcome is nobody's, and the slot it held here is free.
        return Decision(Action.DROP, Outcome.SUPERSEDED, report=Report(row.id))
    same_try = current is not None and current.try_number == row.key.try_number
    state = current.state if current is not None and same_try else None
    if state in LATER_QUEUEING:
        return Decision(Action.DROP, Outcome.STALE, report=Report(row.id, ti_state=state))
    if may_hold(row, current):
        if now is None:
            raise ValueError("decide() needs the database time for a row that never launched")
        if token_expired(row, now=now, task_queued_timeout=task_queued_timeout):
            # Never launched and its token is dead: reporting FAILED would fail the QUEUED TI
            # and burn a try. Airflow's stuck-in-queued handling revokes it instead and queues
            # it again with a fresh token (up to [scheduler] num_stuck_in_queued_retries).
            return Decision(Action.HOLD, Outcome.HELD)
    reason = row.status_reason or row.phase.value
    if state == RESTARTING:
        # Cleared while it ran: Airflow stopped it. Report the container's end as is (a SUCCESS
        # is what lets Airflow schedule the try again), but record the truth.
        action = Action.SUCCESS if row.phase is Phase.SUCCEEDED else Action.FAILED
        truth = f"stopped by Airflow: the task instance was cleared while it ran ({reason})"
        return Decision(
            action,
            Outcome.REVOKED,
            info=reason,
            report=Report(row.id, ti_state=state, phase=Phase.REVOKED, status_reason=truth),
        )
    if row.phase is Phase.SUCCEEDED:
        if state in FAILED_IN_AIRFLOW:
            # The container's exit code says nothing about the task: Airflow's verdict stands.
            truth = f"the container exited normally, but Airflow recorded the try as {state}"
            return Decision(
                Action.SUCCESS,
                Outcome.FAILED,
                info=reason,
                report=Report(row.id, ti_state=state, phase=Phase.FAILED, status_reason=truth),
            )
        return Decision(Action.SUCCESS, Outcome.SUCCEEDED, info=reason, report=Report(row.id, ti_state=state))
    outcome = Outcome.REVOKED if row.phase is Phase.REVOKED else Outcome.FAILED
    return Decision(Action.FAILED, outcome, info=reason, report=Report(row.id, ti_state=state))


def never_ran(row: TaskRecord, current: TryState | None, decision: Decision) -> bool:
    """The failure reported for the row is of a try that never ran: Airflow still has it QUEUED
    (a try that ran is RUNNING or finished), so no task log exists and only the executor can say why."""
    return (
        decision.action is Action.FAILED
        and current is not None
        and current.try_number == row.key.try_number
        and current.state == QUEUED
    )


def decide_by_exit(row: TaskRecord) -> Decision:
    """The decision for a finished, unreported callback or connection test row.

    Here the container's end is the outcome: Airflow's callback supervisor exits non-zero when the
    callback raised, and nothing else reports it (there is no task instance whose state could
    disagree). A connection test reports its result to the API server itself; its event only
    frees the slot (Airflow drains it).
    """
    reason = row.status_reason or row.phase.value
    if row.superseded_at is not None:
        return Decision(Action.DROP, Outcome.SUPERSEDED, report=Report(row.id))
    if row.phase is Phase.SUCCEEDED:
        return Decision(Action.SUCCESS, Outcome.SUCCEEDED, info=reason, report=Report(row.id))
    outcome = Outcome.REVOKED if row.phase is Phase.REVOKED else Outcome.FAILED
    return Decision(Action.FAILED, outcome, info=reason, report=Report(row.id))
