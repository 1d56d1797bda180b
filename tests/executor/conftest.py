"""Fixtures for the scheduler-side executor: an isolated Airflow home, executors, an AWS-call counter.

Airflow reads ``AIRFLOW_HOME`` when it is first imported and writes an ``airflow.cfg`` there, and
every executor's ``__init__`` needs a JWT signing secret, so both are set here, before any test
module of this directory imports Airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="aws-reconciler-executor-tests-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = "executor-tests-" + "0123456789abcdef" * 4

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

from aws_reconciler.config import Settings  # noqa: E402
from aws_reconciler.executor import EcsExecutor  # noqa: E402
from support.stores import make_settings as shared_settings  # noqa: E402

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(request: pytest.FixtureRequest) -> SettingsFactory:
    """The shared ``make_settings(store_url, **env)`` of ``tests/conftest.py``."""
    factory: SettingsFactory = shared_settings
    return factory


ExecutorFactory = Callable[..., EcsExecutor]


@pytest.fixture
def new_executor(store_url: str, make_settings: SettingsFactory) -> Iterator[ExecutorFactory]:
    """Build started executors on the test's store, as a scheduler with job id ``job_id`` would.

    Each call is a fresh instance (a restarted scheduler is a new process); engines are disposed
    afterwards so the PostgreSQL schema fixture can drop its schema.
    """
    created: list[EcsExecutor] = []

    def factory(*, job_id: int = 1, parallelism: int = 32, start: bool = True, **env: str) -> EcsExecutor:
        executor = EcsExecutor(parallelism=parallelism)
        executor.job_id = job_id
        executor._settings = make_settings(store_url, **env)
        created.append(executor)
        if start:
            executor.start()
        return executor

    yield factory
    for executor in created:
        if executor._store is not None:
            executor._store.engine.dispose()
