"""Wake the reconciler as soon as the executor writes (PostgreSQL LISTEN/NOTIFY).

Elsewhere (SQLite) the reconciler simply polls every ``reconcile_interval``.

A channel is database-wide in PostgreSQL, so each store has its own: stores in one database are
separated by the schema holding their tables (the names are fixed, ``aws_reconciler_*``; a
deployment puts its own on its own ``search_path``) and, within one store, by Airflow's team
(every read and write of a team's executor and reconciler is scoped to it). A reconciler acts on
exactly the rows of its schema and team, so those two values name its channel: it is woken by
every executor writing those rows, and by nobody else's. The ``deployment`` setting is left out
on purpose: rows do not carry it, so executors of two deployment names writing to one schema
write rows that both reconcilers act on, and both must be woken.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .tables import task

#: What every channel name starts with, so that ``pg_listening_channels()`` shows whose it is.
CHANNEL_PREFIX = "aws_reconciler_"

# The schema of the table the store's unqualified names resolve to through the search_path, as
# its queries see it. Not current_schema(): with a search_path of "$user", public, an executor and
# a reconciler connecting as different roles may have different first schemas and the same table.
_TABLE_SCHEMA = sa.text(
    "SELECT n.nspname FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.oid = to_regclass(CAST(:table AS text))"
).bindparams(table=task.name)

# The schema of each engine's store, read once: it changes only if its tables moved.
_schemas: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def channel_name(schema: str, team: str | None) -> str:
    """The wake-up channel of the rows of ``team`` (``None``: the deployment-wide executors')
    in the store whose tables are in ``schema``.

    A channel is an identifier: at most 63 bytes (PostgreSQL cuts a longer one, so two long
    names that differ only at the end would share a channel) and only lower-case letters,
    digits and ``_`` unless quoted. A schema name (up to 63 bytes) and a team name (up to 64)
    may hold anything, so the name is the prefix and a hash of both: 31 characters, lower-case
    hex, safe unquoted in ``NOTIFY`` and ``LISTEN``. JSON keeps the pair unambiguous (no team,
    ``null``, is not a team named ``""``); 64 bits of SHA-256 make two stores of one database
    sharing a channel (a few extra cycles, nothing worse) practically impossible.
    """
    digest = hashlib.sha256(json.dumps([schema, team]).encode()).hexdigest()[:16]
    return f"{CHANNEL_PREFIX}{digest}"


def store_channel(conn: Connection, team: str | None) -> str:
    """The channel of ``team``'s rows in ``conn``'s store (PostgreSQL): what the executor's
    writes notify and the reconciler listens on, both through this function."""
    engine = conn.engine
    schema = _schemas.get(engine)
    if schema is None:
        schema = conn.execute(_TABLE_SCHEMA).scalar()
        if schema is None:
            raise LookupError(f"no table {task.name} on the search_path of the store's database")
        _schemas[engine] = schema
    return channel_name(schema, team)


def notify(conn: Connection, *, team: str | None) -> None:
    """Queue a wake-up of ``team``'s reconciler; PostgreSQL delivers it when the surrounding
    transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"NOTIFY {store_channel(conn, team)}"))


class Waker:
    """Waits for a NOTIFY on the channel of ``team``'s rows (:func:`store_channel`), a local
    :meth:`wake` (shutdown), or the timeout, whichever is first."""

    def __init__(self, engine: Engine, *, team: str | None = None) -> None:
        self._engine = engine
        self._team = team
        self._local = threading.Event()
        self._raw: Any = None

    def wake(self) -> None:
        """Interrupt the current or next :meth:`wait` (used by signal handlers)."""
        self._local.set()

    def clear(self) -> None:
        """Forget the wake-ups so far: the cycle about to start covers them."""
        self._local.clear()
        if self._raw is not None:
            try:
                self._drain(self._raw)
            except Exception:
                self.close()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when woken before it ran out."""
        if self._local.is_set():
            self._local.clear()
            return True
        if self._engine.dialect.name != "postgresql":
            woken = self._local.wait(timeout)
            self._local.clear()
            return woken
        return self._wait_postgres(timeout)

    def _wait_postgres(self, timeout: float) -> bool:
        # Poll the notification socket in short slices so a local wake() is honoured quickly.
        slice_seconds = 0.2
        remaining = timeout
        try:
            conn = self._listening_connection()
            while remaining > 0:
                # Let the generator run to its end: it holds the connection's lock until then,
                # and draining inside it would deadlock.
                received = list(conn.notifies(timeout=min(slice_seconds, remaining), stop_after=1))
                if received:
                    self._drain(conn)
                    return True
                if self._local.is_set():
                    self._local.clear()
                    return True
                remaining -= slice_seconds
        except Exception:
            # A broken listening connection must not break the loop: fall back to polling and
            # reconnect on the next wait.
            self.close()
            woken = self._local.wait(max(remaining, 0))
            self._local.clear()
            return woken
        return False

    def _drain(self, conn: Any) -> None:
        # Many inserts in a burst produce many notifications; one cycle handles them all. The
        # timeout must be positive: psycopg treats 0 as "no timeout" and would block forever.
        for _ in conn.notifies(timeout=0.001):
            pass

    def _listening_connection(self) -> Any:
        if self._raw is None:
            import psycopg

            # Named through the engine, as the writers name it: the same schema whatever this
            # connection's own settings.
            with self._engine.connect() as conn:
                channel = store_channel(conn, self._team)
            url = self._engine.url.set(drivername="postgresql")
            self._raw = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            self._raw.execute(f"LISTEN {channel}")
        return self._raw

    def close(self) -> None:
        """Drop the listening connection."""
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None
