"""ECS and Batch in one reconciler process: one engine per configured backend, each with its own
client, rate limits and attempt budget, and trouble on one backend never stalls the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from aws_reconciler.backends.batch.backend import BatchBackend
from aws_reconciler.backends.ecs.backend import EcsBackend
from aws_reconciler.config import load_settings
from aws_reconciler.model import Backend, Phase
from aws_reconciler.reconciler.factory import build_manager
from aws_reconciler.store import TaskStore
from support.world import ADAPTERS, World, only

BOTH = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "airflow",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
    "AIRFLOW__AWS_RECONCILER_ECS__REGION_NAME": "us-east-1",
    "AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS": "3",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "airflow",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "airflow-job",
    "AIRFLOW__AWS_RECONCILER_BATCH__REGION_NAME": "us-east-1",
    "AIRFLOW__AWS_RECONCILER_BATCH__MAX_SUBMIT_JOB_ATTEMPTS": "5",
    "AIRFLOW__AWS_RECONCILER__BATCH_SUBMIT_RATE": "25",
    "AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS": "",
}


@pytest.mark.parametrize(
    ("drop", "kinds"),
    [((), [Backend.ECS, Backend.BATCH]), (("AIRFLOW__AWS_RECONCILER_ECS__CLUSTER",), [Backend.BATCH])],
    ids=["ecs-and-batch", "batch-only"],
)
def test_build_runner_makes_one_engine_per_configured_backend(
    store: TaskStore, store_url: str, drop: tuple[str, ...], kinds: list[Backend]
) -> None:
    environ = {k: v for k, v in {**BOTH, "AIRFLOW__AWS_RECONCILER__STORE_URL": store_url}.items() if k not in drop}
    settings = load_settings(environ=environ, cfg_path=Path("/nonexistent/airflow.cfg"))
    runner = build_manager(settings)
    try:
        assert [e.backend.kind for e in runner.engines] == kinds
        for engine in runner.engines:
            backend = engine.backend
            if isinstance(backend, BatchBackend):
                assert engine.settings.max_launch_attempts == 5
                assert (backend.submit_bucket.rate, backend.describe_bucket.rate) == (25, 50)
                assert backend.job_queues == ["airflow"]
                assert backend.runnable_timeout == settings.task_queued_timeout
            else:
                assert isinstance(backend, EcsBackend)
                assert engine.settings.max_launch_attempts == 3
                assert backend.run_task_bucket.rate == 40
            # One metrics registry for the whole process, labelled by backend.
            assert engine.metrics is runner.metrics
    finally:
        for engine in runner.engines:
            engine.close()
        runner.waker.close()


@only("batch")
def test_one_runner_reconciles_both_and_a_failing_backend_does_not_stall_the_other(world: World) -> None:
    """ECS and Batch rows in one store, one runner: each engine launches only its own rows. While
    ECS DescribeTasks is throttled, Batch rows keep progressing in every pass, the runner reports
    the failure (not ready) but comes back at the healthy engine's interval, and ECS catches up."""
    batch = world.configure(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="30")
    ecs = batch.twin(ADAPTERS["ecs"])
    runner = batch.runner(worlds=[ecs, batch])
    ecs_rows = ecs.add(2)
    batch_rows = batch.add(2)

    assert runner.cycle() == 5
    assert {batch.row(r).phase for r in ecs_rows + batch_rows} == {Phase.PROVISIONING}
    assert (ecs.calls("launch"), batch.calls("launch")) == (2, 2)
    assert all(ecs.external_id(r).startswith("arn:aws:ecs:") for r in ecs_rows)
    assert [len(batch.launched_of(r)) for r in batch_rows] == [1, 1]

    ecs.throttle("describe", times=None)
    for record_id in batch_rows:
        batch.set_running(batch.external_id(record_id))
    assert runner.cycle() == 5, "the healthy backend is not held back by the other's backoff"
    assert runner.health.consecutive_failures == 1
    assert runner.health.last_error and "ThrottlingException" in runner.health.last_error
    assert {batch.row(r).phase for r in batch_rows} == {Phase.RUNNING}
    assert {ecs.row(r).phase for r in ecs_rows} == {Phase.PROVISIONING}

    batch.sandbox.clear_faults()
    for task in ecs.everything():
        ecs.set_running(task.id)
    assert runner.cycle() == 5
    assert runner.health.consecutive_failures == 0
    assert {batch.row(r).phase for r in ecs_rows + batch_rows} == {Phase.RUNNING}


@only("batch")
def test_an_engine_only_ever_touches_its_own_backends_rows(world: World) -> None:
    """The Batch engine leaves ECS rows alone (and vice versa): even revoked or due ECS rows make no
    Batch call, and the ECS engine makes no Batch call for Batch rows."""
    batch = world
    ecs_rows = batch.twin(ADAPTERS["ecs"]).add(1)
    batch_rows = batch.add(1)
    batch.store.revoke(ids=ecs_rows)
    calls: list[tuple[str, str]] = []
    backend = batch.backend()
    backend.client.meta.events.register("before-call.batch.*", lambda model, **_: calls.append(("batch", model.name)))
    batch.engine(backend=backend).reconcile()
    assert batch.row(ecs_rows[0]).phase is Phase.PENDING, "the Batch engine failed an ECS row"
    assert batch.row(batch_rows[0]).phase is Phase.PROVISIONING
    assert ("batch", "CancelJob") not in calls and ("batch", "TerminateJob") not in calls
    assert batch.sandbox.calls().get("ecs:RunTask", 0) == 0
