"""The task store on SQLite and PostgreSQL: migrations, hot queries, compare-and-set, lease."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from aws_reconciler.model import Backend, Desired, Phase, TiKey
from aws_reconciler.store import LeaseStore, NewTask, Report, TaskStore, check_schema, create_store_engine, migrate
from aws_reconciler.store.migrate import VERSION_TABLE, current_revision, head_revision


def new_task(*, owner: str = "1", key: TiKey | None = None, record_id: str | None = None) -> NewTask:
    key = key or TiKey("dag", f"t-{uuid.uuid4().hex[:6]}", "run", -1, 1)
    return NewTask(
        id=record_id or str(uuid.uuid4()),
        backend=Backend.ECS,
        owner=owner,
        key=key,
        queue="default",
        target="airflow",
        spec={"cluster": "airflow", "overrides": {"containerOverrides": [{"name": "base", "command": ["x"]}]}},
    )


def test_migrate_creates_versioned_tables_and_is_idempotent(store_url: str) -> None:
    engine = create_store_engine(store_url)
    assert current_revision(engine) is None
    assert migrate(engine) == (None, head_revision())
    assert migrate(engine) == (head_revision(), head_revision())
    check_schema(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {"aws_reconciler_task", "aws_reconciler_lease", VERSION_TABLE} <= names
    # Our own version table: Airflow's alembic_version is never touched.
    assert "alembic_version" not in names
    indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("aws_reconciler_task")}
    assert {"ix_aws_reconciler_task_open", "ix_aws_reconciler_task_unreported", "ix_aws_reconciler_task_ti"} <= indexes


def test_unmigrated_store_is_reported_clearly(store_url: str) -> None:
    from aws_reconciler.store import SchemaNotReadyError

    engine = create_store_engine(store_url)
    try:
        check_schema(engine)
    except SchemaNotReadyError as exc:
        assert "aws-reconciler db migrate" in str(exc)
    else:
        raise AssertionError("an empty store passed the schema check")


def test_add_and_report_cycle(store: TaskStore) -> None:
    a, b = new_task(), new_task(owner="2")
    store.add([a, b])
    assert {r.id for r in store.open_tasks(backend=Backend.ECS)} == {a.id, b.id}
    assert store.finished_unreported(owner="1", backend=Backend.ECS) == []
    assert store.transition(a.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    rows = store.finished_unreported(owner="1", backend=Backend.ECS)
    assert [r.id for r in rows] == [a.id]
    assert rows[0].finished_at is not None and rows[0].spec is None  # light query: no spec
    store.mark_reported([Report(a.id)], owner="1")
    assert store.finished_unreported(owner="1", backend=Backend.ECS) == []
    assert {r.id for r in store.open_tasks(backend=Backend.ECS)} == {b.id}


def test_transition_is_compare_and_set(store: TaskStore) -> None:
    t = new_task()
    store.add([t])
    assert store.transition(t.id, expect_phases=[Phase.PENDING], expect_attempt=0, phase=Phase.LAUNCHING, attempt=1)
    # A second writer that read the old state loses, and changes nothing.
    assert not store.transition(t.id, expect_phases=[Phase.PENDING], expect_attempt=0, phase=Phase.LAUNCHING, attempt=1)
    assert not store.transition(t.id, expect_phases=[Phase.LAUNCHING], expect_attempt=0, phase=Phase.FAILED)
    record = store.get(t.id)
    assert record is not None and record.phase is Phase.LAUNCHING and record.attempt == 1


def test_requeue_of_same_key_suppresses_the_older_row(store: TaskStore) -> None:
    key = TiKey("dag", "sensor", "run", -1, 1)
    first = new_task(key=key)
    store.add([first])
    second = new_task(key=key)
    store.add([second])
    store.transition(first.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    store.transition(second.id, expect_phases=[Phase.PENDING], phase=Phase.FAILED)
    assert [r.id for r in store.finished_unreported(owner="1", backend=Backend.ECS)] == [second.id]


def test_adopt_by_id_and_by_key_resets_reporting(store: TaskStore) -> None:
    by_id, by_key, finished = new_task(), new_task(), new_task()
    store.add([by_id, by_key, finished])
    store.transition(finished.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    store.mark_reported([Report(finished.id)], owner="1")  # reported by the dead scheduler, but never processed
    adopted = store.adopt(owner="9", backend=Backend.ECS, ids={by_id.id, finished.id}, keys={by_key.key})
    assert {r.id for r in adopted} == {by_id.id, by_key.id, finished.id}
    assert [r.id for r in store.finished_unreported(owner="9", backend=Backend.ECS)] == [finished.id]
    assert all(store.get(r.id).owner == "9" for r in adopted)  # type: ignore[union-attr]


def test_revoke_marks_stopped_and_suppresses_reporting(store: TaskStore) -> None:
    t = new_task()
    store.add([t])
    assert store.revoke(ids=[t.id]) == 1
    record = store.get(t.id)
    assert record is not None and record.desired is Desired.STOPPED
    store.transition(t.id, expect_phases=[Phase.PENDING], phase=Phase.FAILED)
    assert store.finished_unreported(owner="1", backend=Backend.ECS) == []


def test_retention_deletes_only_old_reported_rows(store: TaskStore) -> None:
    old, fresh, open_ = new_task(), new_task(), new_task()
    store.add([old, fresh, open_])
    for t in (old, fresh):
        store.transition(t.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    store.clock = lambda: datetime.now(UTC) - timedelta(days=10)
    store.mark_reported([Report(old.id)], owner="1")
    store.clock = lambda: datetime.now(UTC)
    store.mark_reported([Report(fresh.id)], owner="1")
    assert store.delete_reported_before(datetime.now(UTC) - timedelta(days=7)) == 1
    assert store.get(old.id) is None and store.get(fresh.id) is not None and store.get(open_.id) is not None


def test_retention_also_drops_rows_never_reported(store: TaskStore) -> None:
    """A row whose scheduler died after it finished, and which Airflow never had adopted."""
    abandoned, recent = new_task(), new_task()
    store.add([abandoned, recent])
    store.transition(
        abandoned.id,
        expect_phases=[Phase.PENDING],
        phase=Phase.FAILED,
        finished_at=datetime.now(UTC) - timedelta(days=9),
    )
    store.transition(recent.id, expect_phases=[Phase.PENDING], phase=Phase.FAILED)
    assert store.delete_reported_before(datetime.now(UTC) - timedelta(days=7)) == 1
    assert store.get(abandoned.id) is None and store.get(recent.id) is not None


def test_timestamps_are_utc_aware(store: TaskStore) -> None:
    t = new_task()
    store.add([t])
    record = store.get(t.id)
    assert record is not None and record.created_at.tzinfo is not None
    assert abs((datetime.now(UTC) - record.created_at).total_seconds()) < 60


def test_two_executors_and_a_reconciler_write_at_once(store_url: str) -> None:
    """Concurrent inserts (two schedulers) and reconciler transitions lose nothing."""
    engine = create_store_engine(store_url)
    migrate(engine)
    errors: list[BaseException] = []
    per_writer = 60

    def executor(owner: str) -> None:
        try:
            s = TaskStore(engine)
            for _ in range(per_writer // 5):
                s.add([new_task(owner=owner) for _ in range(5)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reconciler(stop: threading.Event) -> None:
        try:
            s = TaskStore(engine)
            while not stop.is_set() or s.open_tasks(backend=Backend.ECS):
                for row in s.open_tasks(backend=Backend.ECS):
                    s.transition(row.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
        except BaseException as exc:
            errors.append(exc)

    stop = threading.Event()
    rec = threading.Thread(target=reconciler, args=(stop,))
    writers = [threading.Thread(target=executor, args=(o,)) for o in ("1", "2")]
    rec.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    stop.set()
    rec.join(timeout=120)
    assert not errors, errors
    s = TaskStore(engine)
    assert len(s.finished_unreported(owner="1", backend=Backend.ECS)) == per_writer
    assert len(s.finished_unreported(owner="2", backend=Backend.ECS)) == per_writer
    assert s.open_tasks(backend=Backend.ECS) == []


def test_lease_single_holder_expiry_and_release(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    leases = LeaseStore(engine)
    now = datetime.now(UTC)
    assert leases.acquire_or_renew(name="r", holder="a", now=now, duration=15).held
    other = leases.acquire_or_renew(name="r", holder="b", now=now + timedelta(seconds=5), duration=15)
    assert not other.held and other.holder == "a"
    assert leases.acquire_or_renew(name="r", holder="a", now=now + timedelta(seconds=10), duration=15).held
    # Expired (a stopped renewing): b takes over.
    assert leases.acquire_or_renew(name="r", holder="b", now=now + timedelta(seconds=30), duration=15).held
    assert not leases.acquire_or_renew(name="r", holder="a", now=now + timedelta(seconds=31), duration=15).held
    leases.release(name="r", holder="b", now=now + timedelta(seconds=32))
    assert leases.acquire_or_renew(name="r", holder="a", now=now + timedelta(seconds=33), duration=15).held


def test_lease_contention_has_one_winner(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    now = datetime.now(UTC)
    results: list[bool] = []
    lock = threading.Lock()

    def contend(holder: str) -> None:
        state = LeaseStore(engine).acquire_or_renew(name="x", holder=holder, now=now, duration=15)
        with lock:
            results.append(state.held)

    threads = [threading.Thread(target=contend, args=(f"h{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results.count(True) == 1 and len(results) == 8


@pytest.mark.timeout(60)
def test_waker_wakes_on_notify_and_drains_a_burst(pg_schema_url: str) -> None:
    """An executor's insert wakes the reconciler; draining a burst of notifications never blocks it.

    (The channel is database-wide, so other writers may add wake-ups: only "woken" is asserted.)
    """
    from aws_reconciler.store import Waker

    engine = create_store_engine(pg_schema_url)
    migrate(engine)
    waker = Waker(engine)
    try:
        waker.wait(0.1)  # connects and LISTENs
        store = TaskStore(engine)
        for _ in range(5):
            store.add([new_task()])  # five transactions, five notifications
        assert waker.wait(30) is True
        waker.wait(0.3)  # returns (True or False) instead of hanging on the drained connection
        waker.wake()
        assert waker.wait(30) is True
    finally:
        waker.close()
        engine.dispose()
