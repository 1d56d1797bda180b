"""Airflow 3.3 ``ExecuteTask`` workloads as the scheduler hands them over, and TI stand-ins.

The workload is sized like a real one: its JSON (~1 kB, most of it the JWT) travels in every
RunTask request of both executors, and in each task record of ours.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from airflow.executors.workloads import BundleInfo, ExecuteTask, TaskInstanceDTO
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

DAG_ID = "bench_dag"
# A JWT of the shape and length Airflow issues (header.payload.signature, HS512). Its claims are
# JSON with an ``exp`` a day ahead, as ours reads every real token's expiry at queue time.
_CLAIMS = {"aud": "urn:airflow.apache.org:task", "sub": str(uuid.UUID(int=0)), "exp": int(time.time()) + 86400}
_PAYLOAD = json.dumps({**_CLAIMS, "pad": ""}, separators=(",", ":"))
_TOKEN = ".".join(
    base64.urlsafe_b64encode(part).decode().rstrip("=")
    for part in (
        b'{"alg":"HS512","kid":"not-used","typ":"JWT"}',
        json.dumps({**_CLAIMS, "pad": "p" * (260 - len(_PAYLOAD))}, separators=(",", ":")).encode(),
        b"s" * 64,
    )
)


def make_workloads(
    n: int, *, run: str, executor_config: Callable[[int], dict[str, Any] | None] | None = None
) -> list[ExecuteTask]:
    """``n`` workloads of one DAG run, each with its pre-assigned ``external_executor_id``;
    ``executor_config(i)``: the i-th task's (none when not given)."""
    run_id = f"manual__{run}"
    return [
        ExecuteTask(
            token=_TOKEN,
            ti=TaskInstanceDTO(
                id=uuid.uuid4(),
                dag_id=DAG_ID,
                task_id=f"task_{i:05d}",
                run_id=run_id,
                try_number=1,
                map_index=-1,
                dag_version_id=uuid.uuid4(),
                queue="default",
                pool_slots=1,
                priority_weight=1,
                context_carrier={},
                external_executor_id=str(uuid.uuid4()),
                executor_config=executor_config(i) if executor_config is not None else None,
            ),
            dag_rel_path=Path(f"{DAG_ID}.py"),
            bundle_info=BundleInfo(name="dags-folder", version=None),
            log_path=f"dag_id={DAG_ID}/run_id={run_id}/task_id=task_{i:05d}/attempt=1.log",
        )
        for i in range(n)
    ]


@dataclass(eq=False)  # identity equality, like the ORM TaskInstance
class FakeTI:
    """What the scheduler passes to ``try_adopt_task_instances``: the ORM TaskInstance's fields
    both executors read (the peer rebuilds the workload from them: ``ExecuteTask.make``)."""

    id: uuid.UUID
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    dag_version_id: uuid.UUID
    queue: str
    pool_slots: int
    priority_weight: int
    external_executor_id: str | None
    executor_config: dict[str, Any] | None = None
    state: TaskInstanceState = TaskInstanceState.RUNNING
    hostname: str | None = None
    context_carrier: dict[str, Any] = field(default_factory=dict)
    dag_model: Any = field(default_factory=lambda: SimpleNamespace(bundle_name="dags-folder", relative_fileloc=""))
    dag_run: Any = field(default_factory=lambda: SimpleNamespace(bundle_version=None))

    @property
    def key(self) -> TaskInstanceKey:
        return TaskInstanceKey(self.dag_id, self.task_id, self.run_id, self.try_number, self.map_index)

    def __repr__(self) -> str:
        # TaskInstance's own repr (the peer logs every adopted TI with it).
        return f"<TaskInstance: {self.dag_id}.{self.task_id} {self.run_id} [{self.state}]>"


def tis_for_adoption(workloads: Sequence[ExecuteTask], external_ids: dict[TaskInstanceKey, str]) -> list[FakeTI]:
    """The running TIs of a dead scheduler, with the ``external_executor_id`` it left in the DB."""
    tis = []
    for workload in workloads:
        ti = workload.ti
        tis.append(
            FakeTI(
                id=ti.id,
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                run_id=ti.run_id,
                map_index=ti.map_index,
                try_number=ti.try_number,
                dag_version_id=ti.dag_version_id,
                queue=ti.queue,
                pool_slots=ti.pool_slots,
                priority_weight=ti.priority_weight,
                external_executor_id=external_ids[ti.key],
            )
        )
    return tis


def queue_all(executor: Any, workloads: Sequence[ExecuteTask]) -> None:
    """What the scheduler does between heartbeats: hand the executor its workloads."""
    for workload in workloads:
        executor.queue_workload(workload, session=None)
