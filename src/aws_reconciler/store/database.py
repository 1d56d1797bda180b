"""Engines for the task store, tuned per database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url


def create_store_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so two processes can share a file,
    MySQL/MariaDB PostgreSQL's isolation level."""
    parsed = make_url(url)
    # Errors never carry the statement's parameters: a launch request holds the workload token.
    kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # InnoDB's default REPEATABLE READ takes gap locks on the TI-key index, so two schedulers
        # inserting rows of neighbouring keys deadlock; PostgreSQL's default is READ COMMITTED too.
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    if cursor.execute("PRAGMA database_list").fetchone()[2]:  # a file, not :memory:
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# The database's own clock, at call time (not the transaction's start), in UTC.
_NOW = {
    "postgresql": "SELECT clock_timestamp()",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
    "mariadb": "SELECT UTC_TIMESTAMP(6)",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def database_now(conn: Connection) -> datetime:
    """The database server's current time (UTC-aware): the one clock every process shares.

    Deadlines that matter across processes (token expiry, leases) are compared with this, never
    with a replica's own wall clock, which may be seconds off.
    """
    value = conn.exec_driver_sql(_NOW[conn.dialect.name]).scalar()
    if isinstance(value, str):  # SQLite
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime), value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
