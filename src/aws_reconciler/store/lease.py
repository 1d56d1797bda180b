"""Leader election on the store: one active reconciler per deployment.

The lease row is taken over only once expired, by a single conditional UPDATE, so two
replicas can never both believe they acquired it. Expiry is the DATABASE's clock (read in the
same transaction that writes it), never a replica's wall clock: a replica whose clock runs
seconds ahead cannot take a lease that is still valid, nor keep one that has expired.

Every takeover increments ``transitions``, the lease's *generation*. A :class:`Fence` names one
holder's generation; a write guarded by it lands only while that tenure lasts, so a replica that
lost the lease (paused, partitioned) cannot overwrite what its successor wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from .database import database_now
from .tables import lease


@dataclass(frozen=True)
class LeaseState:
    """The lease as this replica last saw it; ``generation`` counts takeovers (see :class:`Fence`)."""

    held: bool
    holder: str | None
    expires_at: datetime | None
    generation: int | None = None


@dataclass(frozen=True)
class Fence:
    """Proof of leadership a store write must still hold when it lands."""

    name: str
    holder: str
    generation: int

    def clause(self) -> sa.ColumnElement[bool]:
        """True while ``holder`` holds the lease ``name`` in the same tenure (no takeover since)."""
        return sa.exists().where(
            lease.c.name == self.name, lease.c.holder == self.holder, lease.c.transitions == self.generation
        )


class LeaseStore:
    """Acquire, renew and release the named lease."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def acquire_or_renew(self, *, name: str, holder: str, duration: float, now: datetime | None = None) -> LeaseState:
        """Renew if we hold it, take it if it expired or never existed; otherwise report who holds it.

        ``now`` defaults to the database's clock; pass it only to replay a timeline in tests.
        """
        with self.engine.begin() as conn:
            at = now if now is not None else database_now(conn)
            expires = at + timedelta(seconds=duration)
            renewed = conn.execute(
                lease.update()
                .where(lease.c.name == name, lease.c.holder == holder)
                .values(renewed_at=at, expires_at=expires)
            ).rowcount
            if renewed:
                return LeaseState(True, holder, expires, _generation(conn, name))
            taken = conn.execute(
                lease.update()
                .where(lease.c.name == name, lease.c.expires_at < at)
                .values(
                    holder=holder,
                    acquired_at=at,
                    renewed_at=at,
                    expires_at=expires,
                    transitions=lease.c.transitions + 1,
                )
            ).rowcount
            if taken:
                return LeaseState(True, holder, expires, _generation(conn, name))
            current = conn.execute(sa.select(lease.c.holder, lease.c.expires_at).where(lease.c.name == name)).first()
        if current is not None:
            return LeaseState(False, current.holder, current.expires_at)
        try:
            with self.engine.begin() as conn:
                at = now if now is not None else database_now(conn)
                expires = at + timedelta(seconds=duration)
                conn.execute(
                    lease.insert().values(
                        name=name, holder=holder, acquired_at=at, renewed_at=at, expires_at=expires, transitions=0
                    )
                )
            return LeaseState(True, holder, expires, 0)
        except IntegrityError:
            # Another replica inserted it first.
            return LeaseState(False, None, None)

    def release(self, *, name: str, holder: str, now: datetime | None = None) -> bool:
        """Give the lease up at once (clean shutdown) so a standby need not wait for expiry.

        Returns whether this holder still had it to give.
        """
        with self.engine.begin() as conn:
            at = now if now is not None else database_now(conn)
            # Expired a moment ago, not "now": a standby asking within the same tick of the
            # database's clock (milliseconds on SQLite) must find it expired, not still held.
            expired = at - timedelta(seconds=1)
            return bool(
                conn.execute(
                    lease.update().where(lease.c.name == name, lease.c.holder == holder).values(expires_at=expired)
                ).rowcount
            )


def _generation(conn: Connection, name: str) -> int:
    value = conn.execute(sa.select(lease.c.transitions).where(lease.c.name == name)).scalar_one()
    return int(value)
