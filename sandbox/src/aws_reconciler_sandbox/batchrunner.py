"""The sandbox's Batch job runner: every Batch job becomes a local process with AWS's lifecycle and logs.

A job goes SUBMITTED -> PENDING -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED | FAILED. At
RUNNING its container's command (the override's, else the job definition's) starts as a local
process in its own process group; the job ends SUCCEEDED on exit code 0, else FAILED, with the
code in ``container.exitCode`` and the attempt. TerminateJob sends SIGTERM to the group and
SIGKILL after ``RunnerOptions.default_stop_timeout``; the job ends FAILED with the terminate
reason. A job fails before it starts as on AWS ("Task failed to start", the reason in
``container.reason``): an image whose name contains ``does-not-exist``, a planned
``fail_next_start``, a command that cannot be executed. ``hold_runnable`` keeps the next jobs in
RUNNABLE, as a queue without capacity does. Output goes, line by line, to the job's CloudWatch
Logs stream (``/aws/batch/job``, ``<job definition>/default/<job id>`` unless the job definition
configures ``awslogs``).

Kept apart from the ECS task runner (``runner.py``), with which it shares the process handling
(``procs.py``, ``supervise.py``) and the environment rules (``taskspec.py``): one supervisor thread, polling every
``poll_interval`` (or at once when woken), that changes job state only under ``MOTO_LOCK`` and
never waits while holding it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from .batch import FINISHED, BatchJob, BatchShim
from .faults import FaultPlan
from .motoenv import MOTO_LOCK
from .procs import ContainerProcess
from .realism import Realism
from .runner import RunnerOptions
from .supervise import (
    LogPump,
    host_environment,
    kill_all,
    logs_backend,
    raise_fd_limit,
    spawn_container,
    terminate_processes,
)
from .taskspec import ContainerPlan, LogTarget, container_env, local_argv, pull_failure

__all__ = ["BatchJobRunner"]

log = logging.getLogger(__name__)

_STOPPED_BY_SANDBOX = "The sandbox's task runner was stopped"


@dataclass(eq=False)
class _Entry:
    """A job the runner drives. Guarded by ``MOTO_LOCK``."""

    job: BatchJob
    failure: str | None  # container.reason, when the job is going to fail to start
    held: bool  # stays RUNNABLE (no capacity) until a test moves it
    due: float  # monotonic time of the next timed transition
    plan: ContainerPlan | None = None
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    spawning: bool = False
    kill_at: float | None = None
    killed: bool = False

    @property
    def job_id(self) -> str:
        return self.job.job_id


class BatchJobRunner:
    """Runs the sandbox's Batch jobs as local processes (see the module docstring).

    ``SandboxServer(run_tasks=True)`` creates, starts and stops it beside the ECS task runner.
    """

    def __init__(
        self, shim: BatchShim, faults: FaultPlan, options: RunnerOptions, *, endpoint_url: str, realism: Realism
    ) -> None:
        self.options = options
        self.endpoint_url = endpoint_url
        self._shim = shim
        self._faults = faults
        self._realism = realism
        self._entries: dict[str, _Entry] = {}  # under MOTO_LOCK
        self._pids: dict[str, int] = {}  # under MOTO_LOCK
        self._procs: dict[str, ContainerProcess] = {}  # the supervisor thread's (then stop()'s) only
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_pump = LogPump()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take over the job lifecycle from the shim and start the supervisor thread."""
        if self._thread is not None:
            raise RuntimeError("the Batch job runner is already started")
        raise_fd_limit()
        self._closing.clear()
        with MOTO_LOCK:
            self._shim.listener = self
        self._thread = threading.Thread(target=self._run, name="aws-reconciler-sandbox-batch", daemon=True)
        self._thread.start()
        atexit.register(self._kill_all_now)

    def stop(self) -> None:
        """Stop every job process (SIGTERM, SIGKILL after ``shutdown_timeout``) and the thread.

        Jobs still running end FAILED. Safe to call more than once.
        """
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        self._wake.set()
        thread.join()
        self._thread = None
        atexit.unregister(self._kill_all_now)
        try:
            self._terminate_all()
        finally:
            with MOTO_LOCK:
                if self._shim.listener is self:
                    self._shim.listener = None
                self._entries.clear()
                self._pids.clear()

    def processes(self) -> dict[str, int]:
        """Job id -> pid (= process group id) of every job process started and not yet reaped."""
        with MOTO_LOCK:
            return dict(self._pids)

    # ------------------------------------------------------------------ JobListener (under MOTO_LOCK)

    def job_created(self, job: BatchJob) -> None:
        """Track a job SubmitJob just accepted; decide now whether it will fail to start or wait."""
        image = str(job.definition.get("image", ""))
        failure = pull_failure(image) or self._faults.take_start_failure() or self._realism.start_failure("batch")
        held = self._faults.take_runnable_hold() is not None or self._realism.hold_runnable()
        self._entries[job.job_id] = _Entry(job=job, failure=failure, held=held, due=time.monotonic())
        self._wake.set()

    def stop_requested(self, job: BatchJob) -> bool:
        """TerminateJob on a STARTING or RUNNING job: its process is signalled on the next tick."""
        if job.job_id not in self._entries:
            return False  # not ours (submitted before the runner started): the shim fails it
        self._wake.set()
        return True

    def jobs_reset(self) -> None:
        """Every job is gone: forget them; their processes are killed on the next tick."""
        self._entries.clear()
        self._wake.set()

    # ------------------------------------------------------------------ supervisor thread

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._tick()
            except Exception:  # the runner must survive anything one tick meets
                log.exception("sandbox Batch runner: tick failed")
            self._wake.wait(self.options.poll_interval)
            self._wake.clear()

    def _tick(self) -> None:
        for proc in self._procs.values():
            proc.read_available()
        exited = [(job_id, proc) for job_id, proc in self._procs.items() if proc.has_exited()]
        for _job_id, proc in exited:
            proc.finish()  # kills the rest of the group, reads the last output, reaps
        with MOTO_LOCK:
            self._flush_logs()
            for job_id, proc in exited:
                del self._procs[job_id]
                self._pids.pop(job_id, None)
                self._on_exit(job_id, proc)
            to_start = self._advance(time.monotonic())
        if to_start:
            spawned = [(entry, self._spawn(entry)) for entry in to_start]  # outside the lock
            with MOTO_LOCK:
                for entry, (started, error) in spawned:
                    self._commit_start(entry, started, error)

    # ------------------------------------------------------------------ state machine (under MOTO_LOCK)

    def _advance(self, now: float) -> list[_Entry]:
        for job_id, orphan in self._procs.items():
            if job_id not in self._entries:
                orphan.signal_group(signal.SIGKILL)  # its job was reset or finished from outside
        to_start: list[_Entry] = []
        for entry in list(self._entries.values()):
            try:
                if self._step(entry, now):
                    to_start.append(entry)
            except Exception as exc:  # one broken job must not stall the others
                log.exception("sandbox Batch runner: job %s", entry.job_id)
                self._entries.pop(entry.job_id, None)
                with contextlib.suppress(Exception):
                    self._shim.apply_job_state(entry.job, status="FAILED", container_reason=f"sandbox: {exc}")
        return to_start

    def _step(self, entry: _Entry, now: float) -> bool:
        """Advance one job; True when its process is to be started now."""
        job = entry.job
        if job.status in FINISHED:  # cancelled, or finished by set_job_state
            self._entries.pop(entry.job_id, None)
            return False
        if entry.spawning:
            return False
        if job.status == "RUNNING":
            self._stop_if_terminated(entry, now)
            return False
        if job.terminate_reason is not None:  # STARTING, no process yet: it ends here
            self._finish(entry, status_reason=job.terminate_reason)
            return False
        if now < entry.due:
            return False
        if job.status == "SUBMITTED":
            self._shim.apply_job_state(job, status="PENDING")
        elif job.status == "PENDING":
            self._shim.apply_job_state(job, status="RUNNABLE")
            entry.due = now + self.options.provisioning_delay
        elif job.status == "RUNNABLE" and not entry.held:
            self._shim.apply_job_state(job, status="STARTING")
            entry.due = now + self.options.pending_delay
        elif job.status == "STARTING":
            return self._prepare_start(entry)
        return False

    def _stop_if_terminated(self, entry: _Entry, now: float) -> None:
        if entry.job.terminate_reason is None:
            return
        proc = self._procs.get(entry.job_id)
        if entry.kill_at is None:
            if proc is not None:
                proc.signal_group(signal.SIGTERM)
            entry.kill_at = now + self.options.default_stop_timeout
        elif not entry.killed and now >= entry.kill_at:
            if proc is not None:
                proc.signal_group(signal.SIGKILL)
            entry.killed = True

    def _prepare_start(self, entry: _Entry) -> bool:
        job = entry.job
        if entry.failure is not None:
            self._finish(entry, container_reason=entry.failure)
            return False
        argv = job.command()
        if not argv:
            self._finish(
                entry,
                container_reason=(
                    "CannotStartContainerError: the sandbox runs a job's command as a local process, and the job "
                    "has none (set it in the job definition or in containerOverrides)"
                ),
            )
            return False
        region, group, stream, create_group = job.log_target()
        target = LogTarget(account_id=job.account_id, region=region, group=group, stream=stream)
        failure = self._create_log_stream(target, create_group=create_group)
        if failure is not None:
            self._finish(entry, container_reason=failure)
            return False
        agent = {
            # What Batch and the ECS agent put into every job's container...
            "AWS_BATCH_JOB_ID": job.job_id,
            "AWS_BATCH_JQ_NAME": job.queue_name,
            "AWS_BATCH_JOB_ATTEMPT": "1",
            "AWS_REGION": job.region,
            "AWS_DEFAULT_REGION": job.region,
            "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
            # ...and what makes the SDKs in the job talk to this sandbox.
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        base = host_environment(self.options.python)
        entry.plan = ContainerPlan(
            name="default",
            image=str(job.definition.get("image", "")),
            argv=tuple(argv),
            environment=job.environment(),
            log=target,
        )
        entry.env = container_env(entry.plan, base=base, agent=agent, extra=self.options.extra_env)
        entry.argv = local_argv(entry.plan.argv, self.options.python)
        entry.spawning = True
        return True

    def _spawn(self, entry: _Entry) -> tuple[ContainerProcess | None, str | None]:
        return spawn_container(entry.argv, entry.env, entry.plan.log if entry.plan is not None else None)

    def _commit_start(self, entry: _Entry, proc: ContainerProcess | None, error: str | None) -> None:
        entry.spawning = False
        if proc is not None:
            self._procs[entry.job_id] = proc
            self._pids[entry.job_id] = proc.pid
        if self._entries.get(entry.job_id) is not entry or entry.job.status in FINISHED:
            return  # reset, cancelled or finished from outside meanwhile: _advance kills the process
        if proc is None:
            self._finish(entry, container_reason=error or "CannotStartContainerError")
            return
        self._shim.apply_job_state(entry.job, status="RUNNING")
        if entry.job.terminate_reason is not None:
            self._wake.set()  # a TerminateJob that came while the process was being spawned

    def _on_exit(self, job_id: str, proc: ContainerProcess) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is None or entry.job.status in FINISHED:
            return
        self._finish(entry, exit_code=proc.finish(), status_reason=entry.job.terminate_reason)

    def _finish(
        self,
        entry: _Entry,
        *,
        exit_code: int | None = None,
        status_reason: str | None = None,
        container_reason: str | None = None,
    ) -> None:
        """End the job: SUCCEEDED on exit code 0 without a terminate, FAILED otherwise."""
        self._entries.pop(entry.job_id, None)
        succeeded = exit_code == 0 and entry.job.terminate_reason is None
        self._shim.apply_job_state(
            entry.job,
            status="SUCCEEDED" if succeeded else "FAILED",
            status_reason=status_reason,
            exit_code=exit_code,
            container_reason=container_reason,
        )

    # ------------------------------------------------------------------ logs (under MOTO_LOCK)

    def _create_log_stream(self, target: LogTarget, *, create_group: bool) -> str | None:
        logs = logs_backend(target)
        if target.group not in logs.groups:
            if not create_group:
                return (
                    "ResourceInitializationError: failed to validate logger args: The specified log group "
                    f"{target.group} does not exist"
                )
            logs.create_log_group(target.group, {})
        logs.ensure_log_stream(target.group, target.stream)
        return None

    def _flush_logs(self) -> None:
        self._log_pump.flush(self._procs.values())

    # ------------------------------------------------------------------ shutdown

    def _terminate_all(self) -> None:
        """SIGTERM every job's process group, SIGKILL what is left after the grace, reap all."""
        procs = dict(self._procs)
        terminate_processes(procs.values(), self.options.shutdown_timeout)
        with MOTO_LOCK:
            self._flush_logs()
            for job_id, proc in procs.items():
                entry = self._entries.pop(job_id, None)
                if entry is not None and entry.job.status not in FINISHED:
                    self._finish(entry, exit_code=proc.finish(), status_reason=_STOPPED_BY_SANDBOX)
            for entry in list(self._entries.values()):
                if entry.job.status not in FINISHED:
                    self._finish(entry, status_reason=_STOPPED_BY_SANDBOX)
            self._entries.clear()
            self._procs.clear()
            self._pids.clear()

    def _kill_all_now(self) -> None:
        """At interpreter exit without ``stop()``: SIGKILL every job's process group."""
        kill_all(self._procs.values())
