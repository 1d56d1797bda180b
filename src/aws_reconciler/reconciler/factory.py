"""Build the reconciler's parts from the settings (the only place that wires them)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime

from ..backends.base import TaskBackend
from ..backends.calls import always
from ..backends.client import make_client
from ..backends.descriptor import BackendDescriptor
from ..backends.events import MAX_WAIT, EventQueue
from ..backends.registry import descriptor_for
from ..backends.registry import enabled as enabled_backends
from ..config import ConfigError, Settings
from ..metrics.definitions import Metrics
from ..model import Backend
from ..store.database import create_store_engine
from ..store.lease import LeaseStore
from ..store.migrate import check_schema
from ..store.notify import Waker
from ..store.sealing import TokenKeyError, TokenSealer
from ..store.tasks import TaskStore
from .controller import Controller, ControllerSettings
from .events import EventFeed
from .instrument import instrument_client
from .leader import LeaderElector
from .manager import Manager


def controller_settings(settings: Settings, backend: Backend = Backend.ECS) -> ControllerSettings:
    """The subset of settings the engine of ``backend`` uses."""
    core = settings.core
    return ControllerSettings(
        deployment=core.deployment,
        max_launch_attempts=descriptor_for(backend).settings_of(settings).max_attempts,
        task_queued_timeout=settings.task_queued_timeout,
        reconcile_interval=core.reconcile_interval,
        resync_interval=core.resync_interval,
        orphan_grace=core.orphan_grace,
        retention=core.retention,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
        launch_concurrency=core.launch_concurrency,
        missing_grace=core.missing_grace,
        # A margin over a quarter of the token's lifetime would leave a short task_queued_timeout
        # no time to launch at all.
        token_margin=min(core.token_margin, settings.task_queued_timeout / 4),
        running_describe_interval=core.running_describe_interval,
        events_resync_interval=(
            core.events_resync_interval
            if descriptor_for(backend).settings_of(settings).observation == "events"
            else None
        ),
    )


def build_backend(
    descriptor: BackendDescriptor,
    settings: Settings,
    *,
    client: object | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], datetime] | None = None,
    may_act: Callable[[], bool] = always,
) -> TaskBackend:
    """``descriptor``'s backend with its own client and buckets shaped like AWS's; the client's
    calls are counted in ``metrics``. Each backend has its own client: ECS and Batch quotas are
    separate, and so is their connection pool."""
    if client is None:
        section = descriptor.settings_of(settings)
        client = make_client(
            descriptor.service,
            region_name=section.region_name,
            max_pool_connections=settings.core.launch_concurrency + 4,
            # Every call lands within the lease (renew_deadline + this < lease_duration).
            call_timeout=settings.core.call_timeout,
            role_arn=section.role_arn,
        )
        if metrics is not None:
            instrument_client(client, metrics)
    return descriptor.build(settings, client=client, may_act=may_act, clock=clock)


def event_queue(descriptor: BackendDescriptor, settings: Settings, *, client: object | None = None) -> EventQueue:
    """The SQS queue of ``descriptor``'s events (``events_queue_url``), with a client whose
    timeout outlasts a long poll (the other clients' calls must land within the lease; a
    receive changes nothing, so it need not)."""
    section = descriptor.settings_of(settings)
    assert section.events_queue_url is not None
    if client is None:
        client = make_client(
            "sqs", region_name=section.region_name, call_timeout=MAX_WAIT + 10.0, role_arn=section.role_arn
        )
    # A message held while its task's launch is not recorded yet must not come back meanwhile.
    visibility = int(settings.core.missing_grace + 60)
    return EventQueue(client=client, queue_url=section.events_queue_url, visibility_timeout=visibility)


def event_feed(
    descriptor: BackendDescriptor,
    settings: Settings,
    backend: TaskBackend,
    *,
    metrics: Metrics,
    is_leader: Callable[[], bool],
    client: object | None = None,
) -> EventFeed | None:
    """The feed of ``backend``'s events when it observes by events (None: it polls)."""
    if descriptor.settings_of(settings).observation != "events":
        return None
    queue = event_queue(descriptor, settings, client=client)
    if client is None:
        instrument_client(queue.client, metrics)
    return EventFeed(
        queue=queue,
        backend=backend,
        source=descriptor.event_source,
        detail_type=descriptor.event_detail_type,
        metrics=metrics,
        is_leader=is_leader,
        hold_for=settings.core.missing_grace,
    )


def token_sealer(settings: Settings) -> TokenSealer:
    """What opens the workload tokens the executors sealed; a bad ``token_key`` is a :class:`ConfigError`."""
    key = settings.token_key
    try:
        return TokenSealer(key.get_secret_value() if key is not None else None, origin=settings.token_key_origin)
    except TokenKeyError as exc:
        raise ConfigError(str(exc)) from None


def lease_name(settings: Settings) -> str:
    """One leader per deployment, and per Airflow team: each team's reconciler leads its own rows.

    ``#`` is in neither a deployment name nor a team name, so no two pairs share a lease.
    """
    base = f"reconciler-{settings.core.deployment}"
    return f"{base}#{settings.team}" if settings.team else base


def holder_identity() -> str:
    """Unique per process: host name (the pod name on Kubernetes), pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_manager(settings: Settings, *, metrics: Metrics | None = None) -> Manager:
    """Everything ``aws-reconciler run`` needs, validated before the loop starts."""
    settings.require_backend()
    tokens = token_sealer(settings)
    metrics = metrics or Metrics()
    db = create_store_engine(settings.store_url)
    check_schema(db)
    store = TaskStore(db, team=settings.team)
    core = settings.core
    elector = LeaderElector(
        leases=LeaseStore(db),
        name=lease_name(settings),
        holder=holder_identity(),
        lease_duration=core.lease_duration,
        renew_deadline=core.renew_deadline,
        retry_period=core.retry_period,
    )
    # One engine per configured backend, each with its own client, buckets and attempt budget.
    engines = []
    for descriptor in enabled_backends(settings):
        backend = build_backend(descriptor, settings, metrics=metrics, may_act=elector.is_leader)
        engines.append(
            Controller(
                store=store,
                backend=backend,
                settings=controller_settings(settings, backend.kind),
                is_leader=elector.is_leader,
                fence=elector.fence,
                metrics=metrics,
                tokens=tokens,
                events=event_feed(descriptor, settings, backend, metrics=metrics, is_leader=elector.is_leader),
            )
        )
    return Manager(
        engines=engines,
        elector=elector,
        waker=Waker(db, team=store.team),
        interval=core.reconcile_interval,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
        metrics=metrics,
    )
