"""Shared fixtures: task stores on SQLite, PostgreSQL and MariaDB, and settings builders."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from aws_reconciler.config import Settings, load_settings
from aws_reconciler.store import TaskStore, create_store_engine, migrate

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


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.engine.make_url(postgres_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


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


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A MariaDB URL of a fresh database, dropped afterwards."""
    require_mariadb()
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(mariadb_server_url())
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(mariadb_server_url()).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name}"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A file-backed SQLite store (a file, so several engines/processes can share it)."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[TaskStore]:
    """A migrated store."""
    engine = create_store_engine(store_url)
    migrate(engine)
    yield TaskStore(engine)
    engine.dispose()


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


@pytest.fixture(scope="session")
def airflow_metadata_db() -> None:
    """Airflow's own tables, created once in the test Airflow home's database.

    The executor reads the current state of task instances from it when it reports; the test
    Airflow home (set by the conftest of each Airflow-side test directory) is a throwaway.
    """
    from airflow import settings
    from airflow.models import import_all_models
    from airflow.models.base import Base

    import_all_models()
    Base.metadata.create_all(settings.engine)


@pytest.fixture(autouse=True)
def _airflow_metadata_for_airflow_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked ``airflow`` run against an Airflow database with its schema in place."""
    if request.node.get_closest_marker("airflow") is not None:
        request.getfixturevalue("airflow_metadata_db")
