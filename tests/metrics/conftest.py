"""Fixtures of the observability tests: one sandbox per module, settings, reconciler replicas.

moto's state is process-wide, so a module starts its sandbox (``run_tasks``: task commands run
as local processes and write CloudWatch Logs) and stops it before the next module starts its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from metrics_support import FAST, Replica, build_replica

from aws_reconciler.config import Settings
from aws_reconciler.store import create_store_engine, migrate
from aws_reconciler_sandbox import SandboxServer, bootstrap
from aws_reconciler_sandbox.runner import RunnerOptions
from support.stores import make_settings

REGION = "us-east-1"

SettingsFactory = Callable[..., Settings]
ReplicaFactory = Callable[..., Replica]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """The module's fake AWS, running task commands as processes (quick lifecycle)."""
    server = SandboxServer(
        region=REGION,
        run_tasks=True,
        runner=RunnerOptions(provisioning_delay=0.3, pending_delay=0.3, poll_interval=0.05, shutdown_timeout=2),
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_env(sandbox: SandboxServer) -> dict[str, str]:
    """Cluster, task definition (awslogs into /aws-reconciler/tasks), network: the settings to use."""
    return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)


@pytest.fixture(scope="module")
def settings_for(request: pytest.FixtureRequest, aws_env: dict[str, str]) -> SettingsFactory:
    """``settings_for(store_url, **env)``: the sandbox's ECS settings, fast loop timings, ``env``."""
    airflow_env = {k: v for k, v in aws_env.items() if k.startswith("AIRFLOW__")}

    def factory(store_url: str, **env: str) -> Settings:
        settings: Settings = make_settings(store_url, **{**airflow_env, **FAST, **env})
        return settings

    return factory


@pytest.fixture
def migrated_sqlite(tmp_path: Path) -> str:
    """A migrated, file-backed SQLite store shared by every replica of the test."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = create_store_engine(url)
    migrate(engine)
    engine.dispose()
    return url


@pytest.fixture
def replicas(sandbox: SandboxServer) -> Iterator[ReplicaFactory]:
    """``replicas(name, settings=..., store_url=...)`` builds a replica; all are stopped afterwards."""
    built: list[Replica] = []

    def factory(name: str, *, settings: Settings, store_url: str) -> Replica:
        replica = build_replica(name, settings=settings, sandbox=sandbox, store_url=store_url)
        built.append(replica)
        return replica

    yield factory
    for replica in reversed(built):
        replica.stop()
        replica.engine.store.engine.dispose()
