"""One run of one scenario, start to verdict.

1. The sandbox (realistic profile, the plan's seed, the scenario's extra faults), a fresh store
   schema, the reconciler replicas; tasks and jobs planted that the reconciler must leave alone
   or must stop.
2. Load: the scheduler queues the planned tasks through the real executors, revokes and queues
   again the planned ones, dies at the planned moments; meanwhile the monkey kills leaders.
3. Drain: heartbeats go on until every task instance has its outcome (or a deadline passes:
   what is still waiting then is lost), then until nothing of the deployment is alive on AWS
   (or a deadline: what is alive then is an orphan left).
4. Verdict: :func:`chaos.invariants.check` per backend, from the sandbox's snapshots.

Imports Airflow (through :mod:`chaos.scheduler`): set up Airflow's environment first.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .facts import Launched
from .invariants import check
from .monkey import Monkey
from .report import ScenarioResult, calls_by_backend, faults_by_backend
from .scenarios import BACKENDS, Behaviour, RunPlan, Scenario, plan_run
from .scheduler import AirflowDb, Scheduler, TaskInstance
from .world import DEPLOYMENT, World, wait_for

__all__ = ["run_scenario"]

Log = Callable[[str], None]

#: How long the drain waits for the last outcomes: the longest task (30 s), a revoked one queued
#: again, launch retries with backoff, a RUNNABLE timeout (20 s) and a missing grace (30 s).
DRAIN_TIMEOUT = 180.0


class _Load:
    """The scheduler's agenda during the load phase: arrivals, revokes, requeues, deaths."""

    def __init__(self, plan: RunPlan) -> None:
        self.arrivals = list(plan.arrivals)
        self.kills = list(plan.executor_kills)
        self.revokes: list[tuple[float, int, TaskInstance, float, Behaviour | None]] = []
        self.requeues: list[tuple[float, int, TaskInstance, Behaviour]] = []
        self._seq = 0

    def step(self, scheduler: Scheduler, now: float) -> None:
        while self.arrivals and self.arrivals[0].at <= now:
            arrival = self.arrivals.pop(0)
            ti = scheduler.add(arrival.backend, arrival.task_id, arrival.behaviour)
            if arrival.revoke_after is not None:
                self._seq += 1
                item = (now + arrival.revoke_after, self._seq, ti, arrival.requeue_after, arrival.requeued)
                heapq.heappush(self.revokes, item)
        while self.revokes and self.revokes[0][0] <= now:
            _, seq, ti, requeue_after, behaviour = heapq.heappop(self.revokes)
            if scheduler.revoke(ti) and behaviour is not None:
                heapq.heappush(self.requeues, (now + requeue_after, seq, ti, behaviour))
        while self.requeues and self.requeues[0][0] <= now:
            _, _, ti, behaviour = heapq.heappop(self.requeues)
            scheduler.requeue(ti, behaviour)
        # After the arrivals: a death "before the heartbeat" loses what was just queued.
        while self.kills and self.kills[0].at <= now:
            scheduler.die(lose_queued=self.kills.pop(0).lose_queued)

    @property
    def done(self) -> bool:
        return not (self.arrivals or self.kills or self.revokes or self.requeues)


def _alive_of_ours(world: World) -> list[Launched]:
    return [item for item in world.launched() if item.owned_by(DEPLOYMENT) and item.live]


def run_scenario(
    scenario: Scenario, *, seed: int, work_dir: Path, log: Log, keep_evidence: bool = True
) -> ScenarioResult:
    """Run ``scenario`` once with ``seed``; processes and logs under ``work_dir``. With
    ``keep_evidence``, a run that broke a guarantee leaves its store schema in place."""
    plan = plan_run(scenario, seed)
    timing = scenario.timing
    started = time.monotonic()
    names = ["reconciler-a", "reconciler-b"][: scenario.replicas]
    with World(work_dir, timing=timing, log=log) as world:
        world.start_sandbox(seed=plan.sandbox_seed, faults=scenario.faults, args=scenario.sandbox_args)
        if scenario.observation == "events":
            world.provision_events()
        world.create_store()
        for name in names:
            world.replica(name).start()
        wait_for(world.leader, what="the first reconciler to lead", timeout=60)
        world.plant()
        scheduler = Scheduler(
            settings=world.settings(),
            db=AirflowDb(),
            dag_id=f"chaos_{scenario.name}_{world.stack_id}",
            task_queued_timeout=world.settings().task_queued_timeout,
        )
        stop = threading.Event()
        monkey = Monkey(world, plan.reconciler_kills, stop=stop)
        load = _Load(plan)
        clock0 = time.monotonic()

        def beat(until: Callable[[], bool], deadline: float, what: str) -> bool:
            """Heartbeat every ``timing.heartbeat`` until ``until()`` or the deadline; True if met."""
            next_beat = time.monotonic()
            last_note = next_beat
            while True:
                if monkey.error is not None:
                    raise RuntimeError(f"the reconciler killer failed: {monkey.error}") from monkey.error
                world.check_alive()
                load.step(scheduler, time.monotonic() - clock0)
                scheduler.heartbeat()
                if until():
                    return True
                now = time.monotonic()
                if now >= deadline:
                    log(f"  {what}: deadline passed")
                    return False
                if now - last_note >= 30:
                    last_note = now
                    log(
                        f"  {what}: {len(plan.arrivals) - len(load.arrivals)}/{len(plan.arrivals)} queued, "
                        f"{scheduler.waiting()} waiting, {len(monkey.takeovers)}/{len(plan.reconciler_kills)} kills"
                    )
                next_beat += timing.heartbeat
                # The scheduler's loop period, not a wait for something to happen.
                time.sleep(max(0.0, next_beat - time.monotonic()))

        monkey.start()
        try:
            beat(
                lambda: load.done and monkey.done.is_set(),
                time.monotonic() + 4 * plan.load_seconds + 300,
                "load",
            )
            beat(lambda: scheduler.waiting() == 0, time.monotonic() + DRAIN_TIMEOUT, "drain")
            # Checked every few heartbeats: a snapshot of every task costs the sandbox's lock.
            checks = iter(range(10**9))
            beat(
                lambda: next(checks) % 4 == 0 and not _alive_of_ours(world),
                time.monotonic() + timing.orphan_grace + 2 * timing.resync_interval + 30,
                "orphans",
            )
        finally:
            # The replicas first: those the monkey restarted die with its thread.
            world.stop_replicas()
            stop.set()
            monkey.join(timeout=60)
            scheduler.close()
        launched = world.launched()
        injected = world.injected()
        calls = world.calls()
        verdicts = {
            backend: check(
                backend=backend,
                deployment=DEPLOYMENT,
                queueings=scheduler.queueings(),
                events=scheduler.events,
                launched=launched,
            )
            for backend in BACKENDS
        }
        if keep_evidence and any(v.violations for v in verdicts.values()):
            # The rows are evidence: keep them for whoever investigates.
            world.keep_store = True
            log(f"  task store kept in schema {world.schema} of {world.store_url.split('?')[0]}")
    kills = [t.signal for t in monkey.takeovers]
    return ScenarioResult(
        scenario=scenario.name,
        seeds=[seed],
        verdicts=verdicts,
        sigkills=kills.count("SIGKILL"),
        sigterms=kills.count("SIGTERM"),
        executor_kills=scheduler.deaths,
        takeovers=list(monkey.takeovers),
        faults=faults_by_backend(injected),
        calls=calls_by_backend(calls),
        seconds=time.monotonic() - started,
    )
