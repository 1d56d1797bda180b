"""Airflow-side helpers of the ECS and Batch executor tests: workloads as the scheduler hands them
over and stand-ins for ORM task instances. Imports Airflow (import it after the conftest that sets
``AIRFLOW_HOME``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from airflow.executors.workloads import BundleInfo, ExecuteCallback, ExecuteTask, TaskInstanceDTO, TestConnection
from airflow.executors.workloads.callback import CallbackDTO, CallbackFetchMethod
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

from aws_reconciler.store import TaskRecord

RUN_ID = "manual__2026-01-01T00:00:00+00:00"
TOKEN = "eyJ.secret.token"


def make_workload(
    task_id: str,
    *,
    record_id: str | None = None,
    try_number: int = 1,
    executor_config: dict[str, Any] | None = None,
    token: str = TOKEN,
) -> ExecuteTask:
    """An ExecuteTask as the 3.3 scheduler hands it over, with its pre-assigned record id."""
    ti = TaskInstanceDTO(
        id=uuid.uuid4(),
        dag_id="example_dag",
        task_id=task_id,
        run_id=RUN_ID,
        try_number=try_number,
        map_index=-1,
        dag_version_id=uuid.uuid4(),
        queue="default",
        pool_slots=1,
        priority_weight=1,
        context_carrier={},
        external_executor_id=record_id or str(uuid.uuid4()),
        executor_config=executor_config,
    )
    return ExecuteTask(
        token=token,
        ti=ti,
        dag_rel_path=Path("example_dag.py"),
        bundle_info=BundleInfo(name="dags-folder", version=None),
        log_path="x.log",
    )


def make_callback(
    *, callback_id: str | None = None, dag_id: str = "example_dag", path: str = "example_dag.notify", token: str = TOKEN
) -> ExecuteCallback:
    """An ExecuteCallback as the 3.3 scheduler hands a missed deadline's callback over."""
    callback_id = callback_id or str(uuid.uuid4())
    data = {
        "path": path,
        "kwargs": {
            "channel": "ops",
            "context": {"dag_run": {"dag_run_id": RUN_ID, "dag_id": dag_id}, "deadline": {"id": str(uuid.uuid4())}},
        },
        "dag_id": dag_id,
        "dag_run_id": "17",
        "deadline_id": str(uuid.uuid4()),
        "executor": None,
    }
    return ExecuteCallback(
        token=token,
        callback=CallbackDTO(id=callback_id, fetch_method=CallbackFetchMethod.IMPORT_PATH, data=data),
        dag_rel_path=Path("example_dag.py"),
        bundle_info=BundleInfo(name="dags-folder", version=None),
        log_path=f"executor_callbacks/{dag_id}/{RUN_ID}/{callback_id}",
    )


def make_connection_test(*, connection_id: str = "my_db", token: str = TOKEN) -> TestConnection:
    """A TestConnection as the 3.3 scheduler hands over a test requested through the REST API."""
    return TestConnection(
        connection_test_id=uuid.uuid4(), connection_id=connection_id, timeout=60, queue=None, token=token
    )


def jwt_expiring_at(exp: datetime) -> str:
    """A workload token shaped like the scheduler's (HS512 JWT, scope ``workload``) expiring at ``exp``."""
    import jwt

    claims = {"sub": str(uuid.uuid4()), "scope": "workload", "iat": int(exp.timestamp()) - 600}
    return jwt.encode({**claims, "exp": int(exp.timestamp())}, "tests-" + "0123456789abcdef" * 4, algorithm="HS512")


def rid(workload: ExecuteTask) -> str:
    """The record id of a workload (Airflow's pre-assigned external_executor_id)."""
    record_id = workload.ti.external_executor_id
    assert record_id
    return record_id


@dataclass
class FakeTI:
    """Stand-in for the ORM TaskInstance the scheduler passes to adoption, revoke and logs."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    external_executor_id: str | None

    @classmethod
    def of(cls, workload: ExecuteTask, **changes: Any) -> FakeTI:
        ti = workload.ti
        values = {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "map_index": ti.map_index,
            "try_number": ti.try_number,
            "external_executor_id": ti.external_executor_id,
        }
        return cls(**{**values, **changes})

    @classmethod
    def of_record(cls, record: TaskRecord) -> FakeTI:
        key = record.key
        return cls(key.dag_id, key.task_id, key.run_id, key.map_index, key.try_number, record.id)

    @property
    def key(self) -> TaskInstanceKey:
        return TaskInstanceKey(self.dag_id, self.task_id, self.run_id, self.try_number, self.map_index)


def clear_airflow_tis() -> None:
    """No task instance and no DAG run in Airflow's database (rows of earlier tests would carry over)."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    assert settings.engine is not None
    with settings.engine.begin() as conn:
        conn.execute(sa.delete(TaskInstance.__table__))
        conn.execute(sa.delete(DagRun.__table__))


def airflow_ti(workload: ExecuteTask, state: TaskInstanceState | None, *, try_number: int | None = None) -> None:
    """The workload's task instance as Airflow's database has it now (the scheduler, the task via
    the Execution API, or a user clearing it would have written this)."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    ti = workload.ti
    runs, tis = DagRun.__table__, TaskInstance.__table__
    where = [tis.c.dag_id == ti.dag_id, tis.c.task_id == ti.task_id, tis.c.run_id == ti.run_id]
    assert settings.engine is not None
    with settings.engine.begin() as conn:
        if (
            conn.execute(sa.select(runs.c.id).where(runs.c.dag_id == ti.dag_id, runs.c.run_id == ti.run_id)).first()
            is None
        ):
            conn.execute(
                sa.insert(runs).values(
                    dag_id=ti.dag_id, run_id=ti.run_id, run_type="manual", run_after=datetime.now(UTC)
                )
            )
        conn.execute(sa.delete(tis).where(*where))
        conn.execute(
            sa.insert(tis).values(
                id=ti.id,
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                run_id=ti.run_id,
                map_index=ti.map_index,
                try_number=ti.try_number if try_number is None else try_number,
                state=state,
                pool="default_pool",
            )
        )
