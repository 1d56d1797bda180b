"""End to end: what Airflow 3.3 runs on executors besides task instances, and what a user sees.

One stack (the shipped DAGs, a triggerer, ``[core] test_connection = Enabled``):

- a missed deadline's callbacks run as an ECS task and as an AWS Batch job, and a callback that
  raises is recorded as failed with the executor's reason;
- the example DAG's deferrable sensor hands its wait to the triggerer and resumes as a second
  ECS task of the same try;
- a connection test requested through the REST API runs as an ECS task, where tasks run;
- a task that never ran says why in Airflow's event log and in its task log view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    RUN_TIMEOUT,
    batch_jobs_by_record,
    ecs_tasks_by_record,
    never_started,
    running_stack,
    ti_map,
    wait_rows_reported,
)

from aws_reconciler_sandbox.demo.stack import (
    DEADLINE_DAG_ID,
    EXAMPLE_DAG_ID,
    INVALID_CONFIG_DAG_ID,
    DemoStack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

#: The event the executor writes to Airflow's event log for a try it failed before it ran.
NEVER_RAN_EVENT = "aws-reconciler: not run"
FINISHED_CALLBACK = ("success", "failed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    work_dir: Path = tmp_path_factory.mktemp("e2e-workloads")
    with running_stack(
        work_dir,
        wait_for_dags=(EXAMPLE_DAG_ID, DEADLINE_DAG_ID, INVALID_CONFIG_DAG_ID),
        airflow_env={"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"},
    ) as started:
        yield started


def _ran_once(tasks_or_jobs: list[dict[str, Any]], *, ecs: bool) -> bool:
    ran = (
        [t for t in tasks_or_jobs if not never_started(t)] if ecs else [j for j in tasks_or_jobs if j.get("startedAt")]
    )
    return len(ran) == 1


def test_missed_deadline_callbacks_run_on_ecs_and_on_batch(stack: DemoStack) -> None:
    run_id = stack.api.trigger(DEADLINE_DAG_ID)

    def all_finished() -> list[dict[str, Any]] | None:
        found = stack.airflow_callbacks(DEADLINE_DAG_ID, run_id)
        return found if len(found) == 3 and all(c["state"] in FINISHED_CALLBACK for c in found) else None

    callbacks = stack.wait(all_finished, "the run's three deadline callbacks to finish", RUN_TIMEOUT)
    by_name = {(c["path"].rsplit(".", 1)[-1], c["executor"]): c for c in callbacks}
    on_ecs, on_batch = by_name[("notify", None)], by_name[("notify", "BatchExecutor")]
    failing = by_name[("fail_loudly", None)]
    assert (on_ecs["state"], on_batch["state"]) == ("success", "success"), callbacks
    # Airflow's record of the failed callback carries the executor's reason (the container's end).
    assert failing["state"] == "failed" and "exit code 1" in str(failing["output"]), failing

    rows = {r.id: r for r in stack.store_rows(dag_id=DEADLINE_DAG_ID, run_id=run_id, kind="callback")}
    assert set(rows) == {c["id"] for c in callbacks}, "each callback is one row, keyed by Airflow's callback id"
    assert (rows[on_ecs["id"]].backend, rows[on_batch["id"]].backend, rows[failing["id"]].backend) == (
        "ecs",
        "batch",
        "ecs",
    )
    assert [rows[c["id"]].phase for c in (on_ecs, on_batch, failing)] == ["succeeded", "succeeded", "failed"]
    assert all(r.reported_at is not None and r.task_id == f"callback:{r.id}" for r in rows.values())
    # Identity and idempotency as for tasks: one ECS task / Batch job per callback, with its id tag.
    ecs_tasks, batch_jobs = ecs_tasks_by_record(stack), batch_jobs_by_record(stack)
    assert _ran_once(ecs_tasks.get(on_ecs["id"], []), ecs=True), ecs_tasks.get(on_ecs["id"])
    assert _ran_once(ecs_tasks.get(failing["id"], []), ecs=True), ecs_tasks.get(failing["id"])
    assert _ran_once(batch_jobs.get(on_batch["id"], []), ecs=False), batch_jobs.get(on_batch["id"])
    assert on_batch["id"] not in ecs_tasks

    run = stack.api.wait_run_finished(DEADLINE_DAG_ID, run_id, timeout=RUN_TIMEOUT)
    assert run["state"] == "success", "the callbacks' outcomes never touch the run's own tasks"


def test_a_deferrable_sensor_waits_in_the_triggerer_and_resumes_as_a_new_ecs_task(stack: DemoStack) -> None:
    assert stack.api.component_healthy("triggerer")
    run_id = stack.api.trigger(EXAMPLE_DAG_ID, conf={"items": 2, "long_running_seconds": 1})
    run = stack.api.wait_run_finished(EXAMPLE_DAG_ID, run_id, timeout=RUN_TIMEOUT)
    assert run["state"] == "success"

    sensor = ti_map(stack.api.task_instances(EXAMPLE_DAG_ID, run_id))[("wait_in_triggerer", -1)]
    assert (sensor["state"], sensor["try_number"]) == ("success", 1), sensor
    rows = [r for r in wait_rows_reported(stack, EXAMPLE_DAG_ID, run_id) if r.task_id == "wait_in_triggerer"]
    # The same try queued twice: before the deferral, and after the trigger fired.
    assert [r.try_number for r in rows] == [1, 1], rows
    before, after = rows
    assert before.external_id and after.external_id and before.external_id != after.external_id
    # The first container ended after deferring (exit 0), or was stopped as no longer wanted when
    # the try was queued again first; either way its end was never taken for the try's outcome.
    assert (before.phase in ("succeeded", "revoked"), after.phase) == (True, "succeeded"), rows
    assert before.ti_state in ("deferred", None), before
    assert after.ti_state == "success", after
    tasks = ecs_tasks_by_record(stack)
    assert _ran_once(tasks[before.id], ecs=True) and _ran_once(tasks[after.id], ecs=True)


def test_a_connection_test_runs_as_an_ecs_task_where_tasks_run(stack: DemoStack) -> None:
    def result(token: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found = stack.api.connection_test(token)
            return found if found["state"] in ("success", "failed") else None

        return stack.wait(done, "the connection test to finish", 180)

    here, nowhere = str(stack.airflow_home), str(stack.work_dir / "no-such-path")
    ok = stack.api.enqueue_connection_test(
        {"connection_id": "worker_fs", "conn_type": "fs", "extra": json.dumps({"path": here})}
    )
    missing = stack.api.enqueue_connection_test(
        {"connection_id": "worker_fs_missing", "conn_type": "fs", "extra": json.dumps({"path": nowhere})}
    )
    found, not_found = result(ok), result(missing)
    assert found["state"] == "success" and "is existing" in str(found["result_message"]), found
    assert not_found["state"] == "failed" and "does not exist" in str(not_found["result_message"]), not_found

    # The container reports the result, then exits; the executor frees the slot after that.
    def finished() -> list[Any] | None:
        found = stack.store_rows(kind="connection_test")
        return found if len(found) == 2 and all(r.reported_at is not None for r in found) else None

    rows = stack.wait(finished, "both connection-test rows to finish and be reported", 120)
    assert {r.backend for r in rows} == {"ecs"}, rows
    assert all(r.phase == "succeeded" and r.task_id == f"connection_test:{r.id}" for r in rows), rows
    tasks = ecs_tasks_by_record(stack)
    assert all(_ran_once(tasks.get(r.id, []), ecs=True) for r in rows)


def test_a_task_that_never_ran_says_why_in_the_event_log_and_the_log_view(stack: DemoStack) -> None:
    run_id = stack.api.trigger(INVALID_CONFIG_DAG_ID)
    stack.api.wait_run_finished(INVALID_CONFIG_DAG_ID, run_id, timeout=RUN_TIMEOUT)
    wait_rows_reported(stack, INVALID_CONFIG_DAG_ID, run_id)
    reason = "invalid executor_config key 'clientToken'"

    # An event of its own whose text is the reason, beside Airflow's "state mismatch" entry.
    events = [
        e
        for e in stack.api.event_logs(dag_id=INVALID_CONFIG_DAG_ID, event=NEVER_RAN_EVENT)
        if e.get("run_id") == run_id and e.get("task_id") == "bad_config"
    ]
    assert len(events) == 1, events
    assert str(events[0]["extra"]).startswith(reason), events[0]

    # The task log view of the try shows the reason instead of "Could not read served logs".
    content = stack.api.task_log(INVALID_CONFIG_DAG_ID, run_id, "bad_config", 1)
    text = [item.get("event", "") if isinstance(item, dict) else str(item) for item in content]
    assert any(line.startswith(f"This try never ran: {reason}") for line in text), text
    assert not any("Could not read served logs" in line for line in text), text
