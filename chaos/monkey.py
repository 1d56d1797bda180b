"""Kills the reconciler's leader, over and over, and measures how long leadership is vacant.

A thread of its own, so that kills land at random points of the reconciler's cycle while the
scheduler keeps queueing. For each planned kill it waits for a leader, lets it run its drawn
uptime, sends the signal (SIGKILL: the lease stays until it expires; SIGTERM: the replica
releases it on its way out), and waits for the lease to change hands. Takeover time is the
lease's ``acquired_at`` minus the moment of the kill, both on the database's clock. The killed
replica is started again at once, as Kubernetes would restart its pod: with one replica it is
the next leader, with two the new standby.

The thread lives until the run ends (``stop``), not only until its last kill: the processes it
restarted die with the thread that started them (``PR_SET_PDEATHSIG``, see the demo stack's
``processes.py``), and they must outlive the kills.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

from aws_reconciler_sandbox.demo.processes import ManagedProcess

from .scenarios import ReconcilerKill
from .world import Lease, World, wait_for

__all__ = ["Monkey", "Takeover"]


@dataclass(frozen=True)
class Takeover:
    """One kill and how long until another process held the lease."""

    signal: str
    seconds: float
    #: After a SIGTERM: seconds until the process had exited (its pod's termination time).
    exit_seconds: float | None = None


class Monkey(threading.Thread):
    """Executes the planned kills (see the module docstring); ``error`` holds what stopped it."""

    def __init__(self, world: World, kills: tuple[ReconcilerKill, ...], *, stop: threading.Event) -> None:
        super().__init__(name="chaos-monkey", daemon=True)
        self.world = world
        self.kills = kills
        self.stop_event = stop
        self.takeovers: list[Takeover] = []
        self.error: BaseException | None = None
        #: Set once every planned kill happened (or failed: see ``error``).
        self.done = threading.Event()
        # Generous: a restarted process must import, connect and wait out a lease.
        self._deadline = 6 * world.timing.takeover_bound + 30

    def run(self) -> None:
        try:
            for kill in self.kills:
                if self.stop_event.is_set():
                    break
                self._kill(kill)
        except BaseException as exc:  # reported by the run
            self.error = exc
        finally:
            self.done.set()
        self.stop_event.wait()

    def _kill(self, kill: ReconcilerKill) -> None:
        world = self.world

        def leading() -> ManagedProcess | None:
            world.check_alive()
            return world.leader()

        leader = wait_for(leading, what="a reconciler to lead", timeout=self._deadline)
        others = [p for p in world.replicas if p is not leader]
        if others:
            # A standby still starting up is no standby: the takeover would measure its start.

            def standing_by() -> bool:
                world.check_alive()
                return all(world.standing_by(p) for p in others)

            wait_for(
                standing_by,
                what="every other replica to stand by",
                timeout=self._deadline,
            )
        # The drawn uptime is the random point of the kill, not a wait for something to happen.
        if self.stop_event.wait(kill.uptime):
            return
        before = world.lease()
        assert before is not None
        world.down.add(leader.name)
        if kill.signal == "SIGKILL":
            leader.kill()
            killed_at = world.database_now()
        else:
            leader.signal_group(signal.SIGTERM)
            killed_at = world.database_now()
            terminated = time.monotonic()
        if kill.signal == "SIGKILL" or len(world.replicas) == 1:
            self._restart(leader)

        def taken() -> Lease | None:
            world.check_alive()
            lease = world.lease()
            return lease if lease is not None and lease.holder != before.holder else None

        lease = wait_for(
            taken,
            what=f"another reconciler to take the lease after {kill.signal}",
            timeout=self._deadline,
            every=0.02,
        )
        seconds = max(0.0, (lease.acquired_at - killed_at).total_seconds())
        if kill.signal == "SIGKILL" or len(world.replicas) == 1:
            self.takeovers.append(Takeover(kill.signal, seconds))
            return
        wait_for(lambda: not leader.running, what=f"{leader.name} to exit after SIGTERM", timeout=60, every=0.02)
        self.takeovers.append(Takeover(kill.signal, seconds, exit_seconds=time.monotonic() - terminated))
        self._restart(leader)

    def _restart(self, process: ManagedProcess) -> None:
        if process.running:
            # A SIGTERMed replica finishes its calls in flight and releases the lease first.
            wait_for(lambda: not process.running, what=f"{process.name} to exit", timeout=30)
        process.start()
        self.world.down.discard(process.name)
