"""The sandbox control API, declared once: the ``@operation`` methods of ``app.Sandbox``.

A method marked ``@operation("POST", "inject-error")`` is the declaration of that operation: its
name, HTTP method, path under ``/_sandbox/`` and, from its signature, its arguments (keyword
only, the Python names). From that one declaration:

- in-process callers (the tests) call the method on ``SandboxServer``, which is a ``Sandbox``;
- ``serve_control`` routes ``/_sandbox/<path>`` to it (GET takes the arguments as query
  parameters, POST as a JSON object; the answer is ``{"result": ...}``);
- ``SandboxControlClient`` offers every operation as a method of the same name and arguments,
  for a sandbox in another process (``aws-reconciler sandbox``).

``docs/sandbox.md`` lists the operations. Errors: 400 ``{"error": ...}`` for bad arguments, 404
for an unknown task, job or route, 405 for a wrong method, 409 for a request the sandbox's
configuration cannot serve (``fail-next-start`` or ``hold-runnable`` without the task runner).
"""

from __future__ import annotations

import functools
import inspect
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode

from .awsproto import RawResponse, read_body

__all__ = [
    "CONTROL_PREFIX",
    "Operation",
    "SandboxControlClient",
    "SandboxControlError",
    "operation",
    "operations_of",
    "serve_control",
]

CONTROL_PREFIX = "/_sandbox"
_MARK = "__sandbox_operation__"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    """One control operation: the method ``name``, served as ``http_method /_sandbox/path``."""

    name: str
    http_method: str
    path: str
    signature: inspect.Signature  # without ``self``
    doc: str


def operation(http_method: str, path: str) -> Callable[[F], F]:
    """Declare the decorated method a control operation served as ``http_method /_sandbox/path``."""
    if http_method not in ("GET", "POST"):
        raise ValueError(f"control operation {path}: method must be GET or POST")

    def mark(method: F) -> F:
        setattr(method, _MARK, (http_method, path))
        return method

    return mark


def operations_of(cls: type) -> dict[str, Operation]:
    """Every operation ``cls`` declares, by path."""
    found: dict[str, Operation] = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        mark = getattr(member, _MARK, None)
        if mark is None:
            continue
        http_method, path = mark
        signature = inspect.signature(member)
        params = list(signature.parameters.values())[1:]  # without self
        if any(p.kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD) for p in params):
            raise TypeError(f"control operation {name}: arguments must be keyword-only")
        if path in found:
            raise TypeError(f"control operations {found[path].name} and {name} share the path {path!r}")
        found[path] = Operation(
            name, http_method, path, signature.replace(parameters=params), inspect.getdoc(member) or ""
        )
    return found


def _json(status: int, payload: Any) -> RawResponse:
    return RawResponse(status, [("Content-Type", "application/json")], json.dumps(payload).encode())


def serve_control(target: object, operations: Mapping[str, Operation], environ: dict[str, Any]) -> RawResponse:
    """Serve one ``/_sandbox/...`` request by calling the operation's method on ``target``."""
    path = environ.get("PATH_INFO", "")[len(CONTROL_PREFIX) :].strip("/")
    op = operations.get(path)
    if op is None:
        return _json(404, {"error": f"unknown control endpoint {path!r}", "endpoints": sorted(operations)})
    if environ.get("REQUEST_METHOD", "GET") != op.http_method:
        return _json(405, {"error": f"{CONTROL_PREFIX}/{path} takes {op.http_method}"})
    try:
        if op.http_method == "GET":
            args: Any = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        else:
            body = read_body(environ)
            args = json.loads(body) if body.strip() else {}
        if not isinstance(args, dict):
            raise ValueError("the request body must be a JSON object")
        op.signature.bind(**args)  # a clear TypeError for unknown or missing arguments
        result = getattr(target, op.name)(**args)
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


@functools.cache
def _operations_by_name() -> dict[str, Operation]:
    from .app import OPERATIONS  # here: the client must not import moto until it is used

    return {op.name: op for op in OPERATIONS.values()}


class SandboxControlClient:
    """Drives a sandbox over HTTP: every control operation of ``Sandbox`` is a method of the same
    name and keyword arguments here (``client.inject_error(operation="RunTask", ...)``).

    ``endpoint_url`` is the sandbox's endpoint (what ``AWS_ENDPOINT_URL`` is set to). Arguments
    are checked against the declaration before anything is sent (``TypeError``); an error
    answer raises ``SandboxControlError``.
    """

    def __init__(self, endpoint_url: str, *, timeout: float = 30.0) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.timeout = timeout
        # The sandbox is local: never send control calls through an HTTP proxy from the env.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def health(self) -> bool:
        """True when the sandbox answers."""
        try:
            return bool(self._call("GET", "health", {}))
        except (OSError, SandboxControlError):
            return False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        op = _operations_by_name().get(name)
        if op is None:
            raise AttributeError(f"{type(self).__name__} has no control operation {name!r}")

        def call(*args: Any, **kwargs: Any) -> Any:
            bound = op.signature.bind(*args, **kwargs)
            sent: dict[str, Any] = {}
            for param, value in bound.arguments.items():
                if op.signature.parameters[param].kind is inspect.Parameter.VAR_KEYWORD:
                    sent.update(value)
                else:
                    sent[param] = value
            return self._call(op.http_method, op.path, sent)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = op.doc
        call.__signature__ = op.signature  # type: ignore[attr-defined]
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_operations_by_name()})

    def _call(self, method: str, path: str, args: dict[str, Any]) -> Any:
        url = f"{self.endpoint_url}{CONTROL_PREFIX}/{path}"
        data: bytes | None = None
        if method == "GET":
            query = {k: v for k, v in args.items() if v is not None}
            if query:
                url = f"{url}?{urlencode(query)}"
        else:
            data = json.dumps(args).encode()
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
