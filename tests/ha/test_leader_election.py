"""Leader election with two real `aws-reconciler run` processes on PostgreSQL.

Exactly one replica acts; when it is killed (-9) under load, or its database connection is cut,
the standby takes over, and across the failover no task is launched twice and none is lost.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.backends.tags import ID_TAG
from aws_reconciler.config import load_settings
from aws_reconciler.model import Backend, TiKey
from aws_reconciler.store import NewTask, TaskStore, create_store_engine, database_now, migrate
from aws_reconciler.store.tables import lease
from aws_reconciler_sandbox import SandboxServer, bootstrap
from support.tcpproxy import TcpProxy

REGION = "us-east-1"
# Short, controller-runtime-shaped timings so failover happens within a test's patience.
LEASE = {"LEASE_DURATION": "3", "RENEW_DEADLINE": "2", "RETRY_PERIOD": "0.5"}


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.1, accept_zero: bool = False
) -> Any:
    """Poll ``condition`` until it returns something truthy (or any non-None value with
    ``accept_zero``), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or (accept_zero and value is not None):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """One `aws-reconciler run` process and its metrics endpoint."""

    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def metric(self, name: str, labels: str = "") -> float | None:
        """One sample of this replica's /metrics; ``None`` when the endpoint did not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
        total = 0.0
        for match in pattern.finditer(text):
            if labels in (match.group(1) or ""):
                total += float(match.group(2))
        return total

    def is_leader(self) -> bool:
        return self.metric("aws_reconciler_leader") == 1.0

    def is_standby(self) -> bool:
        # An unanswered scrape proves nothing: only an explicit 0 counts.
        return self.metric("aws_reconciler_leader") == 0.0

    def run_tasks(self) -> float:
        """RunTask calls this replica made (waits for an answer: a missed scrape is not zero)."""
        value = wait_for(
            lambda: self.metric("aws_reconciler_aws_requests_total", 'operation="RunTask"'),
            timeout=30,
            what=f"{self.name} metrics",
            accept_zero=True,
        )
        return float(value)


@dataclass
class World:
    """Starts replicas against one sandbox and one store."""

    start: Callable[..., Replica]
    aws_env: dict[str, str]


@pytest.fixture
def world(sandbox: SandboxServer, pg_schema_url: str, tmp_path: Path) -> Iterator[World]:
    """Start replicas on demand (optionally through a cuttable proxy); kill them all afterwards."""
    sandbox.reset()
    aws_env = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)
    engine = create_store_engine(pg_schema_url)
    migrate(engine)  # as the chart's migration job does before replicas start
    engine.dispose()
    replicas: list[Replica] = []

    def start(
        name: str, *, store_url: str = pg_schema_url, metrics: bool = True, lease: dict[str, str] = LEASE
    ) -> Replica:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            **aws_env,
            "AIRFLOW_CONFIG": str(tmp_path / "absent-airflow.cfg"),
            "AIRFLOW__AWS_RECONCILER__STORE_URL": store_url,
            "AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS": f"127.0.0.1:{port}" if metrics else "",
            "AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL": "0.5",
            "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
            **{f"AIRFLOW__AWS_RECONCILER__{k}": v for k, v in lease.items()},
        }
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "aws_reconciler.cli", "run"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        replica = Replica(name, process, port, log)
        replicas.append(replica)
        if not metrics:
            return replica
        wait_for(
            lambda: replica.metric("aws_reconciler_build_info") == 1.0 or replica.process.poll() is not None,
            timeout=30,
            what=f"{name} metrics",
        )
        assert replica.process.poll() is None, f"{name} exited: {log.read_text()[-2000:]}"
        return replica

    try:
        yield World(start, aws_env)
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                os.killpg(replica.process.pid, signal.SIGKILL)
                replica.process.wait(timeout=10)


def queue_rows(store_url: str, aws_env: dict[str, str], n: int) -> list[str]:
    """Insert ``n`` pending rows the way the executor does, with the sandbox's ECS settings."""
    ecs_env = {k: v for k, v in aws_env.items() if k.startswith("AIRFLOW__AWS_RECONCILER_ECS__")}
    settings = load_settings(
        environ={
            **ecs_env,
            "AIRFLOW__AWS_RECONCILER__STORE_URL": store_url,
            "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
        },
        cfg_path=Path("/nonexistent"),
    )
    engine = create_store_engine(store_url)
    migrate(engine)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rows = []
    for i, record_id in enumerate(ids):
        key = TiKey("ha", "t", "run", i, 1)
        spec = build_run_task_request(
            ecs=settings.ecs, deployment="airflow", record_id=record_id, key=key, command=["true"]
        )
        rows.append(NewTask(record_id, Backend.ECS, "1", key, "default", "airflow", spec))
    TaskStore(engine).add(rows)
    engine.dispose()
    return ids


def launched_exactly_once(sandbox: SandboxServer, ids: list[str], store_url: str) -> bool:
    """Every row has one ECS task, and its record points at that task."""
    by_id: dict[str, list[str]] = {}
    for task in sandbox.tasks(cluster="airflow"):
        record_id = task["tags"].get(ID_TAG)
        if record_id:
            by_id.setdefault(record_id, []).append(task["arn"])
    if any(len(by_id.get(i, [])) != 1 for i in ids):
        return False
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            rows: dict[str, str | None] = dict(
                conn.execute(sa.text("SELECT id, external_id FROM aws_reconciler_task")).all()
            )
    finally:
        engine.dispose()
    return all(rows.get(i) == by_id[i][0] for i in ids)


def lease_row(store_url: str) -> Any:
    """The reconciler lease as stored (holder, acquired_at, renewed_at, expires_at), or None."""
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(lease).where(lease.c.name == "reconciler-airflow")).mappings().first()
    finally:
        engine.dispose()


def database_time(store_url: str) -> datetime:
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            return database_now(conn)
    finally:
        engine.dispose()


def holder_pid(holder: str) -> int:
    """The pid in a lease holder's identity (``<host>-<pid>-<random>``)."""
    return int(holder.rsplit("-", 2)[-2])


def duplicates(sandbox: SandboxServer) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in sandbox.tasks(cluster="airflow"):
        record_id = task["tags"].get(ID_TAG)
        if record_id:
            counts[record_id] = counts.get(record_id, 0) + 1
    return {k: v for k, v in counts.items() if v > 1}


def test_one_active_replica_and_failover_after_kill_9_under_load(
    world: World, sandbox: SandboxServer, pg_schema_url: str
) -> None:
    a = world.start("a")
    wait_for(a.is_leader, timeout=15, what="the first replica to lead")
    b = world.start("b")
    # b is a standby: it serves metrics, never leads while a renews.
    wait_for(lambda: b.metric("aws_reconciler_reconcile_total") == 0 and b.is_standby(), timeout=15, what="b standby")

    ids = queue_rows(pg_schema_url, world.aws_env, 300)
    # Kill the leader in the middle of the burst (Fargate launches are rate limited to 20/s).
    wait_for(lambda: len(sandbox.tasks(cluster="airflow")) >= 60, timeout=60, what="launches to start")
    os.killpg(a.process.pid, signal.SIGKILL)
    a.process.wait(timeout=10)
    last_renewal = lease_row(pg_schema_url)

    wait_for(b.is_leader, timeout=15, what="the standby to take over")
    taken = lease_row(pg_schema_url)
    assert holder_pid(taken["holder"]) == b.process.pid
    # The stated takeover bound, in the database's time: not before the dead leader's lease
    # expired, and within one retry_period after (plus the standby's own processing).
    waited = (taken["acquired_at"] - last_renewal["renewed_at"]).total_seconds()
    lease_duration, retry_period = float(LEASE["LEASE_DURATION"]), float(LEASE["RETRY_PERIOD"])
    assert lease_duration <= waited <= lease_duration + retry_period + 0.5, waited
    wait_for(lambda: launched_exactly_once(sandbox, ids, pg_schema_url), timeout=90, what="every row launched once")
    assert duplicates(sandbox) == {}


def test_sigterm_releases_the_lease_and_the_standby_takes_over_at_once(
    world: World, sandbox: SandboxServer, pg_schema_url: str
) -> None:
    """SIGTERM (a rolling update): the leader finishes its in-flight calls, releases the lease and
    says so; the standby leads long before the lease would have expired, and no row is launched
    twice across the handover."""
    lease = {"LEASE_DURATION": "10", "RENEW_DEADLINE": "6", "RETRY_PERIOD": "0.5"}
    a = world.start("a", lease=lease)
    wait_for(a.is_leader, timeout=15, what="the first replica to lead")
    b = world.start("b", lease=lease)
    wait_for(b.is_standby, timeout=15, what="b standby")
    ids = queue_rows(pg_schema_url, world.aws_env, 100)
    wait_for(lambda: len(sandbox.tasks(cluster="airflow")) >= 20, timeout=60, what="launches to start")

    signalled_at = database_time(pg_schema_url)
    a.process.send_signal(signal.SIGTERM)
    assert a.process.wait(timeout=30) == 0
    assert "released the lease" in a.log.read_text()
    wait_for(b.is_leader, timeout=15, what="the standby to take over")
    taken = lease_row(pg_schema_url)
    assert holder_pid(taken["holder"]) == b.process.pid
    # a renewed at most one retry_period before the signal: its lease ran until at least then.
    assert (taken["acquired_at"] - signalled_at).total_seconds() < float(lease["LEASE_DURATION"]) - 0.5
    wait_for(lambda: launched_exactly_once(sandbox, ids, pg_schema_url), timeout=90, what="every row launched once")
    assert duplicates(sandbox) == {}


def test_replicas_without_a_metrics_address_share_a_host(world: World, pg_schema_url: str) -> None:
    """An empty metrics_address disables the metrics server, as documented: two replicas on one
    host run side by side (the default port was bound by both, and the second one died)."""
    replicas = [world.start(name, metrics=False) for name in ("a", "b")]
    for replica in replicas:
        wait_for(
            lambda r=replica: "metrics_address is empty" in r.log.read_text() or r.process.poll() is not None,  # type: ignore[misc]
            timeout=30,
            what=f"{replica.name} to start",
        )
    wait_for(lambda: lease_row(pg_schema_url) is not None, timeout=30, what="one replica to lead")
    holder = holder_pid(lease_row(pg_schema_url)["holder"])
    assert holder in {r.process.pid for r in replicas}
    for replica in replicas:
        assert replica.process.poll() is None, f"{replica.name} exited: {replica.log.read_text()[-2000:]}"


def test_a_leader_cut_off_from_the_database_stops_acting(
    world: World, sandbox: SandboxServer, pg_schema_url: str
) -> None:
    url = sa.engine.make_url(pg_schema_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        a = world.start("a", store_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
        wait_for(a.is_leader, timeout=15, what="the proxied replica to lead")
        b = world.start("b")
        ids = queue_rows(pg_schema_url, world.aws_env, 300)
        wait_for(lambda: len(sandbox.tasks(cluster="airflow")) >= 60, timeout=60, what="launches to start")

        proxy.cut()
        # Fencing: without a renewal for renew_deadline, the ex-leader stops acting by itself.
        wait_for(a.is_standby, timeout=20, what="the cut-off leader to step down")
        fenced_run_tasks = a.run_tasks()
        wait_for(b.is_leader, timeout=15, what="the standby to take over")
        wait_for(lambda: launched_exactly_once(sandbox, ids, pg_schema_url), timeout=90, what="every row launched once")
        assert a.process.poll() is None, "database trouble must not crash the reconciler"
        assert a.run_tasks() == fenced_run_tasks, "the fenced ex-leader launched after losing the lease"
        assert duplicates(sandbox) == {}
        ready = urllib.request.Request(f"http://127.0.0.1:{a.metrics_port}/readyz")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(ready, timeout=2)
        assert info.value.code == 503
    finally:
        proxy.close()
