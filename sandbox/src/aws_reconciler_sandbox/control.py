"""The sandbox control API: one interface, reachable in-process and over HTTP under ``/_sandbox``.

Tests in the pytest process call the methods of ``SandboxServer`` directly. A sandbox running in
another process (``aws-reconciler sandbox``) is driven with ``SandboxControlClient``, which has the
same methods and talks to these routes (JSON in, JSON out; arguments use the Python names):

    GET  /_sandbox/health                      -> {"status": "ok"}
    POST /_sandbox/fail-run-task   {reason?, times?}
    POST /_sandbox/inject-error    {operation, code, message, status?, times?, phantom?}
    GET  /_sandbox/faults                      -> planned faults not yet consumed
    POST /_sandbox/clear-faults
    POST /_sandbox/task-state      {task_arn, last_status, stop_code?, stopped_reason?,
                                    exit_code?, container_reason?, empty_containers?} -> task
    GET  /_sandbox/tasks[?cluster=NAME]        -> [task, ...]
    POST /_sandbox/fail-next-start {reason?, times?}   (task runner only)
    GET  /_sandbox/processes                   -> {task ARN or job id: pid, ...} (task runner only)
    POST /_sandbox/job-state       {job_id, status, status_reason?, exit_code?,
                                    container_reason?} -> job (Batch)
    GET  /_sandbox/jobs[?queue=NAME]           -> [job, ...] (Batch)
    POST /_sandbox/hold-runnable   {times?}    (task runner only; Batch)
    GET  /_sandbox/realism                     -> {"settings": {...}, "injected": {...}}
    POST /_sandbox/configure-realism {profile?, <setting>?...} -> the same
    GET  /_sandbox/calls                       -> {"ecs:RunTask": 3, ...}
    POST /_sandbox/reset-calls
    POST /_sandbox/reset

Errors: 400 ``{"error": ...}`` for bad arguments, 404 for an unknown task or route, 405 for a wrong
method, 409 for a request the sandbox's configuration cannot serve (``fail-next-start`` or
``hold-runnable`` without the task runner).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

from .awsproto import RawResponse, read_body

__all__ = ["CONTROL_PREFIX", "SandboxControl", "SandboxControlClient", "SandboxControlError", "handle_control"]

CONTROL_PREFIX = "/_sandbox"


class SandboxControl(Protocol):
    """What can be done to a running sandbox; implemented in-process and over HTTP."""

    def fail_run_task(self, *, reason: str = "RESOURCE:MEMORY", times: int | None = 1) -> None: ...

    def inject_error(
        self,
        *,
        operation: str,
        code: str,
        message: str,
        status: int = 400,
        times: int | None = 1,
        phantom: bool = False,
    ) -> None: ...

    def clear_faults(self) -> None: ...

    def pending_faults(self) -> dict[str, Any]: ...

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
    ) -> dict[str, Any]: ...

    def tasks(self, *, cluster: str | None = None) -> list[dict[str, Any]]: ...

    def fail_next_start(self, *, reason: str = ..., times: int | None = 1) -> None: ...

    def task_processes(self) -> dict[str, int]: ...

    def set_job_state(
        self,
        *,
        job_id: str,
        status: str,
        status_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
    ) -> dict[str, Any]: ...

    def jobs(self, *, queue: str | None = None) -> list[dict[str, Any]]: ...

    def hold_runnable(self, *, times: int | None = 1) -> None: ...

    def configure_realism(self, *, profile: str | None = None, **changes: Any) -> dict[str, Any]: ...

    def realism_state(self) -> dict[str, Any]: ...

    def calls(self) -> dict[str, int]: ...

    def reset_calls(self) -> None: ...

    def reset(self) -> None: ...


def _json(status: int, payload: Any) -> RawResponse:
    return RawResponse(status, [("Content-Type", "application/json")], json.dumps(payload).encode())


# route -> (HTTP method, handler(control, args) -> JSON-able result)
_Route = tuple[str, Callable[[SandboxControl, dict[str, Any]], Any]]
_ROUTES: dict[str, _Route] = {
    "health": ("GET", lambda c, a: {"status": "ok"}),
    "fail-run-task": ("POST", lambda c, a: c.fail_run_task(**a)),
    "inject-error": ("POST", lambda c, a: c.inject_error(**a)),
    "faults": ("GET", lambda c, a: c.pending_faults()),
    "clear-faults": ("POST", lambda c, a: c.clear_faults()),
    "task-state": ("POST", lambda c, a: c.set_task_state(**a)),
    "tasks": ("GET", lambda c, a: c.tasks(**a)),
    "fail-next-start": ("POST", lambda c, a: c.fail_next_start(**a)),
    "processes": ("GET", lambda c, a: c.task_processes()),
    "job-state": ("POST", lambda c, a: c.set_job_state(**a)),
    "jobs": ("GET", lambda c, a: c.jobs(**a)),
    "hold-runnable": ("POST", lambda c, a: c.hold_runnable(**a)),
    "realism": ("GET", lambda c, a: c.realism_state()),
    "configure-realism": ("POST", lambda c, a: c.configure_realism(**a)),
    "calls": ("GET", lambda c, a: c.calls()),
    "reset-calls": ("POST", lambda c, a: c.reset_calls()),
    "reset": ("POST", lambda c, a: c.reset()),
}


def handle_control(control: SandboxControl, environ: dict[str, Any]) -> RawResponse:
    """Serve one control request."""
    name = environ.get("PATH_INFO", "")[len(CONTROL_PREFIX) :].strip("/")
    route = _ROUTES.get(name)
    if route is None:
        return _json(404, {"error": f"unknown control endpoint {name!r}", "endpoints": sorted(_ROUTES)})
    method, handler = route
    if environ.get("REQUEST_METHOD", "GET") != method:
        return _json(405, {"error": f"{CONTROL_PREFIX}/{name} takes {method}"})
    try:
        if method == "GET":
            args: Any = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        else:
            body = read_body(environ)
            args = json.loads(body) if body.strip() else {}
        if not isinstance(args, dict):
            raise ValueError("the request body must be a JSON object")
        result = handler(control, args)
    except KeyError as exc:
        return _json(404, {"error": str(exc.args[0]) if exc.args else "not found"})
    except (TypeError, ValueError) as exc:  # bad or missing arguments, unknown status names
        return _json(400, {"error": str(exc)})
    except RuntimeError as exc:  # e.g. fail-next-start without a task runner
        return _json(409, {"error": str(exc)})
    return _json(200, {"result": result})


class SandboxControlError(RuntimeError):
    """The control API answered with an error."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class SandboxControlClient:
    """Drives a sandbox over HTTP; the same methods as ``SandboxServer``.

    ``endpoint_url`` is the sandbox's endpoint (what ``AWS_ENDPOINT_URL`` is set to).
    """

    def __init__(self, endpoint_url: str, *, timeout: float = 30.0) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.timeout = timeout
        # The sandbox is local: never send control calls through an HTTP proxy from the env.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, name: str, args: dict[str, Any] | None = None) -> Any:
        url = f"{self.endpoint_url}{CONTROL_PREFIX}/{name}"
        data: bytes | None = None
        if method == "GET":
            query = {k: v for k, v in (args or {}).items() if v is not None}
            if query:
                url = f"{url}?{urlencode(query)}"
        else:
            data = json.dumps(args or {}).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())["result"]
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise SandboxControlError(exc.code, str(message)) from None

    def health(self) -> bool:
        """True when the sandbox answers."""
        try:
            return bool(self._call("GET", "health"))
        except (OSError, SandboxControlError):
            return False

    def fail_run_task(self, *, reason: str = "RESOURCE:MEMORY", times: int | None = 1) -> None:
        """See ``SandboxApp.fail_run_task``."""
        self._call("POST", "fail-run-task", {"reason": reason, "times": times})

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
        """See ``SandboxApp.inject_error``."""
        self._call(
            "POST",
            "inject-error",
            {
                "operation": operation,
                "code": code,
                "message": message,
                "status": status,
                "times": times,
                "phantom": phantom,
            },
        )

    def clear_faults(self) -> None:
        """See ``SandboxApp.clear_faults``."""
        self._call("POST", "clear-faults")

    def pending_faults(self) -> dict[str, Any]:
        """See ``SandboxApp.pending_faults``."""
        return dict(self._call("GET", "faults"))

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
        """See ``EcsShim.set_task_state``."""
        return dict(
            self._call(
                "POST",
                "task-state",
                {
                    "task_arn": task_arn,
                    "last_status": last_status,
                    "stop_code": stop_code,
                    "stopped_reason": stopped_reason,
                    "exit_code": exit_code,
                    "container_reason": container_reason,
                    "empty_containers": empty_containers,
                },
            )
        )

    def tasks(self, *, cluster: str | None = None) -> list[dict[str, Any]]:
        """See ``SandboxApp.tasks``."""
        return list(self._call("GET", "tasks", {"cluster": cluster}))

    def fail_next_start(self, *, reason: str | None = None, times: int | None = 1) -> None:
        """See ``SandboxServer.fail_next_start`` (the sandbox's default reason when ``reason`` is None)."""
        args: dict[str, Any] = {"times": times}
        if reason is not None:
            args["reason"] = reason
        self._call("POST", "fail-next-start", args)

    def task_processes(self) -> dict[str, int]:
        """See ``SandboxServer.task_processes``."""
        return {str(k): int(v) for k, v in self._call("GET", "processes").items()}

    def set_job_state(
        self,
        *,
        job_id: str,
        status: str,
        status_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
    ) -> dict[str, Any]:
        """See ``SandboxServer.set_job_state``."""
        return dict(
            self._call(
                "POST",
                "job-state",
                {
                    "job_id": job_id,
                    "status": status,
                    "status_reason": status_reason,
                    "exit_code": exit_code,
                    "container_reason": container_reason,
                },
            )
        )

    def jobs(self, *, queue: str | None = None) -> list[dict[str, Any]]:
        """See ``SandboxServer.jobs``."""
        return list(self._call("GET", "jobs", {"queue": queue}))

    def hold_runnable(self, *, times: int | None = 1) -> None:
        """See ``SandboxServer.hold_runnable``."""
        self._call("POST", "hold-runnable", {"times": times})

    def configure_realism(self, *, profile: str | None = None, **changes: Any) -> dict[str, Any]:
        """See ``SandboxApp.configure_realism``."""
        return dict(self._call("POST", "configure-realism", {"profile": profile, **changes}))

    def realism_state(self) -> dict[str, Any]:
        """See ``SandboxApp.realism_state``."""
        return dict(self._call("GET", "realism"))

    def calls(self) -> dict[str, int]:
        """See ``SandboxApp.calls``."""
        return dict(self._call("GET", "calls"))

    def reset_calls(self) -> None:
        """See ``SandboxApp.reset_calls``."""
        self._call("POST", "reset-calls")

    def reset(self) -> None:
        """See ``SandboxApp.reset``."""
        self._call("POST", "reset")
