"""ECS and Batch in one reconciler process: one engine per configured backend, each with its own
client, rate limits and attempt budget, and trouble on one backend never stalls the other."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from batch_support import DEPLOYMENT, Harness

from aws_reconciler.backends.batch.backend import BatchBackend
from aws_reconciler.backends.ecs.backend import EcsBackend
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.config import load_settings
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.factory import build_backend, build_manager, controller_settings
from aws_reconciler.reconciler.leader import LeaderElector
from aws_reconciler.reconciler.manager import Manager
from aws_reconciler.store import LeaseStore, NewTask, TaskStore, Waker

if TYPE_CHECKING:
    from conftest import HarnessFactory

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


def _add_ecs_rows(h: Harness, n: int) -> list[str]:
    rows = []
    for i in range(n):
        record_id = str(uuid.uuid4())
        key = TiKey("mixed_dag", f"ecs_{i}", "manual__2030-01-01T00:00:00", -1, 1)
        spec = build_run_task_request(
            ecs=h.settings.ecs, deployment=DEPLOYMENT, record_id=record_id, key=key, command=["run", key.task_id]
        )
        rows.append(
            NewTask(
                id=record_id,
                backend=Backend.ECS,
                owner="s",
                key=key,
                queue="default",
                target=spec["cluster"],
                spec=spec,
            )
        )
    h.store.add(rows)
    return [r.id for r in rows]


def _runner(h: Harness) -> tuple[Manager, Controller, Controller]:
    core = h.settings.core
    elector = LeaderElector(
        leases=LeaseStore(h.db),
        name=f"reconciler-{DEPLOYMENT}",
        holder="replica-a",
        lease_duration=core.lease_duration,
        renew_deadline=core.renew_deadline,
        retry_period=core.retry_period,
    )
    assert elector.try_once()
    ecs_backend = build_backend(ECS, h.settings, client=h.sandbox.client("ecs"))
    ecs_backend.throttle_pause = 0.01
    ecs = Controller(
        store=h.store,
        backend=ecs_backend,
        settings=controller_settings(h.settings, Backend.ECS),
        is_leader=elector.is_leader,
        clock=h.clock,
        rng=lambda: 0.0,
    )
    h.engines.append(ecs)
    batch = h.engine(is_leader=elector.is_leader)
    runner = Manager(
        engines=[ecs, batch],
        elector=elector,
        waker=Waker(h.db),
        interval=core.reconcile_interval,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
    )
    return runner, ecs, batch


def test_one_runner_reconciles_both_and_a_failing_backend_does_not_stall_the_other(
    make_harness: HarnessFactory,
) -> None:
    """ECS and Batch rows in one store, one runner: each engine launches only its own rows. While
    ECS DescribeTasks is throttled, Batch rows keep progressing in every pass, the runner reports
    the failure (not ready) but comes back at the healthy engine's interval, and ECS catches up."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="30")
    runner, _ecs, _batch = _runner(h)
    ecs_rows = _add_ecs_rows(h, 2)
    batch_rows = h.add(2)
    try:
        assert runner.cycle() == 5
        assert {h.row(r).phase for r in ecs_rows + batch_rows} == {Phase.PROVISIONING}
        assert (h.sandbox.calls()["ecs:RunTask"], h.calls("SubmitJob")) == (2, 2)
        assert all(h.row(r).external_id.startswith("arn:aws:ecs:") for r in ecs_rows)  # type: ignore[union-attr]
        assert [len(h.jobs_of(r)) for r in batch_rows] == [1, 1]

        h.sandbox.inject_error(operation="DescribeTasks", code="ThrottlingException", message="Rate", times=None)
        for record_id in batch_rows:
            h.sandbox.set_job_state(job_id=h.row(record_id).external_id or "", status="RUNNING")
        assert runner.cycle() == 5, "the healthy backend is not held back by the other's backoff"
        assert runner.health.consecutive_failures == 1
        assert runner.health.last_error and "ThrottlingException" in runner.health.last_error
        assert {h.row(r).phase for r in batch_rows} == {Phase.RUNNING}
        assert {h.row(r).phase for r in ecs_rows} == {Phase.PROVISIONING}

        h.sandbox.clear_faults()
        for task in h.sandbox.tasks():
            h.sandbox.set_task_state(task_arn=task["arn"], last_status="RUNNING")
        assert runner.cycle() == 5
        assert runner.health.consecutive_failures == 0
        assert {h.row(r).phase for r in ecs_rows + batch_rows} == {Phase.RUNNING}
    finally:
        runner.waker.close()


def test_an_engine_only_ever_touches_its_own_backends_rows(make_harness: HarnessFactory) -> None:
    """The Batch engine leaves ECS rows alone (and vice versa): even revoked or due ECS rows make no
    Batch call, and the ECS engine makes no Batch call for Batch rows."""
    h = make_harness()
    ecs_rows = _add_ecs_rows(h, 1)
    batch_rows = h.add(1)
    h.store.revoke(ids=ecs_rows)
    calls: list[tuple[str, str]] = []
    backend = h.backend()
    backend.client.meta.events.register("before-call.batch.*", lambda model, **_: calls.append(("batch", model.name)))
    h.engine(backend=backend).reconcile()
    assert h.row(ecs_rows[0]).phase is Phase.PENDING, "the Batch engine failed an ECS row"
    assert h.row(batch_rows[0]).phase is Phase.PROVISIONING
    assert ("batch", "CancelJob") not in calls and ("batch", "TerminateJob") not in calls
    assert h.sandbox.calls().get("ecs:RunTask", 0) == 0
