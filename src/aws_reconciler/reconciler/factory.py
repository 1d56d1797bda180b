"""Build the reconciler's parts from the settings (the only place that wires them)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime

from ..backends.base import TaskBackend
from ..backends.batch.backend import BatchBackend
from ..backends.batch.spec import check_settings as check_batch_settings
from ..backends.calls import always
from ..backends.ecs.backend import EcsBackend
from ..backends.ecs.client import make_client
from ..backends.ratelimit import TokenBucket
from ..config import Settings
from ..metrics.definitions import Metrics
from ..model import Backend
from ..store.engine import create_store_engine
from ..store.lease import LeaseStore
from ..store.migrate import check_schema
from ..store.notify import Waker
from ..store.tasks import TaskStore
from .engine import Engine, EngineSettings
from .instrument import instrument_client
from .leader import LeaderElector
from .runner import Runner


def engine_settings(settings: Settings, backend: Backend = Backend.ECS) -> EngineSettings:
    """The subset of settings the engine of ``backend`` uses."""
    core = settings.core
    attempts = settings.ecs.max_launch_attempts if backend is Backend.ECS else settings.batch.max_submit_job_attempts
    return EngineSettings(
        deployment=core.deployment,
        max_launch_attempts=attempts,
        task_queued_timeout=settings.task_queued_timeout,
        reconcile_interval=core.reconcile_interval,
        resync_interval=core.resync_interval,
        orphan_grace=core.orphan_grace,
        retention=core.retention,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
        launch_concurrency=core.launch_concurrency,
    )


def build_ecs_backend(
    settings: Settings,
    *,
    client: object | None = None,
    metrics: Metrics | None = None,
    may_act: Callable[[], bool] = always,
) -> EcsBackend:
    """The ECS backend with buckets shaped like AWS's; its client's calls are counted in ``metrics``."""
    core, ecs = settings.core, settings.ecs
    assert ecs.container_name is not None
    if client is None:
        client = make_client("ecs", region_name=ecs.region_name, max_pool_connections=core.launch_concurrency + 4)
        if metrics is not None:
            instrument_client(client, metrics)
    return EcsBackend(
        client=client,
        deployment=core.deployment,
        clusters=ecs.clusters,
        container_name=ecs.container_name,
        run_task_bucket=TokenBucket(rate=core.ecs_run_task_rate, burst=core.ecs_run_task_burst),
        describe_bucket=TokenBucket(rate=core.ecs_describe_rate, burst=core.ecs_describe_burst),
        fargate_bucket=TokenBucket(rate=core.fargate_launch_rate, burst=core.fargate_launch_burst),
        may_act=may_act,
    )


def build_batch_backend(
    settings: Settings,
    *,
    client: object | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], datetime] | None = None,
    may_act: Callable[[], bool] = always,
) -> BatchBackend:
    """The Batch backend with its own buckets (SubmitJob is limited per account, apart from ECS)."""
    core, batch = settings.core, settings.batch
    check_batch_settings(batch)
    if client is None:
        client = make_client("batch", region_name=batch.region_name, max_pool_connections=core.launch_concurrency + 4)
        if metrics is not None:
            instrument_client(client, metrics)
    return BatchBackend(
        client=client,
        deployment=core.deployment,
        job_queues=batch.job_queues,
        submit_bucket=TokenBucket(rate=core.batch_submit_rate, burst=core.batch_submit_burst),
        describe_bucket=TokenBucket(rate=core.batch_describe_rate, burst=core.batch_describe_burst),
        runnable_timeout=settings.runnable_timeout,
        clock=clock,
        may_act=may_act,
    )


def holder_identity() -> str:
    """Unique per process: host name (the pod name on Kubernetes), pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_runner(settings: Settings, *, metrics: Metrics | None = None) -> Runner:
    """Everything ``aws-reconciler run`` needs, validated before the loop starts."""
    settings.require_backend()
    metrics = metrics or Metrics()
    db = create_store_engine(settings.store_url)
    check_schema(db)
    store = TaskStore(db)
    core = settings.core
    elector = LeaderElector(
        leases=LeaseStore(db),
        name=f"reconciler-{core.deployment}",
        holder=holder_identity(),
        lease_duration=core.lease_duration,
        renew_deadline=core.renew_deadline,
        retry_period=core.retry_period,
    )
    # One engine per configured backend, each with its own client, buckets and attempt budget.
    backends: list[TaskBackend] = []
    if settings.ecs.enabled:
        backends.append(build_ecs_backend(settings, metrics=metrics, may_act=elector.is_leader))
    if settings.batch.enabled:
        backends.append(build_batch_backend(settings, metrics=metrics, may_act=elector.is_leader))
    engines = [
        Engine(
            store=store,
            backend=backend,
            settings=engine_settings(settings, backend.kind),
            is_leader=elector.is_leader,
            metrics=metrics,
        )
        for backend in backends
    ]
    return Runner(
        engines=engines,
        elector=elector,
        waker=Waker(db),
        interval=core.reconcile_interval,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
        metrics=metrics,
    )
