"""Scenarios of the reconciler only ECS has: RunTask's clientToken, its capacity failures, Fargate's
launch bucket. Everything both backends do is in ``test_scenarios.py``."""

from __future__ import annotations

import time
from datetime import timedelta

from aws_reconciler.model import Phase
from support.world import World, only

pytestmark = only("ecs")


def test_crash_after_run_task_is_recovered_by_client_token_when_discovery_misses_it(world: World) -> None:
    """Even when discovery cannot see the lost task (ListTasks lags behind RunTask), relaunching the
    launching row with the same attempt returns the task ECS already started."""
    w = world
    [record_id] = w.add()
    task, second = w.crash_after_launch(record_id)
    second.reconcile()

    assert w.calls("RunTask") == 2
    assert [t.id for t in w.launched_of(record_id)] == [task.id]
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, task.id)


def test_capacity_failures_back_off_and_use_a_new_client_token_per_attempt(world: World) -> None:
    """RESOURCE:MEMORY twice: the row returns to pending with backoff (attempt counted), is not
    relaunched before the backoff elapses, then launches; three RunTasks with distinct tokens."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    tokens: list[str] = []
    client = w.client()
    client.meta.events.register(
        "provide-client-params.ecs.RunTask", lambda params, **_: tokens.append(params["clientToken"])
    )
    engine = w.engine(backend=w.backend(client=client), rng=lambda: 1.0)  # full backoff: 2 s, then 4 s
    [record_id] = w.add()
    w.sandbox.fail_run_task(reason="RESOURCE:MEMORY", times=2)

    for attempt, delay in ((1, 2), (2, 4)):
        stats = engine.reconcile().stats
        assert stats.launch_retries == 1
        row = w.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.PENDING, attempt, None)
        assert row.last_error and "RESOURCE:MEMORY" in row.last_error
        assert row.next_attempt_at == w.clock() + timedelta(seconds=delay)
        assert w.launched_of(record_id) == []

        w.clock.set(row.next_attempt_at - timedelta(milliseconds=1))
        engine.reconcile()
        assert w.calls("RunTask") == attempt, "relaunched before the backoff elapsed"
        w.clock.set(row.next_attempt_at)

    assert engine.reconcile().stats.launched == 1
    row = w.row(record_id)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 3)
    assert row.last_error is None
    assert tokens == [f"{record_id}-1", f"{record_id}-2", f"{record_id}-3"]
    [task] = w.launched_of(record_id)
    assert (task.id, task.key) == (row.external_id, f"{record_id}-3")


def test_capacity_failures_beyond_max_launch_attempts_fail_the_row(world: World) -> None:
    """Capacity that never comes back: after max_launch_attempts the row fails with AWS's reason."""
    w = world.configure(AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS="2")
    engine = w.engine()
    [record_id] = w.add()
    w.sandbox.fail_run_task(reason="RESOURCE:CPU", times=None)

    engine.reconcile()
    w.clock.set(w.row(record_id).next_attempt_at or w.clock())
    engine.reconcile()

    row = w.row(record_id)
    assert (row.phase, row.attempt) == (Phase.FAILED, 2)
    assert row.status_reason and "2 launch attempts" in row.status_reason and "RESOURCE:CPU" in row.status_reason
    w.clock.advance(3600)
    engine.reconcile()
    assert w.calls("RunTask") == 2


def test_the_next_cycle_is_wanted_when_the_soonest_row_is_due(world: World) -> None:
    """A capacity failure backs a row off for 2 s (full jitter): the cycle asks to come back then,
    not after the 5 s interval, and not sooner."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    engine = w.engine(rng=lambda: 1.0)
    w.add()
    w.sandbox.fail_run_task(reason="RESOURCE:MEMORY")
    assert engine.reconcile().requeue_after == 2
    w.clock.advance(2)
    assert engine.reconcile().requeue_after == 5


def test_ambiguous_launch_failures_back_off_longer_each_time(world: World) -> None:
    """Three 5xx in a row keep attempt 1 (the same clientToken), and each retry waits at least twice
    as long as the one before: a 5xx outage is not retried every second forever."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    engine = w.engine(rng=lambda: 0.0)
    [record_id] = w.add()
    w.inject("launch", code="ServerException", message="boom", status=500, times=3)
    delays = []
    for _ in range(3):
        engine.reconcile()
        row = w.row(record_id)
        assert (row.phase, row.attempt) == (Phase.LAUNCHING, 1)
        assert row.next_attempt_at
        delays.append((row.next_attempt_at - w.clock()).total_seconds())
        w.clock.set(row.next_attempt_at)
    assert delays == [1, 2, 4]
    assert engine.reconcile().stats.launched == 1


def test_a_launch_burst_is_spread_over_cycles_that_keep_observing(world: World) -> None:
    """30 due rows, while Fargate's bucket lets 7 out per interval (burst 5, 50/s, 0.04 s): each cycle
    sends no more launches than that, asks to be run again at once, and still records what it
    observes (a task that stopped is finished in the first cycle, not after the burst).

    A cycle counts as launched what it collected, also calls a slow machine kept in flight since
    the cycle before: what it sent is what it collected or left in flight, less what it found."""
    w = world.configure(
        AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.04",
        AIRFLOW__AWS_RECONCILER__FARGATE_LAUNCH_BURST="5",
        AIRFLOW__AWS_RECONCILER__FARGATE_LAUNCH_RATE="50",
    )
    engine = w.engine()
    [earlier] = w.add()
    deadline = time.monotonic() + 60
    while w.row(earlier).external_id is None and time.monotonic() < deadline:
        engine.reconcile()
    w.set_exited(w.external_id(earlier), 0)
    burst = w.add(30)

    first = engine.reconcile()
    assert first.stats.finished == 1
    assert 1 <= first.stats.launched + first.stats.in_flight <= 7
    assert first.stats.deferred == 30 - first.stats.launched - first.stats.in_flight
    assert first.requeue_after == 0
    # Cycles until the burst is out, however slowly a busy machine answers (a deadline, not a count).
    previous = first
    while not all(w.row(r).phase is Phase.PROVISIONING for r in burst) and time.monotonic() < deadline:
        result = engine.reconcile()
        assert result.stats.launched + result.stats.in_flight - previous.stats.in_flight <= 7
        previous = result
    assert all(w.row(r).phase is Phase.PROVISIONING for r in burst)
    assert w.calls("RunTask") == 31
