"""``SandboxServer``: the fake AWS served over real HTTP on localhost, in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar

from moto.server import MotoRequestHandler
from werkzeug.serving import BaseWSGIServer, make_server

from .app import Sandbox, SandboxApp, Sleep
from .batchrunner import BatchJobs
from .ecsrunner import EcsTasks
from .realism import Clock, RealismSettings
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


class SandboxServer(Sandbox):
    """An embedded fake AWS (moto plus fidelity shims) on ``http://127.0.0.1:<port>``.

    Usage::

        with SandboxServer() as sandbox:
            ecs = sandbox.client("ecs")
            sandbox.fail_run_task(reason="RESOURCE:MEMORY")

    moto's state is global to the process, so only one sandbox may run in a process at a time;
    ``start`` refuses a second one instead of letting two share (and reset) each other's state.
    ``start`` resets all state, so nothing leaks from an earlier sandbox; ``stop`` restores moto's
    global settings so later plain ``mock_aws`` users in the process see moto's defaults.
    It is a ``Sandbox``: the control operations are its methods, also served over HTTP (see
    ``control.py``).

    ``run_tasks=True`` starts the task runner (``runner.py``, tuned by ``runner``): every ECS
    task then runs its container command as a local process and walks PROVISIONING..STOPPED by
    itself, its output going to CloudWatch Logs; so does every Batch job
    (SUBMITTED..SUCCEEDED/FAILED). Off by default: tasks stay PROVISIONING and jobs RUNNABLE until
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
        super().__init__(realism=realism, clock=clock)
        self.host = host
        self.port = port
        self.region = region
        self.run_tasks = run_tasks
        #: Used when ``run_tasks``; may be changed before ``start`` (e.g. ``extra_env``).
        self.runner_options = runner if runner is not None else RunnerOptions()
        self.app = SandboxApp(self, sleep=sleep)
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
            self.reset()
            self.eventbridge.start()
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
                self.runner = TaskRunner(
                    self.runner_options,
                    [EcsTasks(self.ecs, self.faults, self.realism), BatchJobs(self.batch, self.faults, self.realism)],
                    endpoint_url=self._local_url(),
                )
                self.runner.start()
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
        if self.runner is not None:
            try:
                self.runner.stop()
            finally:
                self.runner = None
        # After the runner: the events of its last changes are dropped with the rest.
        self.eventbridge.stop()
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
