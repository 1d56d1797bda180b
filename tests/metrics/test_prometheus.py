"""A real Prometheus scrapes two reconciler replicas every second while they reconcile tasks on the
sandbox; its HTTP API then shows the launches, the phases and the leader handover as they happened,
loads the shipped alert rules, and evaluates every dashboard query."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from metrics_support import (
    DASHBOARD,
    RULES,
    Prometheus,
    Replica,
    add_rows,
    build_replica,
    dashboard_targets,
    require_binary,
    task_command,
)

from aws_reconciler.model import Phase
from aws_reconciler.store import TaskStore, create_store_engine, migrate
from aws_reconciler_sandbox import SandboxServer
from aws_reconciler_sandbox.runner import RunnerOptions
from support.waiting import wait_for

if TYPE_CHECKING:
    from conftest import SettingsFactory

FIRST_BATCH = 4
SECOND_BATCH = 2
THROTTLES = 2


@dataclass
class Scrape:
    """What happened, and the Prometheus that watched it."""

    prometheus: Prometheus
    a: Replica
    b: Replica
    started: float
    handover: float
    ended: float


def _phase(store: TaskStore, record_id: str) -> Phase:
    record = store.get(record_id)
    assert record is not None
    return record.phase


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """This module's sandbox: tasks provision for 2 s so one-second scrapes surely see the phase."""
    server = SandboxServer(
        run_tasks=True,
        runner=RunnerOptions(provisioning_delay=2.0, pending_delay=0.5, poll_interval=0.05, shutdown_timeout=2),
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scrape(
    sandbox: SandboxServer, settings_for: SettingsFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scrape]:
    """Replica a leads and launches a first batch (RunTask throttled twice on the way), then stops;
    b takes over and launches a second batch. Prometheus scrapes both all along."""
    binary = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    store_url = f"sqlite:///{workdir / 'store.db'}"
    db = create_store_engine(store_url)
    migrate(db)
    store = TaskStore(db)
    settings = settings_for(store_url)
    a = build_replica("a", settings=settings, sandbox=sandbox, store_url=store_url)
    b = build_replica("b", settings=settings, sandbox=sandbox, store_url=store_url)
    prometheus = Prometheus(binary, workdir, targets=[a.target, b.target], rule_files=[RULES])
    try:
        a.start()
        wait_for(lambda: a.elector.is_leader(), timeout=20, what="a to lead")
        b.start()
        prometheus.start()
        started = time.time()
        wait_for(
            lambda: prometheus.by_label("aws_reconciler_leader", "instance") == {a.target: 1.0, b.target: 0.0},
            timeout=30,
            what="Prometheus to see a leading and b standing by",
        )

        sandbox.inject_error(
            operation="ecs:RunTask", code="ThrottlingException", message="Rate exceeded", times=THROTTLES
        )
        first = add_rows(store, settings, [task_command(f"batch 1 task {i}", sleep=4) for i in range(FIRST_BATCH)])
        wait_for(lambda: all(_phase(store, r) is Phase.SUCCEEDED for r in first), timeout=90, what="first batch done")
        # The last cycle's gauges reach Prometheus a scrape later; let a few scrapes see them.
        wait_for(
            lambda: (
                prometheus.value(f'max_over_time(aws_reconciler_tasks{{instance="{a.target}", phase="running"}}[3s])')
                == 0
            ),
            timeout=30,
            what="Prometheus to see no task running for 3 s",
        )

        handover = time.time()
        a.stop()  # SIGTERM: releases the lease, and its /metrics goes away with the process
        wait_for(
            lambda: prometheus.value(f'aws_reconciler_leader{{instance="{b.target}"}}') == 1,
            timeout=30,
            what="Prometheus to see b take over",
        )
        second = add_rows(store, settings, [task_command(f"batch 2 task {i}", sleep=2) for i in range(SECOND_BATCH)])
        wait_for(lambda: all(_phase(store, r) is Phase.SUCCEEDED for r in second), timeout=90, what="second batch done")
        wait_for(
            lambda: (
                prometheus.value(f'sum(aws_reconciler_launches_total{{instance="{b.target}", result="success"}})')
                == SECOND_BATCH
            ),
            timeout=30,
            what="Prometheus to see b's launches",
        )
        wait_for(
            lambda: (
                prometheus.value(f'max_over_time(aws_reconciler_tasks{{instance="{b.target}", phase="running"}}[3s])')
                == 0
            ),
            timeout=30,
            what="Prometheus to see b with no task running for 3 s",
        )
        yield Scrape(prometheus=prometheus, a=a, b=b, started=started, handover=handover, ended=time.time())
    finally:
        prometheus.stop()
        a.stop()
        b.stop()
        db.dispose()


def test_prometheus_scraped_both_replicas_every_second(scrape: Scrape) -> None:
    p = scrape.prometheus
    # a's target is down since it stopped; b's is up.
    assert p.by_label('up{job="aws-reconciler"}', "instance") == {scrape.a.target: 0.0, scrape.b.target: 1.0}
    samples = p.value(f'count_over_time(up{{instance="{scrape.b.target}"}}[10s])')
    assert samples is not None and samples >= 8, f"b scraped {samples} times in 10 s"


def test_launches_as_they_happened(scrape: Scrape) -> None:
    p = scrape.prometheus
    window = f"{int(scrape.ended - scrape.started) + 30}s"
    by_instance = p.by_label(
        f'max by (instance) (max_over_time(aws_reconciler_launches_total{{result="success"}}[{window}]))', "instance"
    )
    assert by_instance == {scrape.a.target: FIRST_BATCH, scrape.b.target: SECOND_BATCH}
    throttled = p.value(
        f'max_over_time(aws_reconciler_launches_total{{instance="{scrape.a.target}", result="throttled"}}[{window}])'
    )
    assert throttled == THROTTLES
    aws_throttled = p.value(
        f'max_over_time(aws_reconciler_aws_throttled_total{{instance="{scrape.a.target}", operation="RunTask"}}'
        f"[{window}])"
    )
    assert aws_throttled == THROTTLES
    run_tasks = p.value(
        f'sum(max_over_time(aws_reconciler_aws_requests_total{{operation="RunTask", outcome="success"}}[{window}]))'
    )
    assert run_tasks == FIRST_BATCH + SECOND_BATCH, "one successful RunTask per task: nothing launched twice"
    queue_to_launch = p.value(
        f'sum(max_over_time(aws_reconciler_queue_to_launch_seconds_count{{backend="ecs"}}[{window}]))'
    )
    assert queue_to_launch == FIRST_BATCH + SECOND_BATCH


def test_phases_as_they_happened(scrape: Scrape) -> None:
    """The task gauge walked through provisioning and running and ended with nothing open."""
    p = scrape.prometheus
    series = p.range(
        f'aws_reconciler_tasks{{instance="{scrape.a.target}", backend="ecs", phase="running"}}',
        start=scrape.started,
        end=scrape.handover,
    )
    running = [v for _, v in series[scrape.a.target]]
    assert running[0] == 0, "nothing ran before the first batch was queued"
    assert max(running) >= 1, "a scrape saw tasks running"
    assert running[-1] == 0, "and none once the batch was done"
    for replica, start, end in ((scrape.a, scrape.started, scrape.handover), (scrape.b, scrape.handover, scrape.ended)):
        for phase in ("provisioning", "running"):
            peak = p.value(
                f'max_over_time(aws_reconciler_tasks{{instance="{replica.target}", phase="{phase}"}}'
                f"[{int(end - start) + 2}s] @ {end:.3f})"
            )
            assert peak is not None and peak >= 1, f"{replica.name}'s scrapes never saw a task {phase}"
    now = p.by_label(f'aws_reconciler_tasks{{instance="{scrape.b.target}"}}', "phase")
    assert now and all(v == 0 for v in now.values()), now
    assert p.value(f'aws_reconciler_oldest_pending_seconds{{instance="{scrape.b.target}"}}') == 0


def test_leader_handover_as_it_happened(scrape: Scrape) -> None:
    """a led until it stopped; b stood by, then took over within seconds and kept the lease."""
    p = scrape.prometheus
    history = p.range("aws_reconciler_leader", start=scrape.started, end=scrape.ended)
    a, b = history[scrape.a.target], history[scrape.b.target]
    assert {v for _, v in a} == {1.0}, "a led for as long as it was scraped"
    a_last = max(t for t, _ in a)
    b_values = [v for _, v in b]
    assert b_values[0] == 0 and b_values[-1] == 1
    b_first = min(t for t, v in b if v == 1)
    assert {v for t, v in b if t < b_first} == {0.0} and {v for t, v in b if t >= b_first} == {1.0}
    # Scrapes are a second apart and a's series lasts until its first failed scrape.
    assert scrape.handover - 1 <= b_first <= a_last + 5, (scrape.handover, b_first, a_last)
    assert p.value('sum(aws_reconciler_leader{job="aws-reconciler"})') == 1


def test_the_shipped_alert_rules_load_and_evaluate(scrape: Scrape) -> None:
    groups = wait_for(
        lambda: [g for g in scrape.prometheus.api("rules")["groups"] if g["rules"] and g["rules"][0]["health"] == "ok"],
        timeout=10,
        what="the rules to be evaluated",
    )
    [group] = groups
    assert group["file"] == str(RULES)
    assert {r["health"] for r in group["rules"]} == {"ok"}, [r.get("lastError") for r in group["rules"]]
    assert len(group["rules"]) >= 7
    firing = {a["labels"]["alertname"] for a in scrape.prometheus.api("alerts")["alerts"] if a["state"] == "firing"}
    assert not firing, f"a healthy run fired {firing}"


def test_every_dashboard_query_evaluates(scrape: Scrape) -> None:
    """Grafana's variables filled in as Grafana would; Prometheus accepts each query, and the
    panels that track this run have data."""
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for title, expr in dashboard_targets(dashboard):
        query = expr.replace("$__rate_interval", "15s").replace("$__range", "5m")
        query = re.sub(r"\$\{?job\}?", "aws-reconciler", query)
        assert "$" not in query, f"{title}: unknown variable in {expr}"
        if not scrape.prometheus.query(query):
            empty.append(title)
    # Only what this run never produced may be empty (no orphans, no stops, no errors; it polls,
    # so no events: tests/metrics/test_events_exposition.py has a reconciler observing by events).
    events = {t for t, _ in dashboard_targets(dashboard) if "event" in t.lower() or "drift" in t.lower()}
    assert set(empty) <= {"Orphans found", "Stops by reason", "AWS errors by operation"} | events, empty
