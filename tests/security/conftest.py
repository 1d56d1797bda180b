"""Fixtures of the security tests: an isolated Airflow home (some tests run the real executors),
Fernet keys, and the task image stand-in the sandbox runs as the containers' Airflow.

Airflow reads ``AIRFLOW_HOME`` when it is first imported and every executor's ``__init__`` needs a
JWT signing secret, so both are set before any test module imports Airflow (``setdefault``: when
another directory's conftest ran first, its values stand).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

if "AIRFLOW_HOME" not in os.environ or "AIRFLOW__API_AUTH__JWT_SECRET" not in os.environ:
    _home = tempfile.mkdtemp(prefix="aws-reconciler-security-tests-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ.setdefault("AIRFLOW_HOME", _home)
    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "security-tests-" + "0123456789abcdef" * 4)

from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from aws_reconciler_sandbox import SandboxServer, bootstrap
from aws_reconciler_sandbox.runner import RunnerOptions

REGION = "us-east-1"

#: Put first on the task processes' PYTHONPATH, it answers the executors' container command
#: (``python -m airflow.sdk.execution_time.execute_workload``) as a task image would.
TASK_IMAGE = Path(__file__).resolve().parent / "taskimage"


@pytest.fixture
def token_key() -> str:
    """A fresh Fernet key, as ``[aws_reconciler] token_key`` takes it."""
    return Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """The module's fake AWS, running task commands as processes with the stand-in task image."""
    server = SandboxServer(
        region=REGION,
        run_tasks=True,
        runner=RunnerOptions(
            provisioning_delay=0.3,
            pending_delay=0.3,
            poll_interval=0.05,
            shutdown_timeout=2,
            extra_env={"PYTHONPATH": str(TASK_IMAGE)},
        ),
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_env(sandbox: SandboxServer) -> dict[str, str]:
    """Cluster, task definition and network of the sandbox, as settings and AWS variables."""
    return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)
