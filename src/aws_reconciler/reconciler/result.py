"""What one reconcile cycle tells the loop (modelled on controller-runtime's ``Result``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.errors import AwsError


@dataclass(frozen=True)
class CycleStats:
    """Counts of what a cycle did, for logs, tests and metrics."""

    launched: int = 0
    launch_retries: int = 0
    failed: int = 0
    finished: int = 0
    # Rows ended because Airflow no longer wanted them (revoked, superseded).
    revoked: int = 0
    stopped: int = 0
    orphans_stopped: int = 0
    throttled: int = 0
    row_errors: int = 0
    # Due launches left for a later cycle: the rate limits would not have let them out this one.
    deferred: int = 0
    # Launch and stop calls still running when the cycle ended; the next cycle collects them.
    in_flight: int = 0

    def summary(self) -> str:
        """One line for operators: the main counts always, the others when not zero."""
        main = ("launched", "finished", "failed", "revoked", "stopped")
        parts = [f"{name} {getattr(self, name)}" for name in main]
        parts += [f"{name} {value}" for name, value in vars(self).items() if name not in main and value]
        return ", ".join(parts)


@dataclass(frozen=True)
class Result:
    """``requeue_after``: seconds until the next cycle is wanted (the loop may run it earlier).

    ``errors``: AWS trouble the cycle worked around (a describe batch or the discovery failed);
    what it could do, it did, but the loop reports itself unhealthy while they last.
    """

    requeue_after: float
    stats: CycleStats = field(default_factory=CycleStats)
    errors: tuple[AwsError, ...] = ()
