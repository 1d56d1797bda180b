"""The workload token's deadline in a real cycle: measured on the database's clock whatever this
replica's says, and checked again right before RunTask leaves, after the rate-limit wait.

A real ``Controller``, ``EcsBackend`` and SQLite store; the ECS client is a stub that records what
would have been sent, and the buckets run on a fake monotonic clock so a wait costs no time.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aws_reconciler.backends.ecs.backend import EcsBackend
from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.backends.ratelimit import TokenBucket
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.factory import controller_settings
from aws_reconciler.store import NewTask, TaskStore, create_store_engine, migrate
from support.stores import make_settings

SETTINGS = make_settings("sqlite://")


class StubEcs:
    """Answers RunTask with a task and records each request; knows no other task."""

    def __init__(self) -> None:
        self.run_task_calls: list[dict[str, Any]] = []

    def run_task(self, **request: Any) -> dict[str, Any]:
        self.run_task_calls.append(request)
        return {"tasks": [{"taskArn": f"arn:aws:ecs:us-east-1:1:task/airflow/{len(self.run_task_calls)}"}]}

    def describe_tasks(self, **_: Any) -> dict[str, Any]:
        return {"tasks": [], "failures": []}

    def list_tasks(self, **_: Any) -> dict[str, Any]:
        return {"taskArns": []}


class FakeMonotonic:
    """A monotonic clock whose sleeps only move it forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_store(tmp_path: Path) -> TaskStore:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    return TaskStore(engine)


def add_row(store: TaskStore, *, token_expires_in: float) -> str:
    """A pending row whose token expires ``token_expires_in`` s after the DATABASE's now."""
    record_id = str(uuid.uuid4())
    key = TiKey("dag", f"t-{record_id[:8]}", "run", -1, 1)
    spec = build_run_task_request(
        ecs=SETTINGS.ecs, deployment="airflow", record_id=record_id, key=key, command=["python", "-c", "pass"]
    )
    expires = store.database_now() + timedelta(seconds=token_expires_in)
    store.add(
        [
            NewTask(
                id=record_id,
                backend=Backend.ECS,
                owner="1",
                key=key,
                queue=None,
                target="airflow",
                spec=spec,
                token_expires_at=expires,
            )
        ]
    )
    return record_id


def backend(client: StubEcs, monotonic: FakeMonotonic, *, run_task_bucket: TokenBucket | None = None) -> EcsBackend:
    def bucket() -> TokenBucket:
        return TokenBucket(rate=100, burst=100, clock=monotonic, sleep=monotonic.sleep)

    return EcsBackend(
        client=client,
        deployment="airflow",
        clusters=["airflow"],
        container_name="base",
        run_task_bucket=run_task_bucket or bucket(),
        describe_bucket=bucket(),
        fargate_bucket=bucket(),
    )


def test_the_deadline_is_checked_again_after_the_rate_limit_wait(tmp_path: Path) -> None:
    """Claimed with 33 s left (margin 30), the launch waits 4 s for a RunTask token: too late."""
    store = make_store(tmp_path)
    record_id = add_row(store, token_expires_in=33)
    monotonic, client = FakeMonotonic(), StubEcs()
    # Empty, next token in 4 s: within one reconcile interval, so the cycle sends the launch.
    run_task = TokenBucket(rate=0.25, burst=1, clock=monotonic, sleep=monotonic.sleep)
    assert run_task.try_acquire() == 0
    controller = Controller(
        store=store,
        backend=backend(client, monotonic, run_task_bucket=run_task),
        settings=controller_settings(SETTINGS),
        monotonic=monotonic,
    )
    try:
        result = controller.reconcile()
    finally:
        controller.close()
    assert client.run_task_calls == [], "nothing left after the deadline"
    record = store.get(record_id)
    assert record is not None
    assert (record.phase, record.attempt, record.external_id) == (Phase.PENDING, 0, None), "the attempt given back"
    assert record.last_error is not None and "token_margin" in record.last_error
    assert result.stats.launched == 0


def test_the_databases_clock_decides_not_this_replicas(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    monotonic, client = FakeMonotonic(), StubEcs()
    # 20 s left by the database (inside the margin); this replica's clock is 60 s behind and
    # would see 80 s.
    soon = add_row(store, token_expires_in=20)
    behind = Controller(
        store=store,
        backend=backend(client, monotonic),
        settings=controller_settings(SETTINGS),
        clock=lambda: datetime.now(UTC) - timedelta(seconds=60),
        monotonic=monotonic,
    )
    try:
        behind.reconcile()
    finally:
        behind.close()
    assert client.run_task_calls == []
    record = store.get(soon)
    assert record is not None and (record.phase, record.attempt) == (Phase.PENDING, 0)

    # 45 s left by the database; a replica 60 s ahead would take the token for expired.
    store.transition(soon, expect_phases=[Phase.PENDING], phase=Phase.REVOKED)
    later = add_row(store, token_expires_in=45)
    ahead = Controller(
        store=store,
        backend=backend(client, monotonic),
        settings=controller_settings(SETTINGS),
        clock=lambda: datetime.now(UTC) + timedelta(seconds=60),
        monotonic=monotonic,
    )
    try:
        ahead.reconcile()
    finally:
        ahead.close()
    assert len(client.run_task_calls) == 1
    record = store.get(later)
    assert record is not None and record.phase is Phase.PROVISIONING
    store.engine.dispose()


def test_a_short_token_lifetime_keeps_time_to_launch() -> None:
    """The margin never takes more than a quarter of the token's lifetime: with a 15 s
    ``task_queued_timeout`` a 30 s margin would launch nothing at all."""
    assert controller_settings(SETTINGS).token_margin == 30
    short = make_settings("sqlite://", AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="15")
    assert controller_settings(short).token_margin == 3.75
    custom = make_settings("sqlite://", AIRFLOW__AWS_RECONCILER__TOKEN_MARGIN="5")
    assert controller_settings(custom).token_margin == 5
