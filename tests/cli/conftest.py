"""The CLI tests' sandbox: one per module, with the default resources and settings for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aws_reconciler_sandbox import SandboxServer, bootstrap

REGION = "us-east-1"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(region=REGION)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def configured(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SandboxServer:
    """A fresh sandbox with ECS and Batch resources; the environment points the CLI at it and at a SQLite store."""
    sandbox.reset()
    for name, value in bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    return sandbox
