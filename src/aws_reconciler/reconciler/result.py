"""What one reconcile cycle tells the loop (modelled on controller-runtime's ``Result``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CycleStats:
    """Counts of what a cycle did, for logs, tests and metrics."""

    launched: int = 0
    launch_retries: int = 0
    failed: int = 0
    finished: int = 0
    stopped: int = 0
    orphans_stopped: int = 0
    throttled: int = 0
    row_errors: int = 0


@dataclass(frozen=True)
class Result:
    """``requeue_after``: seconds until the next cycle is wanted (the loop may run it earlier)."""

    requeue_after: float
    stats: CycleStats = field(default_factory=CycleStats)
