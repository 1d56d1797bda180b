"""Helpers of the observability tests: tools, waiting, PromQL names, a reconciler replica, Prometheus.

A *replica* here is what ``aws-reconciler run`` builds (leader election, one ECS engine, the
runner loop, the metrics server), wired in-process against the sandbox so a test can steer the
fake AWS, and with every part sharing one :class:`Metrics` registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from aws_reconciler.backends.client import aws_client_config
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.config import Settings
from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.metrics.server import MetricsServer
from aws_reconciler.model import Backend, TiKey
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.factory import build_backend, controller_settings
from aws_reconciler.reconciler.instrument import instrument_client
from aws_reconciler.reconciler.leader import LeaderElector
from aws_reconciler.reconciler.manager import Manager
from aws_reconciler.store import LeaseStore, NewTask, TaskStore, Waker, create_store_engine
from aws_reconciler_sandbox import SandboxServer

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "aws-reconciler-rules.yaml"
RULES_TEST = REPO / "deploy" / "prometheus" / "aws-reconciler-rules.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "aws-reconciler.json"
DASHBOARD_SCHEMA = REPO / "deploy" / "grafana" / "schema" / "dashboard.schema.json"
GENERATE_SCHEMA = REPO / "deploy" / "grafana" / "schema" / "generate.sh"

REQUIRE_PROMTOOL = "AWS_RECONCILER_REQUIRE_PROMTOOL"
DEPLOYMENT = "airflow"
# Lease timings short enough for a handover within a test's patience (as in tests/ha).
FAST = {
    "AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL": "0.2",
    "AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL": "5",
    "AIRFLOW__AWS_RECONCILER__LEASE_DURATION": "3",
    "AIRFLOW__AWS_RECONCILER__RENEW_DEADLINE": "2",
    "AIRFLOW__AWS_RECONCILER__RETRY_PERIOD": "0.5",
    "AIRFLOW__AWS_RECONCILER__BACKOFF_BASE": "0.2",
    "AIRFLOW__AWS_RECONCILER__BACKOFF_MAX": "2",
    # A running task's end noticed within a second, as the loop's other timings are compressed.
    "AIRFLOW__AWS_RECONCILER__RUNNING_DESCRIBE_INTERVAL": "1",
}


# ---- tools and waiting --------------------------------------------------------------------


def require_binary(name: str) -> str:
    """Path of ``name`` (promtool, prometheus). Missing: skip with the reason, or fail when CI
    demands it (``AWS_RECONCILER_REQUIRE_PROMTOOL=1``, set by ``.ci/run``)."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian package `prometheus`; .ci/run installs it)"
    if os.environ.get(REQUIRE_PROMTOOL) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_PROMTOOL}=1 requires it")
    pytest.skip(reason)


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for servers that cannot report a port-0 binding)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, *, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ---- metric names ---------------------------------------------------------------------------

# Functions and aggregations a query may call; anything else followed by "(" is a typo.
PROMQL_FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "avg",
        "avg_over_time",
        "bottomk",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count",
        "count_over_time",
        "count_values",
        "day_of_month",
        "day_of_week",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "group",
        "histogram_quantile",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max",
        "max_over_time",
        "min",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "present_over_time",
        "quantile",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev",
        "stddev_over_time",
        "stdvar",
        "stdvar_over_time",
        "sum",
        "sum_over_time",
        "time",
        "timestamp",
        "topk",
        "vector",
        "year",
    }
)
PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    }
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r"\d[\w.]*|[A-Za-z_:][A-Za-z0-9_:]*|\S")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed).

    Label matchers, ranges, strings and grouping clauses are removed first; what remains is
    numbers, operators, function calls and metric names. An unknown function raises.
    """
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("1", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    tokens = _TOKEN.findall(text)
    names: set[str] = set()
    for index, token in enumerate(tokens):
        if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token) or token.lower() in PROMQL_KEYWORDS:
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if following == "(":
            if token not in PROMQL_FUNCTIONS:
                raise ValueError(f"unknown PromQL function {token!r} in {expr!r}")
            continue
        names.add(token)
    return names


def exported_series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's exposition can contain (``_total``, ``_bucket``...)."""
    names: set[str] = set()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
    return names


def dashboard_targets(dashboard: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, rows' nested panels included."""
    stack = list(dashboard.get("panels") or [])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels") or [])
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield str(panel.get("title")), str(target["expr"])


# ---- workloads ------------------------------------------------------------------------------


def task_command(*lines: str, sleep: float = 0.0, exit_code: int = 0, token: str | None = None) -> list[str]:
    """A container command that prints ``lines``, sleeps, exits ``exit_code``; ``token`` rides in a
    workload-like JSON argument as Airflow's ``--json-string`` does (the script ignores it)."""
    script = (
        "import sys, time\n"
        f"for line in {list(lines)!r}:\n"
        "    print(line, flush=True)\n"
        f"time.sleep({sleep})\n"
        f"sys.exit({exit_code})\n"
    )
    command = ["python", "-c", script]
    if token is not None:
        command += ["--json-string", json.dumps({"token": token, "ti": {"dag_id": "observability"}})]
    return command


def add_rows(
    store: TaskStore,
    settings: Settings,
    commands: list[list[str]],
    *,
    dag_id: str = "observability",
    try_number: int = 1,
    task_definition: str | None = None,
) -> list[str]:
    """Insert pending rows the way the executor does (resolved RunTask request); returns their ids."""
    rows = []
    for index, command in enumerate(commands):
        record_id = str(uuid.uuid4())
        key = TiKey(dag_id, f"task_{index}_{record_id[:8]}", "manual__2030-01-01T00:00:00", -1, try_number)
        spec = build_run_task_request(
            ecs=settings.ecs, deployment=settings.core.deployment, record_id=record_id, key=key, command=command
        )
        if task_definition is not None:
            spec["taskDefinition"] = task_definition
        rows.append(
            NewTask(
                id=record_id,
                backend=Backend.ECS,
                owner="scheduler-1",
                key=key,
                queue="default",
                target=spec["cluster"],
                spec=spec,
            )
        )
    store.add(rows)
    return [r.id for r in rows]


# ---- a reconciler replica ---------------------------------------------------------------------


@dataclass
class Replica:
    """One reconciler process's parts, in this process: elector, engine, runner, metrics server."""

    name: str
    metrics: Metrics
    runner: Manager
    engine: Controller
    elector: LeaderElector
    server: MetricsServer
    _thread: threading.Thread | None = field(default=None, repr=False)
    _serving: bool = True
    exit_code: int | None = None

    @property
    def url(self) -> str:
        """Base URL of /metrics, /healthz, /readyz."""
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def target(self) -> str:
        """host:port as Prometheus scrapes it (its ``instance`` label)."""
        return f"127.0.0.1:{self.server.port}"

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of one endpoint."""
        return http_get(self.url + path)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample of this replica's registry (``None`` when absent)."""
        return self.metrics.registry.get_sample_value(name, labels)

    def start(self) -> Replica:
        """Run the loop (``aws-reconciler run``) in a thread."""

        def run() -> None:
            self.exit_code = self.runner.run()

        self._thread = threading.Thread(target=run, name=f"replica-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """SIGTERM: finish in-flight calls, release the lease; then stop serving (the process exits)."""
        if self._thread is not None:
            self.runner.request_stop()
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), f"replica {self.name} did not stop"
            self._thread = None
        if self._serving:
            self._serving = False
            self.server.stop()


def build_replica(name: str, *, settings: Settings, sandbox: SandboxServer, store_url: str) -> Replica:
    """A replica wired like ``build_manager`` wires one, with every part on one ``Metrics`` registry.

    The ECS client is the sandbox's, instrumented as the factory instruments its own; a throttled
    bucket pauses only briefly so tests need not wait AWS-sized pauses.
    """
    core = settings.core
    metrics = Metrics()
    client = sandbox.client("ecs", config=aws_client_config(max_pool_connections=core.launch_concurrency + 4))
    instrument_client(client, metrics)
    backend = build_backend(ECS, settings, client=client)
    backend.throttle_pause = 0.05
    db = create_store_engine(store_url)
    elector = LeaderElector(
        leases=LeaseStore(db),
        name=f"reconciler-{core.deployment}",
        holder=name,
        lease_duration=core.lease_duration,
        renew_deadline=core.renew_deadline,
        retry_period=core.retry_period,
    )
    engine = Controller(
        store=TaskStore(db),
        backend=backend,
        settings=controller_settings(settings),
        is_leader=elector.is_leader,
        metrics=metrics,
    )
    runner = Manager(
        engines=[engine],
        elector=elector,
        waker=Waker(db),
        interval=core.reconcile_interval,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
        metrics=metrics,
    )
    server = MetricsServer(
        registry=metrics.registry, liveness=runner.liveness, readiness=runner.readiness, host="127.0.0.1", port=0
    )
    server.start()
    return Replica(name=name, metrics=metrics, runner=runner, engine=engine, elector=elector, server=server)


# ---- a real Prometheus ----------------------------------------------------------------------


class Prometheus:
    """Debian's ``prometheus`` on 127.0.0.1 with a throwaway config and TSDB; stop() kills it."""

    def __init__(self, binary: str, workdir: Path, *, targets: list[str], rule_files: list[Path]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.rule_files = rule_files
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30) -> Prometheus:
        """Write the config, start, wait until /-/ready answers 200. Retries a port lost to a race."""
        config = self.workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in self.rule_files],
                    "scrape_configs": [
                        {"job_name": "aws-reconciler", "static_configs": [{"targets": self.targets}]},
                    ],
                },
                indent=2,
            )
        )
        for _attempt in range(3):
            self.port = free_port()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if http_get(f"{self.url}/-/ready", timeout=1)[0] == 200:
                        return self
                except OSError:
                    pass
                time.sleep(0.1)
            self.stop()
        raise AssertionError(f"prometheus did not become ready; its log:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        """Terminate (kill after 10 s) and reap."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def api(self, path: str, **params: Any) -> Any:
        """``data`` of a successful API answer; an error answer fails the test with Prometheus' words."""
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}")
        answer = json.loads(body)
        assert status == 200 and answer.get("status") == "success", f"{path} {params}: {status} {body[:500]}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector result of ``expr`` now."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def value(self, expr: str) -> float | None:
        """The single sample of ``expr`` now (``None`` when empty)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        """``{label value: sample}`` of ``expr`` now."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def range(self, expr: str, *, start: float, end: float, step: float = 1.0) -> dict[str, list[tuple[float, float]]]:
        """``{instance: [(time, value), ...]}`` of ``expr`` between ``start`` and ``end`` (Unix seconds)."""
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
        return {r["metric"].get("instance", ""): [(float(t), float(v)) for t, v in r["values"]] for r in data["result"]}
