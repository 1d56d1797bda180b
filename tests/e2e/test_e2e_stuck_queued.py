"""A task instance stuck in queued past ``task_queued_timeout`` is revoked and its ECS task stopped.

Mechanism: this module's sandbox keeps every ECS task PROVISIONING for an hour, as a cluster
without capacity would (Fargate capacity, ENI limits, a slow image pull). The container never
starts, so the task instance never leaves QUEUED. With ``task_queued_timeout`` at 15 s the
scheduler calls ``revoke_task`` (the executor sets ``desired = stopped``), requeues the same try
once (``num_stuck_in_queued_retries`` = 1: a second queueing, a new record and ECS task), and
fails it the second time. The reconciler must StopTask each revoked ECS task.

Its own stack: a short ``task_queued_timeout`` also shortens the workload tokens and would
break the long runs of the other end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import E2E_DAGS, ecs_tasks_by_record, running_stack, wait_no_ecs_task_running

from aws_reconciler_sandbox.demo.stack import DemoStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DAG_ID = "aws_reconciler_e2e_single"
QUEUED_TIMEOUT = 15


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    work_dir: Path = tmp_path_factory.mktemp("e2e-stuck")
    with running_stack(
        work_dir,
        dags_folder=E2E_DAGS,
        wait_for_dags=(DAG_ID,),
        provisioning_delay=3600.0,
        airflow_env={
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(QUEUED_TIMEOUT),
            "AIRFLOW__SCHEDULER__NUM_STUCK_IN_QUEUED_RETRIES": "1",
        },
    ) as started:
        yield started


def test_stuck_in_queued_is_revoked_and_its_ecs_task_stopped(stack: DemoStack) -> None:
    run_id = stack.api.trigger(DAG_ID)

    # Queued, launched, and held in PROVISIONING by the sandbox.
    def provisioning() -> list[dict[str, object]] | None:
        by_record = ecs_tasks_by_record(stack)
        tasks = [t for tasks in by_record.values() for t in tasks if t["lastStatus"] == "PROVISIONING"]
        return tasks or None

    stack.wait(provisioning, "the ECS task to be PROVISIONING", 60)
    [ti] = stack.api.task_instances(DAG_ID, run_id)
    assert ti["state"] == "queued"

    run = stack.api.wait_run_finished(DAG_ID, run_id, timeout=4 * (QUEUED_TIMEOUT + 30))
    assert run["state"] == "failed"
    [ti] = stack.api.task_instances(DAG_ID, run_id)
    assert ti["state"] == "failed" and ti["try_number"] == 1

    # Airflow says why: requeued once, then failed.
    events = [e["event"] for e in stack.api.event_logs(dag_id=DAG_ID) if e.get("run_id") == run_id]
    assert events.count("stuck in queued reschedule") == 1, events
    assert events.count("stuck in queued tries exceeded") == 1, events

    # Two queueings of the same try, each revoked; each ECS task stopped by the reconciler
    # without ever starting.
    rows = stack.store_rows(dag_id=DAG_ID, run_id=run_id)
    assert [r.try_number for r in rows] == [1, 1]
    assert all(r.desired == "stopped" for r in rows), [(r.id, r.desired) for r in rows]

    def all_revoked_rows_finished() -> bool:
        return all(r.phase == "revoked" for r in stack.store_rows(dag_id=DAG_ID, run_id=run_id))

    stack.wait(all_revoked_rows_finished, "the revoked rows to see their ECS tasks stopped", 60)
    by_record = ecs_tasks_by_record(stack)
    for row in stack.store_rows(dag_id=DAG_ID, run_id=run_id):
        [task] = by_record[row.id]
        assert task["lastStatus"] == "STOPPED", task
        assert task["stopCode"] == "UserInitiated", task
        assert "revoked by Airflow" in (task["stoppedReason"] or ""), task
        assert task["startedAt"] is None, "the container must never have started"
        assert row.status_reason is not None and "revoked by Airflow" in row.status_reason
    wait_no_ecs_task_running(stack)
