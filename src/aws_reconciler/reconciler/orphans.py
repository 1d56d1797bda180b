"""When each orphan was first seen, so it is stopped only after ``orphan_grace``.

Pure: the engine keeps the map between discoveries. AWS's own ``createdAt`` bounds the
first-seen time, so a restarted reconciler does not give an orphan a fresh grace (under
repeated restarts an orphan would otherwise live on indefinitely).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..backends.base import Observation


@dataclass(frozen=True)
class OrphanSweep:
    """The orphans of one discovery: who is still in grace, who is due, who is new."""

    first_seen: Mapping[str, datetime]
    due: tuple[str, ...]
    new: int


def sweep(
    orphans: Mapping[str, Observation], *, previous: Mapping[str, datetime], now: datetime, grace: float
) -> OrphanSweep:
    """First-seen times of the orphans found now (ids no longer orphaned are forgotten) and the
    ids whose grace has passed, oldest first."""
    first_seen: dict[str, datetime] = {}
    for external_id, obs in orphans.items():
        seen = previous.get(external_id, now)
        # A createdAt ahead of our clock (skew) must not extend the grace: never later than now.
        if obs.created_at is not None and obs.created_at < seen:
            seen = obs.created_at
        first_seen[external_id] = seen
    limit = timedelta(seconds=grace)
    due = tuple(sorted((e for e, seen in first_seen.items() if now - seen >= limit), key=lambda e: first_seen[e]))
    return OrphanSweep(first_seen=first_seen, due=due, new=len(set(orphans) - set(previous)))
