"""End to end on one shared stack: real Airflow 3 processes, the EcsExecutor and the BatchExecutor
at once, the reconciler and the sandbox running every ECS task and Batch job as a local process.

The tests run in file order on the same stack (starting one costs ~30 s). Each uses its own DAG
run and checks only that run's rows and tasks; the kill tests put the killed process back even
when they fail, so a failure does not cascade. The example runs twice: with the stack's own
settings, and with the amazon provider's converted by ``aws-reconciler config migrate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    MIGRATED_TAGS,
    RUN_TIMEOUT,
    assert_as_expected,
    assert_one_batch_job_per_record,
    assert_one_ecs_task_per_record,
    batch_jobs_by_record,
    counter,
    ecs_tasks_by_record,
    migrated_configuration,
    run_outcomes,
    running_stack,
    ti_map,
    wait_no_ecs_task_running,
    wait_rows_reported,
)

from aws_reconciler_sandbox.demo.stack import (
    EXAMPLE_DAG_ID,
    INVALID_CONFIG_DAG_ID,
    RECONCILER,
    SCHEDULER,
    DemoStack,
    StoreRow,
    utc_now,
)
from aws_reconciler_sandbox.demo.summary import (
    EXAMPLE_BATCH_TASKS,
    EXAMPLE_DEFERRED_TASKS,
    EXAMPLE_EXPECTED,
    INVALID_CONFIG_EXPECTED,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLE_TIS = 22  # make_items, 15 x square, total, flaky, long_running, wait_in_triggerer, batch_sum, report
#: Task instances of the example besides the mapped ``square`` ones.
UNMAPPED_TIS = 7


def _ended_well(row: StoreRow) -> bool:
    """Succeeded; or, for the first queueing of a deferred try, stopped as no longer wanted; or,
    for the try that fails on purpose (flaky's first), failed: its container exits 0, and the row
    takes Airflow's verdict when the executor reports it while the try is still UP_FOR_RETRY."""
    if row.task_id in EXAMPLE_DEFERRED_TASKS and row.phase == "revoked":
        return True
    if row.task_id == "flaky" and row.try_number == 1:
        return row.phase in ("succeeded", "failed")
    return row.phase == "succeeded"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    work_dir: Path = tmp_path_factory.mktemp("e2e-stack")
    with running_stack(work_dir, wait_for_dags=(EXAMPLE_DAG_ID, INVALID_CONFIG_DAG_ID)) as started:
        yield started


@pytest.fixture
def healthy(stack: DemoStack) -> Iterator[DemoStack]:
    """The stack, with any process a test killed started again and any planned fault dropped."""
    try:
        yield stack
    finally:
        stack.ensure_running()
        stack.sandbox.clear_faults()


@pytest.fixture(params=["ours", "migrated"])
def configured(request: pytest.FixtureRequest, stack: DemoStack) -> Iterator[tuple[DemoStack, dict[str, str]]]:
    """The stack configured our way, or the amazon provider's way and converted with ``aws-reconciler
    config migrate`` (the same stack with its scheduler and reconciler restarted: a second stack
    would cost far more). Also yields the tags every ECS task and Batch job must carry."""
    if request.param == "ours":
        yield stack, {}
        return
    with migrated_configuration(stack) as migrated:
        assert migrated["AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS"] == "3"
        yield stack, MIGRATED_TAGS


def assert_no_workload_token_in_the_store(stack: DemoStack) -> None:
    """A dump of the task store after the run holds no JWT: every token was cleared (or sealed)
    once its task could no longer launch (docs/security.md)."""
    import re

    import sqlalchemy as sa

    jwt = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
    with stack.engine.connect() as conn:
        dump = [str(value) for row in conn.execute(sa.text("SELECT * FROM aws_reconciler_task")) for value in row]
    assert dump, "the store has rows"
    assert not [value[:80] for value in dump if jwt.search(value)]


def test_example_dag_reaches_expected_states(configured: tuple[DemoStack, dict[str, str]]) -> None:
    stack, tags = configured
    run_id = stack.api.trigger(EXAMPLE_DAG_ID)
    run = stack.api.wait_run_finished(EXAMPLE_DAG_ID, run_id, timeout=RUN_TIMEOUT)

    results = run_outcomes(stack, EXAMPLE_DAG_ID, run_id, EXAMPLE_EXPECTED)
    assert_as_expected(results, count=EXAMPLE_TIS)
    assert run["state"] == "success"
    rows = wait_rows_reported(stack, EXAMPLE_DAG_ID, run_id)
    # One queueing per try: 22 task instances, flaky twice; the deferrable sensor's try twice.
    assert len(rows) == EXAMPLE_TIS + 2
    assert all(_ended_well(r) for r in rows), [(r.task_id, r.phase, r.status_reason) for r in rows]
    assert all(r.external_id for r in results)
    # Both executors at once: batch_sum and report ran as Batch jobs, everything else as ECS tasks.
    backends = {(r.task_id, r.map_index, r.try_number): r.backend for r in rows}
    assert {k[0] for k, b in backends.items() if b == "batch"} == EXAMPLE_BATCH_TASKS, backends
    assert {b for k, b in backends.items() if k[0] not in EXAMPLE_BATCH_TASKS} == {"ecs"}, backends
    batch_rows = [r for r in rows if r.backend == "batch"]
    known_jobs = {job["jobId"]: job for job in stack.batch_jobs()}
    for row in batch_rows:
        assert row.external_id in known_jobs, (row.task_id, row.external_id, sorted(known_jobs))
        assert known_jobs[row.external_id]["status"] == "SUCCEEDED", known_jobs[row.external_id]
    ecs_arns = {t["arn"] for t in stack.ecs_tasks()}
    assert all(r.external_id in ecs_arns for r in rows if r.backend == "ecs")
    assert_one_ecs_task_per_record(stack, rows)
    assert_one_batch_job_per_record(stack, rows)
    # The try that failed on purpose ran as its own ECS task, which ended normally: in Airflow 3
    # the task's failure travels through the Execution API, not the exit code.
    flaky = sorted((r for r in rows if r.task_id == "flaky"), key=lambda r: r.try_number)
    assert [r.try_number for r in flaky] == [1, 2]
    assert flaky[0].external_id != flaky[1].external_id
    # The configured request options reached AWS (a migrated run_task_kwargs / submit_job_kwargs).
    launched = {**ecs_tasks_by_record(stack), **batch_jobs_by_record(stack)}
    untagged = [
        (r.task_id, r.map_index, r.try_number)
        for r in rows
        for launch in launched.get(r.id, [])
        if not tags.items() <= (launch.get("tags") or {}).items()
    ]
    assert not untagged, f"launched without the tags {tags}: {untagged}"
    # The stack observes by events: the rows moved on AWS's events, not on describes.
    for backend in ("ecs", "batch"):
        assert counter(stack.metrics_url, "aws_reconciler_events_applied", backend=backend) > 0, backend
    wait_no_ecs_task_running(stack)
    assert_no_workload_token_in_the_store(stack)


def test_invalid_executor_config_fails_only_that_task(stack: DemoStack) -> None:
    run_id = stack.api.trigger(INVALID_CONFIG_DAG_ID)
    stack.api.wait_run_finished(INVALID_CONFIG_DAG_ID, run_id, timeout=RUN_TIMEOUT)
    wait_rows_reported(stack, INVALID_CONFIG_DAG_ID, run_id)

    assert_as_expected(run_outcomes(stack, INVALID_CONFIG_DAG_ID, run_id, INVALID_CONFIG_EXPECTED), count=2)
    rows = {r.task_id: r for r in stack.store_rows(dag_id=INVALID_CONFIG_DAG_ID, run_id=run_id)}
    bad = rows["bad_config"]
    assert bad.phase == "failed" and bad.external_id is None and bad.attempt == 0
    assert bad.status_reason is not None and "invalid executor_config key 'clientToken'" in bad.status_reason
    assert bad.id not in ecs_tasks_by_record(stack), "nothing may be launched for an invalid executor_config"
    assert rows["good"].phase == "succeeded"

    # Clear in Airflow itself: the event log of the task instance, and the scheduler's log.
    events = stack.api.event_logs(dag_id=INVALID_CONFIG_DAG_ID, event="state mismatch")
    messages = [str(e.get("extra")) for e in events if e.get("task_id") == "bad_config" and e.get("run_id") == run_id]
    assert any("invalid executor_config key 'clientToken'" in m for m in messages), messages
    assert "invalid executor_config key 'clientToken'" in stack.scheduler_log()


def test_scheduler_kill9_adopts_running_task_instances(healthy: DemoStack) -> None:
    stack = healthy
    # Long enough that the tasks running at the kill still run when the new scheduler declares
    # the old one dead (scheduler_health_check_threshold 15 s) and adopts (every 5 s).
    conf = {"items": 6, "square_seconds": 45, "long_running_seconds": 45}
    run_id = stack.api.trigger(EXAMPLE_DAG_ID, conf=conf)

    def several_running() -> list[dict[str, Any]] | None:
        tis = stack.api.task_instances(EXAMPLE_DAG_ID, run_id)
        running = [t for t in tis if t["state"] == "running" and t["task_id"] == "square"]
        return tis if len(running) >= 4 else None

    before = ti_map(stack.wait(several_running, "four mapped task instances running", RUN_TIMEOUT))
    in_flight = {key: ti for key, ti in before.items() if ti["state"] in ("queued", "running")}
    running = {key for key, ti in in_flight.items() if ti["state"] == "running"}
    old_job = stack.scheduler_job_id()
    killed_at = utc_now()
    stack.kill(SCHEDULER)
    stack.start_scheduler()
    new_job = stack.wait_scheduler_running(started_after=killed_at)
    assert new_job != old_job

    run = stack.api.wait_run_finished(EXAMPLE_DAG_ID, run_id, timeout=RUN_TIMEOUT)
    assert run["state"] == "success"
    assert_as_expected(run_outcomes(stack, EXAMPLE_DAG_ID, run_id, EXAMPLE_EXPECTED), count=6 + UNMAPPED_TIS)

    # Adopted, not reset: a reset task instance would have run again with try_number + 1.
    after = ti_map(stack.api.task_instances(EXAMPLE_DAG_ID, run_id))
    for key, ti in in_flight.items():
        assert after[key]["state"] == "success", (key, after[key]["state"])
        assert after[key]["try_number"] == ti["try_number"], f"{key} was reset instead of adopted"
    # Airflow's view (queued_by_job_id) and ours (the row's owner, who reports it) moved together.
    airflow_rows = stack.task_instance_rows(EXAMPLE_DAG_ID, run_id)
    rows = _wait_rows_settled(stack, run_id, old_job=old_job, airflow_rows=airflow_rows)
    owner = {
        (r.task_id, r.map_index): r.owner
        for r in rows
        if r.id == airflow_rows[(r.task_id, r.map_index)]["external_executor_id"]
    }
    for key in running:
        assert airflow_rows[key]["queued_by_job_id"] == new_job, (key, airflow_rows[key]["queued_by_job_id"], new_job)
        assert owner[key] == str(new_job), (key, owner[key], new_job)

    # Exactly one ECS task (Batch job for the Batch tasks) per queueing: per Airflow's external
    # executor id and per store row.
    by_record = {**ecs_tasks_by_record(stack), **batch_jobs_by_record(stack)}
    for key, ti in airflow_rows.items():
        assert ti["external_executor_id"] is not None, key
        assert len(by_record.get(ti["external_executor_id"], [])) == 1, (key, by_record.get(ti["external_executor_id"]))
    assert_one_ecs_task_per_record(stack, rows)
    assert_one_batch_job_per_record(stack, rows)
    wait_no_ecs_task_running(stack)


def _wait_rows_settled(
    stack: DemoStack, run_id: str, *, old_job: int | None, airflow_rows: dict[tuple[str, int], dict[str, Any]]
) -> list[StoreRow]:
    """Every row finished; reported, except those of the dead scheduler whose try ended before
    anyone adopted it.

    Such a try reported its outcome through the Execution API while no scheduler ran, so Airflow
    never asks the new scheduler to adopt it and nobody owns its row any more. Harmless for
    Airflow (the try is over), but the row is never reported, so retention never deletes it.
    """

    def orphaned_report(row: StoreRow) -> bool:
        ti = airflow_rows[(row.task_id, row.map_index)]
        if row.owner != str(old_job):
            return False
        # An earlier try (flaky's first) that failed meanwhile, or the final try, never adopted; or
        # an earlier queueing of the try (a deferred sensor's) that the new scheduler queued again.
        return (
            ti["try_number"] > row.try_number
            or (ti["queued_by_job_id"] == old_job and ti["state"] == "success")
            or ti["external_executor_id"] != row.id
        )

    def settled() -> list[StoreRow] | None:
        rows = stack.store_rows(dag_id=EXAMPLE_DAG_ID, run_id=run_id)
        done = all(r.finished_at is not None and (r.reported_at is not None or orphaned_report(r)) for r in rows)
        return rows if done else None

    def describe() -> str:
        return "unsettled: " + "; ".join(
            f"{r.task_id}[{r.map_index}] try {r.try_number} {r.phase} owner {r.owner} reported {r.reported_at} "
            f"TI {airflow_rows[(r.task_id, r.map_index)]}"
            for r in stack.store_rows(dag_id=EXAMPLE_DAG_ID, run_id=run_id)
            if r.finished_at is None or (r.reported_at is None and not orphaned_report(r))
        )

    return stack.wait(settled, "every task record to be finished and reported", 60, on_timeout=describe)


def test_reconciler_kill9_while_launching_loses_nothing_and_duplicates_nothing(healthy: DemoStack) -> None:
    stack = healthy
    sandbox = stack.sandbox
    conf = {"items": 8, "square_seconds": 2, "long_running_seconds": 20}

    # Point 1: the RunTask answers are lost (the call takes effect, the caller sees a 500) and the
    # reconciler dies before it learns what happened: the tasks exist, their rows have no ARN.
    sandbox.inject_error(
        operation="ecs:RunTask", code="ServerException", message="lost answer", status=500, times=None, phantom=True
    )
    run_id = stack.api.trigger(EXAMPLE_DAG_ID, conf=conf)

    def launching_with_lost_answers() -> bool:
        rows = stack.store_rows(dag_id=EXAMPLE_DAG_ID, run_id=run_id)
        return len([r for r in rows if r.phase == "launching" and r.last_error]) >= 2

    stack.wait(launching_with_lost_answers, "launches whose answer was lost", 120)
    stack.kill(RECONCILER)
    sandbox.clear_faults()
    stack.start_reconciler()
    stack.wait_reconciler_leading()

    # Point 2: the mapped task instances have just been queued: kill before or while they launch.
    def mapped_queued() -> bool:
        rows = stack.store_rows(dag_id=EXAMPLE_DAG_ID, run_id=run_id)
        return any(r.task_id == "square" for r in rows)

    stack.wait(mapped_queued, "the mapped task instances to be queued", RUN_TIMEOUT, interval=0.1)
    stack.kill(RECONCILER)
    stack.start_reconciler()
    stack.wait_reconciler_leading()

    # Point 3: tasks are running and finish while no reconciler watches them.
    def several_running() -> bool:
        rows = stack.store_rows(dag_id=EXAMPLE_DAG_ID, run_id=run_id)
        return len([r for r in rows if r.phase == "running"]) >= 3

    stack.wait(several_running, "three ECS tasks running", RUN_TIMEOUT, interval=0.2)
    running = {
        (r.task_id, r.map_index) for r in stack.store_rows(dag_id=EXAMPLE_DAG_ID, run_id=run_id) if r.phase == "running"
    }
    stack.kill(RECONCILER)

    def one_finished() -> bool:
        tis = ti_map(stack.api.task_instances(EXAMPLE_DAG_ID, run_id))
        return any(tis[key]["state"] == "success" for key in running)

    stack.wait(one_finished, "a task to finish while the reconciler is down", RUN_TIMEOUT)
    stack.start_reconciler()
    stack.wait_reconciler_leading()

    run = stack.api.wait_run_finished(EXAMPLE_DAG_ID, run_id, timeout=RUN_TIMEOUT)
    assert run["state"] == "success"
    assert_as_expected(run_outcomes(stack, EXAMPLE_DAG_ID, run_id, EXAMPLE_EXPECTED), count=8 + UNMAPPED_TIS)

    # Nothing lost: every queueing finished and was reported to Airflow.
    rows = wait_rows_reported(stack, EXAMPLE_DAG_ID, run_id)
    assert len(rows) == 8 + UNMAPPED_TIS + 2
    assert [r for r in rows if not _ended_well(r)] == [], [
        (r.task_id, r.map_index, r.try_number, r.phase, r.status_reason) for r in rows if not _ended_well(r)
    ]
    # No duplicate: per record, one ECS task ran; repeated launches of an attempt were idempotent.
    assert_one_ecs_task_per_record(stack, rows)
    assert_one_batch_job_per_record(stack, rows)
    # No orphan left running.
    wait_no_ecs_task_running(stack)
