"""Fixtures for the Batch tests: the sandbox (one per module), settings with Batch configured,
scenario harnesses and an AWS-call counter.

Airflow reads ``AIRFLOW_HOME`` when first imported and every executor needs a JWT secret, so both
are set here before any module of this directory imports Airflow (``setdefault``: when the
executor tests' conftest ran first, its values stand).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "AIRFLOW_HOME" not in os.environ or "AIRFLOW__API_AUTH__JWT_SECRET" not in os.environ:
    _home = tempfile.mkdtemp(prefix="aws-reconciler-batch-tests-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ.setdefault("AIRFLOW_HOME", _home)
    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "batch-tests-" + "0123456789abcdef" * 4)

from collections.abc import Callable, Iterator

import pytest
from batch_support import REGION, Harness

from aws_reconciler.config import Settings
from aws_reconciler.store import TaskStore, create_store_engine, migrate
from aws_reconciler_sandbox import SandboxServer, bootstrap
from support.scenario import FakeClock
from support.stores import make_settings as shared_settings

#: What bootstrap(batch=True) creates, for tests that need no sandbox.
BATCH_ENV = {
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "airflow",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "airflow-job",
}


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(request: pytest.FixtureRequest) -> SettingsFactory:
    """``make_settings(store_url, **env)``: the shared builder (ECS configured) plus Batch."""
    base: SettingsFactory = shared_settings

    def factory(store_url: str, **env: str) -> Settings:
        return base(store_url, **{**BATCH_ENV, **env})

    return factory


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """One sandbox per module, runner off: moto's state is process-wide, so never two at once."""
    server = SandboxServer(region=REGION).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws(sandbox: SandboxServer) -> Iterator[dict[str, str]]:
    """A clean sandbox account with ECS and Batch resources (queue "airflow", definition "airflow-job")."""
    sandbox.reset()
    env = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)
    yield env
    sandbox.clear_faults()


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def make_harness(
    store_url: str, aws: dict[str, str], sandbox: SandboxServer, make_settings: SettingsFactory
) -> Iterator[HarnessFactory]:
    """``make_harness(**env)``: settings = bootstrap output + ``env``; a migrated store (SQLite/PostgreSQL)."""
    built: list[Harness] = []

    def factory(**env: str) -> Harness:
        airflow_env = {k: v for k, v in aws.items() if k.startswith("AIRFLOW__")}
        settings = make_settings(store_url, **{**airflow_env, **env})
        db = create_store_engine(store_url)
        migrate(db)
        clock = FakeClock()
        harness = Harness(sandbox=sandbox, settings=settings, db=db, store=TaskStore(db, clock=clock), clock=clock)
        built.append(harness)
        return harness

    yield factory
    for harness in built:
        harness.close()
