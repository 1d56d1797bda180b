"""The scheduler-side BatchExecutor against a real task store (SQLite and PostgreSQL), alone and
beside the EcsExecutor in one scheduler. No AWS call in any heartbeat."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from airflow.executors.workloads import ExecuteTask
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

from aws_reconciler.config import ConfigError, Settings
from aws_reconciler.executor import BatchExecutor, EcsExecutor
from aws_reconciler.executor.base import ReconcilerExecutor
from aws_reconciler.executor.logs import LogLocation, LogsUnavailable, TaskLogs
from aws_reconciler.model import Backend, Desired, Phase, TiKey
from aws_reconciler.store import TaskRecord, TaskStore
from support.stores import sent_request
from support.workloads import RUN_ID, TOKEN, FakeTI, make_workload, rid

if TYPE_CHECKING:
    from conftest import SettingsFactory
    from support.awscalls import AwsCalls

pytestmark = pytest.mark.airflow

EXECUTE_WORKLOAD = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string"]


@pytest.fixture
def new_executor(store_url: str, make_settings: SettingsFactory) -> Iterator[Any]:
    """``new_executor(cls=BatchExecutor, job_id=1, **env)``: a started executor on the test's store,
    as a scheduler with job id ``job_id`` would run it (a fresh instance per call)."""
    created: list[ReconcilerExecutor] = []

    def factory(
        cls: type[ReconcilerExecutor] = BatchExecutor, *, job_id: int = 1, start: bool = True, **env: str
    ) -> Any:
        executor = cls(parallelism=2000)
        executor.job_id = job_id
        executor._settings = make_settings(store_url, **env)
        created.append(executor)
        if start:
            executor.start()
        return executor

    yield factory
    for executor in created:
        if executor._store is not None:
            executor._store.engine.dispose()


def queue(executor: ReconcilerExecutor, workloads: Iterable[ExecuteTask]) -> None:
    for workload in workloads:
        executor.queue_workload(workload, session=None)  # type: ignore[arg-type]


def events(executor: ReconcilerExecutor) -> dict[TaskInstanceKey, tuple[Any, Any]]:
    return dict(executor.get_event_buffer())


def finish(store: TaskStore, workload: ExecuteTask, phase: Phase, reason: str | None = None) -> None:
    assert store.transition(rid(workload), expect_phases=list(Phase), phase=phase, status_reason=reason)


def row(store: TaskStore, workload: ExecuteTask) -> TaskRecord:
    record = store.get(rid(workload))
    assert record is not None
    return record


# ---- queueing --------------------------------------------------------------------------------


def test_a_heartbeat_records_submit_job_requests_without_aws(
    new_executor: Any, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor(job_id=42)
    workloads = [make_workload(f"t{i}") for i in range(3)]
    queue(executor, workloads)
    executor.heartbeat()

    assert executor.running == {w.ti.key for w in workloads}
    assert events(executor) == {}
    for workload in workloads:
        record = row(store, workload)
        assert (record.phase, record.owner, record.backend, record.target) == (
            Phase.PENDING,
            "42",
            Backend.BATCH,
            "airflow",
        )
        spec = record.spec
        assert spec is not None
        assert (spec["jobQueue"], spec["jobDefinition"]) == ("airflow", "airflow-job")
        assert "jobName" not in spec, "the reconciler names each attempt"
        assert spec["tags"]["aws-reconciler:id"] == rid(workload)
        assert spec["tags"]["airflow:task_id"] == workload.ti.task_id
        assert TOKEN not in json.dumps(spec), "the stored request keeps the token apart"
        command = sent_request(store, rid(workload))["containerOverrides"]["command"]
        assert command[:-1] == EXECUTE_WORKLOAD
        assert ExecuteTask.model_validate_json(command[-1]).model_dump() == workload.model_dump()
        assert json.loads(command[-1])["token"] == TOKEN
    aws_calls.assert_none()


@pytest.mark.parametrize(
    ("executor_config", "named"),
    [
        ({"jobName": "x"}, "jobName"),
        ({"arrayProperties": {"size": 2}}, "arrayProperties"),
        ({"bogus": 1}, "bogus"),
        ({"jobQueue": "not-configured"}, "jobQueue"),
        ({"containerOverrides": {"command": ["x"]}}, "containerOverrides.command"),
        ({"containerOverrides": {"memory": "lots"}}, "containerOverrides.memory"),
        ({"tags": {"aws-reconciler:deployment": "x"}}, "tags.aws-reconciler:deployment"),
        ({"eksPropertiesOverride": {}}, "eksPropertiesOverride"),
    ],
)
def test_invalid_executor_config_fails_only_that_task(
    new_executor: Any, store: TaskStore, aws_calls: AwsCalls, executor_config: dict[str, Any], named: str
) -> None:
    executor = new_executor()
    good = [make_workload("good1"), make_workload("good2")]
    bad = make_workload("bad", executor_config=executor_config)
    queue(executor, [good[0], bad, good[1]])
    executor.heartbeat()

    reported = events(executor)
    assert list(reported) == [bad.ti.key]
    state, info = reported[bad.ti.key]
    assert state == TaskInstanceState.FAILED
    assert f"{named!r}" in info, info
    assert TOKEN not in info
    failed = row(store, bad)
    assert (failed.phase, failed.spec) == (Phase.FAILED, None)
    assert rid(bad) not in {r.id for r in store.open_tasks(backend=Backend.BATCH)}
    assert all(row(store, w).phase is Phase.PENDING for w in good)
    executor.heartbeat()
    assert events(executor) == {}, "the failure is reported once"
    aws_calls.assert_none()


def test_a_task_may_choose_an_allowed_queue_and_override_its_container(new_executor: Any, store: TaskStore) -> None:
    executor = new_executor(AIRFLOW__AWS_RECONCILER_BATCH__ALLOWED_JOB_QUEUES="gpu")
    workload = make_workload(
        "big",
        executor_config={
            "jobQueue": "gpu",
            "containerOverrides": {"resourceRequirements": [{"type": "GPU", "value": "1"}]},
        },
    )
    queue(executor, [workload])
    executor.heartbeat()
    record = row(store, workload)
    assert record.target == "gpu"
    assert record.spec and record.spec["containerOverrides"]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]


# ---- reporting, adoption, revoke ---------------------------------------------------------------


def test_sync_reports_each_finished_row_exactly_once_to_its_owner(
    new_executor: Any, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor(job_id=1)
    ok, broken, running = (make_workload(n) for n in ("ok", "broken", "running"))
    queue(executor, [ok, broken, running])
    executor.heartbeat()
    reason = "Task failed to start; CannotPullContainerError: pull access denied"
    finish(store, ok, Phase.SUCCEEDED)
    finish(store, broken, Phase.FAILED, reason)

    other = new_executor(job_id=2)
    other.heartbeat()
    assert events(other) == {}
    executor.heartbeat()
    assert events(executor) == {
        ok.ti.key: (TaskInstanceState.SUCCESS, "succeeded"),
        broken.ti.key: (TaskInstanceState.FAILED, reason),
    }
    assert executor.running == {running.ti.key}
    executor.heartbeat()
    assert events(executor) == {}
    aws_calls.assert_none()


def test_a_restarted_scheduler_adopts_from_the_store_without_aws(
    new_executor: Any, store: TaskStore, aws_calls: AwsCalls
) -> None:
    old = new_executor(job_id=1)
    workloads = [make_workload(f"t{i}") for i in range(4)]
    queue(old, workloads)
    old.heartbeat()
    finish(store, workloads[0], Phase.SUCCEEDED)

    new = new_executor(job_id=2)
    by_key = FakeTI.of(workloads[1], external_executor_id=None)
    tis = [FakeTI.of(workloads[0]), by_key, FakeTI.of(workloads[2]), FakeTI.of(workloads[3])]
    stranger = FakeTI.of(make_workload("never_queued"))
    assert new.try_adopt_task_instances([*tis, stranger]) == [stranger]
    assert new.running == {ti.key for ti in tis}
    assert {row(store, w).owner for w in workloads} == {"2"}
    new.heartbeat()
    assert events(new) == {workloads[0].ti.key: (TaskInstanceState.SUCCESS, "succeeded")}
    old.heartbeat()
    assert events(old) == {}
    aws_calls.assert_none()


def test_revoke_stops_the_row_and_suppresses_its_outcome(
    new_executor: Any, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor()
    stuck, other = make_workload("stuck"), make_workload("other")
    queue(executor, [stuck, other])
    executor.heartbeat()
    executor.revoke_task(ti=FakeTI.of(stuck))
    assert row(store, stuck).desired is Desired.STOPPED
    assert executor.running == {other.ti.key}
    finish(store, stuck, Phase.FAILED, "revoked by Airflow: Job cancelled")
    finish(store, other, Phase.SUCCEEDED)
    executor.heartbeat()
    assert events(executor) == {other.ti.key: (TaskInstanceState.SUCCESS, "succeeded")}
    aws_calls.assert_none()


# ---- start-up --------------------------------------------------------------------------------


def test_start_without_a_job_queue_names_the_option(store_url: str, make_settings: SettingsFactory) -> None:
    executor = BatchExecutor()
    executor._settings = make_settings(store_url, AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE="")
    with pytest.raises(ConfigError, match=r"\[aws_reconciler_batch\] job_queue"):
        executor.start()


def test_start_rejects_submit_job_kwargs_that_break_identity(store_url: str, make_settings: SettingsFactory) -> None:
    executor = BatchExecutor()
    executor._settings = make_settings(
        store_url, AIRFLOW__AWS_RECONCILER_BATCH__SUBMIT_JOB_KWARGS='{"jobName": "fixed"}'
    )
    with pytest.raises(ConfigError, match="submit_job_kwargs: 'jobName'"):
        executor.start()


# ---- both executors in one scheduler ---------------------------------------------------------


@pytest.fixture
def both_configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``[core] executor`` naming both executors; Airflow's executor-name cache emptied around the test."""
    from airflow.executors import executor_loader

    monkeypatch.setenv(
        "AIRFLOW__CORE__EXECUTOR", "aws_reconciler.executor.EcsExecutor,aws_reconciler.executor.BatchExecutor"
    )
    saved = list(executor_loader._executor_names)
    executor_loader._executor_names.clear()
    yield
    executor_loader._executor_names[:] = saved


def test_both_executors_in_one_scheduler_each_report_only_their_own_rows(
    both_configured: None, store_url: str, make_settings: SettingsFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    """``AIRFLOW__CORE__EXECUTOR=...EcsExecutor,...BatchExecutor``: Airflow loads both; tasks queued to
    each become rows of that backend; one scheduler job owns both, yet each executor reports,
    adopts and tracks only its backend's rows."""
    from airflow.executors.executor_loader import ExecutorLoader

    names = [str(name.module_path) for name in ExecutorLoader.get_executor_names()]
    assert names == ["aws_reconciler.executor.EcsExecutor", "aws_reconciler.executor.BatchExecutor"]
    loaded = ExecutorLoader.init_executors()
    assert [type(e) for e in loaded] == [EcsExecutor, BatchExecutor]
    settings: Settings = make_settings(store_url)
    for executor in loaded:
        executor.job_id = 7
        assert isinstance(executor, ReconcilerExecutor)
        executor._settings = settings
        executor.start()
    ecs, batch = loaded
    on_ecs = [make_workload("on_ecs_1"), make_workload("on_ecs_2")]
    on_batch = [make_workload("on_batch_1"), make_workload("on_batch_2")]
    queue(ecs, on_ecs)
    queue(batch, on_batch)
    try:
        for executor in loaded:
            executor.heartbeat()
        assert {row(store, w).backend for w in on_ecs} == {Backend.ECS}
        assert {row(store, w).backend for w in on_batch} == {Backend.BATCH}
        assert row(store, on_ecs[0]).spec["cluster"] == "airflow"  # type: ignore[index]
        assert row(store, on_batch[0]).spec["jobQueue"] == "airflow"  # type: ignore[index]

        for workload in (on_ecs[0], on_batch[0]):
            finish(store, workload, Phase.SUCCEEDED)
        finish(store, on_batch[1], Phase.FAILED, "Essential container in task exited; exit code 1")
        for executor in loaded:
            executor.heartbeat()
        assert events(ecs) == {on_ecs[0].ti.key: (TaskInstanceState.SUCCESS, "succeeded")}
        assert events(batch) == {
            on_batch[0].ti.key: (TaskInstanceState.SUCCESS, "succeeded"),
            on_batch[1].ti.key: (TaskInstanceState.FAILED, "Essential container in task exited; exit code 1"),
        }
        assert ecs.running == {on_ecs[1].ti.key} and batch.running == set()

        # A restarted scheduler offers each executor its own TIs; neither takes the other's rows.
        assert batch.try_adopt_task_instances([FakeTI.of(on_ecs[1])]) != []
        assert ecs.try_adopt_task_instances([FakeTI.of(on_ecs[1])]) == []
        aws_calls.assert_none()
    finally:
        for executor in loaded:
            if executor._store is not None:
                executor._store.engine.dispose()


# ---- task logs -------------------------------------------------------------------------------


class _FakeBatch:
    """DescribeJobs answers for the log-location lookups, counted."""

    def __init__(self, jobs: dict[str, dict[str, Any]]) -> None:
        self.jobs = jobs
        self.calls = 0

    def describe_jobs(self, *, jobs: list[str]) -> dict[str, Any]:
        self.calls += 1
        return {"jobs": [self.jobs[j] for j in jobs if j in self.jobs]}


def _record(external_id: str | None) -> TaskRecord:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return TaskRecord(
        id="rec-1",
        backend=Backend.BATCH,
        owner="1",
        key=TiKey("d", "t", RUN_ID, -1, 1),
        queue="default",
        target="airflow",
        desired=Desired.RUNNING,
        phase=Phase.RUNNING,
        external_id=external_id,
        attempt=1,
        next_attempt_at=None,
        last_error=None,
        exit_code=None,
        stop_code=None,
        status_reason=None,
        created_at=now,
        launched_at=now,
        started_at=None,
        finished_at=None,
        reported_at=None,
        updated_at=now,
    )


def _executor_with(fake: _FakeBatch, store_url: str, make_settings: SettingsFactory) -> BatchExecutor:
    executor = BatchExecutor()
    executor._settings = make_settings(store_url, AIRFLOW__AWS_RECONCILER_BATCH__REGION_NAME="eu-west-1")
    executor._task_logs = TaskLogs(region_name=None, client_factory=lambda service, region: fake)
    return executor


def test_log_location_waits_for_the_stream_then_uses_batchs_default_group(
    sqlite_url: str, make_settings: SettingsFactory
) -> None:
    fake = _FakeBatch({"job-1": {"jobId": "job-1", "status": "RUNNABLE", "container": {}}})
    executor = _executor_with(fake, sqlite_url, make_settings)
    assert executor._log_location(_record("job-1")) is None  # not started: no stream yet
    fake.jobs["job-1"] = {
        "jobId": "job-1",
        "status": "RUNNING",
        "container": {"logStreamName": "airflow-job/default/task-9"},
    }
    expected = LogLocation("/aws/batch/job", "airflow-job/default/task-9", "eu-west-1")
    assert executor._log_location(_record("job-1")) == expected
    assert executor._log_location(_record("job-1")) == expected
    assert fake.calls == 2, "a known stream is cached: it never changes"


def test_log_location_follows_the_job_definitions_awslogs_options(
    sqlite_url: str, make_settings: SettingsFactory
) -> None:
    config = {"logDriver": "awslogs", "options": {"awslogs-group": "/teams/data", "awslogs-region": "us-west-2"}}
    fake = _FakeBatch(
        {
            "custom": {"jobId": "custom", "container": {"logStreamName": "s/default/1", "logConfiguration": config}},
            "splunk": {
                "jobId": "splunk",
                "container": {"logStreamName": "x", "logConfiguration": {"logDriver": "splunk"}},
            },
        }
    )
    executor = _executor_with(fake, sqlite_url, make_settings)
    assert executor._log_location(_record("custom")) == LogLocation("/teams/data", "s/default/1", "us-west-2")
    with pytest.raises(LogsUnavailable, match="splunk"):
        executor._log_location(_record("splunk"))
    with pytest.raises(LogsUnavailable, match="no longer describes"):
        executor._log_location(_record("gone"))
