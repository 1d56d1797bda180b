"""The reconciler's HTTP endpoints: ``/metrics``, ``/healthz`` (liveness), ``/readyz`` (readiness).

Bodies are short JSON documents that say *why*; they never contain settings, URLs or secrets.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthStatus:
    """The outcome of one health check."""

    ok: bool
    details: dict[str, Any] = field(default_factory=dict)


HealthCheck = Callable[[], HealthStatus]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            check = (self.server.liveness if path == "/healthz" else self.server.readiness)()
            body = json.dumps({"ok": check.ok, **check.details}, default=str).encode()
            self._send(200 if check.ok else 503, body, "application/json")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")

    def do_HEAD(self) -> None:
        # What GET would answer, without the body (load balancers and curl -I ask so).
        self._head_only = True
        try:
            self.do_GET()
        finally:
            self._head_only = False

    def _method_not_allowed(self) -> None:
        # The endpoints are read-only: a short JSON answer, not the standard library's HTML 501.
        self._send(405, b'{"error": "method not allowed; use GET"}', "application/json", allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    _head_only = False

    def _send(self, status: int, body: bytes, content_type: str, *, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if not self._head_only:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes hit these endpoints every few seconds: keep them out of the logs.
        log.debug(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    liveness: HealthCheck
    readiness: HealthCheck


class MetricsServer:
    """Serves the registry and the health checks in a background thread."""

    def __init__(
        self, *, registry: CollectorRegistry, liveness: HealthCheck, readiness: HealthCheck, host: str, port: int
    ) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.registry = registry
        self._server.liveness = liveness
        self._server.readiness = readiness
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve until :meth:`stop`."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
