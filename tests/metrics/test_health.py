"""``/healthz`` (liveness) and ``/readyz`` (readiness) over HTTP: status codes and JSON bodies for an
active leader, a standby, an unreachable store, failing AWS calls and a stalled loop.

Cycles are driven one at a time (``runner.cycle()``), as the loop would run them, so each state is
reached deterministically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from metrics_support import Replica, free_port

from aws_reconciler.store import create_store_engine, migrate
from aws_reconciler_sandbox import SandboxServer
from support.waiting import wait_for

if TYPE_CHECKING:
    from conftest import ReplicaFactory, SettingsFactory

PASSWORD = "s3cr3t-Health-Pa55word"


def _get(replica: Replica, path: str) -> tuple[int, dict[str, Any]]:
    status, body = replica.get(path)
    return status, json.loads(body)


def test_active_leader_is_alive_and_ready(
    settings_for: SettingsFactory, migrated_sqlite: str, replicas: ReplicaFactory
) -> None:
    a = replicas("a", settings=settings_for(migrated_sqlite), store_url=migrated_sqlite)
    assert _get(a, "/healthz") == (200, {"ok": True, "status": "starting"})

    assert a.elector.try_once()
    a.runner.cycle()
    status, body = _get(a, "/healthz")
    assert status == 200 and body["ok"] is True
    assert body["seconds_since_progress"] < body["stall_timeout"]
    assert _get(a, "/readyz") == (200, {"ok": True, "role": "active", "consecutive_failures": 0})
    assert a.get("/nope")[0] == 404


def test_standby_is_alive_and_ready(
    settings_for: SettingsFactory, migrated_sqlite: str, replicas: ReplicaFactory
) -> None:
    settings = settings_for(migrated_sqlite)
    a = replicas("a", settings=settings, store_url=migrated_sqlite)
    b = replicas("b", settings=settings, store_url=migrated_sqlite)
    assert a.elector.try_once()
    assert not b.elector.try_once()
    b.runner.cycle()
    assert _get(b, "/readyz") == (200, {"ok": True, "role": "standby", "consecutive_failures": 0})
    status, body = _get(b, "/healthz")
    assert (status, body["ok"]) == (200, True)
    assert b.sample("aws_reconciler_leader") == 0


def test_unreachable_store_makes_readyz_fail_naming_the_store_not_its_password(
    settings_for: SettingsFactory, replicas: ReplicaFactory
) -> None:
    """Nothing listens on the store's port: not ready (503, "store"), still alive (the loop runs)."""
    url = f"postgresql://airflow:{PASSWORD}@127.0.0.1:{free_port()}/airflow?connect_timeout=2"
    c = replicas("c", settings=settings_for(url), store_url=url)
    assert not c.elector.try_once()
    c.runner.cycle()
    status, raw = c.get("/readyz")
    body = json.loads(raw)
    assert status == 503
    assert body == {
        "ok": False,
        "role": "standby",
        "consecutive_failures": 0,
        "store": "lease store unreachable: OperationalError",
    }
    assert PASSWORD not in raw
    status, raw = c.get("/healthz")
    assert status == 200 and PASSWORD not in raw


def test_consecutive_aws_failures_make_readyz_fail_until_aws_recovers(
    sandbox: SandboxServer, settings_for: SettingsFactory, tmp_path: Path, replicas: ReplicaFactory
) -> None:
    """Expired credentials on every discovery: ready through two failed cycles, 503 from the third
    (``unready_after_failures``), ready again after the first good cycle, without a restart."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    migrate(create_store_engine(url))
    d = replicas("d", settings=settings_for(url, AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="0.001"), store_url=url)
    assert d.elector.try_once()
    sandbox.inject_error(
        operation="ecs:ListTasks", code="ExpiredTokenException", message="The security token expired", times=None
    )
    try:
        for failures in (1, 2):
            d.runner.cycle()
            assert _get(d, "/readyz") == (200, {"ok": True, "role": "active", "consecutive_failures": failures})
        d.runner.cycle()
        status, body = _get(d, "/readyz")
        assert status == 503
        assert body == {"ok": False, "role": "active", "consecutive_failures": 3, "last_error": "RetriableError"}
        assert _get(d, "/healthz")[0] == 200, "a failing loop is alive: restarting it would not help"
    finally:
        sandbox.clear_faults()
    d.runner.cycle()
    assert _get(d, "/readyz") == (200, {"ok": True, "role": "active", "consecutive_failures": 0})


def test_a_loop_that_stops_making_progress_fails_healthz(
    settings_for: SettingsFactory, migrated_sqlite: str, replicas: ReplicaFactory
) -> None:
    e = replicas("e", settings=settings_for(migrated_sqlite), store_url=migrated_sqlite)
    e.runner.stall_timeout = 0.5
    e.runner.cycle()
    assert _get(e, "/healthz")[0] == 200
    # Nothing runs the next cycle (a hung AWS call, a deadlock): liveness fails after stall_timeout.
    status = wait_for(lambda: _get(e, "/healthz")[0] == 503 and 503, timeout=10, what="/healthz to fail")
    body = _get(e, "/healthz")[1]
    assert status == 503 and body["ok"] is False and body["seconds_since_progress"] >= 0.5


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_endpoints_are_read_only_and_answer_in_json(method: str) -> None:
    from prometheus_client import CollectorRegistry

    from aws_reconciler.metrics.server import HealthStatus, MetricsServer

    server = MetricsServer(
        registry=CollectorRegistry(),
        liveness=lambda: HealthStatus(True),
        readiness=lambda: HealthStatus(True),
        host="127.0.0.1",
        port=0,
    )
    server.start()
    try:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request(method, "/metrics")
        answer = conn.getresponse()
        assert (answer.status, answer.getheader("Allow")) == (405, "GET, HEAD")
        assert answer.getheader("Content-Type") == "application/json"
        assert b"method not allowed" in answer.read()
        conn.request("HEAD", "/readyz")
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        assert int(head.getheader("Content-Length")) > 0
    finally:
        server.stop()
