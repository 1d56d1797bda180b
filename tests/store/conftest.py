"""The store's own tests run on every supported database: SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on SQLite, PostgreSQL and MariaDB (the latter two skip or, with
    AWS_RECONCILER_REQUIRE_POSTGRES=1 / AWS_RECONCILER_REQUIRE_MARIADB=1, fail when absent)."""
    fixture = {"sqlite": "sqlite_url", "postgres": "pg_schema_url", "mariadb": "mariadb_url"}[request.param]
    return str(request.getfixturevalue(fixture))
