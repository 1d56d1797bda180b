"""Scenarios 5 and 6: what observing N running tasks costs, by polling and by events, against the
peer's heartbeat; and a burst of tasks ending at once, observed by events (and by polling).

One set of N tasks is launched through our executor and reconciler, moved to RUNNING through the
sandbox's control API (no process runs), and then observed by everyone on the same sandbox:

- our reconciler in **poll** mode (DescribeTasks of the rows due for a look each cycle, a
  discovery every ``resync_interval``) and in **events** mode (the EventBridge rule -> SQS queue
  the sandbox provisions as ``deploy/events/cloudformation.yaml`` does; every
  ``events_resync_interval`` a describe of every row plus a discovery), each an engine wired as
  ``aws-reconciler run`` wires it, driven one cycle at a time with ``time.process_time`` around
  ``Controller.reconcile()``. The event feed runs in its background thread as in
  ``aws-reconciler run``, so a cycle without events makes no call of its own;
- the peer, which adopts the same N tasks (``try_adopt_task_instances`` with their ARNs) and then
  heartbeats, each heartbeat describing every task;
- ``aws-reconciler run`` itself, in a subprocess (``bench/reconciler_process.py``), for its
  resident memory with no rows and with the N rows, in each mode.

Per minute figures add up the cycles of a simulated window at the shipped defaults: the engine's
clock stands still during a cycle and moves on by ``reconcile_interval`` between cycles, for one
resync period of the mode (60 s polling, 600 s by events; its last cycle is the resync), and the
calls the sandbox counted and the CPU of those cycles are scaled to a minute. Between resyncs a
polling cycle describes only what is due (running tasks every ``running_describe_interval``), so
the window has cycles of three kinds; by events, of two.

The burst: N tasks running under ``aws-reconciler run`` (subprocess, events mode; poll mode
for reference) are all moved to STOPPED (exit code 0) by one call of the control API
(``task-states``: one hold of the sandbox's lock, the N events queued together, as when N tasks
end within the same second); measured is the time from that call's return (every event
emitted) until every row is recorded ``succeeded`` in the store, and the store transactions the
reconciler used meanwhile, counted by a SQLAlchemy listener in that process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from aws_reconciler.backends.events import MAX_WAIT
from aws_reconciler.model import utcnow
from aws_reconciler.reconciler.controller import Controller

from . import ours, peer
from .reconciler_process import FILE_ENV, read_counts
from .sandbox import REGION, Sandbox, diff
from .scenarios import PARALLELISM, Context
from .stats import median, timed
from .workloads import make_workloads, queue_all, tis_for_adoption

ROOT = Path(__file__).resolve().parent.parent
#: The reconciler's default deployment, which also names the event queue.
DEPLOYMENT = "airflow"
#: The peer's heartbeat the issue's per-minute figures assume (see bench/README.md: Airflow's
#: scheduler heartbeats its executors on every loop, which can be more often).
PEER_HEARTBEAT_S = 5.0


class SimulatedClock:
    """The engine's clock in a simulated window: it stands still and moves on only when told, by
    ``reconcile_interval`` before each cycle, so a window's cycles are the ones ``aws-reconciler
    run`` would run in that time however long each takes here."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Cycles:
    """Reconcile cycles (or peer heartbeats) of one kind: CPU and wall seconds, calls of each."""

    cpu_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    calls: list[dict[str, int]] = field(default_factory=list)

    def measure(self, sandbox: Sandbox, step: Callable[[], object], *, uncounted: Collection[str] = ()) -> None:
        """Run ``step`` once; the sandbox calls it made, less the ``uncounted`` operations."""
        before = sandbox.calls()
        cpu = time.process_time()
        wall, _ = timed(step)
        self.cpu_s.append(time.process_time() - cpu)
        self.wall_s.append(wall)
        calls = diff(sandbox.calls(), before)
        self.calls.append({op: count for op, count in calls.items() if op not in uncounted})


@dataclass
class Memory:
    """``aws-reconciler run``'s memory after its first cycles (``/proc/<pid>/status``), in KiB."""

    rss_kib: int
    peak_kib: int  # VmHWM: the most it held, e.g. during the first resync
    cycles: int


@dataclass
class Observation:
    """Scenario 5 for one N."""

    n: int
    defaults: dict[str, float]
    # Simulated windows of each mode, one resync period each (its last cycle is the resync).
    poll_windows: list[Cycles] = field(default_factory=list)
    events_windows: list[Cycles] = field(default_factory=list)
    ours_heartbeat: Cycles = field(default_factory=Cycles)  # our executor, in the scheduler
    peer_heartbeat: Cycles = field(default_factory=Cycles)
    memory: dict[str, Memory] = field(default_factory=dict)  # "poll" / "events"


@dataclass
class Burst:
    """Scenario 6: one burst of N tasks ending."""

    n: int
    mode: str
    at_once: bool  # the reconciler was paused until every event was in its queue
    emit_s: float  # the one control call moving the n tasks: their events emitted
    settle_s: float  # that call's return -> every row recorded
    transactions: dict[str, int]  # "commit MainThread" ... during the burst
    cycles: int
    calls: dict[str, int]


# ---- setting up N running tasks --------------------------------------------------------------


def running_world(ctx: Context, n: int, *, events_queue: bool = True) -> tuple[dict[str, str], list[Any]]:
    """A fresh sandbox and store with ``n`` of our tasks RUNNING, their rows ``running``, and (with
    ``events_queue``) an empty event queue for the cluster. Returns the world and the workloads
    (for the TIs the executors adopt)."""
    world = ctx.fresh_world()
    db = ctx.db
    ctx.log(f"  [observe N={n}] launching {n} tasks, then moving them to RUNNING")
    workloads = make_workloads(n, run=ctx.run_id("ours"))
    executor = ours.new_executor(world, db.url, job_id=1, parallelism=PARALLELISM)
    queue_all(executor, workloads)
    executor.heartbeat()
    engine = ours.new_engine(world, db.url, raised_limits=True)
    try:
        ours.reconcile_until_launched(engine, db, n)
        ctx.sandbox.set_task_states(ctx.sandbox.task_arns(), "RUNNING")
        for _ in range(10):
            engine.reconcile()
            if db.count_phase("running") == n:
                break
        else:
            raise RuntimeError(f"only {db.count_phase('running')} of {n} rows recorded running")
    finally:
        ours.close_engine(engine)
        ours.dispose_executor(executor)
    if events_queue:
        # After the tasks' changes, so the queue starts empty.
        world["events_queue_url"] = ctx.sandbox.provision_event_queue(
            world[f"{ours.ECS_PREFIX}CLUSTER"], deployment=DEPLOYMENT
        )
    return world, workloads


def events_settings(world: Mapping[str, str]) -> dict[str, str]:
    return {
        f"{ours.ECS_PREFIX}OBSERVATION": "events",
        f"{ours.ECS_PREFIX}EVENTS_QUEUE_URL": world["events_queue_url"],
    }


def wake_long_poll(queue_url: str) -> None:
    """Put a message into the queue so a receive waiting in its long poll (up to 20 s) answers now:
    a stopping feed then exits at once instead of at the end of its wait."""
    sqs = boto3.client("sqs", region_name=REGION)
    body: dict[str, Any] = {"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": {}, "time": None}
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))


def close_events_engine(engine: Controller, queue_url: str) -> None:
    closer = threading.Thread(target=ours.close_engine, args=(engine,))
    closer.start()
    while closer.is_alive():
        wake_long_poll(queue_url)
        closer.join(0.5)


# ---- scenario 5 ---------------------------------------------------------------------------


def simulate(
    sandbox: Sandbox,
    engine: Controller,
    clock: SimulatedClock,
    *,
    interval: float,
    window: float,
    uncounted: Collection[str] = (),
) -> Cycles:
    """The cycles of ``window`` simulated seconds after a resync, one every ``interval``."""
    cycles = Cycles()
    for _ in range(round(window / interval)):
        clock.advance(interval)
        cycles.measure(sandbox, engine.reconcile, uncounted=uncounted)
    return cycles


def observe(ctx: Context, n: int, *, reps: int, memory: bool = True) -> Observation:
    """Scenario 5 at ``n`` running tasks: ``reps`` simulated windows of each mode, ``3 * reps``
    heartbeats of each scheduler side."""
    world, workloads = running_world(ctx, n)
    sandbox, db = ctx.sandbox, ctx.db
    core = ours.settings_for(world, db.url).core
    result = Observation(
        n=n,
        defaults={
            "reconcile_interval": core.reconcile_interval,
            "running_describe_interval": core.running_describe_interval,
            "resync_interval": core.resync_interval,
            "events_resync_interval": core.events_resync_interval,
            "long_poll_s": float(MAX_WAIT),
            "describe_rate": core.ecs_describe_rate,
            "peer_heartbeat": PEER_HEARTBEAT_S,
        },
    )
    interval = core.reconcile_interval

    ctx.log(f"  [observe N={n}] poll: {reps} x {core.resync_interval:g} s of cycles")
    clock = SimulatedClock()
    engine = ours.new_engine(world, db.url, raised_limits=True, clock=clock)
    try:
        engine.reconcile()  # the first cycle discovers: the window starts after it
        for _ in range(reps):
            window = simulate(sandbox, engine, clock, interval=interval, window=core.resync_interval)
            result.poll_windows.append(window)
    finally:
        ours.close_engine(engine)

    ctx.log(f"  [observe N={n}] events: {reps} x {core.events_resync_interval:g} s of cycles")
    clock = SimulatedClock()
    engine = ours.new_engine(world, db.url, raised_limits=True, extra=events_settings(world), clock=clock)
    engine.start(wake=lambda: None)  # the feed receives in its thread, as in `aws-reconciler run`
    try:
        engine.reconcile()  # the first cycle resyncs
        for _ in range(reps):
            # The feed's long polls run on the real clock, not the window's: counted apart.
            window = simulate(
                sandbox,
                engine,
                clock,
                interval=interval,
                window=core.events_resync_interval,
                uncounted={"sqs:ReceiveMessage"},
            )
            result.events_windows.append(window)
    finally:
        close_events_engine(engine, world["events_queue_url"])

    ctx.log(f"  [observe N={n}] scheduler heartbeats: ours and the peer (adopting the same tasks)")
    arns = db.arns_by_id()
    record_ids = {w.ti.key: str(w.ti.external_executor_id) for w in workloads}
    # TI stand-ins: what the scheduler hands over after a restart (see workloads.FakeTI).
    ours_tis: list[Any] = tis_for_adoption(workloads, record_ids)
    executor = ours.new_executor(world, db.url, job_id=1, parallelism=PARALLELISM)
    try:
        if executor.try_adopt_task_instances(ours_tis):
            raise RuntimeError("our executor did not adopt every running task")
        executor.heartbeat()
        for _ in range(3 * reps):
            result.ours_heartbeat.measure(sandbox, executor.heartbeat)
    finally:
        ours.dispose_executor(executor)
    peer_ex = peer.new_executor(world, parallelism=PARALLELISM)
    task_arns = {key: arns[record_id] for key, record_id in record_ids.items()}
    not_adopted = peer_ex.try_adopt_task_instances(tis_for_adoption(workloads, task_arns))
    if not_adopted or peer.launched(peer_ex) != n:
        raise RuntimeError(f"the peer adopted {peer.launched(peer_ex)} of {n} tasks")
    peer_ex.heartbeat()
    for _ in range(3 * reps):
        result.peer_heartbeat.measure(sandbox, peer_ex.heartbeat)
    if peer.launched(peer_ex) != n:
        raise RuntimeError("a task changed state while the peer was only observing")

    if memory:
        for mode in ("poll", "events"):
            ctx.log(f"  [observe N={n}] aws-reconciler run ({mode}): memory")
            extra = events_settings(world) if mode == "events" else {}
            with reconciler_process(world, db.url, extra) as proc:
                result.memory[mode] = proc.memory_after(2)
    return result


def idle_memory(ctx: Context) -> dict[str, Memory]:
    """``aws-reconciler run``'s memory with an empty store, in each mode."""
    world = ctx.fresh_world()
    world["events_queue_url"] = ctx.sandbox.provision_event_queue(
        world[f"{ours.ECS_PREFIX}CLUSTER"], deployment=DEPLOYMENT
    )
    found = {}
    for mode in ("poll", "events"):
        ctx.log(f"  [observe idle] aws-reconciler run ({mode}): memory")
        extra = events_settings(world) if mode == "events" else {}
        with reconciler_process(world, ctx.db.url, extra) as proc:
            found[mode] = proc.memory_after(2)
    return found


# ---- scenario 6 ---------------------------------------------------------------------------


def burst(ctx: Context, n: int, *, mode: str, at_once: bool = False) -> Burst:
    """``n`` running tasks end at once under ``aws-reconciler run`` observing by ``mode``.

    One control call stops all ``n`` (``task-states``): they change in the same instant and their
    events are queued together, delivered into the event queue once the call is done. Live
    (``at_once`` false), the reconciler runs throughout, waiting in its long poll as in
    production, and takes the events as they arrive. ``at_once`` pauses it (SIGSTOP) before the
    call and resumes it (SIGCONT) only when the sandbox has delivered every event: all ``n`` wait
    in its queue, as for a reconciler that was busy elsewhere when the burst came. Either way
    ``settle_s`` runs from the call's return.
    """
    # Without a queue in poll mode: nobody would receive its events.
    world, _ = running_world(ctx, n, events_queue=mode == "events")
    sandbox, db = ctx.sandbox, ctx.db
    arns = sandbox.task_arns()
    extra = events_settings(world) if mode == "events" else {}
    with reconciler_process(world, db.url, extra) as proc:
        proc.wait_cycles(2)  # past the first cycle's discovery (and, by events, resync)
        before_tx, before_calls, before_cycles = proc.transactions(), sandbox.calls(), proc.cycles()
        label = f"{mode}, all at once" if at_once else mode
        ctx.log(f"  [burst N={n} {label}] {n} tasks stop")
        if at_once:
            proc.proc.send_signal(signal.SIGSTOP)
        start = time.perf_counter()
        try:
            sandbox.set_task_states(arns, "STOPPED", exit_code=0)
            last = time.perf_counter()
            if at_once:
                while sandbox.events_pending():
                    time.sleep(0.005)
        finally:
            if at_once:
                proc.proc.send_signal(signal.SIGCONT)
        deadline = last + 600
        while db.count_phase("succeeded") < n:
            if time.perf_counter() > deadline or proc.exited():
                raise RuntimeError(f"{db.count_phase('succeeded')} of {n} rows recorded succeeded")
            time.sleep(0.01)
        done = time.perf_counter()
        after_tx, after_calls, after_cycles = proc.transactions(), sandbox.calls(), proc.cycles()
    result = Burst(
        n=n,
        mode=mode,
        at_once=at_once,
        emit_s=last - start,
        settle_s=done - last,
        transactions=dict(sorted((after_tx - before_tx).items())),
        cycles=after_cycles - before_cycles,
        calls=diff(after_calls, before_calls),
    )
    ctx.log(
        f"  [burst N={n} {label}] emitted in {result.emit_s:.2f} s; all recorded {result.settle_s:.2f} s "
        f"after; {result.cycles} cycles; transactions {result.transactions}"
    )
    return result


@dataclass
class Drain:
    """The sandbox's SQS alone: N messages queued, then received and deleted 10 at a time."""

    n: int
    seconds: float
    calls: int


#: About the size of an "ECS Task State Change" event of this bench's tasks.
_EVENT_SIZED_BODY = json.dumps({"source": "aws.ecs", "detail": {"padding": "x" * 2400}})


def sqs_drain(ctx: Context, n: int) -> Drain:
    """How long the sandbox takes to hand out and delete ``n`` queued messages with no reconciler
    at all: the floor under an all-at-once burst. A receive and a delete cost the same at any
    depth of the queue (``aws_reconciler_sandbox.sqs.IndexedQueue``), so this grows with ``n``;
    on moto's own queues it grew with the square of ``n``."""
    ctx.fresh_world()
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="bench-drain")["QueueUrl"]
    for start in range(0, n, 10):
        entries = [{"Id": str(i), "MessageBody": _EVENT_SIZED_BODY} for i in range(min(10, n - start))]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    began, got, calls = time.perf_counter(), 0, 0
    while got < n:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300).get("Messages")
        calls += 1
        if not messages:
            raise RuntimeError(f"the drain queue ran dry at {got} of {n} messages")
        got += len(messages)
        receipts = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        sqs.delete_message_batch(QueueUrl=url, Entries=receipts)
        calls += 1
    result = Drain(n=n, seconds=time.perf_counter() - began, calls=calls)
    ctx.log(f"  [burst N={n}] the sandbox's SQS alone: {n} messages received and deleted in {result.seconds:.2f} s")
    return result


# ---- aws-reconciler run in a subprocess ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReconcilerProcess:
    """A running ``aws-reconciler run`` (``bench.reconciler_process``): its cycles, memory and
    store transactions."""

    def __init__(self, proc: subprocess.Popen[bytes], *, port: int, transactions_file: Path, stderr: Path) -> None:
        self.proc = proc
        self.port = port
        self.transactions_file = transactions_file
        self.stderr = stderr

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def cycles(self) -> int:
        """Successful cycles so far (``aws_reconciler_reconcile_total{result="success"}``); 0 before
        the metrics server answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith('aws_reconciler_reconcile_total{result="success"}'):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def wait_cycles(self, count: int, *, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cycles() < count:
            if self.exited():
                raise RuntimeError(f"aws-reconciler run exited {self.proc.returncode}; see {self.stderr}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"aws-reconciler run did not complete {count} cycles; see {self.stderr}")
            time.sleep(0.2)

    def memory_after(self, cycles: int) -> Memory:
        self.wait_cycles(cycles)
        status = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            status[key] = value.strip()
        kib = lambda key: int(status[key].split()[0])  # noqa: E731 ("123 kB")
        return Memory(rss_kib=kib("VmRSS"), peak_kib=kib("VmHWM"), cycles=self.cycles())

    def transactions(self) -> Counter[str]:
        return read_counts(self.transactions_file)


@contextmanager
def reconciler_process(
    world: Mapping[str, str], store_url: str, extra: Mapping[str, str]
) -> Iterator[ReconcilerProcess]:
    """``aws-reconciler run`` with the shipped defaults (plus ``extra``) until the block ends; then
    SIGTERM, as Kubernetes stops it (it finishes its cycle and releases the lease). Its stderr
    stays in a temporary directory when the block fails, for the post-mortem."""
    port = _free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="aws-reconciler-bench-run-"))
    transactions_file = log_dir / "transactions.json"
    stderr = log_dir / "stderr"
    # Not the peer's [aws_ecs_executor] settings the bench process holds: the reconciler would
    # read them as a provider configuration to migrate from.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(peer.PREFIX)}
    env = {
        **inherited,
        **ours.environ(world, store_url),
        **extra,
        f"{ours.CORE_PREFIX}METRICS_ADDRESS": f"127.0.0.1:{port}",
        FILE_ENV: str(transactions_file),
    }
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.reconciler_process", "--log-level", "WARNING", "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    running = ReconcilerProcess(proc, port=port, transactions_file=transactions_file, stderr=stderr)
    succeeded = False
    try:
        yield running
        succeeded = True
    finally:
        proc.send_signal(signal.SIGTERM)
        queue_url = extra.get(f"{ours.ECS_PREFIX}EVENTS_QUEUE_URL")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if queue_url:
                wake_long_poll(queue_url)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if succeeded:
            shutil.rmtree(log_dir, ignore_errors=True)


# ---- reading a simulated window ---------------------------------------------------------

IDLE, DESCRIBE, RESYNC = "idle", "describe", "resync"


def kind_of(calls: Mapping[str, int]) -> str:
    """What a cycle was, from its calls: a resync lists the deployment's tasks (discovery); a
    describe cycle only describes; an idle cycle makes no AWS call."""
    if any(op.endswith(":ListTasks") for op in calls):
        return RESYNC
    return DESCRIBE if calls else IDLE


def of_kind(windows: Sequence[Cycles], kind: str) -> Cycles:
    """The cycles of ``kind`` of every window."""
    found = Cycles()
    for window in windows:
        for cpu, wall, calls in zip(window.cpu_s, window.wall_s, window.calls, strict=True):
            if kind_of(calls) == kind:
                found.cpu_s.append(cpu)
                found.wall_s.append(wall)
                found.calls.append(calls)
    return found


def per_minute(windows: Sequence[Cycles], *, window_s: float, value: Callable[[Cycles], float]) -> float:
    """``value`` of each window (its cycles' CPU seconds, or calls) per minute, the median over the windows."""
    return median([value(w) * 60.0 / window_s for w in windows])
