"""Wake the reconciler as soon as the executor writes (PostgreSQL LISTEN/NOTIFY).

Elsewhere (SQLite) the reconciler simply polls every ``reconcile_interval``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

CHANNEL = "aws_reconciler"


def notify(conn: Connection) -> None:
    """Queue a wake-up; PostgreSQL delivers it when the surrounding transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"NOTIFY {CHANNEL}"))


class Waker:
    """Waits for a NOTIFY, a local :meth:`wake` (shutdown), or the timeout, whichever is first."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
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

            url = self._engine.url.set(drivername="postgresql")
            self._raw = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            self._raw.execute(f"LISTEN {CHANNEL}")
        return self._raw

    def close(self) -> None:
        """Drop the listening connection."""
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None
