"""The scheduler-side EcsExecutor against a real task store (SQLite and PostgreSQL).

Each test plays one scenario the scheduler drives: queueing, reporting, a scheduler restart,
revoking, requeueing, shutdown and start-up. The reconciler's side is played by a second
``TaskStore`` on the same database (the ``store`` fixture), as the real reconciler process would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from airflow.executors.workloads import ExecuteTask
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

from aws_reconciler.config import ConfigError, load_settings
from aws_reconciler.executor import EcsExecutor
from aws_reconciler.model import Backend, Desired, Phase, TiKey
from aws_reconciler.store import NewTask, TaskRecord, TaskStore, check_schema
from aws_reconciler.store.queries import TaskQueries
from support.stores import sent_request
from support.workloads import RUN_ID, TOKEN, FakeTI, airflow_ti, clear_airflow_tis, jwt_expiring_at, make_workload, rid

if TYPE_CHECKING:
    # Annotations only: at run time every directory's conftest is a module named "conftest".
    from conftest import ExecutorFactory, SettingsFactory
    from support.awscalls import AwsCalls

pytestmark = pytest.mark.airflow

EXECUTE_WORKLOAD = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string"]


# ---- helpers ------------------------------------------------------------------------------


def queue(executor: EcsExecutor, workloads: Iterable[ExecuteTask]) -> None:
    """What the scheduler does between heartbeats."""
    for workload in workloads:
        executor.queue_workload(workload, session=None)  # type: ignore[arg-type]


def events(executor: EcsExecutor) -> dict[TaskInstanceKey, tuple[Any, Any]]:
    """The events the scheduler would process now (flushes the buffer, as the scheduler does)."""
    return dict(executor.get_event_buffer())


def finish(store: TaskStore, workload: ExecuteTask, phase: Phase, reason: str | None = None) -> None:
    """The reconciler observed the task's end."""
    assert store.transition(rid(workload), expect_phases=list(Phase), phase=phase, status_reason=reason)


def row(store: TaskStore, workload: ExecuteTask) -> TaskRecord:
    record = store.get(rid(workload))
    assert record is not None, f"no row for {workload.ti.task_id}"
    return record


@pytest.fixture(autouse=True)
def _no_task_instances() -> None:
    """Each test starts with no task instance in Airflow's database (rows would carry over)."""
    clear_airflow_tis()


@dataclass
class SqlLog:
    """Statements and commits seen on one engine."""

    statements: list[tuple[str, Any]] = field(default_factory=list)
    commits: int = 0


@contextmanager
def sql_log(engine: sa.engine.Engine) -> Iterator[SqlLog]:
    """Record every statement sent to the database and every COMMIT, while the block runs."""
    log = SqlLog()

    def on_execute(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        log.statements.append((statement, parameters))

    def on_commit(conn: Any) -> None:
        log.commits += 1

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        yield log
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)


# ---- queueing -----------------------------------------------------------------------------


def test_one_heartbeat_records_every_queued_workload_in_one_transaction(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor(job_id=42)
    workloads = [make_workload(f"t{i}") for i in range(3)]
    queue(executor, workloads)

    with sql_log(executor.store.engine) as log:
        executor.heartbeat()

    # One transaction for the whole batch: a scheduler never leaves half a batch recorded.
    assert log.commits == 1
    assert executor.queued_tasks == {}
    assert executor.running == {w.ti.key for w in workloads}
    assert events(executor) == {}
    for workload in workloads:
        record = row(store, workload)
        assert (record.phase, record.desired, record.owner, record.backend) == (
            Phase.PENDING,
            Desired.RUNNING,
            "42",
            Backend.ECS,
        )
        assert record.key == TiKey("example_dag", workload.ti.task_id, RUN_ID, -1, 1)
        assert record.target == "airflow"
        spec = record.spec
        assert spec is not None
        assert spec["startedBy"] == "airflow"
        tags = {t["key"]: t["value"] for t in spec["tags"]}
        assert tags["aws-reconciler:id"] == rid(workload)
        assert tags["aws-reconciler:deployment"] == "airflow"
        assert tags["airflow:task_id"] == workload.ti.task_id
        assert "clientToken" not in spec, "the reconciler adds the per-attempt token"
        assert TOKEN not in json.dumps(spec), "the stored request keeps the token apart"
        (container,) = sent_request(store, rid(workload))["overrides"]["containerOverrides"]
        assert container["name"] == "base"
        assert container["command"][:-1] == EXECUTE_WORKLOAD
        # The container gets exactly the workload Airflow queued, token included.
        parsed = ExecuteTask.model_validate_json(container["command"][-1])
        assert parsed.model_dump() == workload.model_dump()
        assert json.loads(container["command"][-1])["token"] == TOKEN
    aws_calls.assert_none()


def test_a_record_id_stored_for_another_task_fails_only_that_task(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    executor = new_executor()
    workloads = [make_workload(f"t{i}") for i in range(3)]
    # A row already holds the third workload's id for another task instance.
    clash = NewTask(
        id=rid(workloads[2]),
        backend=Backend.ECS,
        owner="someone-else",
        key=TiKey("other_dag", "x", RUN_ID, -1, 1),
        queue="default",
        target="airflow",
        spec={},
    )
    store.add([clash])
    queue(executor, workloads)

    executor.heartbeat()

    assert row(store, workloads[0]).phase is Phase.PENDING
    assert row(store, workloads[1]).phase is Phase.PENDING
    assert row(store, workloads[2]).owner == "someone-else", "the other task's row is left alone"
    assert executor.queued_tasks == {}
    assert executor.running == {workloads[0].ti.key, workloads[1].ti.key}
    ((key, (state, info)),) = events(executor).items()
    assert (key, state) == (workloads[2].ti.key, TaskInstanceState.FAILED)
    assert rid(workloads[2]) in info and "another task instance" in info


def test_a_retried_insert_whose_first_commit_landed_is_idempotent(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    """The commit reached the database but its answer was lost: the workloads stayed queued and
    the next heartbeat inserts the same ids again."""
    executor = new_executor()
    workloads = [make_workload(f"t{i}") for i in range(3)]
    store.add(
        [
            NewTask(rid(w), Backend.ECS, "1", TiKey("example_dag", w.ti.task_id, RUN_ID, -1, 1), "default", "x", {})
            for w in workloads[:2]
        ]
    )
    queue(executor, workloads)

    executor.heartbeat()

    assert executor.queued_tasks == {}
    assert executor.running == {w.ti.key for w in workloads}
    assert events(executor) == {}
    assert {r.id for r in store.open_tasks(backend=Backend.ECS)} == {rid(w) for w in workloads}


@pytest.mark.parametrize(
    ("executor_config", "named"),
    [
        ({"clientToken": "x"}, "clientToken"),
        ({"startedBy": "me"}, "startedBy"),
        ({"bogus": 1}, "bogus"),
        ({"cluster": "not-configured"}, "cluster"),
        ({"overrides": {"cpu": 512}}, "overrides.cpu"),
        ({"tags": [{"key": "aws-reconciler:id", "value": "x"}]}, "tags.aws-reconciler:id"),
    ],
)
def test_invalid_executor_config_fails_only_that_task(
    new_executor: ExecutorFactory,
    store: TaskStore,
    aws_calls: AwsCalls,
    executor_config: dict[str, Any],
    named: str,
) -> None:
    executor = new_executor()
    good = [make_workload("good1"), make_workload("good2")]
    bad = make_workload("bad", executor_config=executor_config)
    queue(executor, [good[0], bad, good[1]])

    executor.heartbeat()

    reported = events(executor)
    assert list(reported) == [bad.ti.key], "only the task with the bad executor_config fails"
    state, info = reported[bad.ti.key]
    assert state == TaskInstanceState.FAILED
    assert f"{named!r}" in info, f"the message must name the bad key {named!r}: {info}"
    assert TOKEN not in info

    failed = row(store, bad)
    assert (failed.phase, failed.status_reason, failed.spec) == (Phase.FAILED, info, None)
    assert failed.reported_at is not None
    # Nothing is launched for it: the reconciler has no open work for the row.
    assert rid(bad) not in {r.id for r in store.open_tasks(backend=Backend.ECS)}
    for workload in good:
        assert row(store, workload).phase is Phase.PENDING
    assert executor.running == {w.ti.key for w in good}

    executor.heartbeat()
    assert events(executor) == {}, "the failure is reported once"
    aws_calls.assert_none()


# ---- reporting ----------------------------------------------------------------------------


def test_sync_reports_each_finished_row_exactly_once_to_its_owner(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor(job_id=1)
    ok, broken, still_running = (make_workload(n) for n in ("ok", "broken", "still_running"))
    queue(executor, [ok, broken, still_running])
    executor.heartbeat()
    assert events(executor) == {}

    reason = "CannotPullContainerError: pull image manifest has been retried 5 time(s)"
    finish(store, ok, Phase.SUCCEEDED)
    finish(store, broken, Phase.FAILED, reason)

    # A second scheduler (HA) heartbeating meanwhile reports nothing it does not own...
    other = new_executor(job_id=2)
    other.heartbeat()
    assert events(other) == {}
    assert row(store, ok).reported_at is None

    # ...and the owner reports each outcome once.
    executor.heartbeat()
    assert events(executor) == {
        ok.ti.key: (TaskInstanceState.SUCCESS, "succeeded"),
        broken.ti.key: (TaskInstanceState.FAILED, reason),
    }
    assert executor.running == {still_running.ti.key}
    executor.heartbeat()
    assert events(executor) == {}
    assert row(store, ok).reported_at is not None
    assert row(store, broken).reported_at is not None
    assert row(store, still_running).reported_at is None
    aws_calls.assert_none()


def test_heartbeat_with_1000_running_rows_is_one_query_and_no_aws_call(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor(parallelism=2000)
    workloads = [make_workload(f"t{i:04d}") for i in range(1000)]
    queue(executor, workloads)
    with sql_log(executor.store.engine) as log:
        executor.heartbeat()
    assert log.commits == 1, "1,000 workloads in one transaction"
    assert len(executor.running) == 1000
    assert TaskQueries(store.engine).counts() == {("ecs", "pending"): 1000}

    # Nothing finished: the heartbeat's cost must not grow with the number of running rows.
    with sql_log(executor.store.engine) as log:
        executor.heartbeat()
    assert 1 <= len(log.statements) <= 2, log.statements
    assert events(executor) == {}

    finished = workloads[:10]
    for workload in finished:
        finish(store, workload, Phase.SUCCEEDED)
    with sql_log(executor.store.engine) as log:
        executor.heartbeat()
    # The read, then one write transaction (the update and its read-back), whatever is running.
    assert len(log.statements) <= 3 and log.commits == 1, [s for s, _ in log.statements]
    assert set(events(executor)) == {w.ti.key for w in finished}
    assert len(executor.running) == 990
    aws_calls.assert_none()


def test_all_1000_rows_finishing_at_once_are_each_reported_once(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    executor = new_executor(parallelism=2000)
    workloads = [make_workload(f"t{i:04d}") for i in range(1000)]
    queue(executor, workloads)
    executor.heartbeat()
    with store.engine.begin() as conn:
        # The reconciler records many outcomes between two heartbeats (more than one id chunk).
        for workload in workloads:
            store.transition(rid(workload), expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED, conn=conn)

    executor.heartbeat()
    reported = events(executor)
    assert set(reported) == {w.ti.key for w in workloads}
    assert executor.running == set()
    executor.heartbeat()
    assert events(executor) == {}


def test_the_sync_query_is_served_by_the_unreported_index(new_executor: ExecutorFactory, store: TaskStore) -> None:
    executor = new_executor()
    queue(executor, [make_workload("t1")])
    executor.heartbeat()
    with sql_log(executor.store.engine) as log:
        executor.sync()
    ((statement, parameters),) = log.statements

    with executor.store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
        else:
            # Tiny tables always get a sequential scan; forbid it to see whether the index applies.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
    assert "ix_aws_reconciler_task_unreported" in plan, plan


# ---- scheduler restart: adoption ----------------------------------------------------------


def test_a_restarted_scheduler_adopts_everything_from_the_store_without_aws(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    old = new_executor(job_id=1)
    workloads = [make_workload(f"t{i}") for i in range(5)]
    queue(old, workloads)
    old.heartbeat()
    # Scheduler 1 dies. Meanwhile the reconciler keeps going and two tasks end.
    reason = "Essential container in task exited"
    finish(store, workloads[0], Phase.SUCCEEDED)
    finish(store, workloads[1], Phase.FAILED, reason)

    new = new_executor(job_id=2)
    assert new.try_adopt_task_instances([FakeTI.of(w) for w in workloads]) == []
    assert new.running == {w.ti.key for w in workloads}
    assert {row(store, w).owner for w in workloads} == {"2"}

    # A TI this deployment never recorded is left to the scheduler to reset.
    stranger = FakeTI.of(make_workload("never_queued"))
    assert new.try_adopt_task_instances([stranger]) == [stranger]
    assert stranger.key not in new.running

    new.heartbeat()
    assert events(new) == {
        workloads[0].ti.key: (TaskInstanceState.SUCCESS, "succeeded"),
        workloads[1].ti.key: (TaskInstanceState.FAILED, reason),
    }
    # Had scheduler 1 only looked dead, it must not report the adopted rows a second time.
    old.heartbeat()
    assert events(old) == {}
    aws_calls.assert_none()


def test_adoption_by_ti_key_when_the_ti_has_no_external_executor_id(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    old = new_executor(job_id=1)
    workload = make_workload("t1")
    queue(old, [workload])
    old.heartbeat()

    new = new_executor(job_id=2)
    ti = FakeTI.of(workload, external_executor_id=None)
    assert new.try_adopt_task_instances([ti]) == []
    assert new.running == {ti.key}
    assert row(store, workload).owner == "2"
    finish(store, workload, Phase.SUCCEEDED)
    new.heartbeat()
    assert events(new) == {ti.key: (TaskInstanceState.SUCCESS, "succeeded")}


def test_adoption_re_reports_an_outcome_the_dead_scheduler_never_applied(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    old = new_executor(job_id=1)
    workload = make_workload("t1")
    queue(old, [workload])
    old.heartbeat()
    finish(store, workload, Phase.SUCCEEDED)
    old.heartbeat()  # buffered and marked reported, but scheduler 1 dies before processing it
    assert row(store, workload).reported_at is not None

    # The TI is still running in Airflow's database, so the new scheduler must hear the outcome.
    new = new_executor(job_id=2)
    assert new.try_adopt_task_instances([FakeTI.of(workload)]) == []
    new.heartbeat()
    assert events(new) == {workload.ti.key: (TaskInstanceState.SUCCESS, "succeeded")}


def test_adoption_never_hands_an_earlier_queueing_to_a_ti_whose_row_is_missing(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    """A rescheduled sensor: same try, new id; scheduler 1 died before recording the new queueing.

    The earlier queueing's success must not be adopted and re-reported for it: Airflow would fail
    a QUEUED TI on a SUCCESS event. Not adopting lets the scheduler reset and re-queue it.
    """
    old = new_executor(job_id=1)
    first = make_workload("sensor")
    queue(old, [first])
    old.heartbeat()
    finish(store, first, Phase.SUCCEEDED)  # the container exited after the sensor asked to reschedule
    old.heartbeat()
    assert set(events(old)) == {first.ti.key}

    requeued = FakeTI.of(first, external_executor_id=str(uuid.uuid4()))
    new = new_executor(job_id=2)
    assert new.try_adopt_task_instances([requeued]) == [requeued]
    assert new.running == set()
    new.heartbeat()
    assert events(new) == {}
    assert row(store, first).owner == "1"


# ---- revoke, requeue, end -----------------------------------------------------------------


def test_revoke_stops_the_row_and_suppresses_its_outcome(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor()
    stuck, other = make_workload("stuck"), make_workload("other")
    queue(executor, [stuck, other])
    executor.heartbeat()

    executor.revoke_task(ti=FakeTI.of(stuck))  # type: ignore[arg-type]
    assert row(store, stuck).desired is Desired.STOPPED
    assert row(store, other).desired is Desired.RUNNING
    assert executor.running == {other.ti.key}

    # The reconciler stops it; the scheduler has already decided the TI's fate, so no event.
    finish(store, stuck, Phase.FAILED, "Task stopped by the reconciler")
    finish(store, other, Phase.SUCCEEDED)
    executor.heartbeat()
    assert events(executor) == {other.ti.key: (TaskInstanceState.SUCCESS, "succeeded")}
    aws_calls.assert_none()


def test_revoke_suppresses_an_outcome_recorded_just_before_it(new_executor: ExecutorFactory, store: TaskStore) -> None:
    """The row finished after the last sync but before the revoke.

    Reporting it would reach a TI the scheduler has just put back to SCHEDULED for the same try,
    which Airflow treats as "killed externally" and fails.
    """
    executor = new_executor()
    stuck = make_workload("stuck")
    queue(executor, [stuck])
    executor.heartbeat()
    finish(store, stuck, Phase.FAILED, "Essential container in task exited")

    executor.revoke_task(ti=FakeTI.of(stuck))  # type: ignore[arg-type]
    executor.heartbeat()
    assert events(executor) == {}


def test_revoke_of_a_workload_still_in_the_executor_queue(new_executor: ExecutorFactory, store: TaskStore) -> None:
    executor = new_executor()
    waiting = make_workload("waiting")
    queue(executor, [waiting])

    executor.revoke_task(ti=FakeTI.of(waiting))  # type: ignore[arg-type]
    executor.heartbeat()
    assert executor.queued_tasks == {}
    assert store.get(rid(waiting)) is None, "a revoked workload is never recorded, so never launched"
    assert events(executor) == {}


def test_requeue_of_the_same_try_reports_only_the_new_queueing(new_executor: ExecutorFactory, store: TaskStore) -> None:
    executor = new_executor()
    first = make_workload("sensor")
    queue(executor, [first])
    executor.heartbeat()
    # Rescheduled before its container was seen to stop: same key and try, new id.
    second = make_workload("sensor", record_id=str(uuid.uuid4()))
    assert second.ti.key == first.ti.key
    queue(executor, [second])
    executor.heartbeat()
    assert row(store, second).phase is Phase.PENDING

    finish(store, first, Phase.SUCCEEDED)
    executor.heartbeat()
    assert events(executor) == {}, "the earlier queueing's late outcome is not this queueing's"
    assert executor.running == {first.ti.key}

    reason = "OutOfMemoryError: Container killed due to memory usage"
    finish(store, second, Phase.FAILED, reason)
    executor.heartbeat()
    assert events(executor) == {second.ti.key: (TaskInstanceState.FAILED, reason)}
    executor.heartbeat()
    assert events(executor) == {}


def test_end_returns_at_once_and_leaves_the_tasks_running(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor()
    workloads = [make_workload("t1"), make_workload("t2")]
    queue(executor, workloads)
    executor.heartbeat()
    before = [row(store, w) for w in workloads]

    with sql_log(executor.store.engine) as log:
        executor.end()
        executor.terminate()

    # Nothing to wait for and nothing to touch: the next scheduler adopts the running tasks.
    assert log.statements == []
    after = [row(store, w) for w in workloads]
    assert after == before
    assert [r.spec for r in after] == [r.spec for r in before]
    assert {r.desired for r in after} == {Desired.RUNNING}
    aws_calls.assert_none()


# ---- start-up -----------------------------------------------------------------------------


def test_start_creates_the_store_schema_without_aws(
    new_executor: ExecutorFactory, store_url: str, aws_calls: AwsCalls
) -> None:
    executor = new_executor(start=False)
    executor.start()
    check_schema(executor.store.engine)
    aws_calls.assert_none()


def test_a_bad_setting_is_named_in_the_config_error(sqlite_url: str, make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigError) as error:
        make_settings(sqlite_url, AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE="BOGUS")
    message = str(error.value)
    assert "[aws_reconciler_ecs] launch_type" in message
    assert "'BOGUS'" in message
    assert "env AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE" in message


def test_start_fails_on_a_bad_setting_from_the_environment(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The path the scheduler takes: settings read from airflow.cfg and the environment at start().
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", sqlite_url)
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__CLUSTER", "airflow")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION", "airflow-task")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME", "base")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE", "BOGUS")
    executor = EcsExecutor()
    with pytest.raises(ConfigError, match=r"\[aws_reconciler_ecs\] launch_type = 'BOGUS'"):
        executor.start()


def test_start_without_a_cluster_names_the_option(sqlite_url: str, tmp_path: Path) -> None:
    executor = EcsExecutor()
    executor._settings = load_settings(
        environ={"AIRFLOW__AWS_RECONCILER__STORE_URL": sqlite_url}, cfg_path=tmp_path / "absent.cfg"
    )
    with pytest.raises(ConfigError, match=r"\[aws_reconciler_ecs\] cluster"):
        executor.start()
    # It fails before touching the store: no database file was created.
    assert not Path(sa.engine.make_url(sqlite_url).database or "").exists()


def test_start_with_only_the_providers_settings_names_config_migrate(sqlite_url: str, tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    # A scheduler still configured for the amazon provider's executors: the error names our
    # option, the warning before it the command that converts theirs.
    executor = EcsExecutor()
    executor._settings = load_settings(
        environ={
            "AIRFLOW__AWS_RECONCILER__STORE_URL": sqlite_url,
            "AIRFLOW__AWS_ECS_EXECUTOR__CLUSTER": "airflow",
            "AIRFLOW__AWS_ECS_EXECUTOR__TASK_DEFINITION": "airflow-task",
        },
        cfg_path=tmp_path / "absent.cfg",
    )
    with capture_logs() as logged, pytest.raises(ConfigError, match=r"\[aws_reconciler_ecs\] cluster"):
        executor.start()
    warnings = [str(e) for e in logged if e["log_level"] == "warning"]
    assert any("run `aws-reconciler config migrate`" in w for w in warnings), logged


# ---- Airflow metrics ----------------------------------------------------------------------


def test_scheduler_side_events_are_counted_in_airflows_stats(
    new_executor: ExecutorFactory, store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued, invalid, reported, adopted and revoked counts reach Airflow's own metrics."""
    from aws_reconciler.executor import base

    counted: dict[str, int] = {}
    monkeypatch.setattr(base.Stats, "incr", lambda name, n=1, **_: counted.__setitem__(name, counted.get(name, 0) + n))
    executor = new_executor()
    ok, bad = make_workload("ok"), make_workload("bad", executor_config={"bogus": 1})
    queue(executor, [ok, bad])
    executor.heartbeat()
    finish(store, ok, Phase.SUCCEEDED)
    executor.heartbeat()
    assert counted == {
        "aws_reconciler.ecs.queued": 1,
        "aws_reconciler.ecs.invalid_config": 1,
        "aws_reconciler.ecs.reported_success": 1,
        "aws_reconciler.ecs.reported_failed": 1,
    }


# ---- the try's current state in Airflow ------------------------------------------------------


@pytest.mark.parametrize(
    "state", [TaskInstanceState.UP_FOR_RESCHEDULE, TaskInstanceState.SCHEDULED, TaskInstanceState.DEFERRED]
)
def test_no_event_for_a_try_that_was_rescheduled_or_deferred_meanwhile(
    new_executor: ExecutorFactory, store: TaskStore, state: TaskInstanceState
) -> None:
    """A reschedule sensor's poke container stops after the TI already waits for its next poke
    (or a deferred task's container after it deferred): a SUCCESS for that try would fail it."""
    executor = new_executor()
    sensor = make_workload("sensor")
    queue(executor, [sensor])
    executor.heartbeat()
    airflow_ti(sensor, state)
    finish(store, sensor, Phase.SUCCEEDED)

    executor.heartbeat()

    assert events(executor) == {}
    assert executor.running == set(), "the slot is free for the next poke"
    record = row(store, sensor)
    assert record.reported_at is not None and record.ti_state == state.value
    executor.heartbeat()
    assert events(executor) == {}


def test_an_event_for_an_earlier_try_is_still_sent(new_executor: ExecutorFactory, store: TaskStore) -> None:
    """Only the same try is checked: Airflow ignores an event of a try that is over."""
    executor = new_executor()
    task = make_workload("t1")
    queue(executor, [task])
    executor.heartbeat()
    airflow_ti(task, TaskInstanceState.SCHEDULED, try_number=2)
    finish(store, task, Phase.FAILED, "Essential container in task exited")
    executor.heartbeat()
    assert events(executor) == {task.ti.key: (TaskInstanceState.FAILED, "Essential container in task exited")}


def test_the_state_check_is_one_query_of_airflows_ti_key(new_executor: ExecutorFactory, store: TaskStore) -> None:
    from airflow import settings

    executor = new_executor(parallelism=64)
    workloads = [make_workload(f"t{i}") for i in range(50)]
    queue(executor, workloads)
    executor.heartbeat()
    for workload in workloads:
        airflow_ti(workload, TaskInstanceState.SUCCESS)
        finish(store, workload, Phase.SUCCEEDED)
    assert settings.engine is not None
    with sql_log(settings.engine) as log:
        executor.heartbeat()
    selects = [statement for statement, _ in log.statements if "task_instance" in statement]
    assert len(selects) == 1, selects
    assert len(events(executor)) == 50


def test_a_token_that_expired_before_launch_waits_for_airflows_requeue(
    new_executor: ExecutorFactory, store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reporting FAILED would fail the QUEUED TI and burn a try. Airflow's stuck-in-queued handling
    revokes it instead and queues it again with a fresh token."""
    from aws_reconciler.executor import base

    counted: dict[str, int] = {}
    monkeypatch.setattr(base.Stats, "incr", lambda name, n=1, **_: counted.__setitem__(name, counted.get(name, 0) + n))
    executor = new_executor()
    expired = make_workload("expired", token=jwt_expiring_at(datetime.now(UTC) - timedelta(seconds=5)))
    broken = make_workload("broken")
    queue(executor, [expired, broken])
    executor.heartbeat()
    for workload in (expired, broken):
        airflow_ti(workload, TaskInstanceState.QUEUED)
    finish(store, expired, Phase.FAILED, "not launched: the Airflow workload token expired")
    finish(store, broken, Phase.FAILED, "launch failed: task definition is inactive")

    executor.heartbeat()
    executor.heartbeat()

    # A row that failed for another reason while its token is valid is reported as ever.
    assert events(executor) == {broken.ti.key: (TaskInstanceState.FAILED, "launch failed: task definition is inactive")}
    assert executor.running == {expired.ti.key}
    assert row(store, expired).reported_at is None
    assert counted["aws_reconciler.ecs.held_expired"] == 2

    # The scheduler's stuck-in-queued check revokes it (and sets it back to SCHEDULED).
    executor.revoke_task(ti=FakeTI.of(expired))
    airflow_ti(expired, TaskInstanceState.SCHEDULED)
    executor.heartbeat()
    assert events(executor) == {}
    assert executor.running == set()


def test_queueing_records_the_tokens_own_expiry(new_executor: ExecutorFactory, store: TaskStore) -> None:
    executor = new_executor()
    exp = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    workload = make_workload("t1", token=jwt_expiring_at(exp))
    queue(executor, [workload])
    executor.heartbeat()
    assert row(store, workload).token_expires_at == exp


# ---- HA schedulers ------------------------------------------------------------------------


def test_a_newer_queueing_by_another_scheduler_frees_the_slot_of_the_first(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    """Scheduler B queues the next poke of a try scheduler A still tracks."""
    a, b = new_executor(job_id=1), new_executor(job_id=2)
    first = make_workload("sensor")
    queue(a, [first])
    a.heartbeat()
    second = make_workload("sensor", record_id=str(uuid.uuid4()))
    queue(b, [second])
    b.heartbeat()
    assert row(store, first).desired is Desired.STOPPED

    a.heartbeat()
    assert a.running == set(), "A learns its row was superseded and frees the slot"
    assert events(a) == {}
    finish(store, first, Phase.SUCCEEDED)
    a.heartbeat()
    assert events(a) == {}, "the superseded row's late outcome is nobody's"

    airflow_ti(second, TaskInstanceState.SUCCESS)
    finish(store, second, Phase.SUCCEEDED)
    b.heartbeat()
    assert events(b) == {second.ti.key: (TaskInstanceState.SUCCESS, "succeeded")}


def test_a_row_adopted_while_its_old_owner_reports_is_reported_by_the_new_owner(
    new_executor: ExecutorFactory, store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, new = new_executor(job_id=1), new_executor(job_id=2)
    workload = make_workload("t1")
    queue(slow, [workload])
    slow.heartbeat()
    finish(store, workload, Phase.SUCCEEDED)

    read = slow.store.finished_unreported

    def read_then_lose_the_row(**kwargs: Any) -> list[TaskRecord]:
        rows = read(**kwargs)
        # Scheduler 2 took scheduler 1 for dead and adopted its TIs in between.
        assert new.try_adopt_task_instances([FakeTI.of(workload)]) == []
        return rows

    monkeypatch.setattr(slow.store, "finished_unreported", read_then_lose_the_row)
    slow.heartbeat()
    assert events(slow) == {}
    assert slow.running == set()

    new.heartbeat()
    assert events(new) == {workload.ti.key: (TaskInstanceState.SUCCESS, "succeeded")}


# ---- outcomes tell the truth --------------------------------------------------------------


def test_a_try_cleared_while_it_ran_is_recorded_revoked(
    new_executor: ExecutorFactory, store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cleared in the UI: Airflow sets the TI to RESTARTING, its supervisor kills the task, the
    container exits 0. Airflow needs the SUCCESS event to schedule the try again; the store, the
    status report and the metrics count it as revoked, not as a success."""
    from aws_reconciler.executor import base
    from aws_reconciler.status import render_counts
    from aws_reconciler.store.queries import TaskQueries

    counted: dict[str, int] = {}
    monkeypatch.setattr(base.Stats, "incr", lambda name, n=1, **_: counted.__setitem__(name, counted.get(name, 0) + n))
    executor = new_executor()
    cleared, done = make_workload("cleared"), make_workload("done")
    queue(executor, [cleared, done])
    executor.heartbeat()
    airflow_ti(cleared, TaskInstanceState.RESTARTING)
    airflow_ti(done, TaskInstanceState.SUCCESS)
    finish(store, cleared, Phase.SUCCEEDED)
    finish(store, done, Phase.SUCCEEDED)

    executor.heartbeat()

    assert events(executor) == {
        cleared.ti.key: (TaskInstanceState.SUCCESS, "succeeded"),
        done.ti.key: (TaskInstanceState.SUCCESS, "succeeded"),
    }
    record = row(store, cleared)
    assert (record.phase, record.ti_state) == (Phase.REVOKED, "restarting")
    assert record.status_reason is not None and "cleared" in record.status_reason
    assert row(store, done).phase is Phase.SUCCEEDED
    counts = TaskQueries(store.engine).counts()
    assert (counts[("ecs", "revoked")], counts[("ecs", "succeeded")]) == (1, 1)
    header, line = render_counts(counts)
    assert "REVOKED" in header.split()
    assert line.split()[header.split().index("REVOKED")] == "1"
    assert counted["aws_reconciler.ecs.reported_revoked"] == 1
    assert counted["aws_reconciler.ecs.reported_success"] == 1


def test_a_container_that_exited_0_for_a_failed_try_is_recorded_failed(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    """The run was marked failed (or the task failed): the exit code says nothing, Airflow does."""
    executor = new_executor()
    workload = make_workload("t1")
    queue(executor, [workload])
    executor.heartbeat()
    airflow_ti(workload, TaskInstanceState.FAILED)
    finish(store, workload, Phase.SUCCEEDED)
    executor.heartbeat()
    assert set(events(executor)) == {workload.ti.key}
    record = row(store, workload)
    assert (record.phase, record.ti_state) == (Phase.FAILED, "failed")
    assert "Airflow recorded the try as failed" in (record.status_reason or "")
