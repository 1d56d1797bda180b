"""The sandbox's task runner: every ECS task becomes a local process with AWS's lifecycle and logs.

A task launched with RunTask goes PROVISIONING -> PENDING -> RUNNING; at RUNNING the command of
its essential container starts as a local process in its own process group. When the process
ends the task is STOPPED with ``stopCode`` EssentialContainerExited and the container's exit code.
StopTask sends SIGTERM to the group and SIGKILL after the container's ``stopTimeout``; a task
stopped before it started stops at once. A task can fail before it starts, as on AWS: an image
whose name contains ``does-not-exist``, a planned ``fail_next_start``, a missing log group, a
command that cannot be executed. Output goes, line by line, to the CloudWatch Logs stream the
``awslogs`` driver would write (``<awslogs-stream-prefix>/<container>/<task id>``).

Threading: one supervisor thread owns every process and multiplexes all output pipes with one
selector (a few hundred tasks cost a few hundred file descriptors, not threads). It changes moto
state only under ``MOTO_LOCK``, and never holds the lock while it waits: spawning, reading and
waiting happen outside it. The shim calls the ``TaskListener`` methods from request threads,
under the same lock, which therefore also guards the runner's table of tasks.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import os
import selectors
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .ecs import EcsShim
from .faults import DEFAULT_START_FAILURE, FaultPlan
from .motoenv import MOTO_LOCK
from .procs import ContainerProcess
from .realism import Realism
from .supervise import (
    LogPump,
    host_environment,
    kill_all,
    logs_backend,
    raise_fd_limit,
    spawn_container,
    terminate_processes,
)
from .taskspec import ContainerPlan, LogTarget, container_env, local_argv, plan_container, pull_failure

__all__ = ["DEFAULT_START_FAILURE", "RunnerOptions", "TaskRunner"]

log = logging.getLogger(__name__)


@dataclass
class RunnerOptions:
    """How the task runner behaves. All durations are seconds.

    ``provisioning_delay``/``pending_delay``: how long a task stays PROVISIONING and PENDING.
    ``poll_interval``: the supervisor's tick (state changes are seen within one tick).
    ``extra_env``: added to every task's environment (below the task definition's and overrides').
    ``default_stop_timeout``: SIGTERM-to-SIGKILL grace of StopTask when the container sets no
    ``stopTimeout`` (ECS's default is 30). ``python``: replaces a leading ``python``/``python3``
    of container commands. ``shutdown_timeout``: SIGTERM-to-SIGKILL grace when the sandbox stops.
    """

    provisioning_delay: float = 0.5
    pending_delay: float = 0.5
    poll_interval: float = 0.1
    extra_env: dict[str, str] = field(default_factory=dict)
    default_stop_timeout: float = 30.0
    python: str = sys.executable
    shutdown_timeout: float = 5.0


class _Phase(enum.Enum):
    PROVISIONING = "PROVISIONING"
    PENDING = "PENDING"
    STARTING = "STARTING"  # the process is being spawned, outside the lock
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"  # SIGTERM sent


@dataclass(eq=False)
class _Entry:
    """A task the runner drives. Guarded by ``MOTO_LOCK``."""

    task: Any
    backend: Any
    plan: ContainerPlan | None
    failure: str | None  # the stoppedReason, when the task is going to fail to start
    phase: _Phase
    due: float  # monotonic time of the next timed transition
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    kill_at: float | None = None
    killed: bool = False

    @property
    def arn(self) -> str:
        return str(self.task.task_arn)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TaskRunner:
    """Runs the sandbox's ECS tasks as local processes (see the module docstring).

    ``SandboxServer(run_tasks=True)`` creates, starts and stops it; it is not meant to be used
    alone. ``endpoint_url`` is the sandbox's, put into each task's environment so that the AWS
    SDKs in the task reach the sandbox.
    """

    def __init__(
        self, shim: EcsShim, faults: FaultPlan, options: RunnerOptions, *, endpoint_url: str, realism: Realism
    ) -> None:
        self.options = options
        self.endpoint_url = endpoint_url
        self._shim = shim
        self._faults = faults
        self._realism = realism
        self._entries: dict[str, _Entry] = {}  # under MOTO_LOCK
        self._pids: dict[str, int] = {}  # under MOTO_LOCK: processes started and not yet reaped
        self._procs: dict[str, ContainerProcess] = {}  # the supervisor thread's (then stop()'s) only
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_pump = LogPump()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take over the task lifecycle from the shim and start the supervisor thread."""
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
            self._shim.immediate_stop = False
            self._shim.listener = self
        self._thread = threading.Thread(target=self._run, name="aws-reconciler-sandbox-runner", daemon=True)
        self._thread.start()
        # Tasks run in sessions of their own, so nothing else would end them if the interpreter
        # exited without stop(): make sure they die with it.
        atexit.register(self._kill_all_now)

    def stop(self) -> None:
        """Stop every task process (SIGTERM, SIGKILL after ``shutdown_timeout``) and the thread.

        Safe to call more than once. Tasks still tracked end STOPPED with ``stopCode``
        TerminationNotice. Hands StopTask back to the shim.
        """
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        self._wake()
        thread.join()
        self._thread = None
        atexit.unregister(self._kill_all_now)
        try:
            self._terminate_all()
        finally:
            with MOTO_LOCK:
                if self._shim.listener is self:
                    self._shim.listener = None
                    self._shim.immediate_stop = True
                self._entries.clear()
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
        """Task ARN -> pid (= process group id) of every task process started and not yet reaped."""
        with MOTO_LOCK:
            return dict(self._pids)

    # ------------------------------------------------------------------ TaskListener (under MOTO_LOCK)

    def task_created(self, backend: Any, task: Any) -> None:
        """Track a task RunTask just launched; decide now whether it will fail to start.

        Deciding at launch makes ``fail_next_start`` apply to exactly the next launches.
        """
        plan: ContainerPlan | None = None
        failure: str | None = None
        try:
            plan = plan_container(backend, task)
        except Exception as exc:  # e.g. a definition moto cannot find any more
            failure = f"ResourceInitializationError: the sandbox cannot read the task definition: {exc}"
        if plan is not None:
            failure = (
                pull_failure(plan.image) or self._faults.take_start_failure() or self._realism.start_failure("ecs")
            )
        self._entries[task.task_arn] = _Entry(
            task=task,
            backend=backend,
            plan=plan,
            failure=failure,
            phase=_Phase.PROVISIONING,
            due=time.monotonic() + self.options.provisioning_delay,
        )
        self._wake()

    def stop_requested(self, backend: Any, task: Any) -> bool:
        """StopTask: a task without a process stops now; a running one on the next tick."""
        entry = self._entries.get(task.task_arn)
        if entry is None:
            return False  # not ours (launched before the runner started): the shim stops it
        if entry.phase in (_Phase.PROVISIONING, _Phase.PENDING):
            self._stop_unstarted(entry)
        else:
            self._wake()
        return True

    def tasks_reset(self) -> None:
        """Every task is gone: forget them; their processes are killed on the next tick."""
        self._entries.clear()
        self._wake()

    # ------------------------------------------------------------------ supervisor thread

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: a wake-up is pending anyway
            os.write(self._wake_w, b"\0")

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

        exited = [(arn, proc) for arn, proc in self._procs.items() if proc.has_exited()]
        for _arn, proc in exited:
            self._unwatch(proc)
            proc.finish()  # kills the rest of the group, reads the last output, reaps: no waiting

        with MOTO_LOCK:
            self._flush_logs()
            for arn, proc in exited:
                del self._procs[arn]
                self._pids.pop(arn, None)
                self._on_exit(arn, proc)
            to_start = self._advance(time.monotonic())

        if to_start:
            spawned = [(entry, self._spawn(entry)) for entry in to_start]  # outside the lock
            with MOTO_LOCK:
                for entry, (started, error) in spawned:
                    self._commit_start(entry, started, error)

    def _watch(self, arn: str, proc: ContainerProcess) -> None:
        assert self._selector is not None
        self._procs[arn] = proc
        if proc.fd is not None:
            self._selector.register(proc.fd, selectors.EVENT_READ, proc)

    def _unwatch(self, proc: ContainerProcess) -> None:
        if proc.fd is not None and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(proc.fd)

    # ------------------------------------------------------------------ state machine (under MOTO_LOCK)

    def _advance(self, now: float) -> list[_Entry]:
        """Make every due transition; return the tasks whose process is to be started."""
        for arn, orphan in self._procs.items():
            if arn not in self._entries:
                # Its task is gone (reset) or was stopped from outside (set_task_state).
                orphan.signal_group(signal.SIGKILL)
        to_start: list[_Entry] = []
        for entry in list(self._entries.values()):
            try:
                if self._step(entry, now):
                    to_start.append(entry)
            except Exception as exc:  # one broken task must not stall the others
                log.exception("sandbox task runner: task %s", entry.arn)
                self._entries.pop(entry.arn, None)
                with contextlib.suppress(Exception):
                    self._finish(entry, stop_code="TaskFailedToStart", stopped_reason=f"sandbox: {exc}")
        return to_start

    def _step(self, entry: _Entry, now: float) -> bool:
        """Advance one task; True when its process is to be started now."""
        task = entry.task
        if task.last_status == "STOPPED":  # someone else stopped it (set_task_state)
            self._entries.pop(entry.arn, None)
            return False
        if entry.phase in (_Phase.PROVISIONING, _Phase.PENDING) and task.desired_status == "STOPPED":
            self._stop_unstarted(entry)  # normally done at once by stop_requested
            return False
        if entry.phase is _Phase.PROVISIONING and now >= entry.due:
            if entry.failure is not None:
                # As a task that never got capacity or an image: no containers are reported.
                self._fail_to_start(entry, entry.failure, empty_containers=True)
                return False
            utc = _utcnow()
            task.pull_started_at = getattr(task, "pull_started_at", None) or utc
            task.connectivity = "CONNECTED"  # the ENI is attached before the image is pulled
            task.connectivity_at = getattr(task, "connectivity_at", None) or utc
            self._shim.apply_task_state(task, last_status="PENDING")
            entry.phase = _Phase.PENDING
            entry.due = now + self.options.pending_delay
        elif entry.phase is _Phase.PENDING and now >= entry.due:
            return self._prepare_start(entry)
        elif entry.phase is _Phase.RUNNING and task.desired_status == "STOPPED":
            proc = self._procs.get(entry.arn)
            if proc is not None:
                proc.signal_group(signal.SIGTERM)
            stop_timeout = entry.plan.stop_timeout if entry.plan else None
            entry.kill_at = now + (stop_timeout if stop_timeout is not None else self.options.default_stop_timeout)
            entry.phase = _Phase.STOPPING
            self._shim.apply_task_state(task, last_status="STOPPING")
        elif entry.phase is _Phase.STOPPING and not entry.killed and entry.kill_at is not None and now >= entry.kill_at:
            proc = self._procs.get(entry.arn)
            if proc is not None:
                proc.signal_group(signal.SIGKILL)
            entry.killed = True
        return False

    def _prepare_start(self, entry: _Entry) -> bool:
        """Everything the start needs from moto (log stream, environment), read under the lock."""
        plan = entry.plan
        assert plan is not None  # a task without a plan has a failure and never gets here
        if not plan.argv:
            reason = (
                "CannotStartContainerError: the sandbox runs a container's command as a local process, "
                f"and container {plan.name!r} has no command (set it in the task definition or in "
                "overrides.containerOverrides)"
            )
            self._fail_to_start(entry, reason, container_reason=reason)
            return False
        if plan.log is not None:
            failure = self._create_log_stream(plan.log)
            if failure is not None:
                self._fail_to_start(entry, failure, empty_containers=True)
                return False
        task = entry.task
        agent = {
            # What the ECS agent puts into every container on Fargate...
            "AWS_REGION": task.region_name,
            "AWS_DEFAULT_REGION": task.region_name,
            "AWS_EXECUTION_ENV": f"AWS_ECS_{task.launch_type or 'EC2'}",
            # ...and, in place of the task role's credentials, what makes the SDKs in the task
            # talk to this sandbox rather than to AWS with whatever the host has.
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        base = host_environment(self.options.python)
        entry.env = container_env(plan, base=base, agent=agent, extra=self.options.extra_env)
        entry.argv = local_argv(plan.argv, self.options.python)
        entry.phase = _Phase.STARTING
        return True

    def _spawn(self, entry: _Entry) -> tuple[ContainerProcess | None, str | None]:
        """Start the process (outside the lock); returns it or the reason it could not start."""
        return spawn_container(entry.argv, entry.env, entry.plan.log if entry.plan is not None else None)

    def _commit_start(self, entry: _Entry, proc: ContainerProcess | None, error: str | None) -> None:
        if proc is not None:
            self._watch(entry.arn, proc)
            self._pids[entry.arn] = proc.pid
        if self._entries.get(entry.arn) is not entry:
            return  # reset or stopped from outside meanwhile: _advance kills the process
        if error is not None or proc is None:
            self._fail_to_start(entry, error or "CannotStartContainerError", container_reason=error)
            return
        entry.phase = _Phase.RUNNING
        entry.task.pull_stopped_at = getattr(entry.task, "pull_stopped_at", None) or _utcnow()
        self._shim.apply_task_state(entry.task, last_status="RUNNING")
        # A StopTask that came while the process was being spawned is acted on by the next tick.
        if entry.task.desired_status == "STOPPED":
            self._wake()

    def _on_exit(self, arn: str, proc: ContainerProcess) -> None:
        entry = self._entries.pop(arn, None)
        if entry is None or entry.task.last_status == "STOPPED":
            return  # an orphan, or stopped from outside: its state is someone else's
        # stopCode stays UserInitiated after a StopTask; otherwise the shim fills in
        # EssentialContainerExited and "Essential container in task exited".
        self._finish(entry, exit_code=proc.finish())

    def _stop_unstarted(self, entry: _Entry) -> None:
        self._entries.pop(entry.arn, None)
        self._finish(entry)

    def _fail_to_start(
        self, entry: _Entry, reason: str, *, empty_containers: bool = False, container_reason: str | None = None
    ) -> None:
        self._entries.pop(entry.arn, None)
        self._finish(
            entry,
            stop_code="TaskFailedToStart",
            stopped_reason=reason,
            empty_containers=empty_containers,
            container_reason=container_reason,
        )

    def _finish(
        self,
        entry: _Entry,
        *,
        stop_code: str | None = None,
        stopped_reason: str | None = None,
        exit_code: int | None = None,
        empty_containers: bool = False,
        container_reason: str | None = None,
    ) -> None:
        """Move the task to STOPPED and give back what it held."""
        task = entry.task
        if getattr(task, "container_instance_arn", None):
            # An EC2 task holds CPU and memory of its container instance; moto's stop_task
            # returns them (it also overwrites the reason, which is put back).
            reason = task.stopped_reason
            with contextlib.suppress(Exception):
                entry.backend.stop_task(task.cluster_name, task.task_arn, reason or "")
            task.stopped_reason = reason
        self._shim.apply_task_state(
            task,
            last_status="STOPPED",
            stop_code=stop_code,
            stopped_reason=stopped_reason,
            exit_code=exit_code,
            empty_containers=empty_containers,
            container_reason=container_reason,
        )

    # ------------------------------------------------------------------ logs (under MOTO_LOCK)

    def _create_log_stream(self, target: LogTarget) -> str | None:
        """Create the task's log stream as the awslogs driver does; the failure reason if it cannot."""
        logs = logs_backend(target)
        if target.group not in logs.groups:
            if not target.create_group:
                # The wording of a Fargate task whose log group does not exist.
                return (
                    "ResourceInitializationError: failed to validate logger args: create stream has been "
                    "retried 1 times: failed to create Cloudwatch log stream: ResourceNotFoundException: "
                    "The specified log group does not exist. : exit status 1"
                )
            logs.create_log_group(target.group, {})
        logs.ensure_log_stream(target.group, target.stream)
        return None

    def _flush_logs(self) -> None:
        self._log_pump.flush(self._procs.values())

    # ------------------------------------------------------------------ shutdown

    def _terminate_all(self) -> None:
        """SIGTERM every task's process group, SIGKILL what is left after the grace, reap all.

        Runs in the thread calling ``stop`` once the supervisor has exited, so it owns the
        processes; it waits without the lock.
        """
        procs = dict(self._procs)
        terminate_processes(procs.values(), self.options.shutdown_timeout, before_finish=self._unwatch)
        with MOTO_LOCK:
            self._flush_logs()
            for arn, proc in procs.items():
                entry = self._entries.pop(arn, None)
                if entry is not None and entry.task.last_status != "STOPPED":
                    self._finish(entry, exit_code=proc.finish(), **self._terminated())
            for entry in list(self._entries.values()):
                if entry.task.last_status != "STOPPED":
                    self._finish(entry, **self._terminated())
            self._entries.clear()
            self._procs.clear()
            self._pids.clear()

    @staticmethod
    def _terminated() -> dict[str, Any]:
        return {"stop_code": "TerminationNotice", "stopped_reason": "The sandbox's task runner was stopped"}

    def _kill_all_now(self) -> None:
        """At interpreter exit without ``stop()``: SIGKILL every task's process group."""
        kill_all(self._procs.values())
