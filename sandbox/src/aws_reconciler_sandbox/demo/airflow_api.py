"""A small client of Airflow 3's public REST API (``/api/v2``) and a deadline-based wait helper.

The stack runs the simple auth manager with ``simple_auth_manager_all_admins``: its middleware
signs every request as an admin, so no token is needed. Plain ``urllib`` keeps the client free
of extra dependencies and of any proxy configured in the environment.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Task-instance states after which nothing more happens to the TI (for this DAG run).
FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
FINISHED_RUN_STATES = frozenset({"success", "failed"})


class ApiError(RuntimeError):
    """The API answered with an HTTP error."""

    def __init__(self, status: int, method: str, path: str, detail: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {detail[:500]}")
        self.status = status


class WaitTimeout(TimeoutError):
    """A condition did not become true before its deadline."""


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns a truthy value (returned) or ``timeout`` seconds pass.

    Exceptions from ``condition`` count as "not yet" (a server still starting refuses
    connections); the last one is named in the timeout message. ``on_timeout`` adds context.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (OSError, ApiError, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.0f} s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {type(last_error).__name__}: {last_error})"
            if on_timeout is not None:
                message += f"\n{on_timeout()}"
            raise WaitTimeout(message)
        time.sleep(interval)


class AirflowApi:
    """The few REST calls the demo and the end-to-end tests need."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None, **query: Any
    ) -> Any:
        """One JSON call; ``query`` values that are lists repeat the parameter."""
        url = f"{self.base_url}{path}"
        params = {k: v for k, v in query.items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, method, path, exc.read().decode("utf-8", "replace")) from None
        return json.loads(payload) if payload else None

    def get(self, path: str, **query: Any) -> Any:
        """GET ``path``."""
        return self.request("GET", path, **query)

    # ---- health and DAGs --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/api/v2/monitor/health``: metadatabase, scheduler, dag_processor, triggerer."""
        return dict(self.get("/api/v2/monitor/health"))

    def component_healthy(self, component: str) -> bool:
        """Whether ``scheduler`` / ``dag_processor`` reports a recent heartbeat."""
        info = self.health().get(component) or {}
        return info.get("status") == "healthy"

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG, or None while the dag-processor has not stored it yet."""
        try:
            return dict(self.get(f"/api/v2/dags/{dag_id}"))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def import_errors(self) -> list[dict[str, Any]]:
        """DAG files that failed to parse."""
        return list(self.get("/api/v2/importErrors", limit=100)["import_errors"])

    def unpause(self, dag_id: str) -> None:
        """Let the scheduler create runs of the DAG."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, *, run_id: str | None = None, conf: dict[str, Any] | None = None) -> str:
        """Create a manual DAG run now; returns its run id."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id is not None:
            body["dag_run_id"] = run_id
        return str(self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])

    # ---- runs and task instances --------------------------------------------------------------

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """One DAG run."""
        return dict(self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones one per map index."""
        found: list[dict[str, Any]] = []
        run = urllib.parse.quote(run_id, safe="")
        while True:
            page = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances", limit=100, offset=len(found))
            found.extend(page["task_instances"])
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def event_logs(self, *, dag_id: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        """Airflow's audit/event log (``state mismatch``, ``stuck in queued reschedule`` ...)."""
        page = self.get("/api/v2/eventLogs", dag_id=dag_id, event=event, limit=100, order_by="-when")
        return list(page["event_logs"])

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> list[Any]:
        """The try's log as the UI's log view gets it (its ``content``: source details and lines)."""
        run = urllib.parse.quote(run_id, safe="")
        page = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/logs/{try_number}", map_index=map_index
        )
        return list(page["content"])

    # ---- connection tests (``[core] test_connection = Enabled``) --------------------------------

    def enqueue_connection_test(self, body: dict[str, Any]) -> str:
        """Ask Airflow to test a connection on an executor's worker; returns the polling token."""
        return str(self.request("POST", "/api/v2/connections/enqueue-test", body)["token"])

    def connection_test(self, token: str) -> dict[str, Any]:
        """The state (``pending`` ... ``success`` / ``failed``) and result message of a queued test."""
        return dict(
            self.request("GET", "/api/v2/connections/enqueue-test", headers={"Airflow-Connection-Test-Token": token})
        )

    def wait_run_finished(self, dag_id: str, run_id: str, *, timeout: float) -> dict[str, Any]:
        """Block until the DAG run succeeded or failed; returns the run."""

        def finished() -> dict[str, Any] | None:
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in FINISHED_RUN_STATES else None

        return wait_for(
            finished,
            timeout=timeout,
            interval=1.0,
            what=f"DAG run {dag_id}/{run_id} to finish",
            on_timeout=lambda: _states_line(self.task_instances(dag_id, run_id)),
        )


def count_states(tis: list[dict[str, Any]]) -> dict[str, int]:
    """Number of task instances per state (``none`` for TIs not scheduled yet)."""
    counts: dict[str, int] = {}
    for ti in tis:
        state = ti.get("state") or "none"
        counts[state] = counts.get(state, 0) + 1
    return dict(sorted(counts.items()))


def _states_line(tis: list[dict[str, Any]]) -> str:
    unfinished = [
        f"{ti['task_id']}[{ti['map_index']}]={ti.get('state')}"
        for ti in tis
        if ti.get("state") not in FINISHED_TI_STATES
    ]
    return f"task instance states: {count_states(tis)}; unfinished: {', '.join(unfinished) or 'none'}"
