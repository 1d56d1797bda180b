"""The task store on SQLite and PostgreSQL: migrations, hot queries, compare-and-set, lease."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from aws_reconciler.model import Backend, Desired, Phase, TiKey, WorkloadKind
from aws_reconciler.store import LeaseStore, NewTask, Report, TaskStore, check_schema, create_store_engine, migrate
from aws_reconciler.store.migrate import VERSION_TABLE, current_revision, head_revision
from aws_reconciler.store.notify import CHANNEL_PREFIX, Waker, channel_name
from aws_reconciler.store.records import Change


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


def test_due_tasks_are_the_rows_with_an_action_due_and_those_asked_about(store: TaskStore) -> None:
    """Between resyncs an events-mode cycle reads only these; a running task nobody asked about is left out."""
    pending, launching, running, asked, stopping, revoked, superseded, ended = (new_task() for _ in range(8))
    store.add([pending, launching, running, asked, stopping, revoked, superseded, ended])
    store.transition(launching.id, expect_phases=[Phase.PENDING], phase=Phase.LAUNCHING)
    for t, arn in ((running, "arn-running"), (asked, "arn-asked"), (revoked, "arn-revoked"), (superseded, "arn-s")):
        store.transition(t.id, expect_phases=[Phase.PENDING], phase=Phase.RUNNING, external_id=arn)
    store.transition(stopping.id, expect_phases=[Phase.PENDING], phase=Phase.STOPPING, external_id="arn-stopping")
    store.transition(ended.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED, external_id="arn-ended")
    store.revoke(ids=[revoked.id])
    store.add([new_task(key=superseded.key)])  # a newer queueing of the same try supersedes it
    due = {r.id for r in store.due_tasks(backend=Backend.ECS, external_ids={"arn-asked", "arn-ended", "arn-other"})}
    assert {pending.id, launching.id, asked.id, stopping.id, revoked.id, superseded.id} <= due
    assert running.id not in due and ended.id not in due
    assert store.open_counts(backend=Backend.ECS) == {
        Phase.PENDING: 2,
        Phase.LAUNCHING: 1,
        Phase.RUNNING: 4,
        Phase.STOPPING: 1,
    }
    assert store.open_counts(backend=Backend.BATCH) == {}


def test_transition_is_compare_and_set(store: TaskStore) -> None:
    t = new_task()
    store.add([t])
    assert store.transition(t.id, expect_phases=[Phase.PENDING], expect_attempt=0, phase=Phase.LAUNCHING, attempt=1)
    # A second writer that read the old state loses, and changes nothing.
    assert not store.transition(t.id, expect_phases=[Phase.PENDING], expect_attempt=0, phase=Phase.LAUNCHING, attempt=1)
    assert not store.transition(t.id, expect_phases=[Phase.LAUNCHING], expect_attempt=0, phase=Phase.FAILED)
    record = store.get(t.id)
    assert record is not None and record.phase is Phase.LAUNCHING and record.attempt == 1


def test_transitions_are_compare_and_sets_sent_as_one_batch_per_shape(store: TaskStore) -> None:
    a, b, c = (new_task() for _ in range(3))
    store.add([a, b, c])
    launching = [Change(t.id, (Phase.PENDING,), {"phase": Phase.LAUNCHING, "attempt": 1}, 0) for t in (a, b)]
    ended = Change(c.id, (Phase.PENDING,), {"phase": Phase.FAILED, "last_error": "bad request"})
    with store.transaction() as conn:
        applied = store.transitions([*launching, ended], conn=conn)
    if applied is None:  # a driver that cannot count a batch's rows: nothing written
        assert {store.get(t.id).phase for t in (a, b, c)} == {Phase.PENDING}  # type: ignore[union-attr]
        return
    assert applied is True
    records = {t.id: store.get(t.id) for t in (a, b, c)}
    assert [(r.phase, r.attempt) for r in (records[a.id], records[b.id])] == [(Phase.LAUNCHING, 1)] * 2  # type: ignore[union-attr]
    ended_row = records[c.id]
    assert ended_row is not None and ended_row.phase is Phase.FAILED and ended_row.finished_at is not None
    # One that read the old state loses: the batch says so (the caller rolls it back).
    with pytest.raises(RuntimeError), store.transaction() as conn:
        again = [
            Change(a.id, (Phase.PENDING,), {"phase": Phase.FAILED}),
            Change(b.id, (Phase.LAUNCHING,), {"phase": Phase.FAILED}),
        ]
        assert store.transitions(again, conn=conn) is False
        raise RuntimeError("roll back")
    assert store.get(b.id).phase is Phase.LAUNCHING  # type: ignore[union-attr]


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
    """An executor's insert wakes the reconciler; draining a burst of notifications never blocks it."""
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


def test_channel_name_is_a_short_safe_identifier_distinct_per_store_and_team() -> None:
    longest = "s" * 63  # PostgreSQL's longest schema name; a team name may be 64 characters
    inputs = [
        ("public", None),
        ("public", ""),
        ("public", "team_a"),
        ("public", "team_b"),
        ("t_1", None),
        ("t_1", "team_a"),
        (longest, "x" * 64),
        (longest, "x" * 63 + "y"),
        ('we"ird; NOTIFY x', "Team A -- ü"),
        ("public", "null"),
        ("a", "b"),
        ('a", "b', None),
    ]
    names = [channel_name(schema, team) for schema, team in inputs]
    for name in names:
        assert len(name.encode()) <= 63
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name  # no quoting needed, nothing to fold
        assert name.startswith(CHANNEL_PREFIX)
    assert len(set(names)) == len(names)
    # Stable: the executor and the reconciler, in other processes and releases, name it alike.
    assert channel_name("public", None) == channel_name("public", None) == "aws_reconciler_6076947568040dfe"


@pytest.mark.timeout(60)
def test_a_waker_is_woken_by_its_own_store_only(pg_schema_url: str, other_pg_schema_url: str) -> None:
    """Two stores in one database (two schemas): a write to one never wakes the other's reconciler.

    The other store's own waker is the fence: PostgreSQL delivers a notification to every
    listener of its channel at commit, so once that one is woken, ours would have been too.
    """
    engines = [create_store_engine(url) for url in (pg_schema_url, other_pg_schema_url)]
    for engine in engines:
        migrate(engine)
    ours, theirs = (Waker(engine) for engine in engines)
    try:
        for waker in (ours, theirs):
            assert waker.wait(0.05) is False  # connects and LISTENs
        TaskStore(engines[1]).add([new_task()])
        assert theirs.wait(30) is True
        assert ours.wait(0.3) is False

        TaskStore(engines[0]).add([new_task()])
        assert ours.wait(30) is True
        assert theirs.wait(0.3) is False
    finally:
        for waker in (ours, theirs):
            waker.close()
        for engine in engines:
            engine.dispose()


@pytest.mark.timeout(60)
def test_a_teams_waker_is_woken_by_its_teams_writes_only(pg_schema_url: str) -> None:
    """One store, three scopes: team_a's reconciler is woken by team_a's executor (queueing and
    revoking), the deployment-wide reconciler by the deployment-wide executors."""
    engine = create_store_engine(pg_schema_url)
    migrate(engine)
    wakers = {team: Waker(engine, team=team) for team in ("team_a", "team_b", None)}
    stores = {team: TaskStore(engine, team=team) for team in wakers}
    try:
        for waker in wakers.values():
            assert waker.wait(0.05) is False  # connects and LISTENs
        row = new_task()
        stores["team_a"].add([row])
        assert wakers["team_a"].wait(30) is True
        assert wakers["team_b"].wait(0.3) is False
        assert wakers[None].wait(0.3) is False

        stores[None].add([new_task()])
        assert wakers[None].wait(30) is True
        assert wakers["team_a"].wait(0.3) is False

        assert stores["team_a"].revoke(ids=[row.id]) == 1
        assert wakers["team_a"].wait(30) is True
        assert wakers[None].wait(0.3) is False
        assert wakers["team_b"].wait(0.3) is False
    finally:
        for waker in wakers.values():
            waker.close()
        engine.dispose()


# ---- token expiry and the database's clock --------------------------------------------------


def test_database_now_is_the_servers_clock_in_utc(store: TaskStore) -> None:
    db_now = store.database_now()
    assert db_now.tzinfo is not None and db_now.utcoffset() == timedelta(0)
    # Same machine here: the server's clock and ours agree to well within a minute.
    assert abs((db_now - datetime.now(UTC)).total_seconds()) < 60


def test_claims_skip_tokens_expiring_within_the_margin_of_database_time(store: TaskStore) -> None:
    """The local clock is an hour slow: a decision by it would launch a token about to expire."""
    db_now = store.database_now()
    soon, later, unknown = new_task(), new_task(), new_task()
    soon = NewTask(**{**soon.__dict__, "token_expires_at": db_now + timedelta(seconds=10)})
    later = NewTask(**{**later.__dict__, "token_expires_at": db_now + timedelta(seconds=600)})
    store.clock = lambda: datetime.now(UTC) - timedelta(hours=1)
    store.add([soon, later, unknown])
    record = store.get(soon.id)
    assert record is not None and record.token_expires_at == soon.token_expires_at

    claimed = store.claim_for_launch([soon.id, later.id, unknown.id], token_margin=30)

    assert set(claimed) == {later.id, unknown.id}
    assert store.get(soon.id).phase is Phase.PENDING  # type: ignore[union-attr]
    # Without a margin the claim is what it always was.
    assert store.claim_for_launch([soon.id]) == {soon.id: 1}


def test_claims_give_each_row_to_one_claimer(store_url: str) -> None:
    """Two reconcilers claiming the same rows at once (a failover overlap) never both get one:
    UPDATE ... RETURNING on SQLite and PostgreSQL, SELECT ... FOR UPDATE SKIP LOCKED on MariaDB."""
    engine = create_store_engine(store_url)
    migrate(engine)
    store = TaskStore(engine)
    tasks = [new_task() for _ in range(200)]
    store.add(tasks)
    ids = [t.id for t in tasks]
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def claim(order: list[str]) -> None:
        try:
            barrier.wait(timeout=30)
            for start in range(0, len(order), 20):
                results.append(TaskStore(engine).claim_for_launch(order[start : start + 20]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(o,)) for o in (ids, ids[::-1], ids, ids[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    claimed = [record_id for result in results for record_id in result]
    assert sorted(claimed) == sorted(ids), "every row claimed exactly once"
    assert {attempt for result in results for attempt in result.values()} == {1}
    assert {r.phase for r in store.open_tasks(backend=Backend.ECS)} == {Phase.LAUNCHING}
    engine.dispose()


def test_timestamps_keep_their_microseconds(store: TaskStore) -> None:
    """MySQL's DATETIME keeps whole seconds unless told otherwise (migration 0002 tells it)."""
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    t = new_task()
    store.clock = lambda: at
    store.add([NewTask(**{**t.__dict__, "token_expires_at": at})])
    record = store.get(t.id)
    assert record is not None
    assert (record.created_at, record.token_expires_at) == (at, at)


# ---- supersede, ownership, Airflow's verdict ---------------------------------------------


def test_a_newer_queueing_by_another_scheduler_supersedes_and_stops_the_older_row(store: TaskStore) -> None:
    key = TiKey("dag", "sensor", "run", -1, 1)
    a_row = new_task(owner="A", key=key)
    store.add([a_row])
    b_row = new_task(owner="B", key=key)
    store.add([b_row])

    older = store.get(a_row.id)
    assert older is not None and older.superseded_at is not None
    assert older.desired is Desired.STOPPED, "the older queueing is no longer wanted: the reconciler stops it"
    # Still open and unreported: scheduler A sees it on its next heartbeat and frees the slot.
    assert older.reported_at is None
    assert [r.id for r in store.finished_unreported(owner="A", backend=Backend.ECS)] == [a_row.id]
    assert store.finished_unreported(owner="B", backend=Backend.ECS) == []
    newer = store.get(b_row.id)
    assert newer is not None and newer.superseded_at is None and newer.desired is Desired.RUNNING


def test_a_newer_queueing_by_the_same_scheduler_needs_no_report(store: TaskStore) -> None:
    key = TiKey("dag", "sensor", "run", -1, 1)
    first, second = new_task(key=key), new_task(key=key)
    store.add([first])
    store.add([second])
    older = store.get(first.id)
    assert older is not None and older.superseded_at is not None and older.reported_at is not None
    assert store.finished_unreported(owner="1", backend=Backend.ECS) == []


def test_one_large_queueing_supersedes_exactly_the_older_rows_of_its_keys(store: TaskStore) -> None:
    """More rows than one statement's placeholders used to allow, in one call: a retried row
    and the new rows themselves are left alone, and who must be told depends on the owner."""
    theirs = [new_task(owner="A") for _ in range(300)]
    ours = [new_task(owner="1") for _ in range(300)]
    retried = new_task(owner="1")
    store.add([*theirs, *ours, retried])
    requeued = [new_task(owner="1", key=t.key) for t in [*theirs, *ours]]
    fresh = [new_task(owner="1") for _ in range(600)]
    # The retried row comes again (its commit's answer was lost), with a newer queueing of its key.
    again = new_task(owner="1", key=retried.key)
    assert store.add([*requeued, retried, again, *fresh]) == []

    rows = {r.id: r for r in (store.get(t.id) for t in [*theirs, *ours, retried, again, *requeued, *fresh]) if r}
    for t in theirs:
        assert rows[t.id].superseded_at is not None and rows[t.id].desired is Desired.STOPPED
        assert rows[t.id].reported_at is None, "scheduler A must still see it"
    for t in ours:
        assert rows[t.id].superseded_at is not None and rows[t.id].reported_at is not None
    for t in [*requeued, again, *fresh]:
        assert rows[t.id].superseded_at is None and rows[t.id].desired is Desired.RUNNING
    # A row of the call itself is never superseded by it, not even by a newer row of its key.
    assert rows[retried.id].superseded_at is None and rows[retried.id].desired is Desired.RUNNING
    assert len(store.open_tasks(backend=Backend.ECS)) == len(rows)


def test_mark_reported_marks_only_rows_the_caller_still_owns(store: TaskStore) -> None:
    """A slow scheduler A read a finished row; scheduler B adopted it before A marked it."""
    t = new_task(owner="A")
    store.add([t])
    store.transition(t.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    assert [r.id for r in store.finished_unreported(owner="A", backend=Backend.ECS)] == [t.id]
    store.adopt(owner="B", backend=Backend.ECS, ids={t.id}, keys=set())

    assert store.mark_reported([Report(t.id)], owner="A") == set()
    assert [r.id for r in store.finished_unreported(owner="B", backend=Backend.ECS)] == [t.id]
    assert store.mark_reported([Report(t.id)], owner="B") == {t.id}
    assert store.mark_reported([Report(t.id)], owner="B") == set(), "marked once"


def test_mark_reported_records_airflows_verdict_and_the_true_outcome(store: TaskStore) -> None:
    from aws_reconciler.store.queries import TaskQueries

    cleared, ok, still_open = new_task(), new_task(), new_task()
    store.add([cleared, ok, still_open])
    for t in (cleared, ok):
        store.transition(t.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    marked = store.mark_reported(
        [
            Report(cleared.id, ti_state="restarting", phase=Phase.REVOKED, status_reason="stopped by Airflow"),
            Report(ok.id, ti_state="success"),
            # A correction never touches an open row: the reconciler owns it.
            Report(still_open.id, phase=Phase.FAILED, status_reason="x"),
        ],
        owner="1",
    )
    assert marked == {cleared.id, ok.id}
    revoked = store.get(cleared.id)
    assert revoked is not None
    assert (revoked.phase, revoked.ti_state, revoked.status_reason) == (
        Phase.REVOKED,
        "restarting",
        "stopped by Airflow",
    )
    assert store.get(ok.id).phase is Phase.SUCCEEDED  # type: ignore[union-attr]
    assert store.get(still_open.id).phase is Phase.PENDING  # type: ignore[union-attr]
    counts = TaskQueries(store.engine).counts()
    assert counts[("ecs", "revoked")] == 1 and counts[("ecs", "succeeded")] == 1


def test_add_is_idempotent_and_returns_ids_stored_for_another_task(store: TaskStore) -> None:
    t = new_task()
    assert store.add([t]) == []
    # The same insert again (its first commit's answer was lost): nothing new, nothing lost.
    assert store.add([t]) == []
    assert [r.id for r in store.open_tasks(backend=Backend.ECS)] == [t.id]
    other = NewTask(**{**new_task().__dict__, "id": t.id})
    fresh = new_task()
    assert store.add([other, fresh]) == [t.id]
    assert {r.id for r in store.open_tasks(backend=Backend.ECS)} == {t.id, fresh.id}
    assert store.get(t.id).key == t.key  # type: ignore[union-attr]


def test_a_write_the_database_refuses_is_rolled_back_as_sqlalchemys_error(store: TaskStore) -> None:
    """What the executor catches to keep its workloads queued, whichever way the rows are written."""
    t = new_task()
    with pytest.raises(sa.exc.IntegrityError):
        store.add([t, t])
    assert store.get(t.id) is None
    assert store.add([t]) == []
    assert [r.id for r in store.open_tasks(backend=Backend.ECS)] == [t.id]


def test_recent_failures_put_unfinished_rows_last_on_every_database(store: TaskStore) -> None:
    from aws_reconciler.store.queries import TaskQueries

    old, new = new_task(), new_task()
    store.add([old, new])
    store.transition(
        old.id, expect_phases=[Phase.PENDING], phase=Phase.FAILED, finished_at=datetime.now(UTC) - timedelta(hours=1)
    )
    store.transition(new.id, expect_phases=[Phase.PENDING], phase=Phase.FAILED)
    assert [r.id for r in TaskQueries(store.engine).recent_failures(5)] == [new.id, old.id]


# ---- MySQL / MariaDB -------------------------------------------------------------------------


def test_a_mariadb_store_created_by_release_0001_is_upgraded_to_microseconds(mariadb_url: str) -> None:
    """0001 as first shipped created whole-second DATETIME columns on MySQL; 0002 widens them and
    replaces the indexes MySQL could not make partial."""
    from alembic import command

    from aws_reconciler.store.migrate import _config

    engine = create_store_engine(mariadb_url)
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    with engine.begin() as conn:
        for column in ("created_at", "updated_at"):
            conn.exec_driver_sql(f"ALTER TABLE aws_reconciler_task MODIFY {column} DATETIME NOT NULL")
        conn.exec_driver_sql("ALTER TABLE aws_reconciler_lease MODIFY expires_at DATETIME NOT NULL")
    assert migrate(engine) == ("0001", head_revision())

    inspector = sa.inspect(engine)
    types = {c["name"]: c["type"] for c in inspector.get_columns("aws_reconciler_task")}
    assert all(getattr(types[c], "fsp", None) == 6 for c in ("created_at", "updated_at", "token_expires_at"))
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("aws_reconciler_task")}
    assert indexes["ix_aws_reconciler_task_unreported"] == ["owner", "backend", "reported_at"]
    assert indexes["ix_aws_reconciler_task_open"] == ["backend", "finished_at", "phase"]
    test_timestamps_keep_their_microseconds(TaskStore(engine))
    engine.dispose()


# ---- workload kinds and teams (migration 0003) ------------------------------------------------


def test_rows_written_before_0003_read_as_task_rows_of_no_team(store_url: str) -> None:
    from alembic import command

    from aws_reconciler.store.migrate import _config

    engine = create_store_engine(store_url)
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO aws_reconciler_task (id, backend, owner, dag_id, task_id, run_id, map_index, try_number, "
                "desired, phase, attempt, created_at, updated_at) VALUES ('old', 'ecs', '1', 'dag', 't', 'run', -1, 1, "
                "'running', 'pending', 0, :now, :now)"
            ),
            {"now": now.replace(tzinfo=None) if engine.dialect.name != "postgresql" else now},
        )
    assert migrate(engine) == ("0002", head_revision())
    (old,) = TaskStore(engine).open_tasks(backend=Backend.ECS)
    assert (old.id, old.kind, old.team, old.log_path) == ("old", WorkloadKind.TASK, None, None)
    engine.dispose()


def test_each_team_sees_and_changes_only_its_own_rows(store: TaskStore) -> None:
    """A team's executor and reconciler share one store with the others and never touch their rows."""
    a, b = TaskStore(store.engine, team="team_a"), TaskStore(store.engine, team="team_b")
    key = TiKey("dag", "same-key", "run", -1, 1)
    rows = {"none": new_task(key=key), "team_a": new_task(key=key), "team_b": new_task(key=key)}
    store.add([rows["none"]])
    a.add([rows["team_a"]])
    b.add([rows["team_b"]])

    # Nobody's queueing supersedes another team's row of the same key.
    for scoped, name in ((store, "none"), (a, "team_a"), (b, "team_b")):
        (only,) = scoped.open_tasks(backend=Backend.ECS)
        assert (only.id, only.team, only.superseded_at) == (rows[name].id, None if name == "none" else name, None)

    # Revoking by key, adopting and reporting stay within the team.
    assert a.revoke(keys=[key]) == 1
    assert store.get(rows["team_b"].id).desired is Desired.RUNNING  # type: ignore[union-attr]
    assert [r.id for r in b.adopt(owner="9", backend=Backend.ECS, ids=[rows["team_a"].id], keys=[])] == []
    for scoped in (store, b):
        (row,) = scoped.open_tasks(backend=Backend.ECS)
        assert scoped.transition(row.id, expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    assert [r.id for r in b.finished_unreported(owner="1", backend=Backend.ECS)] == [rows["team_b"].id]
    assert b.mark_reported([Report(rows["none"].id)], owner="1") == set()

    # Retention of one team deletes nothing of another's.
    store.mark_reported([Report(rows["none"].id)], owner="1")
    b.mark_reported([Report(rows["team_b"].id)], owner="1")
    assert b.delete_reported_before(datetime.now(UTC) + timedelta(days=1)) == 1
    assert store.get(rows["none"].id) is not None
    assert store.get(rows["team_a"].id) is not None


def test_a_callback_row_keeps_its_kind_and_log_path(store: TaskStore) -> None:
    callback = NewTask(
        id=str(uuid.uuid4()),
        backend=Backend.BATCH,
        owner="1",
        key=TiKey("dag", "callback:x", "run", -1, 1),
        queue=None,
        target="q",
        spec={},
        kind=WorkloadKind.CALLBACK,
        log_path="executor_callbacks/dag/run/x",
    )
    store.add([callback])
    stored = store.get(callback.id)
    assert stored is not None
    assert (stored.kind, stored.log_path) == (WorkloadKind.CALLBACK, "executor_callbacks/dag/run/x")
