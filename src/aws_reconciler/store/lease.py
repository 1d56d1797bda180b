"""Leader election on the store: one active reconciler per deployment.

The lease row is taken over only once expired, by a single conditional UPDATE, so two
replicas can never both believe they acquired it. Expiry uses the writer's clock; replicas
are expected to run NTP-synchronised clocks, as with Kubernetes leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .tables import lease


@dataclass(frozen=True)
class LeaseState:
    """The lease as this replica last saw it."""

    held: bool
    holder: str | None
    expires_at: datetime | None


class LeaseStore:
    """Acquire, renew and release the named lease."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def acquire_or_renew(self, *, name: str, holder: str, now: datetime, duration: float) -> LeaseState:
        """Renew if we hold it, take it if it expired or never existed; otherwise report who holds it."""
        expires = now + timedelta(seconds=duration)
        with self.engine.begin() as conn:
            renewed = conn.execute(
                lease.update()
                .where(lease.c.name == name, lease.c.holder == holder)
                .values(renewed_at=now, expires_at=expires)
            ).rowcount
            if renewed:
                return LeaseState(True, holder, expires)
            taken = conn.execute(
                lease.update()
                .where(lease.c.name == name, lease.c.expires_at < now)
                .values(
                    holder=holder,
                    acquired_at=now,
                    renewed_at=now,
                    expires_at=expires,
                    transitions=lease.c.transitions + 1,
                )
            ).rowcount
            if taken:
                return LeaseState(True, holder, expires)
            current = conn.execute(sa.select(lease.c.holder, lease.c.expires_at).where(lease.c.name == name)).first()
        if current is not None:
            return LeaseState(False, current.holder, current.expires_at)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    lease.insert().values(
                        name=name, holder=holder, acquired_at=now, renewed_at=now, expires_at=expires, transitions=0
                    )
                )
            return LeaseState(True, holder, expires)
        except IntegrityError:
            # Another replica inserted it first.
            return LeaseState(False, None, None)

    def release(self, *, name: str, holder: str, now: datetime) -> None:
        """Give the lease up at once (clean shutdown) so a standby need not wait for expiry."""
        with self.engine.begin() as conn:
            conn.execute(lease.update().where(lease.c.name == name, lease.c.holder == holder).values(expires_at=now))
