"""Fixtures for the Batch tests: settings with Batch configured, and a clean sandbox account with
Batch resources (the sandbox and the scenario world are the root conftest's).

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
from typing import TYPE_CHECKING

import pytest

from aws_reconciler.config import Settings
from support.stores import make_settings as shared_settings
from support.world import REGION

if TYPE_CHECKING:
    from aws_reconciler_sandbox import SandboxServer

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


@pytest.fixture
def aws(sandbox: SandboxServer) -> Iterator[dict[str, str]]:
    """A clean sandbox account with ECS and Batch resources (queue "airflow", definition "airflow-job")."""
    from aws_reconciler_sandbox import bootstrap

    sandbox.reset()
    env = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)
    yield env
    sandbox.clear_faults()
