"""Scenarios of the reconciler: real ``Controller`` cycles against the sandbox and a real task store,
each written once and run on every backend (ECS and Batch) and store (SQLite and PostgreSQL).

Each test sets up a world (rows built the way the executor builds them, tasks or jobs on the fake
AWS, injected faults), runs cycles, moves a fake clock instead of sleeping, and asserts what AWS and
the store end up with. What only one backend does is in ``test_scenarios_ecs.py`` and
``test_scenarios_batch.py``.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from aws_reconciler.backends.errors import Outcome
from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler.model import Phase
from aws_reconciler.reconciler.factory import lease_name
from aws_reconciler.store import LeaseStore, database_now
from support.scenario import Crash
from support.world import DEPLOYMENT, World, only, polling_only

#: Client-side buckets that never make a launch wait: for scenarios about something else.
NO_CLIENT_RATE_LIMITS = {
    f"AIRFLOW__AWS_RECONCILER__{bucket}_BURST": "1000"
    for bucket in ("ECS_RUN_TASK", "ECS_DESCRIBE", "FARGATE_LAUNCH", "BATCH_SUBMIT", "BATCH_DESCRIBE")
}

# ---- 1. launch and lifecycle ---------------------------------------------------------------


def test_launch_carries_identity_and_the_row_follows_the_lifecycle(world: World) -> None:
    """A launch carries the identity (tags, the backend's per-attempt key, the workload's command);
    the row follows the task: provisioning -> running -> succeeded (exit 0) / failed (exit 137)."""
    w = world
    commands = [["airflow", "tasks", "run", "ok"], ["airflow", "tasks", "run", "killed"]]
    ok, killed = w.add(2, commands=commands)
    engine = w.engine()

    assert engine.reconcile().stats.launched == 2
    for record_id, command in zip((ok, killed), commands, strict=True):
        row = w.row(record_id)
        assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
        [launched] = w.launched_of(record_id)
        assert launched.id == row.external_id
        assert launched.identity == w.on.identity(record_id, 1)
        assert launched.tags[DEPLOYMENT_TAG] == DEPLOYMENT
        assert launched.tags["airflow:dag_id"] == "scenario_dag"
        assert launched.tags["airflow:try_number"] == "1"
        assert launched.command == command

    ok_id, killed_id = w.external_id(ok), w.external_id(killed)
    for external_id in (ok_id, killed_id):
        w.set_running(external_id)
    engine.reconcile()
    for record_id in (ok, killed):
        row = w.row(record_id)
        assert row.phase is Phase.RUNNING
        assert row.started_at is not None
        assert row.finished_at is None

    w.set_exited(ok_id, 0)
    w.set_exited(killed_id, 137)
    stats = engine.reconcile().stats
    assert (stats.finished, stats.failed) == (1, 1)

    succeeded = w.row(ok)
    assert (succeeded.phase, succeeded.exit_code) == (Phase.SUCCEEDED, 0)
    assert succeeded.finished_at is not None
    failed = w.row(killed)
    assert (failed.phase, failed.exit_code) == (Phase.FAILED, 137)
    assert failed.status_reason and "137" in failed.status_reason and "Essential container" in failed.status_reason
    assert failed.finished_at is not None

    # Finished rows are never relaunched: Airflow's retries own re-execution.
    w.clock.advance(3600)
    engine.reconcile()
    assert w.calls("launch") == 2


# ---- 2. crash and lost answers -------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 120], ids=["one-row", "120-rows-paginated"])
def test_crash_after_the_launch_then_a_new_engine_adopts_what_was_launched(world: World, rows: int) -> None:
    """The process dies after the launch call but before its answer is stored: a new process ends up
    with exactly one task/job per row, each row carrying its id, without launching again (discovery
    pages through the listing, 50 a page on Batch, and describes 100 a call)."""
    w = world.configure(**NO_CLIENT_RATE_LIMITS)
    ids = w.add(rows)
    backend = w.backend()
    real_launch = backend.launch
    crashed = threading.Condition()
    launched: list[str] = []

    def launch_then_crash(**kwargs: Any) -> str:
        real_launch(**kwargs)
        with crashed:
            launched.append(kwargs["record_id"])
            crashed.notify_all()
        raise Crash

    backend.launch = launch_then_crash
    first = w.engine(backend=backend)
    with pytest.raises(Crash):
        first.reconcile()
    with crashed:  # every launch already submitted reaches AWS before the "process" is gone
        assert crashed.wait_for(lambda: len(launched) == rows, timeout=30)
    first.close()
    assert w.calls("launch") == rows

    found: dict[str, str] = {}
    for record_id in ids:
        row = w.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
        [one] = w.launched_of(record_id)
        found[record_id] = one.id

    second_backend = w.backend()
    if hasattr(second_backend, "list_page"):
        second_backend.list_page = 50
    w.sandbox.reset_calls()
    second = w.engine(backend=second_backend)  # a new process: new engine, backend and client, same store
    second.reconcile()

    assert w.calls("launch") == 0
    assert w.calls("describe") == -(-rows // 100)
    for record_id in ids:
        assert [t.id for t in w.launched_of(record_id)] == [found[record_id]]
        row = w.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, found[record_id])
        assert row.launched_at is not None

    # And the adopted rows are tracked from then on.
    for external_id in found.values():
        w.set_running(external_id)
    second.reconcile()
    assert all(w.row(r).phase is Phase.RUNNING for r in ids)


@pytest.mark.parametrize("recovered_by", ["idempotent-retry", "discovery"])
def test_phantom_500_on_launch_leaves_exactly_one(world: World, recovered_by: str) -> None:
    """The launch call launches but the caller sees a 500: the row keeps its attempt, and the next
    try (the same idempotency key: ECS's clientToken, Batch's job name lookup) or discovery by tags
    finds what was launched instead of launching a second one."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60")
    [record_id] = w.add()
    engine = w.engine()
    w.inject("launch", code="ServerException", message="Service unavailable", status=500, phantom=True)

    assert engine.reconcile().stats.launched == 0
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
    assert row.last_error and "ServerException" in row.last_error
    assert row.next_attempt_at and row.next_attempt_at > w.clock()
    [launched] = w.launched_of(record_id)  # it did launch

    # Not before the backoff: the same cycle time yields no new launch call.
    engine.reconcile()
    assert w.calls("launch") == 1

    if recovered_by == "idempotent-retry":
        w.clock.set(row.next_attempt_at)  # well within resync_interval: no discovery
        engine.reconcile()
        assert w.calls("launch") == 1 + w.on.retry_sends_launch
    else:
        w.clock.advance(60)  # discovery is due and adopts it before any relaunch
        engine.reconcile()
        assert w.calls("launch") == 1

    assert [t.id for t in w.launched_of(record_id)] == [launched.id]
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, launched.id)


# ---- 3. terminal errors --------------------------------------------------------------------


def test_terminal_launch_errors_fail_their_rows_with_the_aws_reason(world: World) -> None:
    """A non-retriable launch error (access denied; a definition that is gone) fails its row at
    once, in AWS's own words, and is not retried."""
    w = world
    errors = [
        ("AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/r is not authorized to perform"),
        w.on.definition_gone,
    ]
    engine = w.engine()
    ids = w.add(2)
    for code, message in errors:
        w.inject("launch", code=code, message=message)

    assert engine.reconcile().stats.failed == 2
    reasons = []
    for record_id in ids:
        row = w.row(record_id)
        assert row.phase is Phase.FAILED
        assert row.finished_at is not None
        assert row.status_reason
        reasons.append(row.status_reason)
    # The two launches run concurrently: which row met which error is not fixed.
    for code, message in errors:
        assert [r for r in reasons if code in r and message in r], (code, reasons)

    w.clock.advance(3600)
    engine.reconcile()
    assert w.calls("launch") == 2
    assert w.everything() == []


# ---- 4. tasks that never started -----------------------------------------------------------


def test_stopped_before_its_container_started_is_relaunched_up_to_max_attempts(world: World) -> None:
    """A task/job that stops before its container ran (the platform could not set it up; the image
    could not be pulled) is launched again as attempt+1 (a new idempotency key) after backoff, up to
    the attempt limit; then the row fails naming the attempts."""
    w = world.configure(**{world.on.max_attempts_env: "2"})
    engine = w.engine()
    ids = w.add(2)
    how = dict(zip(ids, ["failed-to-start", "cannot-pull"], strict=True))

    engine.reconcile()
    first = {r: w.external_id(r) for r in ids}
    for record_id in ids:
        w.set_failed_to_start(first[record_id], how[record_id])
    assert engine.reconcile().stats.launch_retries == 2
    for record_id in ids:
        row = w.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.PENDING, 1, None)
        assert row.next_attempt_at and row.next_attempt_at > w.clock()
        assert row.last_error and "before its container started" in row.last_error

    w.clock.set(max(w.row(r).next_attempt_at or w.clock() for r in ids))
    assert engine.reconcile().stats.launched == 2
    for record_id in ids:
        row = w.row(record_id)
        assert (row.phase, row.attempt) == (Phase.PROVISIONING, 2)
        assert w.external_id(record_id) != first[record_id]
        assert [t.key for t in w.launched_of(record_id)] == [w.on.attempt_key(record_id, n) for n in (1, 2)]
        w.set_failed_to_start(w.external_id(record_id), how[record_id])

    assert engine.reconcile().stats.failed == 2
    for record_id in ids:
        row = w.row(record_id)
        assert (row.phase, row.attempt) == (Phase.FAILED, 2)
        assert row.status_reason and "2 launch attempts" in row.status_reason

    w.clock.advance(3600)
    engine.reconcile()
    assert w.calls("launch") == 4


def test_a_64_character_record_id_still_gets_a_valid_new_key_per_attempt(world: World) -> None:
    """Ids fill the store's 64-character column and may hold characters a job name does not allow;
    the idempotency key (clientToken: at most 64 characters; job name: 128 letters, digits, - and _)
    must still be valid and differ per attempt, or AWS would answer a relaunch with what failed."""
    w = world.configure(**{world.on.max_attempts_env: "2"})
    engine = w.engine()
    [record_id] = w.add(ids=["scheduled:" + uuid.uuid4().hex + uuid.uuid4().hex[:22]])
    assert len(record_id) == 64

    engine.reconcile()
    first = w.external_id(record_id)
    w.set_failed_to_start(first, "failed-to-start")
    engine.reconcile()
    w.clock.set(w.row(record_id).next_attempt_at or w.clock())
    engine.reconcile()

    row = w.row(record_id)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 2)
    assert row.external_id not in (None, first)
    keys = [t.key for t in w.launched_of(record_id)]
    assert len(set(keys)) == 2
    assert all(w.on.valid_key(key) for key in keys), keys


def test_a_task_that_ran_and_failed_is_not_relaunched(world: World) -> None:
    """A container that started and exited non-zero is a task failure, never a relaunch."""
    w = world
    engine = w.engine()
    [record_id] = w.add()
    engine.reconcile()
    external_id = w.external_id(record_id)
    w.set_running(external_id)
    w.set_exited(external_id, 1)
    engine.reconcile()
    w.clock.advance(3600)
    engine.reconcile()
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.exit_code) == (Phase.FAILED, 1, 1)
    assert w.calls("launch") == 1


# ---- 5. revoke and supersede ---------------------------------------------------------------


def test_revoke_stops_waiting_and_running_tasks_and_ends_a_pending_row_without_launching(world: World) -> None:
    """Revoking launched rows stops their tasks (on Batch: CancelJob while waiting, TerminateJob once
    running) and ends them revoked ("revoked by Airflow") once they are seen stopped, even after a
    clean exit; revoking a pending row ends it revoked without any launch."""
    w = world
    engine = w.engine()
    waiting, running = w.add(2)
    engine.reconcile()
    waiting_id, running_id = w.external_id(waiting), w.external_id(running)
    w.set_running(running_id)
    engine.reconcile()
    assert w.row(running).phase is Phase.RUNNING

    [pending] = w.add()
    assert w.store.revoke(ids=[waiting, running, pending]) == 3
    assert engine.reconcile().stats.stopped == 2
    assert w.stop_calls() == w.on.stops(waiting=1, running=1)
    for external_id, is_running in ((waiting_id, False), (running_id, True)):
        stopped = w.launched(external_id)
        assert stopped.stopped_by == w.on.stop_for(running=is_running)
        assert "revoked" in stopped.reason
    assert [w.row(r).phase for r in (waiting, running)] == [Phase.STOPPING] * 2

    never = w.row(pending)
    assert (never.phase, never.attempt) == (Phase.REVOKED, 0)
    assert never.status_reason and "revoked" in never.status_reason
    assert w.launched_of(pending) == []
    assert w.calls("launch") == 2

    # The containers handled SIGTERM and exited 0: a revoked row never counts as a success.
    for external_id in (waiting_id, running_id):
        w.finish_stop(external_id)
    assert engine.reconcile().stats.revoked == 2
    for record_id in (waiting, running):
        row = w.row(record_id)
        assert row.phase is Phase.REVOKED
        assert row.status_reason and row.status_reason.startswith("revoked by Airflow")
        assert row.finished_at is not None
    assert w.stop_calls() == w.on.stops(waiting=1, running=1)


def test_a_row_superseded_by_a_newer_queueing_is_stopped_and_ends_revoked(world: World) -> None:
    """The scheduler queued the same try again (a reschedule's next poke) while the previous
    queueing's task still runs: that task is stopped, its row ends revoked ("superseded"), and only
    the new row is launched."""
    w = world
    engine = w.engine()
    [old] = w.add()
    engine.reconcile()
    old_id = w.external_id(old)
    w.set_running(old_id)
    engine.reconcile()
    w.clock.advance(30)
    [new] = w.add(keys=[w.row(old).key], commands=[["x"]])

    stats = engine.reconcile().stats
    assert (stats.stopped, stats.launched) == (1, 1)
    assert "superseded" in w.launched(old_id).reason
    w.finish_stop(old_id)
    engine.reconcile()
    row = w.row(old)
    assert row.phase is Phase.REVOKED
    assert row.status_reason and row.status_reason.startswith("superseded")
    assert w.row(new).phase is Phase.PROVISIONING


# ---- 6. orphans ----------------------------------------------------------------------------


def test_orphans_are_stopped_after_the_grace_and_foreign_tasks_never(world: World) -> None:
    """A task/job that looks ours but has no open row (or duplicates a launched row) is stopped once
    orphan_grace has passed, not before, whether it waits or runs; tasks of another deployment,
    untagged ones, the backend's other lookalikes and our own rows' tasks never are."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    engine = w.engine()
    [record_id] = w.add()
    engine.reconcile()
    ours = w.external_id(record_id)
    w.set_running(ours)

    our_tag = {DEPLOYMENT_TAG: DEPLOYMENT}
    waiting_orphan = w.start_foreign(tags={**our_tag, ID_TAG: "lost-record"})
    running_orphan = w.start_foreign(tags={**our_tag, ID_TAG: record_id})  # a duplicate
    w.set_running(running_orphan)
    keep = {
        "our own row's task": ours,
        "other deployment": w.start_foreign(tags={DEPLOYMENT_TAG: "other", ID_TAG: "x"}),
        "untagged": w.start_foreign(tags=None),
        **w.on.lookalikes(w),
    }

    w.clock.advance(1)
    assert engine.reconcile().stats.orphans_stopped == 0  # first seen now
    w.clock.advance(119)
    assert engine.reconcile().stats.orphans_stopped == 0
    assert w.stop_calls() == {}

    w.clock.advance(1)
    assert engine.reconcile().stats.orphans_stopped == 2
    assert w.stop_calls() == w.on.stops(waiting=1, running=1)
    for external_id, is_running in ((waiting_orphan, False), (running_orphan, True)):
        stopped = w.launched(external_id)
        assert stopped.stopped_by == w.on.stop_for(running=is_running)
        assert "orphan" in stopped.reason

    for _ in range(2):
        w.clock.advance(3600)
        engine.reconcile()
    assert w.stop_calls() == w.on.stops(waiting=1, running=1)
    for name, external_id in keep.items():
        assert w.launched(external_id).live, name
    row = w.row(record_id)
    assert (row.phase, row.external_id) == (Phase.RUNNING, ours)


def test_an_orphans_grace_counts_from_its_creation_across_restarts(world: World) -> None:
    """Every restart used to give an orphan a fresh grace. The grace counts from the task's own
    creation time: a reconciler that starts after the grace has passed stops the orphan at its first
    discovery; one that starts earlier waits only for the rest."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    orphan = w.start_foreign(tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "lost"})

    w.clock.advance(60)
    assert w.engine().reconcile().stats.orphans_stopped == 0  # process 1, 60 s into the grace
    w.clock.advance(65)
    assert w.engine().reconcile().stats.orphans_stopped == 1  # process 2, its first discovery
    assert w.launched(orphan).stopped_by == w.on.stop_for(running=False)


def test_a_task_of_a_row_given_back_to_pending_is_not_stopped_as_an_orphan(world: World) -> None:
    """A launch whose answer was lost (500) and whose retry is then throttled leaves the row pending
    while its task waits on AWS. However long the throttling lasts, the orphan sweep must not stop
    it: the row's next try (same idempotency key) adopts it."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    retries_throttled = [False]

    def retry_call(call: Any, **kwargs: Any) -> Any:
        if retries_throttled[0] and w.on.is_retry_call(kwargs):
            raise w.on.throttled(w.on.retry_method)
        return call(**kwargs)

    client = w.intercept(w.on.retry_method, retry_call)
    engine = w.engine(backend=w.backend(client=client))
    [record_id] = w.add()
    w.inject("launch", code="ServerException", message="Internal", status=500, phantom=True)
    engine.reconcile()
    [launched] = w.launched_of(record_id)

    retries_throttled[0] = True
    w.clock.set(w.row(record_id).next_attempt_at or w.clock())
    engine.reconcile()  # the retry is throttled: the attempt is given back
    assert (w.row(record_id).phase, w.row(record_id).attempt) == (Phase.PENDING, 0)
    for _ in range(4):  # throttled for well over orphan_grace, with a discovery every cycle
        w.clock.advance(61)
        engine.reconcile()
        assert w.row(record_id).phase is Phase.PENDING
    assert w.stop_calls() == {}

    retries_throttled[0] = False
    w.clock.advance(61)
    engine.reconcile()
    assert w.stop_calls() == {}
    assert w.calls("launch") == 1 + w.on.retry_sends_launch
    assert [t.id for t in w.launched_of(record_id)] == [launched.id]
    assert w.launched(launched.id).live
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, launched.id)


# ---- 7. isolation --------------------------------------------------------------------------


def test_one_row_whose_launch_raises_never_blocks_the_others(world: World) -> None:
    """Of 20 due rows, one whose launch raises unexpectedly: the 19 others launch in the same cycle;
    the bad one is retried later with the SAME attempt (its outcome is unknown) until it launches."""
    w = world
    ids = w.add(20)
    bad = ids[7]
    backend = w.backend()
    real_launch = backend.launch
    broken = {bad}

    def launch(*, record_id: str, attempt: int, spec: Any, **kwargs: Any) -> str:
        if record_id in broken:
            raise RuntimeError("connection pool is full (simulated)")
        return str(real_launch(record_id=record_id, attempt=attempt, spec=spec, **kwargs))

    backend.launch = launch
    engine = w.engine(backend=backend)

    stats = engine.reconcile().stats
    assert (stats.launched, stats.launch_retries) == (19, 1)
    assert w.calls("launch") == 19
    assert all(w.row(r).phase is Phase.PROVISIONING for r in ids if r != bad)
    row = w.row(bad)
    assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
    assert row.last_error and "RuntimeError" in row.last_error
    assert row.next_attempt_at and row.next_attempt_at > w.clock()

    # Still broken after the backoff: the others progress, the bad row keeps its attempt.
    w.clock.set(row.next_attempt_at)
    for record_id in ids:
        if record_id != bad:
            w.set_running(w.external_id(record_id))
    engine.reconcile()
    assert all(w.row(r).phase is Phase.RUNNING for r in ids if r != bad)
    row = w.row(bad)
    assert (row.phase, row.attempt) == (Phase.LAUNCHING, 1)

    broken.clear()
    w.clock.set(row.next_attempt_at or w.clock())
    assert engine.reconcile().stats.launched == 1
    row = w.row(bad)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
    assert [t.key for t in w.launched_of(bad)] == [w.on.attempt_key(bad, 1)]
    assert len(w.everything()) == 20


def test_one_row_whose_bookkeeping_fails_never_blocks_the_others(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store error while recording one row's observation is counted and contained; the other
    rows are recorded in the same cycle, and the bad row catches up once the store recovers."""
    w = world
    ids = w.add(5)
    bad = ids[2]
    engine = w.engine()
    engine.reconcile()
    for record_id in ids:
        w.set_running(w.external_id(record_id))

    real_transition = w.store.transition

    def transition(record_id: str, **kwargs: Any) -> bool:
        if record_id == bad:
            raise OperationalError("UPDATE aws_reconciler_task", {}, Exception("database is locked"))
        return real_transition(record_id, **kwargs)

    real_batch = w.store.transitions

    def transitions(changes: list[Any], **kwargs: Any) -> bool | None:
        # The database refuses the cycle's batch because of the bad row's write.
        if any(change.record_id == bad for change in changes):
            raise OperationalError("UPDATE aws_reconciler_task", {}, Exception("database is locked"))
        return real_batch(changes, **kwargs)

    monkeypatch.setattr(w.store, "transition", transition)
    monkeypatch.setattr(w.store, "transitions", transitions)
    assert engine.reconcile().stats.row_errors == 1
    assert [w.row(r).phase for r in ids] == [Phase.RUNNING] * 2 + [Phase.PROVISIONING] + [Phase.RUNNING] * 2

    monkeypatch.undo()
    assert engine.reconcile().stats.row_errors == 0
    assert w.row(bad).phase is Phase.RUNNING


# ---- 8. throttling -------------------------------------------------------------------------


def test_throttled_launches_cost_no_attempt_and_slow_the_cycle(world: World) -> None:
    """Launches refused for their rate for 5 of 10 rows: those go back to pending with their attempt
    given back, the cycle asks to be requeued no sooner than backoff_base, and later cycles launch
    them all, still as attempt 1 (the same idempotency key)."""
    _throttled_launches(world, **world.on.throttle)


@only("ecs")
def test_throttling_disguised_as_an_invalid_parameter_is_throttling(world: World) -> None:
    """RunTask also reports throttling as InvalidParameterException "Rate exceeded": the same as above."""
    _throttled_launches(world, code="InvalidParameterException", message="Rate exceeded", status=400)


def _throttled_launches(w: World, *, code: str, message: str, status: int) -> None:
    # The interval is also how long a cycle waits for its calls: long enough for a busy machine.
    w.configure(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="2", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="4")
    ids = w.add(10)
    engine = w.engine()
    w.inject("launch", code=code, message=message, status=status, times=5)

    result = engine.reconcile()
    assert (result.stats.throttled, result.stats.launched) == (5, 5)
    assert result.requeue_after >= 4
    throttled = [r for r in ids if w.row(r).phase is Phase.PENDING]
    assert len(throttled) == 5
    for record_id in throttled:
        row = w.row(record_id)
        assert (row.attempt, row.external_id) == (0, None)
        assert row.last_error and code in row.last_error and message in row.last_error
        assert row.next_attempt_at and row.next_attempt_at > w.clock()

    w.clock.advance(300)
    result = engine.reconcile()
    assert (result.stats.throttled, result.stats.launched, result.requeue_after) == (0, 5, 2)
    for record_id in ids:
        row = w.row(record_id)
        assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
        assert [t.key for t in w.launched_of(record_id)] == [w.on.attempt_key(record_id, 1)]
    assert w.calls("launch") == 15


@polling_only()
def test_a_throttled_describe_slows_the_runner_but_launches_go_on(world: World) -> None:
    """The describe call throttled: the cycle does not give up. Rows it could not describe wait, new
    rows are still launched, the runner counts the trouble and comes back no sooner than
    backoff_base; once AWS answers again the rows catch up."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="4", AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="5")
    runner = w.runner()
    [record_id] = w.add()
    assert runner.cycle() == 5
    w.set_running(w.external_id(record_id))

    w.throttle("describe", times=2)
    [fresh] = w.add()
    assert runner.cycle() >= 4
    assert w.row(fresh).phase is Phase.PROVISIONING, "a throttled describe held up a launch"
    assert w.row(record_id).phase is Phase.PROVISIONING, "nothing known of it, nothing decided"
    assert runner.cycle() >= 4
    assert runner.health.consecutive_failures == 2
    assert runner.health.last_error and w.on.throttle["code"] in runner.health.last_error
    assert [e.outcome for e in runner.health.history[-1].errors] == [Outcome.THROTTLED]

    assert runner.cycle() == 5
    assert runner.health.consecutive_failures == 0
    assert runner.health.last_error is None
    assert runner.health.last_cycle_ok_at is not None
    assert w.row(record_id).phase is Phase.RUNNING


@polling_only()
def test_one_failed_describe_batch_does_not_skip_the_cycle(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Of three describe batches one is throttled: the rows of the other two are recorded, a pending
    row is launched and a revoked one stopped, all in that same cycle; the throttled batch's row is
    left as it was (unknown is not gone) and catches up next cycle."""
    w = world
    monkeypatch.setattr(w.on.describe_batch, 1)
    engine = w.engine()
    ids = w.add(3)
    engine.reconcile()
    for record_id in ids:
        w.set_running(w.external_id(record_id))
    [pending] = w.add()
    [revoked] = w.add()
    w.store.revoke(ids=[revoked])  # before its launch: ends revoked without one
    w.store.revoke(ids=[ids[2]])
    w.throttle("describe")

    result = engine.reconcile()
    assert [e.outcome for e in result.errors] == [Outcome.THROTTLED]
    assert (result.stats.launched, result.stats.stopped, result.stats.revoked) == (1, 1, 1)
    phases = [w.row(r).phase for r in ids]
    # Which batch was throttled depends on the order ids are described in: at most one row waits.
    assert sorted(phases[:2]) == [Phase.PROVISIONING, Phase.RUNNING] or phases[:2] == [Phase.RUNNING] * 2
    assert w.row(pending).phase is Phase.PROVISIONING
    assert sum(w.stop_calls().values()) == 1

    engine.reconcile()
    assert [w.row(r).phase for r in ids[:2]] == [Phase.RUNNING, Phase.RUNNING]


def test_runner_waits_at_least_backoff_base_after_a_throttled_cycle(world: World) -> None:
    """When AWS throttled launches, the runner's next pass is no sooner than backoff_base, even with
    a shorter reconcile_interval: hammering a throttled API only prolongs the throttling."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    runner = w.runner()
    w.add(3)
    w.throttle("launch", times=3)
    assert runner.cycle() >= 2
    assert runner.health.history[-1].stats.throttled == 3
    w.clock.advance(300)
    assert runner.cycle() == 0.5


# ---- 9. expired workloads ------------------------------------------------------------------


def test_expired_workload_is_failed_not_launched(world: World) -> None:
    """A row older than task_queued_timeout (its Airflow token has expired) is failed with that reason
    and never launched; a fresh row in the same cycle still launches."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__TASK_QUEUED_TIMEOUT="300")
    engine = w.engine()
    [stale] = w.add()
    w.clock.advance(301)
    [fresh] = w.add()

    stats = engine.reconcile().stats
    assert (stats.failed, stats.launched) == (1, 1)
    row = w.row(stale)
    assert (row.phase, row.attempt) == (Phase.FAILED, 0)
    assert row.status_reason and "task_queued_timeout" in row.status_reason
    assert w.launched_of(stale) == []
    assert w.calls("launch") == 1
    assert w.row(fresh).phase is Phase.PROVISIONING


# ---- 10. launch concurrency ----------------------------------------------------------------


def test_launches_run_concurrently_up_to_launch_concurrency(world: World) -> None:
    """64 due rows with launch_concurrency 16: launch calls overlap (8 must be in flight at once for
    any to proceed) and never exceed 16, so throughput is bound by rate limits, not latency."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__LAUNCH_CONCURRENCY="16")
    ids = w.add(64)
    barrier = threading.Barrier(8, timeout=20)
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    def overlapping(call: Any, **kwargs: Any) -> Any:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
        try:
            barrier.wait()
            return call(**kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    engine = w.engine(backend=w.backend(client=w.intercept("launch", overlapping)))
    assert engine.reconcile().stats.launched == 64
    assert 8 <= in_flight[1] <= 16
    assert all(w.row(r).phase is Phase.PROVISIONING for r in ids)
    assert len(w.everything()) == 64


class _Hanging:
    """Launch calls whose request names ``marker`` block until ``release`` is set."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.release = threading.Event()
        self.hung = threading.Event()

    def __call__(self, call: Any, **kwargs: Any) -> Any:
        if self.marker in str(kwargs):
            self.hung.set()
            self.release.wait(timeout=60)
        return call(**kwargs)


def test_a_hung_launch_does_not_hold_up_the_next_pass(world: World) -> None:
    """A launch call that hangs (until the client's timeout, on AWS) keeps only its own row waiting:
    the cycle ends after one interval, and the next ones record a finished task and stop a revoked
    one while the call is still in flight; its outcome is collected when it arrives."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.3")
    hanging = _Hanging("hangs-here")
    engine = w.engine(backend=w.backend(client=w.intercept("launch", hanging)))
    done, revoked = w.add(2)
    engine.reconcile()
    [stuck] = w.add(commands=[["airflow", "tasks", "run", "hangs-here"]])
    try:
        stats = engine.reconcile().stats
        assert hanging.hung.is_set() and stats.in_flight == 1
        assert w.row(stuck).phase is Phase.LAUNCHING

        w.set_exited(w.external_id(done), 0)
        w.store.revoke(ids=[revoked])
        stats = engine.reconcile().stats
        assert (stats.finished, stats.stopped, stats.in_flight) == (1, 1, 1)
        assert not hanging.release.is_set(), "the pass waited for the hung call"
        assert w.row(stuck).phase is Phase.LAUNCHING
    finally:
        hanging.release.set()
    for _ in range(50):
        if engine.reconcile().stats.launched:
            break
    row = w.row(stuck)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
    assert w.calls("launch") == 3


# ---- 11. leadership and fencing ------------------------------------------------------------


def test_a_replica_that_is_not_leader_launches_and_stops_nothing(world: World) -> None:
    """Without the lease an engine never launches or stops (pending rows, a revoked running row and
    a due orphan all wait), while a leading engine in the same state acts on all three."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="0")
    leader = w.engine()
    [revoked] = w.add()
    leader.reconcile()
    w.set_running(w.external_id(revoked))
    leader.reconcile()
    pending = w.add(3)
    w.store.revoke(ids=[revoked])
    orphan = w.start_foreign(tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "lost"})
    launches = w.calls("launch")

    follower = w.engine(is_leader=lambda: False)
    for _ in range(3):
        w.clock.advance(120)
        stats = follower.reconcile().stats
        assert (stats.launched, stats.stopped, stats.orphans_stopped) == (0, 0, 0)
    assert w.calls("launch") == launches
    assert w.stop_calls() == {}
    assert all((w.row(r).phase, w.row(r).attempt) == (Phase.PENDING, 0) for r in pending)
    assert w.row(revoked).phase is Phase.RUNNING
    assert w.launched(orphan).live

    stats = w.engine().reconcile().stats
    assert (stats.launched, stats.stopped, stats.orphans_stopped) == (3, 1, 1)


def test_a_leader_whose_renewals_stall_stops_acting_before_its_lease_can_expire(world: World) -> None:
    """Fencing: once renew_deadline has passed without a successful renewal, the engine launches
    nothing, though the lease row (lease_duration) still names this replica."""
    w = world
    now = [1000.0]
    elector = w.elector(monotonic=lambda: now[0])
    assert elector.try_once()
    engine = w.engine(is_leader=elector.is_leader)
    ids = w.add(2)

    now[0] += w.settings.core.renew_deadline
    assert engine.reconcile().stats.launched == 0
    assert w.calls("launch") == 0
    assert all(w.row(r).phase is Phase.PENDING for r in ids)

    assert elector.try_once()  # a renewal succeeds again: it acts again
    assert engine.reconcile().stats.launched == 2


def test_a_paused_ex_leader_writes_nothing_after_a_takeover(world: World) -> None:
    """The leader was paused past its lease and another replica took over. By its own monotonic
    clock it still leads, but no store write it fences with its lease generation lands: no launch
    is claimed (so none is sent) and nothing it observes is recorded."""
    w = world
    a = w.elector(monotonic=lambda: 1000.0)
    assert a.try_once()
    engine = w.engine(is_leader=a.is_leader, fence=a.fence)
    [running] = w.add()
    assert engine.reconcile().stats.launched == 1, "fenced writes of the leader land"
    w.set_running(w.external_id(running))
    pending = w.add(2)

    with w.db.connect() as conn:
        past_expiry = database_now(conn) + timedelta(seconds=60)
    leases = LeaseStore(w.db)
    assert leases.acquire_or_renew(name=lease_name(w.settings), holder="b", duration=15, now=past_expiry).held
    assert a.is_leader()

    stats = engine.reconcile().stats
    assert (stats.launched, stats.finished) == (0, 0)
    assert w.calls("launch") == 1
    assert all((w.row(r).phase, w.row(r).attempt) == (Phase.PENDING, 0) for r in pending)
    assert w.row(running).phase is Phase.PROVISIONING


def test_standby_runner_does_not_reconcile_while_another_replica_holds_the_lease(world: World) -> None:
    """Two replicas: the one without the lease only waits (retry_period) and makes no AWS call."""
    w = world
    active = w.elector(holder="replica-a")
    assert active.try_once()
    standby = w.runner(holder="replica-b", acquire=False)
    w.add(2)
    w.sandbox.reset_calls()  # forget the bootstrap's calls
    assert not standby.elector.try_once()
    assert standby.cycle() == w.settings.core.retry_period
    assert standby.health.leader is False
    assert standby.health.cycles == 0
    assert w.sandbox.calls() == {}


def test_run_once_reconciles_one_cycle_and_releases_the_lease(world: World) -> None:
    """``aws-reconciler run --once``: takes the lease, launches what is due, exits 0 and releases the
    lease at once so a standby does not wait for it to expire."""
    w = world
    runner = w.runner(acquire=False)
    ids = w.add(3)

    assert runner.run(once=True) == 0
    assert all(w.row(r).phase is Phase.PROVISIONING for r in ids)
    w.clock.advance(1)  # well within lease_duration: only a release lets replica-b in
    assert w.elector(holder="replica-b").try_once()


def test_request_stop_lets_no_new_launch_start(world: World) -> None:
    """After SIGTERM (request_stop) a cycle starts no launch, and the rows stay pending, not
    half-launched, for the next reconciler to take."""
    w = world
    runner = w.runner()
    ids = w.add(3)
    runner.request_stop()
    runner.cycle()
    assert w.calls("launch") == 0
    assert all((w.row(r).phase, w.row(r).attempt) == (Phase.PENDING, 0) for r in ids)


# ---- 12. AWS as it really behaves: eventual consistency, refused stops ------------------------


def test_a_task_missing_right_after_its_launch_is_not_taken_for_gone(world: World) -> None:
    """AWS does not show a task/job for a while after its launch (ECS answers MISSING, Batch leaves
    it out; the listings omit it). Within missing_grace of the launch the row stays open and it is
    never stopped as an orphan; once AWS shows it the row follows it. Still unknown after the
    grace, it is gone."""
    w = world.configure(
        AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1",
        AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="10",
        AIRFLOW__AWS_RECONCILER__MISSING_GRACE="60",
    )
    client = w.on.lagging(w.client(), clock=w.clock)
    engine = w.engine(backend=w.backend(client=client))
    ids = w.add(2)
    assert engine.reconcile().stats.launched == 2
    launched = [w.external_id(r) for r in ids]
    client.hidden.update(launched)

    for _ in range(3):  # 45 s unseen, with a discovery every cycle
        w.clock.advance(15)
        stats = engine.reconcile().stats
        assert (stats.failed, stats.orphans_stopped) == (0, 0)
        assert [w.row(r).phase for r in ids] == [Phase.PROVISIONING] * 2
    assert w.stop_calls() == {}

    client.hidden.clear()
    for external_id in launched:
        w.set_running(external_id)
    engine.reconcile()
    assert [w.row(r).phase for r in ids] == [Phase.RUNNING] * 2

    client.hidden.add(launched[0])  # now it really is gone: its launch is 46 s old, then 61 s
    w.clock.advance(1)
    engine.reconcile()
    assert w.row(ids[0]).phase is Phase.RUNNING
    w.clock.advance(15)
    assert engine.reconcile().stats.failed == 1
    row = w.row(ids[0])
    assert row.phase is Phase.FAILED
    assert row.status_reason and w.on.gone_words in row.status_reason


def test_a_stop_aws_refuses_is_one_warning_and_is_sent_again(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A throttled stop of a revoked row is one WARNING line naming the task/job and AWS's error (no
    ERROR, no traceback), the row stays as it was, and the next cycle sends the stop again."""
    w = world
    engine = w.engine()
    [record_id] = w.add()
    engine.reconcile()
    external_id = w.external_id(record_id)
    w.store.revoke(ids=[record_id])
    w.throttle(w.on.stop_for(running=False))

    caplog.clear()
    with caplog.at_level("INFO", logger="aws_reconciler"):
        stats = engine.reconcile().stats
    assert (stats.stopped, stats.row_errors) == (0, 0)
    assert [r.levelname for r in caplog.records if r.levelno >= 30] == ["WARNING"]
    [warning] = [r for r in caplog.records if r.levelno >= 30]
    assert external_id in warning.getMessage() and record_id in warning.getMessage()
    assert w.on.throttle["code"] in warning.getMessage()
    assert warning.exc_info is None
    assert w.row(record_id).phase is Phase.PROVISIONING

    assert engine.reconcile().stats.stopped == 1
    assert w.row(record_id).phase is Phase.STOPPING
    assert w.stop_calls() == w.on.stops(waiting=2)


@polling_only()
def test_polling_describes_a_running_task_only_every_running_describe_interval(world: World) -> None:
    """A task that runs as wanted is described every running_describe_interval, not every cycle;
    its end is noticed by the next look."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RUNNING_DESCRIBE_INTERVAL="30")
    engine = w.engine()
    ids = w.running(engine, 3)
    w.set_exited(w.external_id(ids[0]), 0)
    before = w.calls("describe")
    w.clock.advance(5)
    engine.reconcile()
    assert w.calls("describe") == before and w.row(ids[0]).phase is Phase.RUNNING
    w.clock.advance(25)
    engine.reconcile()
    assert w.calls("describe") > before and w.row(ids[0]).phase is Phase.SUCCEEDED


@polling_only()
def test_a_running_task_whose_look_failed_is_described_again_at_the_next_cycle(world: World) -> None:
    """A round of looks whose describe is throttled leaves its running tasks unknown; the next
    cycle, not the next round, describes them again (and so notices the one that ended)."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RUNNING_DESCRIBE_INTERVAL="30")
    engine = w.engine()
    ids = w.running(engine, 2)
    w.set_exited(w.external_id(ids[0]), 0)
    w.clock.advance(30)
    w.throttle("describe")
    assert [e.outcome for e in engine.reconcile().errors] == [Outcome.THROTTLED]
    assert w.row(ids[0]).phase is Phase.RUNNING
    before = w.calls("describe")
    w.clock.advance(1)
    engine.reconcile()
    assert w.calls("describe") > before and w.row(ids[0]).phase is Phase.SUCCEEDED
    # Looked at again: the next cycle leaves the running one alone until the next round.
    before = w.calls("describe")
    w.clock.advance(1)
    engine.reconcile()
    assert w.calls("describe") == before


def test_a_cycle_with_nothing_to_record_commits_nothing(world: World) -> None:
    """Once its tasks run, a cycle that sees no change opens no write transaction; retention
    sweeps (one DELETE, one commit) at most once a minute."""
    w = world
    engine = w.engine()
    w.running(engine, 2)
    commits: list[object] = []

    def count(conn: object) -> None:
        commits.append(conn)

    sa.event.listen(w.store.engine, "commit", count)
    try:
        for _ in range(3):
            w.clock.advance(1)
            engine.reconcile()
        assert commits == []
        w.clock.advance(60)
        engine.reconcile()
        assert len(commits) == 1, "the retention sweep"
    finally:
        sa.event.remove(w.store.engine, "commit", count)
