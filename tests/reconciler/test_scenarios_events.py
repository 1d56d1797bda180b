"""What only observing by events does: a steady cycle makes no AWS call, a lost event is repaired
by the next resync (and counted as drift), duplicated and reordered events change nothing, a
Batch job past its RUNNABLE timeout is found by the resync. Proven from the fake AWS's side (the
calls it counted, the tasks it holds) on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aws_reconciler.model import Phase
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.events import rank
from support.world import World, events_only, only

pytestmark = events_only()


@pytest.fixture(autouse=True)
def _kind_events(world: World) -> Iterator[None]:
    """Whatever a scenario makes of the sandbox's events, the next one starts with the kind profile's."""
    yield
    world.sandbox.configure_realism(event_loss=0, event_duplicate=0, event_reorder=0)


def drift(engine: Controller) -> float:
    """Rows the engine's resyncs corrected that events should have told of."""
    labels = {"backend": engine.backend.kind.value}
    return engine.metrics.registry.get_sample_value("aws_reconciler_resync_drift_total", labels) or 0.0


def test_between_resyncs_a_steady_cycle_makes_no_aws_call(world: World) -> None:
    """Running tasks nobody's events speak of cost no describe and no list; the resync describes them all."""
    w = world
    engine = w.engine()
    w.running(engine, 5)
    before = (w.calls("describe"), w.calls("list"))
    for _ in range(3):
        w.clock.advance(w.settings.core.reconcile_interval)
        engine.reconcile()
    assert (w.calls("describe"), w.calls("list")) == before
    w.clock.advance(w.settings.core.resync_interval)
    engine.reconcile()
    # The resync lists and describes them, once: its discovery's describe is the rows' describe.
    assert w.calls("describe") == before[0] + 1 and w.calls("list") > before[1]
    assert drift(engine) == 0


def test_a_lost_event_is_repaired_by_the_next_resync_and_counted_as_drift(world: World) -> None:
    w = world
    engine = w.engine()
    [lost, told] = w.add(2)
    engine.reconcile()
    w.set_running(w.external_id(lost))
    w.set_running(w.external_id(told))
    engine.reconcile()
    w.sandbox.configure_realism(event_loss=100)
    w.set_exited(w.external_id(lost), 0)
    w.sandbox.configure_realism(event_loss=0)
    w.set_exited(w.external_id(told), 0)
    engine.reconcile()
    assert (w.row(lost).phase, w.row(told).phase) == (Phase.RUNNING, Phase.SUCCEEDED)
    w.clock.advance(w.settings.core.resync_interval)
    engine.reconcile()
    assert w.row(lost).phase is Phase.SUCCEEDED
    assert drift(engine) == 1
    assert not w.launched(w.external_id(lost)).live


def test_duplicated_and_reordered_events_change_nothing(world: World) -> None:
    """Every event twice and reordered: each row still ends as its task did, none goes back a phase."""
    w = world
    w.sandbox.configure_realism(event_duplicate=100, event_reorder=100)
    engine = w.engine()
    ids = w.add(4)
    engine.reconcile()
    seen: dict[str, list[Phase]] = {r: [] for r in ids}
    for step, record_id in enumerate(ids):
        w.set_running(w.external_id(record_id))
        w.set_exited(w.external_id(record_id), step % 2)
    for _ in range(3):
        # The world's feed receives once the sandbox delivered all (a reordered event waits to be overtaken).
        engine.reconcile()
        for record_id in ids:
            seen[record_id].append(w.row(record_id).phase)
    for step, record_id in enumerate(ids):
        assert seen[record_id][-1] is (Phase.SUCCEEDED if step % 2 == 0 else Phase.FAILED), seen[record_id]
        ranks = [rank(p) for p in seen[record_id]]
        assert ranks == sorted(ranks), f"a row went back a phase: {seen[record_id]}"
    assert drift(engine) == 0
    assert engine.events is not None
    counted = engine.events.metrics.registry.get_sample_value(
        "aws_reconciler_events_duplicate_total", {"backend": w.on.kind.value}
    )
    assert counted is not None and counted >= len(ids)


@only("batch")
def test_a_job_past_its_runnable_timeout_is_found_by_the_next_resync(world: World) -> None:
    """No event tells of time passing: the resync that follows the timeout cancels the job and fails its row."""
    w = world.configure(AIRFLOW__AWS_RECONCILER_BATCH__RUNNABLE_TIMEOUT="600")
    engine = w.engine()
    [stuck] = w.add()
    engine.reconcile()
    job = w.external_id(stuck)
    w.sandbox.set_job_state(job_id=job, status="RUNNABLE", status_reason="CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY")
    w.clock.advance(590)
    engine.reconcile()  # a resync: not stuck yet
    w.clock.advance(15)
    engine.reconcile()  # past the timeout, but no resync is due
    assert w.row(stuck).phase is Phase.PROVISIONING and w.launched(job).live
    w.clock.advance(w.settings.core.resync_interval)
    stats = engine.reconcile().stats
    assert (stats.stopped, stats.failed) == (1, 1)
    assert w.row(stuck).phase is Phase.FAILED
    assert w.launched(job).stopped_by == "CancelJob"
