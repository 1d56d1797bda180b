"""Shared fixtures: task stores on SQLite, PostgreSQL and MariaDB, settings builders, the sandbox,
and the reconciler scenarios' world on each backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from aws_reconciler.store import TaskStore, create_store_engine, migrate
from support.awscalls import AwsCalls, record_api_calls
from support.stores import (
    make_settings,
    mariadb_server_url,
    postgres_url,
    require_mariadb,
    require_postgres,
)
from support.world import ADAPTERS, REGION, WORLD_SETUPS, Adapter, World, open_world

if TYPE_CHECKING:
    # Imported where used: the sandbox pulls in moto, which most test runs never need.
    from aws_reconciler_sandbox import SandboxServer

__all__ = ["AwsCalls", "make_settings"]


@contextmanager
def _fresh_schema_url() -> Iterator[str]:
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


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    with _fresh_schema_url() as url:
        yield url


@pytest.fixture
def other_pg_schema_url() -> Iterator[str]:
    """Another store on the same PostgreSQL database as ``pg_schema_url``'s: a schema of its own."""
    with _fresh_schema_url() as url:
        yield url


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


@pytest.fixture
def aws_calls(monkeypatch: pytest.MonkeyPatch) -> AwsCalls:
    """Count every API call of every boto3/botocore client made in the test."""
    recorder = AwsCalls()
    record_api_calls(monkeypatch, recorder.calls)
    return recorder


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """One sandbox per module, task runner off (a module needing the runner defines its own):
    moto's state is process-wide, so never two at once."""
    from aws_reconciler_sandbox import SandboxServer

    server = SandboxServer(region=REGION).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=list(ADAPTERS), ids=list(ADAPTERS))
def backend(request: pytest.FixtureRequest) -> Adapter:
    """Each scenario runs on every backend (``support.world.only`` narrows a test or a module)."""
    return ADAPTERS[request.param]


@pytest.fixture(params=list(WORLD_SETUPS))
def world_setup(request: pytest.FixtureRequest) -> tuple[str, str]:
    """How a scenario's reconciler observes and which store it uses: polling on SQLite and on
    PostgreSQL, observing by events on PostgreSQL (the store's behaviour does not depend on the
    observation mode, so events on SQLite would only repeat; ``support.world.polling_only``
    narrows a scenario to polling)."""
    observation, store = WORLD_SETUPS[request.param]
    return observation, store


@pytest.fixture
def world(
    backend: Adapter, world_setup: tuple[str, str], request: pytest.FixtureRequest, sandbox: SandboxServer
) -> Iterator[World]:
    """A clean sandbox account for ``backend``, a migrated store, a fake clock, and the reconciler
    observing as ``world_setup`` says."""
    observation, store = world_setup
    store_url = str(request.getfixturevalue("sqlite_url" if store == "sqlite" else "pg_schema_url"))
    with open_world(backend, sandbox=sandbox, store_url=store_url, observation=observation) as built:
        yield built
