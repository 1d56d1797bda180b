"""Databases and settings for tests: plain functions any test module or conftest imports.

The fixtures built on them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from aws_reconciler.config import Settings, load_settings
from aws_reconciler.store import TaskStore
from aws_reconciler.store.sealing import TokenSealer

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    """The PostgreSQL server the tests may use."""
    return os.environ.get("AWS_RECONCILER_TEST_DATABASE_URL", DEFAULT_PG_URL)


def _postgres_reason() -> str | None:
    try:
        engine = sa.create_engine(postgres_url())
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL unreachable at {postgres_url()}: {type(exc).__name__}"


_PG_UNAVAILABLE = _postgres_reason()


def require_postgres() -> None:
    """Skip visibly, or fail when CI demands PostgreSQL (AWS_RECONCILER_REQUIRE_POSTGRES=1)."""
    if _PG_UNAVAILABLE is None:
        return
    if os.environ.get("AWS_RECONCILER_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{_PG_UNAVAILABLE} and AWS_RECONCILER_REQUIRE_POSTGRES=1")
    pytest.skip(_PG_UNAVAILABLE)


DEFAULT_MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def mariadb_server_url() -> str:
    """The MariaDB (or MySQL) server the tests may use."""
    return os.environ.get("AWS_RECONCILER_TEST_MARIADB_URL", DEFAULT_MARIADB_URL)


def _mariadb_reason() -> str | None:
    try:
        engine = sa.create_engine(mariadb_server_url())
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"MariaDB unreachable at {mariadb_server_url()}: {type(exc).__name__}"


_MARIADB_UNAVAILABLE: list[str | None] = []


def require_mariadb() -> None:
    """Skip visibly, or fail when CI demands MariaDB (AWS_RECONCILER_REQUIRE_MARIADB=1)."""
    if not _MARIADB_UNAVAILABLE:
        _MARIADB_UNAVAILABLE.append(_mariadb_reason())  # probed once, on first use
    reason = _MARIADB_UNAVAILABLE[0]
    if reason is None:
        return
    if os.environ.get("AWS_RECONCILER_REQUIRE_MARIADB") == "1":
        pytest.fail(f"{reason} and AWS_RECONCILER_REQUIRE_MARIADB=1")
    pytest.skip(reason)


def make_settings(store_url: str, **env: str) -> Settings:
    """Settings from an explicit environment only (no airflow.cfg), ECS configured."""
    environ = {
        "AIRFLOW__AWS_RECONCILER__STORE_URL": store_url,
        "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "airflow",
        "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
        "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
        "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
        "AIRFLOW__AWS_RECONCILER_ECS__SUBNETS": "subnet-1",
        "AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS": "sg-1",
        **env,
    }
    return load_settings(environ=environ, cfg_path=Path("/nonexistent/airflow.cfg"))


def sent_request(store: TaskStore, record_id: str, *, tokens: TokenSealer | None = None) -> dict[str, Any]:
    """The request the reconciler sends for a row: the stored one with its workload token put back."""
    request = store.launch_requests([record_id])[record_id]
    assert request.spec is not None
    return (tokens or TokenSealer()).open_request(request.spec, request.workload_token)
