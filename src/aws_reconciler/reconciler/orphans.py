"""Remember when each orphan was first seen, so it is stopped only after ``orphan_grace``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta


class OrphanTracker:
    """In memory on purpose: after a restart the grace starts over, which only delays a stop."""

    def __init__(self, *, grace: float) -> None:
        self.grace = timedelta(seconds=grace)
        self._first_seen: dict[str, datetime] = {}

    def due(self, external_ids: Iterable[str], *, now: datetime) -> list[str]:
        """Of the orphans seen now, those past their grace; forgets ids no longer orphaned."""
        current = set(external_ids)
        for gone in set(self._first_seen) - current:
            del self._first_seen[gone]
        ready = []
        for external_id in current:
            first = self._first_seen.setdefault(external_id, now)
            if now - first >= self.grace:
                ready.append(external_id)
        return ready

    def tracked(self) -> set[str]:
        """Orphans currently inside their grace."""
        return set(self._first_seen)

    def forget(self, external_id: str) -> None:
        """The orphan was stopped."""
        self._first_seen.pop(external_id, None)
