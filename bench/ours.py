"""Our side: the task store (a PostgreSQL schema), the scheduler-side executor and the reconciler.

The executor is built the way the scheduler builds it (``EcsExecutor(parallelism=...)``, settings
from the environment); the reconciler's :class:`~aws_reconciler.reconciler.controller.Engine` is wired
by ``reconciler/factory.py`` exactly as ``aws-reconciler run`` wires it, and driven one cycle at a
time in this process (``aws-reconciler run`` would be woken by the executor's NOTIFY).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.config import Settings, load_settings
from aws_reconciler.executor import EcsExecutor
from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.model import utcnow
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.factory import build_backend, controller_settings, event_feed
from aws_reconciler.store import TaskStore, create_store_engine, migrate

ECS_PREFIX = "AIRFLOW__AWS_RECONCILER_ECS__"
CORE_PREFIX = "AIRFLOW__AWS_RECONCILER__"

#: Client-side limits high enough never to bind: what is left is latency and concurrency.
RAISED_LIMITS = {
    f"{CORE_PREFIX}ECS_RUN_TASK_RATE": "100000",
    f"{CORE_PREFIX}ECS_RUN_TASK_BURST": "100000",
    f"{CORE_PREFIX}FARGATE_LAUNCH_RATE": "100000",
    f"{CORE_PREFIX}FARGATE_LAUNCH_BURST": "100000",
    f"{CORE_PREFIX}ECS_DESCRIBE_RATE": "100000",
    f"{CORE_PREFIX}ECS_DESCRIBE_BURST": "100000",
}
_NO_CFG = Path("/nonexistent/airflow.cfg")


class StoreDb:
    """A fresh PostgreSQL schema holding the store's tables, dropped by :meth:`drop`."""

    def __init__(self, base_url: str) -> None:
        self.schema = f"bench_{uuid.uuid4().hex[:12]}"
        self._admin = sa.create_engine(base_url)
        with self._admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.schema}"))
        url = sa.engine.make_url(base_url).update_query_dict({"options": f"-csearch_path={self.schema}"})
        self.url = url.render_as_string(hide_password=False)
        engine = create_store_engine(self.url)
        migrate(engine)
        engine.dispose()

    def truncate(self) -> None:
        """Empty the task and lease tables (a fresh deployment)."""
        with self._admin.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {self.schema}.aws_reconciler_task, {self.schema}.aws_reconciler_lease"))

    def launched(self) -> int:
        """Rows whose RunTask was accepted (they carry the task ARN)."""
        with self._admin.connect() as conn:
            query = f"SELECT count(*) FROM {self.schema}.aws_reconciler_task WHERE external_id IS NOT NULL"
            return int(conn.execute(sa.text(query)).scalar_one())

    def count_phase(self, phase: str) -> int:
        """Rows in ``phase`` (``running``, ``succeeded``...)."""
        with self._admin.connect() as conn:
            query = f"SELECT count(*) FROM {self.schema}.aws_reconciler_task WHERE phase = :phase"
            return int(conn.execute(sa.text(query), {"phase": phase}).scalar_one())

    def arns_by_id(self) -> dict[str, str]:
        """Row id (the TI's ``external_executor_id``) -> task ARN, of every launched row."""
        with self._admin.connect() as conn:
            query = f"SELECT id, external_id FROM {self.schema}.aws_reconciler_task WHERE external_id IS NOT NULL"
            return {str(i): str(arn) for i, arn in conn.execute(sa.text(query))}

    def server_version(self) -> str:
        with self._admin.connect() as conn:
            return str(conn.execute(sa.text("SHOW server_version")).scalar_one())

    def drop(self) -> None:
        with self._admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {self.schema} CASCADE"))
        self._admin.dispose()


def environ(world: Mapping[str, str], store_url: str) -> dict[str, str]:
    """Our settings for one sandbox world (what an operator exports), launch type Fargate."""
    env = {k: v for k, v in world.items() if k.startswith(ECS_PREFIX)}
    env[f"{ECS_PREFIX}LAUNCH_TYPE"] = "FARGATE"
    env[f"{CORE_PREFIX}STORE_URL"] = store_url
    return env


def new_executor(world: Mapping[str, str], store_url: str, *, job_id: int, parallelism: int) -> EcsExecutor:
    """A started executor as a scheduler with job ``job_id`` builds it (settings from the environment)."""
    os.environ.update(environ(world, store_url))
    executor = EcsExecutor(parallelism=parallelism)
    executor.job_id = job_id
    executor.start()
    return executor


def dispose_executor(executor: EcsExecutor) -> None:
    """Release the executor's database connections (a scheduler would exit)."""
    executor.end()
    executor.store.engine.dispose()


def settings_for(
    world: Mapping[str, str], store_url: str, *, raised_limits: bool = False, extra: Mapping[str, str] | None = None
) -> Settings:
    """The reconciler's settings for one world: the shipped defaults unless raised or overridden."""
    env = environ(world, store_url)
    if raised_limits:
        env.update(RAISED_LIMITS)
    env.update(extra or {})
    return load_settings(environ=env, cfg_path=_NO_CFG)


def new_engine(
    world: Mapping[str, str],
    store_url: str,
    *,
    raised_limits: bool,
    extra: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Controller:
    """The reconciler's engine as ``build_manager`` wires it (its own store connection and client;
    with ``OBSERVATION=events`` among the ``extra`` settings, its event feed). ``clock``: the
    engine's (a simulated one steps through a resync period)."""
    settings = settings_for(world, store_url, raised_limits=raised_limits, extra=extra)
    backend = build_backend(ECS, settings)
    metrics = Metrics()
    return Controller(
        store=TaskStore(create_store_engine(settings.store_url)),
        backend=backend,
        settings=controller_settings(settings),
        metrics=metrics,
        events=event_feed(ECS, settings, backend, metrics=metrics, is_leader=lambda: True),
        clock=clock or utcnow,
    )


def close_engine(engine: Controller) -> None:
    engine.close()
    engine.store.engine.dispose()


def reconcile_until_launched(engine: Controller, db: StoreDb, n: int, *, max_cycles: int = 50) -> int:
    """Run reconcile cycles back to back until ``n`` rows are launched; returns the cycles run."""
    for cycle in range(1, max_cycles + 1):
        engine.reconcile()
        if db.launched() >= n:
            return cycle
    raise RuntimeError(f"only {db.launched()} of {n} tasks launched after {max_cycles} reconcile cycles")
