"""Workloads besides tasks, and what a user sees of a try that never ran.

Callbacks (``ExecuteCallback``: a missed deadline's alert) and connection tests (``TestConnection``)
go through the same store, identity, idempotency and reporting as tasks; their rows say what
their key is. A task the executor fails before it ever ran gets its reason into Airflow's event
log and into the try's own task log, where the log view reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from airflow.executors.workloads import ExecuteCallback
from airflow.executors.workloads import TestConnection as ConnectionTestWorkload
from airflow.models.callback import CallbackKey
from airflow.models.connection_test import ConnectionTestKey, ConnectionTestState
from airflow.utils.state import CallbackState, TaskInstanceState

from aws_reconciler.executor import EcsExecutor
from aws_reconciler.executor.base import NEVER_RAN_EVENT
from aws_reconciler.executor.logs.never_ran import LOGGER
from aws_reconciler.model import Backend, Phase, TiKey, WorkloadKind
from aws_reconciler.store import TaskRecord, TaskStore
from support.stores import sent_request
from support.workloads import (
    RUN_ID,
    TOKEN,
    airflow_ti,
    clear_airflow_tis,
    make_callback,
    make_connection_test,
    make_workload,
    rid,
)

if TYPE_CHECKING:
    from conftest import ExecutorFactory
    from support.awscalls import AwsCalls

pytestmark = pytest.mark.airflow


@pytest.fixture(autouse=True)
def _no_task_instances() -> None:
    clear_airflow_tis()


def queue(executor: EcsExecutor, workloads: Iterable[Any]) -> None:
    for workload in workloads:
        executor.queue_workload(workload, session=None)  # type: ignore[arg-type]


def events(executor: EcsExecutor) -> dict[Any, tuple[Any, Any]]:
    return dict(executor.get_event_buffer())


def record(store: TaskStore, record_id: str) -> TaskRecord:
    found = store.get(record_id)
    assert found is not None, f"no row {record_id}"
    return found


def finish(store: TaskStore, record_id: str, phase: Phase, reason: str | None = None) -> None:
    assert store.transition(record_id, expect_phases=list(Phase), phase=phase, status_reason=reason)


# ---- callbacks ----------------------------------------------------------------------------


def test_a_callback_becomes_a_callback_row_with_its_workload_as_the_command(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor(job_id=7)
    callback = make_callback()
    task = make_workload("alongside")
    queue(executor, [callback, task])

    executor.heartbeat()

    key = CallbackKey(id=callback.callback.id)
    assert executor.queued_callbacks == {} and executor.queued_tasks == {}
    assert executor.running == {key, task.ti.key}
    row = record(store, callback.callback.id)
    assert (row.kind, row.phase, row.owner, row.backend) == (WorkloadKind.CALLBACK, Phase.PENDING, "7", Backend.ECS)
    assert row.key == TiKey("example_dag", f"callback:{callback.callback.id}", RUN_ID, -1, 1)
    assert record(store, rid(task)).kind is WorkloadKind.TASK
    assert row.spec is not None
    tags = {t["key"]: t["value"] for t in row.spec["tags"]}
    assert tags["aws-reconciler:id"] == callback.callback.id
    assert tags["aws-reconciler:deployment"] == "airflow"
    assert TOKEN not in json.dumps(row.spec), "the stored request keeps the token apart"
    (container,) = sent_request(store, callback.callback.id)["overrides"]["containerOverrides"]
    # Airflow's own entry point runs the callback: exactly the workload the scheduler queued.
    assert ExecuteCallback.model_validate_json(container["command"][-1]).model_dump() == callback.model_dump()
    assert json.loads(container["command"][-1])["token"] == TOKEN
    assert events(executor) == {}
    aws_calls.assert_none()


@pytest.mark.parametrize(
    ("phase", "reason", "expected"),
    [
        (Phase.SUCCEEDED, None, (CallbackState.SUCCESS, "succeeded")),
        (
            Phase.FAILED,
            "EssentialContainerExited; exit code 1",
            (CallbackState.FAILED, "EssentialContainerExited; exit code 1"),
        ),
    ],
)
def test_a_finished_callback_is_reported_once_by_its_containers_end(
    new_executor: ExecutorFactory, store: TaskStore, phase: Phase, reason: str | None, expected: tuple[Any, str]
) -> None:
    executor = new_executor()
    callback = make_callback()
    queue(executor, [callback])
    executor.heartbeat()

    finish(store, callback.callback.id, phase, reason)
    executor.heartbeat()

    key = CallbackKey(id=callback.callback.id)
    assert events(executor) == {key: expected}
    assert executor.running == set()
    executor.heartbeat()
    assert events(executor) == {}, "reported once"
    assert record(store, callback.callback.id).reported_at is not None


def test_a_callback_handed_over_twice_is_stored_once(new_executor: ExecutorFactory, store: TaskStore) -> None:
    executor = new_executor()
    callback = make_callback()
    queue(executor, [callback])
    executor.heartbeat()
    # A scheduler that lost the answer of its commit queues the same callback again.
    queue(executor, [callback])
    executor.heartbeat()

    assert events(executor) == {}
    assert [r.id for r in store.open_tasks(backend=Backend.ECS)] == [callback.callback.id]


def test_a_callback_too_large_for_ecs_fails_at_once_with_the_reason(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor()
    callback = make_callback()
    callback.callback.data["kwargs"]["context"]["note"] = "x" * 9000
    queue(executor, [callback])

    executor.heartbeat()

    ((key, (state, info)),) = events(executor).items()
    assert (key, state) == (CallbackKey(id=callback.callback.id), CallbackState.FAILED)
    assert "over AWS's limit" in info
    assert record(store, callback.callback.id).phase is Phase.FAILED
    aws_calls.assert_none()


def test_two_callbacks_of_one_run_neither_supersede_each_other_nor_a_task(
    new_executor: ExecutorFactory, store: TaskStore
) -> None:
    """Their keys are their own: a second deadline of the same run is not a requeue of the first."""
    executor = new_executor()
    first, second = make_callback(), make_callback()
    queue(executor, [first, make_workload("t")])
    executor.heartbeat()
    queue(executor, [second])
    executor.heartbeat()

    assert record(store, first.callback.id).superseded_at is None
    assert {r.id for r in store.open_tasks(backend=Backend.ECS)} >= {first.callback.id, second.callback.id}


# ---- connection tests ---------------------------------------------------------------------


def test_a_connection_test_runs_like_a_task_and_its_end_frees_the_slot(
    new_executor: ExecutorFactory, store: TaskStore, aws_calls: AwsCalls
) -> None:
    executor = new_executor()
    test = make_connection_test()
    queue(executor, [test])

    executor.heartbeat()

    key = ConnectionTestKey(id=str(test.connection_test_id))
    assert executor.queued_connection_tests == {}
    assert executor.running == {key}
    row = record(store, str(test.connection_test_id))
    assert row.kind is WorkloadKind.CONNECTION_TEST
    assert row.key.task_id == f"connection_test:{test.connection_test_id}"
    assert row.spec is not None
    (container,) = row.spec["overrides"]["containerOverrides"]
    assert ConnectionTestWorkload.model_validate_json(container["command"][-1]).connection_id == "my_db"
    aws_calls.assert_none()

    # The container reports the test's result to the API server; the event only frees the slot.
    finish(store, row.id, Phase.SUCCEEDED)
    executor.heartbeat()
    assert events(executor) == {key: (ConnectionTestState.SUCCESS, "succeeded")}
    assert executor.running == set()


# ---- a try that never ran -----------------------------------------------------------------


def _saved_by_the_scheduler(executor: EcsExecutor) -> list[Any]:
    """What the scheduler's loop does with executors' event log entries, then what its table holds."""
    import gc

    import sqlalchemy as sa
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    gc.collect()
    with create_session() as session:
        session.execute(sa.delete(Log))
    with create_session() as session:
        SchedulerJobRunner._process_task_event_logs(executor._task_event_logs, session)
    with create_session() as session:
        found = list(session.scalars(sa.select(Log).where(Log.event == NEVER_RAN_EVENT)))
        session.expunge_all()
        return found


def _log_lines(executor: EcsExecutor, log_path: str) -> list[dict[str, Any]]:
    path = executor.never_ran_log().base_log_folder / log_path
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_try_failed_before_it_ran_says_why_in_the_event_log_and_its_task_log(
    new_executor: ExecutorFactory, store: TaskStore, tmp_path: Path
) -> None:
    executor = new_executor()
    bad = make_workload("bad", executor_config={"clientToken": "mine"}).model_copy(
        update={"log_path": f"dag_id=example_dag/run_id=r/task_id=bad/attempt=1-{tmp_path.name}.log"}
    )
    airflow_ti(bad, TaskInstanceState.QUEUED)
    queue(executor, [bad])

    executor.heartbeat()

    ((key, (state, info)),) = events(executor).items()
    assert (key, state) == (bad.ti.key, TaskInstanceState.FAILED)
    assert "invalid executor_config key 'clientToken'" in info
    # Airflow's event log: an entry of its own, not only the scheduler's "state mismatch" text,
    # saved the way the scheduler saves executors' entries after their heartbeat.
    saved = _saved_by_the_scheduler(executor)
    assert [(e.event, e.extra) for e in saved] == [(NEVER_RAN_EVENT, info)]
    assert (saved[0].dag_id, saved[0].task_id, saved[0].run_id, saved[0].try_number) == (
        "example_dag",
        "bad",
        RUN_ID,
        1,
    )
    # The try's task log, as Airflow's log view reads it (JSON lines under base_log_folder).
    lines = _log_lines(executor, bad.log_path or "")
    assert lines[0]["event"] == f"This try never ran: {info}"
    assert rid(bad) in lines[1]["event"] and "never launched" in lines[1]["event"]
    assert {line["logger"] for line in lines} == {LOGGER}
    assert all(line["level"] == "error" and line["timestamp"].endswith("Z") for line in lines)
    assert TOKEN not in json.dumps(lines)


def test_a_try_that_ran_gets_no_never_ran_explanation(new_executor: ExecutorFactory, store: TaskStore) -> None:
    """The container ended abnormally after the task ran: the task's own log tells the story."""
    executor = new_executor()
    ran = make_workload("ran").model_copy(update={"log_path": "dag_id=example_dag/task_id=ran/attempt=1.log"})
    queue(executor, [ran])
    executor.heartbeat()
    airflow_ti(ran, TaskInstanceState.RUNNING)

    finish(store, rid(ran), Phase.FAILED, "OutOfMemoryError: container killed")
    executor.heartbeat()

    assert events(executor)[ran.ti.key][0] == TaskInstanceState.FAILED
    assert not [e for e in executor._task_event_logs if e.event == NEVER_RAN_EVENT]
    assert _saved_by_the_scheduler(executor) == []
    assert not (executor.never_ran_log().base_log_folder / (ran.log_path or "")).exists()


def test_a_log_path_outside_the_log_folder_is_not_written(new_executor: ExecutorFactory, tmp_path: Path) -> None:
    executor = new_executor()
    escape = tmp_path / "escaped.log"
    assert executor.never_ran_log().write("../" * 20 + str(escape).lstrip("/"), ["x"]) is None
    assert executor.never_ran_log().write(str(escape), ["x"]) is None
    assert not escape.exists()
