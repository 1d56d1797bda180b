"""Leadership that does not depend on local clocks, on SQLite and PostgreSQL.

The lease's expiry is the database's time; a takeover bumps the lease's generation, and store
writes fenced with an older generation do not land; every AWS call is bounded so that it lands
within the lease; SIGTERM gives the lease up at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine as DbEngine

from aws_reconciler import model
from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.backends.registry import descriptor_for
from aws_reconciler.config import ConfigError, Settings, load_settings
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.reconciler.factory import build_backend
from aws_reconciler.reconciler.leader import LeaderElector
from aws_reconciler.store import LeaseStore, NewTask, TaskStore, create_store_engine, database_now, migrate

NAME = "reconciler-airflow"


@pytest.fixture
def db(store_url: str) -> Iterator[DbEngine]:
    engine = create_store_engine(store_url)
    migrate(engine)
    yield engine
    engine.dispose()


def elector(db: DbEngine, holder: str, *, on_acquired: Callable[[], None] | None = None) -> LeaderElector:
    return LeaderElector(
        leases=LeaseStore(db),
        name=NAME,
        holder=holder,
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
        on_acquired=on_acquired,
    )


def settings(**env: str) -> Settings:
    environ = {
        "AIRFLOW__AWS_RECONCILER__STORE_URL": "sqlite:///unused.db",
        "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "airflow",
        "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
        "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
        "AIRFLOW__AWS_RECONCILER_ECS__REGION_NAME": "us-east-1",
        **{f"AIRFLOW__AWS_RECONCILER__{k}": v for k, v in env.items()},
    }
    return load_settings(environ=environ, cfg_path=Path("/nonexistent/airflow.cfg"))


def test_a_replica_whose_clock_runs_ahead_cannot_take_a_live_lease(
    db: DbEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader has just renewed. A standby whose wall clock is 16 s ahead (past the lease's
    expiry by its own reckoning) must not take the lease: expiry is the database's time."""
    a, b = elector(db, "replica-a"), elector(db, "replica-b")
    assert a.try_once()

    class Ahead(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Ahead:
            return super().now(tz) + timedelta(seconds=16)

    monkeypatch.setattr(model, "datetime", Ahead)
    assert model.utcnow() > datetime.now(model.UTC) + timedelta(seconds=15)
    assert not b.try_once()
    assert b.current_holder == "replica-a"
    assert a.is_leader() and a.try_once()


def test_a_takeover_fences_the_old_leaders_store_writes(db: DbEngine) -> None:
    """A paused leader still believes it leads (its renew deadline has not passed on its own
    clock) while the lease expired and another replica took it: none of its writes land, the new
    leader's do."""
    store = TaskStore(db)
    settings_ = settings()
    record_id = str(uuid.uuid4())
    key = TiKey("dag", "task", "run", -1, 1)
    spec = build_run_task_request(ecs=settings_.ecs, deployment="airflow", record_id=record_id, key=key, command=["x"])
    store.add([NewTask(record_id, Backend.ECS, "1", key, "default", "airflow", spec)])

    a = elector(db, "replica-a")
    assert a.try_once()
    old = a.fence()
    assert old is not None

    # The lease expires (a is paused) and b takes it: the database's time, moved past the expiry.
    with db.connect() as conn:
        later = database_now(conn) + timedelta(seconds=60)
    taken = LeaseStore(db).acquire_or_renew(name=NAME, holder="replica-b", duration=15, now=later)
    assert taken.held and taken.generation == (old.generation + 1)

    assert a.is_leader() and a.fence() == old, "a cannot know yet"
    assert store.claim_for_launch([record_id], fence=old) == {}
    assert not store.transition(record_id, expect_phases=[Phase.PENDING], fence=old, last_error="stale leader")
    row = store.get(record_id)
    assert row is not None and (row.phase, row.attempt, row.last_error) == (Phase.PENDING, 0, None)

    b = elector(db, "replica-b")
    assert b.try_once()  # renews the lease it holds
    new = b.fence()
    assert new is not None and new.generation == taken.generation
    assert store.claim_for_launch([record_id], fence=new) == {record_id: 1}


def test_a_released_lease_is_taken_at_once_and_the_release_is_logged(
    db: DbEngine, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = elector(db, "replica-a"), elector(db, "replica-b")
    assert a.try_once()
    assert not b.try_once()
    with caplog.at_level(logging.INFO, logger="aws_reconciler"):
        a.stop(release=True)
    assert any("released the lease" in r.getMessage() for r in caplog.records)
    assert a.fence() is None and not a.is_leader()
    assert b.try_once(), "the standby waited for an expiry although the lease was released"


def test_becoming_leader_wakes_the_loop(db: DbEngine) -> None:
    woken: list[bool] = []
    a = elector(db, "a", on_acquired=lambda: woken.append(True))
    assert a.try_once() and a.try_once()
    assert woken == [True]


@pytest.mark.parametrize(
    ("env", "timeout"),
    [
        ({}, 4.0),  # 80% of the 5 s between renew_deadline and lease_duration
        ({"LEASE_DURATION": "3", "RENEW_DEADLINE": "2", "RETRY_PERIOD": "0.5"}, 0.8),
        ({"AWS_CALL_TIMEOUT": "2"}, 2.0),
    ],
)
def test_every_aws_call_lands_within_the_lease(env: dict[str, str], timeout: float) -> None:
    """renew_deadline + the whole-call timeout < lease_duration: a launch or stop sent just before
    the renew deadline has landed (or failed) before a standby can take over. The clients the
    factory builds are bounded by it."""
    s = settings(**env)
    core = s.core
    assert core.call_timeout == pytest.approx(timeout)
    assert core.renew_deadline + core.call_timeout < core.lease_duration
    backend = build_backend(descriptor_for(Backend.ECS), s)
    config = backend.client.meta.config  # type: ignore[attr-defined]
    assert config.connect_timeout + config.read_timeout == pytest.approx(timeout)
    assert config.retries["total_max_attempts"] == 1


def test_a_call_timeout_that_outlasts_the_lease_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"aws_call_timeout.*lease_duration"):
        settings(AWS_CALL_TIMEOUT="6")


def test_an_empty_metrics_address_disables_the_metrics_server() -> None:
    """Documented as "empty disables the server"; an empty value used to mean "unset", so the
    default port was bound and a second replica on the host died with "Address already in use"."""
    assert settings(METRICS_ADDRESS="").core.metrics_address == ""
    assert settings().core.metrics_address == "0.0.0.0:9109"
