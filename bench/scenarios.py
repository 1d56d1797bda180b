"""The three measurements. Every number is taken for ours and the peer in alternation, on the
same sandbox, so slow drift of the (shared, 2-core) machine hits both sides alike."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import ours, peer
from .latency import added_latency
from .sandbox import Sandbox, diff
from .stats import process_cpu, timed
from .workloads import make_workloads, queue_all, tis_for_adoption

#: Large enough never to bind: the scheduler hands over every workload at once (a deployment
#: that runs 1000 tasks has raised [core] parallelism from its default of 32 anyway).
PARALLELISM = 10_000


@dataclass
class Context:
    sandbox: Sandbox
    db: ours.StoreDb
    log: Callable[[str], None] = print
    _runs: int = 0

    def fresh_world(self) -> dict[str, str]:
        """An empty sandbox (re-bootstrapped) and an empty store."""
        self.db.truncate()
        return self.sandbox.fresh_world()

    def run_id(self, side: str) -> str:
        self._runs += 1
        return f"{side}-{self._runs:04d}"


def alternate(rep: int, first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run both, swapping which goes first on every other repetition."""
    for step in (first, second) if rep % 2 == 0 else (second, first):
        step()


def warm_up(ctx: Context) -> None:
    """Pay the once-per-process costs before anything is timed: Airflow's metrics registry (a
    YAML file read on the first heartbeat), botocore's ECS model (our spec validation, the peer's
    client), imports. A scheduler pays them once at start, not per heartbeat."""
    world = ctx.fresh_world()
    ours_ex = ours.new_executor(world, ctx.db.url, job_id=1, parallelism=PARALLELISM)
    queue_all(ours_ex, make_workloads(1, run=ctx.run_id("warm")))
    ours_ex.heartbeat()
    engine = ours.new_engine(world, ctx.db.url, raised_limits=True)
    try:
        ours.reconcile_until_launched(engine, ctx.db, 1)
    finally:
        ours.close_engine(engine)
        ours.dispose_executor(ours_ex)
    peer_ex = peer.new_executor(world, parallelism=PARALLELISM)
    queue_all(peer_ex, make_workloads(1, run=ctx.run_id("warm")))
    peer.heartbeat_until_launched(peer_ex, 1)


# ---- 1 and 3: heartbeat with N running task instances, and adoption after a restart ----------


@dataclass
class SteadyState:
    """Scenario 1 (and 3, on the same tasks) for one N."""

    n: int
    ours_heartbeat_s: list[float] = field(default_factory=list)
    peer_heartbeat_s: list[float] = field(default_factory=list)
    ours_heartbeat_calls: list[dict[str, int]] = field(default_factory=list)
    peer_heartbeat_calls: list[dict[str, int]] = field(default_factory=list)
    ours_adopt_s: list[float] = field(default_factory=list)
    peer_adopt_s: list[float] = field(default_factory=list)
    ours_adopt_calls: list[dict[str, int]] = field(default_factory=list)
    peer_adopt_calls: list[dict[str, int]] = field(default_factory=list)
    ours_adopted: list[int] = field(default_factory=list)
    peer_adopted: list[int] = field(default_factory=list)


def steady_state(ctx: Context, n: int, *, heartbeat_reps: int, adopt_reps: int) -> SteadyState:
    """N tasks running for each executor, then heartbeats (and adoptions) in alternation."""
    result = SteadyState(n=n)
    world = ctx.fresh_world()
    sandbox, db = ctx.sandbox, ctx.db

    ctx.log(f"  [steady N={n}] launching {n} tasks with each executor")
    ours_workloads = make_workloads(n, run=ctx.run_id("ours"))
    ours_ex = ours.new_executor(world, db.url, job_id=1, parallelism=PARALLELISM)
    queue_all(ours_ex, ours_workloads)
    ours_ex.heartbeat()
    engine = ours.new_engine(world, db.url, raised_limits=True)
    try:
        ours.reconcile_until_launched(engine, db, n)
    finally:
        ours.close_engine(engine)

    peer_workloads = make_workloads(n, run=ctx.run_id("peer"))
    peer_ex = peer.new_executor(world, parallelism=PARALLELISM)
    queue_all(peer_ex, peer_workloads)
    peer.heartbeat_until_launched(peer_ex, n)
    peer_arns = peer.task_arns(peer_ex)
    ours_ex.get_event_buffer()
    if len(ours_ex.running) != n or len(peer_ex.running) != n:
        raise RuntimeError(f"running sets: ours {len(ours_ex.running)}, peer {len(peer_ex.running)}; expected {n}")

    def heartbeat(executor: Any, seconds: list[float], calls: list[dict[str, int]]) -> None:
        before = sandbox.calls()
        elapsed, _ = timed(executor.heartbeat)
        calls.append(diff(sandbox.calls(), before))
        seconds.append(elapsed)

    ours_ex.heartbeat()  # warm-up, untimed
    peer_ex.heartbeat()
    ctx.log(f"  [steady N={n}] {heartbeat_reps} heartbeats each")
    for rep in range(heartbeat_reps):
        alternate(
            rep,
            lambda: heartbeat(ours_ex, result.ours_heartbeat_s, result.ours_heartbeat_calls),
            lambda: heartbeat(peer_ex, result.peer_heartbeat_s, result.peer_heartbeat_calls),
        )
    if ours_ex.get_event_buffer() or peer_ex.get_event_buffer():
        raise RuntimeError("a task changed state while the executors were only observing")
    ours.dispose_executor(ours_ex)

    if adopt_reps:
        ctx.log(f"  [steady N={n}] scheduler restart: {adopt_reps} adoptions each")
        ours_tis = tis_for_adoption(ours_workloads, {w.ti.key: str(w.ti.external_executor_id) for w in ours_workloads})
        peer_tis = tis_for_adoption(peer_workloads, peer_arns)
        for rep in range(adopt_reps):
            alternate(
                rep,
                functools.partial(_adopt_ours, ctx, world, ours_tis, job_id=100 + rep, result=result),
                functools.partial(_adopt_peer, ctx, world, peer_tis, result=result),
            )
    return result


def _adopt_ours(ctx: Context, world: dict[str, str], tis: list[Any], *, job_id: int, result: SteadyState) -> None:
    # A new scheduler process (new job id) starts, then adopts the dead one's TIs.
    executor = ours.new_executor(world, ctx.db.url, job_id=job_id, parallelism=PARALLELISM)
    before = ctx.sandbox.calls()
    elapsed, not_adopted = timed(lambda: executor.try_adopt_task_instances(tis))
    result.ours_adopt_calls.append(diff(ctx.sandbox.calls(), before))
    result.ours_adopt_s.append(elapsed)
    result.ours_adopted.append(len(tis) - len(not_adopted))
    ours.dispose_executor(executor)


def _adopt_peer(ctx: Context, world: dict[str, str], tis: list[Any], *, result: SteadyState) -> None:
    executor = peer.new_executor(world, parallelism=PARALLELISM)
    before = ctx.sandbox.calls()
    elapsed, not_adopted = timed(lambda: executor.try_adopt_task_instances(tis))
    result.peer_adopt_calls.append(diff(ctx.sandbox.calls(), before))
    result.peer_adopt_s.append(elapsed)
    result.peer_adopted.append(len(tis) - len(not_adopted))


# ---- 2: from queueing N workloads to all of them launched ------------------------------------

PEER = "peer"
OURS_DEFAULT = "ours, default limits"
OURS_RAISED = "ours, limits raised"
VARIANTS = (PEER, OURS_DEFAULT, OURS_RAISED)


@dataclass
class LaunchRun:
    """One variant at one N and latency, over its repetitions."""

    variant: str
    n: int
    latency_s: float
    total_s: list[float] = field(default_factory=list)  # queue -> last RunTask accepted
    blocked_s: list[float] = field(default_factory=list)  # scheduler heartbeat time in that window
    heartbeats: list[int] = field(default_factory=list)
    reconcile_cycles: list[int] = field(default_factory=list)
    calls: list[dict[str, int]] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # this process: scheduler (+ reconciler)
    sandbox_cpu_s: list[float] = field(default_factory=list)  # the fake AWS (process sandbox only)

    def record_cpu(self, cpu_s: float, sandbox_before: float | None, sandbox_after: float | None) -> None:
        self.cpu_s.append(cpu_s)
        if sandbox_before is not None and sandbox_after is not None:
            self.sandbox_cpu_s.append(sandbox_after - sandbox_before)


def launch_burst(ctx: Context, n: int, *, reps: int, latency_s: float = 0.0) -> dict[str, LaunchRun]:
    """Queue ``n`` workloads at once; time until every one was accepted by RunTask."""
    runs = {v: LaunchRun(variant=v, n=n, latency_s=latency_s) for v in VARIANTS}
    for rep in range(reps):
        order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
        for variant in order:
            run = runs[variant]
            if variant == PEER:
                _launch_peer(ctx, n, latency_s, run)
            else:
                _launch_ours(ctx, n, latency_s, run, raised_limits=variant == OURS_RAISED)
            ctx.log(
                f"  [launch N={n} latency={latency_s * 1000:.0f}ms rep {rep + 1}/{reps}] {variant}: "
                f"{run.total_s[-1]:.2f} s, scheduler blocked {run.blocked_s[-1]:.3f} s"
            )
    return runs


def _check_launches(run: LaunchRun, n: int, launched: int, calls: dict[str, int]) -> None:
    # Not a timing assertion: a bench that launched the wrong number of tasks measured nothing.
    if launched != n or calls.get("ecs:RunTask") != n:
        run_tasks = calls.get("ecs:RunTask")
        raise RuntimeError(f"{run.variant}: {launched} tasks tracked, {run_tasks} RunTask calls; want {n}")


def _launch_peer(ctx: Context, n: int, latency_s: float, run: LaunchRun) -> None:
    world = ctx.fresh_world()
    executor = peer.new_executor(world, parallelism=PARALLELISM)
    workloads = make_workloads(n, run=ctx.run_id("peer"))
    before = ctx.sandbox.calls()
    sandbox_cpu = ctx.sandbox.cpu_seconds()
    with added_latency(latency_s):
        cpu, start = process_cpu(), time.perf_counter()
        queue_all(executor, workloads)
        durations = peer.heartbeat_until_launched(executor, n)
        total, cpu = time.perf_counter() - start, process_cpu() - cpu
    run.record_cpu(cpu, sandbox_cpu, ctx.sandbox.cpu_seconds())
    calls = diff(ctx.sandbox.calls(), before)
    _check_launches(run, n, peer.launched(executor), calls)
    run.total_s.append(total)
    run.blocked_s.append(sum(durations))
    run.heartbeats.append(len(durations))
    run.reconcile_cycles.append(0)
    run.calls.append(calls)


def _launch_ours(ctx: Context, n: int, latency_s: float, run: LaunchRun, *, raised_limits: bool) -> None:
    world = ctx.fresh_world()
    executor = ours.new_executor(world, ctx.db.url, job_id=1, parallelism=PARALLELISM)
    engine = ours.new_engine(world, ctx.db.url, raised_limits=raised_limits)
    workloads = make_workloads(n, run=ctx.run_id("ours"))
    try:
        engine.reconcile()  # a reconciler that has been running: first discovery done, buckets full
        before = ctx.sandbox.calls()
        sandbox_cpu = ctx.sandbox.cpu_seconds()
        with added_latency(latency_s):
            cpu, start = process_cpu(), time.perf_counter()
            queue_all(executor, workloads)
            blocked, _ = timed(executor.heartbeat)
            cycles = ours.reconcile_until_launched(engine, ctx.db, n)
            total, cpu = time.perf_counter() - start, process_cpu() - cpu
        run.record_cpu(cpu, sandbox_cpu, ctx.sandbox.cpu_seconds())
        calls = diff(ctx.sandbox.calls(), before)
        _check_launches(run, n, ctx.db.launched(), calls)
    finally:
        ours.close_engine(engine)
        ours.dispose_executor(executor)
    run.total_s.append(total)
    run.blocked_s.append(blocked)
    run.heartbeats.append(1)
    run.reconcile_cycles.append(cycles)
    run.calls.append(calls)
