"""The sandbox: its state and control operations (``Sandbox``), and the WSGI application serving
AWS requests through its shims and ``/_sandbox`` requests through its operations (``SandboxApp``)."""

from __future__ import annotations

import io
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from moto.server import DomainDispatcherApplication, create_backend_app

from .awsproto import AwsRequest, RawResponse, error_response, parse_request, read_body
from .batch import BatchShim
from .control import CONTROL_PREFIX, operation, operations_of, serve_control
from .ecs import EcsShim
from .events import EventBridge
from .faults import DEFAULT_START_FAILURE, CallCounter, Decision, FaultPlan, InjectedError
from .motoenv import MOTO_LOCK, reset_moto
from .realism import PROFILES, Call, Clock, Realism, RealismSettings
from .runner import TaskRunner
from .sqs import SqsShim

__all__ = ["OPERATIONS", "Sandbox", "SandboxApp"]

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Sleep = Callable[[float], object]


class PlannedConnectionReset(ConnectionResetError):
    """Raised out of the application to make the server drop the connection without an answer.

    A ``ConnectionError``: werkzeug takes it for a dropped connection and writes nothing.
    """


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _realism_settings(realism: RealismSettings | str | None) -> RealismSettings | None:
    if isinstance(realism, str):
        if realism not in PROFILES:
            raise ValueError(f"realism profile must be one of {', '.join(PROFILES)}, not {realism!r}")
        return PROFILES[realism]
    return realism


class Sandbox:
    """What the fake AWS holds in front of moto (shims, planned faults, realism, call counts, the
    task runner), and every control operation on it.

    The ``@operation`` methods are the control API's one declaration (see ``control.py``):
    tests call them on ``SandboxServer``; ``SandboxApp`` serves them under ``/_sandbox``;
    ``SandboxControlClient`` calls them over HTTP.
    """

    def __init__(self, *, realism: RealismSettings | str | None = None, clock: Clock | None = None) -> None:
        self.faults = FaultPlan()
        self.realism = Realism(_realism_settings(realism), clock=clock)
        self.counter = CallCounter()
        #: ECS and Batch events into the SQS queues of matching rules (``events.py``).
        self.eventbridge = EventBridge(self.realism)
        self.ecs = EcsShim(self.faults, self.realism, self.eventbridge)
        self.batch = BatchShim(self.realism, self.eventbridge)
        self.sqs = SqsShim()
        #: The task runner, while one runs (``SandboxServer(run_tasks=True)``).
        self.runner: TaskRunner | None = None

    @operation("GET", "health")
    def health(self) -> dict[str, str]:
        """``{"status": "ok"}`` while the sandbox serves."""
        return {"status": "ok"}

    @operation("POST", "fail-run-task")
    def fail_run_task(self, *, reason: str = "RESOURCE:MEMORY", times: int | None = 1) -> None:
        """The next ``times`` RunTask calls launch nothing and return ``failures: [{reason}]``."""
        self.faults.fail_run_task(reason=reason, times=times)

    @operation("POST", "inject-error")
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

        ``times=None`` fails every call until ``clear_faults``/``reset``. With ``phantom`` the
        call is executed anyway and only its answer is replaced by the error.
        """
        self.faults.inject_error(InjectedError(operation, code, message, status, times, phantom))

    @operation("GET", "faults")
    def pending_faults(self) -> dict[str, Any]:
        """Planned faults not yet consumed."""
        return self.faults.pending()

    @operation("POST", "clear-faults")
    def clear_faults(self) -> None:
        """Drop every planned error, RunTask failure, start failure and RUNNABLE hold."""
        self.faults.clear()

    @operation("POST", "fail-next-start")
    def fail_next_start(self, *, reason: str = DEFAULT_START_FAILURE, times: int | None = 1) -> None:
        """The next ``times`` tasks or jobs launched fail to start: an ECS task goes PROVISIONING ->
        STOPPED (``TaskFailedToStart``, ``stoppedReason`` = ``reason``, no containers), a Batch job
        FAILED ("Task failed to start", ``container.reason`` = ``reason``).

        Only a task runner starts anything, so without one this raises ``RuntimeError`` rather
        than plan a failure nothing would ever consume.
        """
        self._need_runner("fail_next_start")
        self.faults.fail_next_start(reason=reason, times=times)

    @operation("POST", "hold-runnable")
    def hold_runnable(self, *, times: int | None = 1) -> None:
        """The next ``times`` Batch jobs stay RUNNABLE (no capacity) until ``set_job_state`` moves them.

        Needs the task runner (without it every job waits in RUNNABLE anyway): ``RuntimeError``.
        """
        self._need_runner("hold_runnable")
        self.faults.hold_runnable(times=times)

    def _need_runner(self, what: str) -> None:
        if self.runner is None:
            raise RuntimeError(f"{what} needs the task runner: start the sandbox with run_tasks=True")

    @operation("GET", "processes")
    def task_processes(self) -> dict[str, int]:
        """Task ARN or Batch job id -> pid (also the process group id) of every process the task
        runner started and has not reaped yet."""
        return self.runner.processes() if self.runner is not None else {}

    @operation("POST", "task-state")
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
        """Move an ECS task (ARN or id) to ``last_status``, stamping the times AWS would; returns
        its snapshot (as ``tasks`` shows it). ``set_task_states`` with one task.

        Entering DEACTIVATING..STOPPED sets ``desiredStatus`` STOPPED. Timestamps are set once, on
        the first entry into the phase: ``startedAt`` (and the image pull times) at RUNNING,
        ``stoppingAt`` at the stopping phase, ``stoppedAt``/``executionStoppedAt`` at STOPPED.
        A task that reaches STOPPED without a stop code gets ``EssentialContainerExited``.
        ``empty_containers`` removes the containers, as AWS reports tasks that failed to start.
        ``KeyError`` for an unknown task, ``ValueError`` for an unknown status.
        """
        return self.set_task_states(
            task_arns=[task_arn],
            last_status=last_status,
            stop_code=stop_code,
            stopped_reason=stopped_reason,
            exit_code=exit_code,
            container_reason=container_reason,
            empty_containers=empty_containers,
        )[0]

    @operation("POST", "task-states")
    def set_task_states(
        self,
        *,
        task_arns: list[str],
        last_status: str,
        stop_code: str | None = None,
        stopped_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
        empty_containers: bool = False,
    ) -> list[dict[str, Any]]:
        """Move every ECS task of ``task_arns`` (ARNs or ids) to ``last_status`` with the same
        fields, as ``set_task_state`` moves one; returns their snapshots, in order.

        All of it happens in one hold of the sandbox's lock, so the tasks change together (nothing
        reads one moved and the next not yet) and their events, one per task, go out together
        once it is let go: a burst of tasks ending in the same instant. All or nothing: an
        unknown task (``KeyError`` naming every one), a task named twice or an unknown status
        (``ValueError``) moves none.
        """
        if isinstance(task_arns, str) or not all(isinstance(arn, str) for arn in task_arns):
            raise TypeError("task_arns must be a list of task ARNs or ids")
        with MOTO_LOCK:
            return self.ecs.apply_task_states(
                self.ecs.find_all(task_arns),
                last_status=last_status,
                stop_code=stop_code,
                stopped_reason=stopped_reason,
                exit_code=exit_code,
                container_reason=container_reason,
                empty_containers=empty_containers,
            )

    @operation("GET", "tasks")
    def tasks(self, *, cluster: str | None = None) -> list[dict[str, Any]]:
        """Snapshot of every ECS task (optionally of one cluster, by name or ARN), oldest first per
        cluster: arn, cluster, startedBy, tags, clientToken, overrides, statuses, times, containers."""
        return self.ecs.tasks(cluster=cluster)

    @operation("POST", "job-state")
    def set_job_state(
        self,
        *,
        job_id: str,
        status: str,
        status_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
    ) -> dict[str, Any]:
        """Move a Batch job to ``status`` with AWS's fields (times, attempts, exit code); returns the
        job as DescribeJobs shows it. See ``BatchShim.apply_job_state`` for the rules.
        ``set_job_states`` with one job: ``KeyError`` for an unknown job, ``ValueError`` for an
        unknown status or a finished job."""
        return self.set_job_states(
            job_ids=[job_id],
            status=status,
            status_reason=status_reason,
            exit_code=exit_code,
            container_reason=container_reason,
        )[0]

    @operation("POST", "job-states")
    def set_job_states(
        self,
        *,
        job_ids: list[str],
        status: str,
        status_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
    ) -> list[dict[str, Any]]:
        """Move every Batch job of ``job_ids`` (ids or ARNs) to ``status`` with the same fields, as
        ``set_job_state`` moves one; returns their descriptions, in order. In one hold of the
        sandbox's lock, their events going out together, as ``set_task_states``. All or nothing:
        an unknown job (``KeyError`` naming every one), a job named twice, an unknown status or
        a finished job (``ValueError``) moves none."""
        if isinstance(job_ids, str) or not all(isinstance(job_id, str) for job_id in job_ids):
            raise TypeError("job_ids must be a list of Batch job ids or ARNs")
        with MOTO_LOCK:
            return self.batch.apply_job_states(
                self.batch.find_all(job_ids),
                status=status,
                status_reason=status_reason,
                exit_code=exit_code,
                container_reason=container_reason,
            )

    @operation("GET", "jobs")
    def jobs(self, *, queue: str | None = None) -> list[dict[str, Any]]:
        """Snapshot of every Batch job (optionally of one job queue, by name or ARN): its DescribeJobs
        description plus ``request`` (as submitted), oldest first."""
        return self.batch.jobs(queue=queue)

    @operation("POST", "configure-realism")
    def configure_realism(self, *, profile: str | None = None, **changes: Any) -> dict[str, Any]:
        """Put a realism profile (``kind``, ``realistic``) and/or changed settings in force; the
        settings are ``RealismSettings``' fields (``faults`` as ``OPERATION:KIND=PERCENT`` strings).

        Without ``profile`` the changes apply to the settings in force. Returns ``realism_state``.
        """
        base = _realism_settings(profile) if profile is not None else self.realism.settings
        assert base is not None
        self.realism.configure(base.changed(**changes))
        return self.realism_state()

    @operation("GET", "realism")
    def realism_state(self) -> dict[str, Any]:
        """The realism settings in force and how often each behaviour struck (``"<kind> <where>"``)."""
        return self.realism.state()

    @operation("GET", "events")
    def event_stats(self) -> dict[str, int]:
        """What became of the ECS and Batch events: ``matched`` (by some enabled rule), ``lost``
        (``event_loss``), ``pending`` (not delivered yet; ``held`` of them for reordering), ``sent``
        (messages put into queues), ``refused`` (by a queue's policy, or the queue is gone)."""
        return self.eventbridge.stats()

    @operation("GET", "calls")
    def calls(self) -> dict[str, int]:
        """Requests received, keyed ``service:Operation`` (``ecs:RunTask``, ``logs:GetLogEvents``)."""
        return self.counter.snapshot()

    @operation("POST", "reset-calls")
    def reset_calls(self) -> None:
        """Start counting requests from zero."""
        self.counter.reset()

    @operation("POST", "reset")
    def reset(self) -> None:
        """Forget everything: moto's backends, shim state, planned faults, call counts and what the
        realism policy drew (its settings stay)."""
        with MOTO_LOCK:
            reset_moto()
            self.reset_state()

    def reset_state(self) -> None:
        """Forget what the sandbox holds beside moto (after moto's own reset)."""
        self.ecs.reset()
        self.batch.reset()
        self.eventbridge.reset()
        self.faults.clear()
        self.counter.reset()
        self.realism.reset()


#: The control API: every ``@operation`` of ``Sandbox``, by path.
OPERATIONS = operations_of(Sandbox)


class SandboxApp:
    """WSGI application serving moto with the sandbox in front of it.

    Every AWS request is executed under ``MOTO_LOCK`` (moto's backends are not thread-safe),
    including reading moto's response body, which Flask may produce lazily; the waits the
    planned faults and the realism policy ask for happen outside it, and so do the waits of an
    SQS long poll, which is a series of short polls under the lock (``sqs.py``). Requests under
    ``/_sandbox`` are the control API; anything else moto understands (``/moto-api/...``)
    passes through.
    """

    def __init__(self, sandbox: Sandbox, *, sleep: Sleep | None = None) -> None:
        self._moto = DomainDispatcherApplication(create_backend_app)
        self.sandbox = sandbox
        # Latency and held answers wait on this, so that stopping the server ends every wait.
        self._closing = threading.Event()
        self._sleep: Sleep = sleep if sleep is not None else self._closing.wait

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            response = serve_control(self.sandbox, OPERATIONS, environ)
        else:
            response = self._serve_aws(environ)
        # The body may have been rewritten, so moto's length no longer holds.
        headers = [(k, v) for k, v in response.headers if k.lower() not in ("content-length", "transfer-encoding")]
        headers.append(("Content-Length", str(len(response.body))))
        start_response(_status_line(response.status), headers)
        return [response.body]

    def _serve_aws(self, environ: dict[str, Any]) -> RawResponse:
        body = read_body(environ)
        request: AwsRequest | None = None
        try:
            with MOTO_LOCK:
                # Under the lock too: finding the account may create moto's IAM backend.
                request = parse_request(environ, body)
                if request is None:
                    passed = self._forward(environ, body)
                    if environ.get("PATH_INFO") == "/moto-api/reset" and passed.status == 200:
                        # moto's own reset must not leave tokens pointing at vanished tasks.
                        self.sandbox.reset_state()
                    return passed
            self.sandbox.counter.add(request.key)
            decision = self._decide(request)
            # Every wait happens outside the lock: a slow call must not hold up the others.
            if decision.delay > 0:
                self._sleep(decision.delay)
            if decision.reset:
                _drop_connection(environ)
            response: RawResponse | None = None
            if decision.execute and request.service == "sqs":
                # Outside the lock: a long poll waits between its attempts (sqs.py).
                response = self.sandbox.sqs.handle(request, self._locked_forward(environ, body), self._closing)
            elif decision.execute:
                with MOTO_LOCK:
                    response = self._serve_api(request, environ, body)
            if decision.hold > 0:
                self._sleep(decision.hold)
            if decision.error is not None:
                error = decision.error
                return error_response(request.protocol, error.code, error.message, status=error.status)
            assert response is not None  # a decision not to execute always carries an error
            return response
        except PlannedConnectionReset:
            raise
        except Exception as exc:  # a moto crash becomes an AWS-shaped 500, not an HTML page
            log.exception("sandbox: %s failed", request.key if request else environ.get("PATH_INFO"))
            protocol = request.protocol if request else "json"
            code = (
                "ServerException" if request is not None and request.service in ("ecs", "batch") else "InternalFailure"
            )
            return error_response(protocol, code, f"sandbox: {type(exc).__name__}: {exc}", status=500)

    def _decide(self, request: AwsRequest) -> Decision:
        """A planned error first (tests want exactly what they asked for), else the realism policy."""
        planned = self.sandbox.faults.take_error(request.service, request.operation)
        if planned is not None:
            return planned.decision()
        realism = self.sandbox.realism
        if not realism.settings.active:
            return Decision()
        try:
            params = request.json() if request.protocol in ("json", "rest-json") else {}
        except ValueError:
            params = {}
        return realism.decide(Call.of(request.service, request.operation, request.account_id, request.region, params))

    def _serve_api(self, request: AwsRequest, environ: dict[str, Any], body: bytes) -> RawResponse:
        def forward(new_body: bytes | None = None) -> RawResponse:
            return self._forward(environ, body if new_body is None else new_body)

        if request.service == "ecs":
            return self.sandbox.ecs.handle(request, forward)
        if request.service == "batch":
            return self.sandbox.batch.handle(request, forward)
        return forward()

    def _locked_forward(self, environ: dict[str, Any], body: bytes) -> Callable[[bytes | None], RawResponse]:
        def forward(new_body: bytes | None = None) -> RawResponse:
            with MOTO_LOCK:
                return self._forward(environ, body if new_body is None else new_body)

        return forward

    def close(self) -> None:
        """End every latency and held-answer wait (the server is stopping)."""
        self._closing.set()

    def open(self) -> None:
        """Let waits run again (the server is starting)."""
        self._closing.clear()

    def _forward(self, environ: dict[str, Any], body: bytes) -> RawResponse:
        """Run the request through moto and buffer its whole response. Caller holds the lock."""
        environ = dict(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        captured: dict[str, Any] = {}
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            captured["status"] = status
            captured["headers"] = list(headers)
            return chunks.append

        result = self._moto(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return RawResponse(int(str(captured["status"]).split(" ", 1)[0]), captured["headers"], b"".join(chunks))


def _drop_connection(environ: dict[str, Any]) -> None:
    """Close the client's connection without an answer, with a TCP reset where the socket allows."""
    sock = environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        # Linger 0: closing sends RST instead of FIN, as a connection reset by a load balancer.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raise PlannedConnectionReset("sandbox: connection reset (realism fault)")
