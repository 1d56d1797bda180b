"""Airflow-side helpers of the ECS and Batch executor tests: workloads as the scheduler hands them
over and stand-ins for ORM task instances. Imports Airflow (import it after the conftest that sets
``AIRFLOW_HOME``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.executors.workloads import BundleInfo, ExecuteTask, TaskInstanceDTO
from airflow.models.taskinstancekey import TaskInstanceKey

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
