"""``SandboxServer``: the fake AWS served over real HTTP on localhost, in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar

from moto.server import MotoRequestHandler
from werkzeug.serving import BaseWSGIServer, make_server

from .app import SandboxApp, Sleep
from .batchrunner import BatchJobRunner
from .faults import DEFAULT_START_FAILURE
from .realism import PROFILES, Clock, Realism, RealismSettings
from .runner import RunnerOptions, TaskRunner

__all__ = ["FAKE_CREDENTIALS", "SandboxServer"]

#: Credentials the sandbox accepts (it accepts any; these are the conventional ones).
FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class _QuietRequestHandler(MotoRequestHandler):
    """moto's request handler without an access-log line per request (tests make thousands)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Do not log successful requests; errors are still logged by werkzeug and the app."""

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        """Close the connection: after a reset (``PlannedConnectionReset``) nothing more may be read
        or written on it, and a kept-alive connection would leave the client waiting."""
        self.close_connection = True


class SandboxServer:
    """An embedded fake AWS (moto plus fidelity shims) on ``http://127.0.0.1:<port>``.

    Usage::

        with SandboxServer() as sandbox:
            ecs = sandbox.client("ecs")
            sandbox.fail_run_task(reason="RESOURCE:MEMORY")

    moto's state is global to the process, so only one sandbox may run in a process at a time;
    ``start`` refuses a second one instead of letting two share (and reset) each other's state.
    ``start`` resets all state, so nothing leaks from an earlier sandbox; ``stop`` restores moto's
    global settings so later plain ``mock_aws`` users in the process see moto's defaults.
    The control methods are also served over HTTP (see ``control.py``).

    ``run_tasks=True`` starts the task runner (``runner.py``, tuned by ``runner``): every ECS
    task then runs its container command as a local process and walks PROVISIONING..STOPPED by
    itself, its output going to CloudWatch Logs; so does every Batch job (``batchrunner.py``,
    SUBMITTED..SUCCEEDED/FAILED). Off by default: tasks stay PROVISIONING and jobs RUNNABLE until
    ``set_task_state`` / ``set_job_state`` move them, and StopTask / TerminateJob stop them at once.

    ``realism`` (a profile name or ``RealismSettings``; default ``kind``, as kind as moto) makes
    the sandbox as unkind as AWS (``realism.py``), from the first request on; ``configure_realism``
    changes it at run time. ``clock`` (monotonic seconds) drives its windows and token buckets,
    ``sleep`` its latency and held answers: tests inject both.
    """

    _active: ClassVar[SandboxServer | None] = None
    _active_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        run_tasks: bool = False,
        runner: RunnerOptions | None = None,
        realism: RealismSettings | str | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.region = region
        self.run_tasks = run_tasks
        #: Used when ``run_tasks``; may be changed before ``start`` (e.g. ``extra_env``).
        self.runner_options = runner if runner is not None else RunnerOptions()
        #: The running task runner, when ``run_tasks`` and started.
        self.task_runner: TaskRunner | None = None
        #: The running Batch job runner, started and stopped with the task runner.
        self.batch_runner: BatchJobRunner | None = None
        if isinstance(realism, str):
            if realism not in PROFILES:
                raise ValueError(f"realism profile must be one of {', '.join(PROFILES)}, not {realism!r}")
            realism = PROFILES[realism]
        self.realism = Realism(realism, clock=clock)
        self.app = SandboxApp(self.realism, sleep=sleep)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._restore_moto: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SandboxServer:
        """Reset all state, configure moto and start serving. Returns ``self``."""
        from .motoenv import configure_moto

        with SandboxServer._active_lock:
            if SandboxServer._active is not None:
                raise RuntimeError(
                    "another SandboxServer is running in this process (moto state is process-wide); stop it first"
                )
            SandboxServer._active = self
        try:
            self._restore_moto = configure_moto()
            self.app.reset()
            self.app.open()
            # Bound here, in the caller's thread: when start() returns, connections are accepted.
            self._server = make_server(
                self.host, self.port, self.app, threaded=True, request_handler=_QuietRequestHandler
            )
            self.port = self._server.server_port
            # A short poll interval makes stop() quick (shutdown waits for the next poll).
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"aws-reconciler-sandbox:{self.port}",
                daemon=True,
            )
            self._thread.start()
            if self.run_tasks:
                self.task_runner = TaskRunner(
                    self.app.ecs,
                    self.app.faults,
                    self.runner_options,
                    endpoint_url=self._local_url(),
                    realism=self.realism,
                )
                self.app.runner = self.task_runner
                self.task_runner.start()
                self.batch_runner = BatchJobRunner(
                    self.app.batch,
                    self.app.faults,
                    self.runner_options,
                    endpoint_url=self._local_url(),
                    realism=self.realism,
                )
                self.app.batch_runner = self.batch_runner
                self.batch_runner.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the task processes, stop serving, restore moto's global settings.

        Safe to call more than once. The runner stops first, so that tasks can still reach the
        fake AWS while they shut down; every process it started is gone when this returns.
        """
        self.app.close()
        if self.batch_runner is not None:
            try:
                self.batch_runner.stop()
            finally:
                self.app.batch_runner = None
                self.batch_runner = None
        if self.task_runner is not None:
            try:
                self.task_runner.stop()
            finally:
                self.app.runner = None
                self.task_runner = None
        if self._server is not None:
            if self._thread is not None and self._thread.is_alive():
                self._server.shutdown()  # waits for serve_forever, so only when it runs
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
        self._release()

    def _local_url(self) -> str:
        # What the task processes on this machine connect to, also when serving on all interfaces.
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else "[::1]" if self.host == "::" else self.host
        return f"http://{host}:{self.port}"

    def _release(self) -> None:
        if self._restore_moto is not None:
            self._restore_moto()
            self._restore_moto = None
        with SandboxServer._active_lock:
            if SandboxServer._active is self:
                SandboxServer._active = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` passes); True if it has stopped.

        For a foreground process such as ``aws-reconciler sandbox``: start, wait, stop on signal.
        """
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the running server (what ``AWS_ENDPOINT_URL`` should be)."""
        if self._server is None:
            raise RuntimeError("SandboxServer is not started")
        return f"http://{self.host}:{self.port}"

    def client(self, service_name: str, **kwargs: Any) -> Any:
        """A boto3 client for this sandbox (fake credentials, the sandbox region by default)."""
        import boto3

        options: dict[str, Any] = {"region_name": self.region, "endpoint_url": self.endpoint_url, **FAKE_CREDENTIALS}
        options.update(kwargs)
        return boto3.client(service_name, **options)

    # ------------------------------------------------------------------ control (see SandboxApp)

    def fail_run_task(self, *, reason: str = "RESOURCE:MEMORY", times: int | None = 1) -> None:
        """The next ``times`` RunTask calls launch nothing and return ``failures: [{reason}]``."""
        self.app.fail_run_task(reason=reason, times=times)

    def configure_realism(self, *, profile: str | None = None, **changes: Any) -> dict[str, Any]:
        """Put a realism profile and/or changed settings in force; see ``SandboxApp.configure_realism``."""
        return self.app.configure_realism(profile=profile, **changes)

    def realism_state(self) -> dict[str, Any]:
        """The realism settings in force and how often each behaviour struck."""
        return self.app.realism_state()

    def inject_error(
        self,
        *,
        operation: str,
        code: str,
        message: str,
        status: int = 400,
        times: int | None = 1,
        phantom: bool = False,
    ) -> None:
        """The next ``times`` calls of ``operation`` ("RunTask" or "ecs:RunTask") fail with ``code``.

        ``times=None``: every call until ``clear_faults``. ``phantom``: executed, answer replaced.
        """
        self.app.inject_error(
            operation=operation, code=code, message=message, status=status, times=times, phantom=phantom
        )

    def clear_faults(self) -> None:
        """Drop every planned error and RunTask failure."""
        self.app.clear_faults()

    def pending_faults(self) -> dict[str, Any]:
        """Planned faults not yet consumed."""
        return self.app.pending_faults()

    def fail_next_start(self, *, reason: str = DEFAULT_START_FAILURE, times: int | None = 1) -> None:
        """The next ``times`` tasks launched fail to start: PROVISIONING -> STOPPED, ``stopCode``
        TaskFailedToStart, ``stoppedReason`` = ``reason``, no containers, no process.

        Needs the task runner (``run_tasks=True``); ``RuntimeError`` otherwise. ``times=None``:
        every launch until ``clear_faults``.
        """
        self.app.fail_next_start(reason=reason, times=times)

    def task_processes(self) -> dict[str, int]:
        """Task ARN (or Batch job id) -> pid (also the process group id) of every process alive or unreaped."""
        return self.app.task_processes()

    def hold_runnable(self, *, times: int | None = 1) -> None:
        """The next ``times`` Batch jobs stay RUNNABLE, as in a queue without capacity, until
        ``set_job_state`` moves them. Needs the task runner; ``RuntimeError`` otherwise."""
        self.app.hold_runnable(times=times)

    def set_job_state(
        self,
        *,
        job_id: str,
        status: str,
        status_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
    ) -> dict[str, Any]:
        """Move a Batch job to ``status`` with AWS's fields (times, attempts, exit code); returns
        the job as DescribeJobs shows it. See ``BatchShim.apply_job_state`` for the rules.
        ``KeyError`` for an unknown job, ``ValueError`` for an unknown status or a finished job."""
        return self.app.set_job_state(
            job_id=job_id,
            status=status,
            status_reason=status_reason,
            exit_code=exit_code,
            container_reason=container_reason,
        )

    def jobs(self, *, queue: str | None = None) -> list[dict[str, Any]]:
        """Snapshot of every Batch job: its DescribeJobs description plus ``request`` (as submitted)."""
        return self.app.jobs(queue=queue)

    def set_task_state(
        self,
        *,
        task_arn: str,
        last_status: str,
        stop_code: str | None = None,
        stopped_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
        empty_containers: bool = False,
    ) -> dict[str, Any]:
        """Move an ECS task to ``last_status`` with AWS's timestamps; returns the task snapshot.

        See ``EcsShim.set_task_state`` for the rules. Raises ``KeyError`` for an unknown task.
        """
        return self.app.set_task_state(
            task_arn=task_arn,
            last_status=last_status,
            stop_code=stop_code,
            stopped_reason=stopped_reason,
            exit_code=exit_code,
            container_reason=container_reason,
            empty_containers=empty_containers,
        )

    def tasks(self, *, cluster: str | None = None) -> list[dict[str, Any]]:
        """Snapshot of every ECS task: arn, cluster, startedBy, tags, clientToken, overrides, status..."""
        return self.app.tasks(cluster=cluster)

    def calls(self) -> dict[str, int]:
        """Requests received, keyed ``service:Operation`` (``ecs:RunTask``, ``logs:GetLogEvents``)."""
        return self.app.calls()

    def reset_calls(self) -> None:
        """Start counting requests from zero."""
        self.app.reset_calls()

    def reset(self) -> None:
        """Forget everything: moto's backends, shim state, planned faults and call counts."""
        self.app.reset()
