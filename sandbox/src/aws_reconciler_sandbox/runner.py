"""The sandbox's task runner: every ECS task and Batch job becomes a local process with AWS's lifecycle.

One supervisor (``TaskRunner``) owns every process, whatever service launched it: it times the
transitions before the start, spawns the container's command in its own process group, pumps
its output line by line into CloudWatch Logs, sends SIGTERM and then SIGKILL when a stop is
asked for, notices the exit and, when the sandbox stops, ends whatever is left. What differs
between ECS tasks and Batch jobs (their statuses, the fields AWS sets, the variables the agent
puts into a container) is a ``Driver``: ``ecsrunner.EcsTasks`` and ``batchrunner.BatchJobs``.

An Airflow workload reaches its process in a private file (``--json-path``), never in the
arguments every local user can read (see ``workloadfiles``).

A workload fails before it starts as on AWS: an image whose name contains ``does-not-exist``, a
planned ``fail_next_start``, a start failure drawn by the realism policy, a missing log group, a
command that cannot be executed.

Threading: one supervisor thread multiplexes all output pipes and a wake-up pipe with one
selector (a few hundred processes cost a few hundred file descriptors, not threads). It changes
moto state only under ``MOTO_LOCK`` and never holds the lock while it waits: spawning, reading
and waiting happen outside it. The shims call the drivers' listener methods from request
threads, under the same lock, which therefore also guards the runner's table of workloads.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .faults import DEFAULT_START_FAILURE, FaultPlan
from .motoenv import MOTO_LOCK
from .procs import ContainerProcess
from .realism import Realism
from .taskspec import ContainerPlan, LogTarget, container_env, local_argv, pull_failure
from .workloadfiles import WorkloadFiles

__all__ = ["DEFAULT_START_FAILURE", "Driver", "Ending", "RunnerOptions", "ShimDriver", "TaskRunner", "Workload"]

log = logging.getLogger(__name__)

MAX_EVENTS_PER_PUT = 10_000  # PutLogEvents' limit
_WANTED_FDS = 4096
HOST_AWS_IDENTITY = frozenset({"AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"})
#: The wording of a Fargate task (or Batch job) whose log group does not exist.
MISSING_LOG_GROUP = (
    "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times: "
    "failed to create Cloudwatch log stream: ResourceNotFoundException: The specified log group does not exist. "
    ": exit status 1"
)


@dataclass
class RunnerOptions:
    """How the task runner behaves. All durations are seconds.

    ``provisioning_delay``/``pending_delay``: how long a task stays PROVISIONING and PENDING (a
    Batch job RUNNABLE and STARTING). ``poll_interval``: the supervisor's tick (state changes
    are seen within one tick). ``extra_env``: added to every process's environment (below the
    definition's and the overrides'). ``default_stop_timeout``: SIGTERM-to-SIGKILL grace of
    StopTask/TerminateJob when the container sets no ``stopTimeout`` (ECS's default is 30).
    ``python``: replaces a leading ``python``/``python3`` of container commands.
    ``shutdown_timeout``: SIGTERM-to-SIGKILL grace when the sandbox stops.
    """

    provisioning_delay: float = 0.5
    pending_delay: float = 0.5
    poll_interval: float = 0.1
    extra_env: dict[str, str] = field(default_factory=dict)
    default_stop_timeout: float = 30.0
    python: str = sys.executable
    shutdown_timeout: float = 5.0


@dataclass(eq=False)
class Workload:
    """One ECS task or Batch job the runner drives. Guarded by ``MOTO_LOCK``.

    ``key`` is the task ARN or the job id; ``failure`` the reason it will fail to start, decided
    when it was created so that planned failures apply to exactly the next launches; ``due`` the
    monotonic time of its next timed transition. Drivers subclass it with their own object.
    """

    key: str
    driver: Driver
    failure: str | None
    due: float
    plan: ContainerPlan | None = None
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    spawning: bool = False  # the process is being started, outside the lock
    running: bool = False
    kill_at: float | None = None
    killed: bool = False


@dataclass(frozen=True)
class Ending:
    """How a workload ends: after its process exited (``exit_code``), stopped before it started
    (nothing set), failing to start (``failure``; ``placement`` when no container was ever
    created), or because the sandbox stops (``shutdown``)."""

    exit_code: int | None = None
    failure: str | None = None
    placement: bool = False
    shutdown: bool = False


class Driver(Protocol):
    """What is particular to one service. Every method is called under ``MOTO_LOCK``."""

    #: Where a command is set, for the message of a container that has none.
    command_home: ClassVar[str]

    def attach(self, runner: TaskRunner) -> None:
        """Take the lifecycle over from the shim (install the listener)."""

    def detach(self, runner: TaskRunner) -> None:
        """Hand the lifecycle back to the shim."""

    def finished(self, work: Any) -> bool:
        """Whether it ended from outside (``set_task_state``, CancelJob...)."""

    def stop_wanted(self, work: Any) -> bool:
        """Whether a stop was asked for (StopTask, TerminateJob)."""

    def advance(self, work: Any, now: float) -> bool:
        """Make the transition that is due before the start; True when the process is to start now
        (or ``work.failure`` to strike)."""

    def plan(self, work: Any) -> ContainerPlan:
        """The container to run."""

    def agent_env(self, work: Any) -> dict[str, str]:
        """What the agent puts into the container's environment (region, ids...)."""

    def started(self, work: Any) -> None:
        """The process runs: show it (RUNNING)."""

    def stopping(self, work: Any) -> None:
        """SIGTERM was sent: show it (ECS: STOPPING)."""

    def end(self, work: Any, ending: Ending) -> None:
        """Show the end (STOPPED, SUCCEEDED, FAILED) with AWS's fields."""


class ShimDriver:
    """What the drivers share: the shim whose listener they are, and how a start failure is decided."""

    command_home: ClassVar[str]

    def __init__(self, shim: Any, faults: FaultPlan, realism: Realism) -> None:
        self._shim = shim
        self._faults = faults
        self._realism = realism
        self._runner: TaskRunner | None = None

    @property
    def runner(self) -> TaskRunner:
        """The runner it is attached to."""
        assert self._runner is not None, "the driver is not attached to a runner"
        return self._runner

    def attach(self, runner: TaskRunner) -> None:
        """Become the shim's listener."""
        self._runner = runner
        self._shim.listener = self

    def detach(self, runner: TaskRunner) -> None:
        """Stop being the shim's listener."""
        if self._shim.listener is self:
            self._shim.listener = None
        self._runner = None

    def forget_all(self) -> None:
        """Every task or job is gone (reset): forget them; their processes are killed on the next tick."""
        if self._runner is not None:
            self._runner.forget(self)

    def start_failure(self, image: str, service: str) -> str | None:
        """Decided at creation, so that planned failures apply to exactly the next launches: an image
        that cannot be pulled, then a planned failure, then one the realism policy draws."""
        return pull_failure(image) or self._faults.take_start_failure() or self._realism.start_failure(service)


def raise_fd_limit() -> None:
    """Let a few hundred processes have an output pipe each, where the hard limit allows it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = _WANTED_FDS if hard == resource.RLIM_INFINITY else min(_WANTED_FDS, hard)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):  # not fatal: fewer concurrent processes, that is all
        pass


def host_environment(python: str) -> dict[str, str]:
    """The environment a container process starts from, below the agent's and the workload's variables."""
    # Never hand the host's own AWS identity to a task.
    base = {k: v for k, v in os.environ.items() if k not in HOST_AWS_IDENTITY}
    # Output reaches CloudWatch as it is printed, not when a 4 KiB block buffer fills.
    base.setdefault("PYTHONUNBUFFERED", "1")
    # So that an "airflow" command finds the console scripts beside the interpreter.
    bindir = os.path.dirname(python)
    if bindir and bindir not in base.get("PATH", "").split(os.pathsep):
        base["PATH"] = os.pathsep.join(p for p in (bindir, base.get("PATH", "")) if p)
    return base


def spawn_container(
    argv: Sequence[str], env: Mapping[str, str], log_target: LogTarget | None
) -> tuple[ContainerProcess | None, str | None]:
    """Start the process (outside the lock); returns it or the reason it could not start."""
    try:
        return ContainerProcess.spawn(argv, env, log_target=log_target), None
    except OSError as exc:
        # Docker's wording, so that the reconciler sees a container that never started.
        return None, (
            "CannotStartContainerError: failed to create the container process: "
            f"exec: {argv[0]!r}: {exc.strerror or exc}"
        )


def logs_backend(target: LogTarget) -> Any:
    """moto's CloudWatch Logs backend of the target's account and region (under ``MOTO_LOCK``)."""
    from moto.backends import get_backend

    return get_backend("logs")[target.account_id][target.region]


def create_log_stream(target: LogTarget) -> str | None:
    """Create the stream as the awslogs driver does (under ``MOTO_LOCK``); the failure if it cannot."""
    logs = logs_backend(target)
    if target.group not in logs.groups:
        if not target.create_group:
            return MISSING_LOG_GROUP
        logs.create_log_group(target.group, {})
    logs.ensure_log_stream(target.group, target.stream)
    return None


class LogPump:
    """Moves the processes' output lines into their CloudWatch Logs streams (under ``MOTO_LOCK``)."""

    def __init__(self) -> None:
        self._errors: set[tuple[str, str]] = set()

    def flush(self, procs: Iterable[ContainerProcess]) -> None:
        """Write every line read so far; a stream that cannot be written is warned about once."""
        for proc in procs:
            lines = proc.take_lines()
            target = proc.log_target
            if not lines or target is None:
                continue
            events = [{"timestamp": ts, "message": text} for ts, text in lines]
            try:
                logs = logs_backend(target)
                for start in range(0, len(events), MAX_EVENTS_PER_PUT):
                    logs.put_log_events(target.group, target.stream, events[start : start + MAX_EVENTS_PER_PUT])
            except Exception as exc:  # e.g. the group was deleted: the lines are lost, as on AWS
                if (target.group, target.stream) not in self._errors:
                    self._errors.add((target.group, target.stream))
                    log.warning("sandbox: cannot write to %s %s: %s", target.group, target.stream, exc)


def terminate_processes(
    procs: Iterable[ContainerProcess],
    grace: float,
    *,
    before_finish: Callable[[ContainerProcess], None] | None = None,
) -> None:
    """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds, reap all.

    Waits without the lock; the caller must own the processes (the supervisor has exited).
    """
    procs = list(procs)
    for proc in procs:
        proc.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        for proc in procs:
            proc.read_available()  # a process blocked on a full pipe could not exit
        if all(proc.has_exited() for proc in procs) or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for proc in procs:
        if before_finish is not None:
            before_finish(proc)
        proc.finish()  # SIGKILLs the group if it is still there, then reaps


class TaskRunner:
    """Runs the sandbox's ECS tasks and Batch jobs as local processes (see the module docstring).

    ``SandboxServer(run_tasks=True)`` creates, starts and stops it with one driver per service;
    it is not meant to be used alone. ``endpoint_url`` is the sandbox's, put into each process's
    environment so that the AWS SDKs in it reach the sandbox.
    """

    def __init__(self, options: RunnerOptions, drivers: Sequence[Driver], *, endpoint_url: str) -> None:
        self.options = options
        self.endpoint_url = endpoint_url
        self._drivers = tuple(drivers)
        self._work: dict[str, Workload] = {}  # under MOTO_LOCK
        self._pids: dict[str, int] = {}  # under MOTO_LOCK: processes started and not yet reaped
        self._procs: dict[str, ContainerProcess] = {}  # the supervisor thread's (then stop()'s) only
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_pump = LogPump()
        # Airflow workloads go to their processes in private files, not in their arguments.
        self._workload_files = WorkloadFiles()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take over the lifecycle from the shims and start the supervisor thread."""
        if self._thread is not None:
            raise RuntimeError("the task runner is already started")
        raise_fd_limit()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closing.clear()
        with MOTO_LOCK:
            for driver in self._drivers:
                driver.attach(self)
        self._thread = threading.Thread(target=self._run, name="aws-reconciler-sandbox-runner", daemon=True)
        self._thread.start()
        # Processes run in sessions of their own, so nothing else would end them if the
        # interpreter exited without stop(): make sure they die with it.
        atexit.register(self._kill_all_now)

    def stop(self) -> None:
        """Stop every process (SIGTERM, SIGKILL after ``shutdown_timeout``) and the thread.

        Safe to call more than once. Workloads still tracked end as their driver says (ECS:
        STOPPED with ``TerminationNotice``; Batch: FAILED). Hands the lifecycle back to the shims.
        """
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        self.wake()
        thread.join()
        self._thread = None
        atexit.unregister(self._kill_all_now)
        try:
            self._terminate_all()
        finally:
            with MOTO_LOCK:
                for driver in self._drivers:
                    driver.detach(self)
                self._work.clear()
                self._pids.clear()
            if self._selector is not None:
                self._selector.close()
                self._selector = None
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    @property
    def running(self) -> bool:
        """Whether the supervisor thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def processes(self) -> dict[str, int]:
        """Task ARN or job id -> pid (= process group id) of every process started and not yet reaped."""
        with MOTO_LOCK:
            return dict(self._pids)

    # ------------------------------------------------------------------ for the drivers (under MOTO_LOCK)

    def track(self, work: Workload) -> None:
        """Drive ``work`` from now on."""
        self._work[work.key] = work
        self.wake()

    def get(self, key: str) -> Workload | None:
        """The workload with this key, if the runner drives it."""
        return self._work.get(key)

    def end_unstarted(self, work: Workload) -> None:
        """A stop before the process started: it ends now, without a process."""
        self._work.pop(work.key, None)
        work.driver.end(work, Ending())

    def forget(self, driver: object) -> None:
        """Every workload of ``driver`` is gone (reset): their processes are killed on the next tick."""
        for key in [key for key, work in self._work.items() if work.driver is driver]:
            del self._work[key]
        self.wake()

    def wake(self) -> None:
        """Make the supervisor tick now."""
        with contextlib.suppress(OSError):  # BlockingIOError: a wake-up is pending anyway
            os.write(self._wake_w, b"\0")

    # ------------------------------------------------------------------ supervisor thread

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._tick()
            except Exception:  # the runner must survive anything one tick meets
                log.exception("sandbox task runner: tick failed")
                self._closing.wait(self.options.poll_interval)

    def _tick(self) -> None:
        assert self._selector is not None
        for key, _ in self._selector.select(self.options.poll_interval):
            if key.data is None:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            elif not key.data.read_available():
                # End of output (the pipe's writers are gone); the exit is noticed below.
                self._unwatch(key.data)

        exited = [(name, proc) for name, proc in self._procs.items() if proc.has_exited()]
        for _name, proc in exited:
            self._unwatch(proc)
            proc.finish()  # kills the rest of the group, reads the last output, reaps: no waiting

        with MOTO_LOCK:
            self._log_pump.flush(self._procs.values())
            for name, proc in exited:
                del self._procs[name]
                self._pids.pop(name, None)
                self._workload_files.release(name)
                work = self._work.pop(name, None)
                if work is not None and not work.driver.finished(work):
                    work.driver.end(work, Ending(exit_code=proc.finish()))
            to_start = self._advance(time.monotonic())

        if to_start:
            spawned = [(work, spawn_container(work.argv, work.env, self._log_of(work))) for work in to_start]
            with MOTO_LOCK:  # the spawning happened outside it
                for work, (started, error) in spawned:
                    self._commit_start(work, started, error)

    def _watch(self, key: str, proc: ContainerProcess) -> None:
        assert self._selector is not None
        self._procs[key] = proc
        self._pids[key] = proc.pid
        if proc.fd is not None:
            self._selector.register(proc.fd, selectors.EVENT_READ, proc)

    def _unwatch(self, proc: ContainerProcess) -> None:
        if proc.fd is not None and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(proc.fd)

    @staticmethod
    def _log_of(work: Workload) -> LogTarget | None:
        return work.plan.log if work.plan is not None else None

    # ------------------------------------------------------------------ state machine (under MOTO_LOCK)

    def _advance(self, now: float) -> list[Workload]:
        """Make every due transition; return the workloads whose process is to be started."""
        for key, orphan in self._procs.items():
            if key not in self._work:
                # Its task or job is gone (reset) or was ended from outside.
                orphan.signal_group(signal.SIGKILL)
        to_start: list[Workload] = []
        for work in list(self._work.values()):
            try:
                if self._step(work, now):
                    to_start.append(work)
            except Exception as exc:  # one broken workload must not stall the others
                log.exception("sandbox task runner: %s", work.key)
                self._work.pop(work.key, None)
                with contextlib.suppress(Exception):
                    work.driver.end(work, Ending(failure=f"sandbox: {exc}", placement=True))
        return to_start

    def _step(self, work: Workload, now: float) -> bool:
        """Advance one workload; True when its process is to be started now."""
        driver = work.driver
        if driver.finished(work):
            self._work.pop(work.key, None)
            return False
        if work.spawning:
            return False
        if work.running:
            if driver.stop_wanted(work):
                self._stop_process(work, now)
            return False
        if driver.stop_wanted(work):
            self.end_unstarted(work)  # usually done at once by the driver's listener
            return False
        if now < work.due or not driver.advance(work, now):
            return False
        return self._prepare_start(work)

    def _stop_process(self, work: Workload, now: float) -> None:
        proc = self._procs.get(work.key)
        if work.kill_at is None:
            if proc is not None:
                proc.signal_group(signal.SIGTERM)
            stop_timeout = work.plan.stop_timeout if work.plan is not None else None
            work.kill_at = now + (stop_timeout if stop_timeout is not None else self.options.default_stop_timeout)
            work.driver.stopping(work)
        elif not work.killed and now >= work.kill_at:
            if proc is not None:
                proc.signal_group(signal.SIGKILL)
            work.killed = True

    def _fail_to_start(self, work: Workload, reason: str, *, placement: bool) -> None:
        self._work.pop(work.key, None)
        work.driver.end(work, Ending(failure=reason, placement=placement))

    def _prepare_start(self, work: Workload) -> bool:
        """Everything the start needs from moto (log stream, environment), read under the lock."""
        if work.failure is not None:
            # As a workload that never got capacity or an image: no container ever existed.
            self._fail_to_start(work, work.failure, placement=True)
            return False
        driver = work.driver
        plan = driver.plan(work)
        if not plan.argv:
            reason = (
                "CannotStartContainerError: the sandbox runs a container's command as a local process, "
                f"and container {plan.name!r} has no command (set it in {driver.command_home})"
            )
            self._fail_to_start(work, reason, placement=False)
            return False
        if plan.log is not None:
            failure = create_log_stream(plan.log)
            if failure is not None:
                self._fail_to_start(work, failure, placement=True)
                return False
        agent = {
            **driver.agent_env(work),
            # In place of the task role's credentials, what makes the SDKs in the container talk
            # to this sandbox rather than to AWS with whatever the host has.
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        work.plan = plan
        work.env = container_env(
            plan, base=host_environment(self.options.python), agent=agent, extra=self.options.extra_env
        )
        work.argv = self._workload_files.keep_out_of_argv(work.key, local_argv(plan.argv, self.options.python))
        work.spawning = True
        return True

    def _commit_start(self, work: Workload, proc: ContainerProcess | None, error: str | None) -> None:
        work.spawning = False
        if proc is not None:
            self._watch(work.key, proc)
        else:
            self._workload_files.release(work.key)
        if self._work.get(work.key) is not work or work.driver.finished(work):
            return  # reset or ended from outside meanwhile: _advance kills the process
        if proc is None:
            self._fail_to_start(work, error or "CannotStartContainerError", placement=False)
            return
        work.running = True
        work.driver.started(work)
        if work.driver.stop_wanted(work):
            self.wake()  # a stop that came while the process was being spawned: the next tick acts

    # ------------------------------------------------------------------ shutdown

    def _terminate_all(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after the grace, reap all.

        Runs in the thread calling ``stop`` once the supervisor has exited, so it owns the
        processes; it waits without the lock.
        """
        procs = dict(self._procs)
        terminate_processes(procs.values(), self.options.shutdown_timeout, before_finish=self._unwatch)
        with MOTO_LOCK:
            self._log_pump.flush(procs.values())
            for key, proc in procs.items():
                work = self._work.pop(key, None)
                if work is not None and not work.driver.finished(work):
                    work.driver.end(work, Ending(exit_code=proc.finish(), shutdown=True))
            for work in list(self._work.values()):
                if not work.driver.finished(work):
                    work.driver.end(work, Ending(shutdown=True))
            self._work.clear()
            self._procs.clear()
            self._pids.clear()
            self._workload_files.close()

    def _kill_all_now(self) -> None:
        """At interpreter exit without ``stop()``: SIGKILL every process group."""
        for proc in list(self._procs.values()):
            proc.signal_group(signal.SIGKILL)
