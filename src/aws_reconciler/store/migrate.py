"""Schema migrations (Alembic) with their own version table beside Airflow's."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from .tables import MYSQL_DIALECTS

VERSION_TABLE = "aws_reconciler_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: serialises concurrent `db migrate` runs (two schedulers starting at once).
_ADVISORY_LOCK_ID = 0x617773_7265  # "aws" "re"
_MYSQL_LOCK = "aws_reconciler_migrate"


class SchemaNotReadyError(RuntimeError):
    """The store's schema is missing or older than this release needs."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest revision this release ships."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` when the store was never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the store to head; returns (before, after). Safe to run concurrently on PostgreSQL."""
    config = _config()
    with engine.begin() as connection:
        mysql = connection.dialect.name in MYSQL_DIALECTS
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
        elif mysql:
            # MySQL commits each DDL statement, so the lock is the session's and released below.
            connection.execute(sa.text("SELECT GET_LOCK(:name, 300)"), {"name": _MYSQL_LOCK})
        try:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            before = context.get_current_revision()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        finally:
            if mysql:
                connection.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK})
    return before, head_revision()


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaNotReadyError` unless the store is at this release's head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotReadyError(
            f"task store schema is at {current or 'nothing'}, this release needs {head}: "
            "run `aws-reconciler db migrate`"
        )
