"""The CLI tests' sandbox account (the sandbox itself, one per module, is the root conftest's): the
default resources and the settings for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aws_reconciler_sandbox import SandboxServer, bootstrap

REGION = "us-east-1"


@pytest.fixture
def configured(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SandboxServer:
    """A fresh sandbox with ECS and Batch resources; the environment points the CLI at it and at a SQLite store."""
    sandbox.reset()
    for name, value in bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    return sandbox
