"""The scheduler's side of a run: the real executors, driven the way Airflow 3.3's scheduler does.

:class:`Scheduler` queues ``ExecuteTask`` workloads (``queue_workload``), heartbeats the
executors (``heartbeat`` -> ``_process_workloads`` and ``sync``), reads their event buffers,
revokes task instances stuck in queued and queues the try again with a new id, and "dies": the
executor objects are dropped and new ones, with a new scheduler job id, adopt the task instances
(``try_adopt_task_instances``); those not adopted are reset to the next try, as Airflow does.
It keeps Airflow's ``task_instance`` rows as the scheduler would (the executors read them when
they report), and records every queueing and every event for :mod:`chaos.invariants`.

Imports Airflow: set ``AIRFLOW_HOME`` and a JWT secret before importing this module.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import sqlalchemy as sa
from airflow.executors.workloads import BundleInfo, ExecuteTask, TaskInstanceDTO
from airflow.models.taskinstancekey import TaskInstanceKey

from aws_reconciler.config import Settings
from aws_reconciler.executor import BatchExecutor, EcsExecutor
from aws_reconciler.executor.base import ReconcilerExecutor

from .invariants import FAILED, SUCCESS, Event, Fate, Queueing
from .scenarios import Behaviour

__all__ = ["AirflowDb", "Scheduler", "TaskInstance"]

log = logging.getLogger(__name__)

QUEUED, SCHEDULED = "queued", "scheduled"
EXECUTORS: dict[str, type[ReconcilerExecutor]] = {"ecs": EcsExecutor, "batch": BatchExecutor}


@dataclass(eq=False)
class TaskInstance:
    """One task instance as the scheduler's database has it; also what the executors get where
    Airflow passes its ORM task instance (adoption, revoke)."""

    backend: str
    dag_id: str
    task_id: str
    run_id: str
    behaviour: Behaviour
    record_id: str  # ti.external_executor_id of the current queueing
    try_number: int = 1
    map_index: int = -1
    state: str = QUEUED
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def external_executor_id(self) -> str:
        """The id Airflow 3.3 pre-assigns to the queueing (the executors' record id)."""
        return self.record_id

    @property
    def key(self) -> TaskInstanceKey:
        """Airflow's key of this try."""
        return TaskInstanceKey(self.dag_id, self.task_id, self.run_id, self.try_number, self.map_index)

    @property
    def label(self) -> str:
        """The key as the invariants name it."""
        return f"{self.backend}:{self.task_id}.try{self.try_number}"


class AirflowDb:
    """The ``dag_run`` and ``task_instance`` rows of a run, in Airflow's own database."""

    def __init__(self) -> None:
        from airflow import settings
        from airflow.models import import_all_models
        from airflow.models.base import Base
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance as TiModel

        import_all_models()
        assert settings.engine is not None
        self.engine: sa.engine.Engine = settings.engine
        Base.metadata.create_all(self.engine)
        self._runs = DagRun.__table__
        self._tis = TiModel.__table__

    def add_run(self, dag_id: str, run_id: str) -> None:
        """The DAG run every task instance of the run belongs to."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(self._runs).values(
                    dag_id=dag_id, run_id=run_id, run_type="manual", run_after=datetime.now(UTC)
                )
            )

    def add(self, tis: Iterable[TaskInstance]) -> None:
        """New task instances, queued."""
        rows = [
            {
                "id": ti.id,
                "dag_id": ti.dag_id,
                "task_id": ti.task_id,
                "run_id": ti.run_id,
                "map_index": ti.map_index,
                "try_number": ti.try_number,
                "state": ti.state,
                "pool": "default_pool",
                "external_executor_id": ti.record_id,
            }
            for ti in tis
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(self._tis), rows)

    def update(self, ti: TaskInstance) -> None:
        """Write the task instance's state, try and queueing id as the scheduler changed them."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self._tis)
                .where(self._tis.c.id == ti.id)
                .values(state=ti.state, try_number=ti.try_number, external_executor_id=ti.record_id)
            )


@dataclass
class _Queueing:
    ti: TaskInstance
    record_id: str
    key: str
    fate: Fate = Fate.WANTED


class Scheduler:
    """See the module docstring. Single-threaded: the run's main loop calls every method."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: AirflowDb,
        dag_id: str,
        task_queued_timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.db = db
        self.dag_id = dag_id
        self.run_id = f"chaos__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        self.task_queued_timeout = task_queued_timeout
        self._monotonic = monotonic
        self._token_secret = secrets.token_hex(32)
        self._job_id = 0
        self.executors: dict[str, ReconcilerExecutor] = {}
        self.tis: list[TaskInstance] = []
        self._by_key: dict[TaskInstanceKey, str] = {}  # every key ever, -> its label
        self._current: dict[TaskInstanceKey, TaskInstance] = {}
        self._queueings: list[_Queueing] = []
        self.events: list[Event] = []
        self.deaths = 0
        db.add_run(dag_id, self.run_id)
        self._start_executors()

    # ---- the executors' lives ----------------------------------------------------------------

    def _start_executors(self) -> None:
        self._job_id += 1
        for backend, cls in EXECUTORS.items():
            executor = cls(parallelism=100_000)
            executor.job_id = self._job_id
            # The executors load their settings from Airflow's config on first use; the suite
            # hands them the run's settings directly (the store and the sandbox are the run's).
            executor._settings = self.settings
            executor.start()
            self.executors[backend] = executor

    def die(self, *, lose_queued: bool) -> None:
        """The scheduler process dies and another starts: new executors adopt what Airflow still
        runs; what they cannot adopt is reset to its next try and queued again.

        ``lose_queued``: it dies before handing the queued workloads to the executors (they were
        never recorded); otherwise right after a heartbeat, before reading the events.
        """
        if not lose_queued:
            for executor in self.executors.values():
                executor.heartbeat()
                # The events buffered here never reach the scheduler's database.
        for executor in self.executors.values():
            executor.store.engine.dispose()
        self.executors.clear()
        self.deaths += 1
        self._start_executors()
        for backend, executor in self.executors.items():
            waiting = [ti for ti in self.tis if ti.backend == backend and ti.state == QUEUED]
            for ti in executor.try_adopt_task_instances(waiting):  # type: ignore[arg-type]
                self._reset(ti)

    def _reset(self, ti: TaskInstance) -> None:
        """Airflow resets a task instance no executor adopted; the scheduler queues its next try."""
        queueing = self._queueing_of(ti)
        queueing.fate = Fate.RESET
        self._current.pop(ti.key, None)
        ti.try_number += 1
        self._queue(ti, ti.behaviour)

    # ---- what the scheduler does ------------------------------------------------------------

    def add(self, backend: str, task_id: str, behaviour: Behaviour) -> TaskInstance:
        """A new task instance, queued."""
        ti = TaskInstance(backend, self.dag_id, task_id, self.run_id, behaviour, record_id=str(uuid.uuid4()))
        self.tis.append(ti)
        self.db.add([ti])
        self._hand_over(ti, behaviour)
        return ti

    def revoke(self, ti: TaskInstance) -> bool:
        """Stuck in queued: revoke, and put the try back to SCHEDULED; False if it finished first."""
        if ti.state != QUEUED:
            return False
        self.executors[ti.backend].revoke_task(ti=ti)  # type: ignore[arg-type]
        self._queueing_of(ti).fate = Fate.REVOKED
        ti.state = SCHEDULED
        self.db.update(ti)
        return True

    def requeue(self, ti: TaskInstance, behaviour: Behaviour) -> None:
        """Queue a revoked try again (same try number, a new queueing id)."""
        if ti.state == SCHEDULED:
            ti.behaviour = behaviour
            self._queue(ti, behaviour)

    def heartbeat(self) -> None:
        """One scheduler loop: heartbeat every executor, then process its events."""
        for executor in self.executors.values():
            executor.heartbeat()
            for key, (state, _info) in executor.get_event_buffer().items():
                if isinstance(key, TaskInstanceKey):
                    self._event(key, str(getattr(state, "value", state)))

    def waiting(self) -> int:
        """Task instances still waiting for an outcome (queued) or for their next queueing."""
        return sum(1 for ti in self.tis if ti.state in (QUEUED, SCHEDULED))

    def close(self) -> None:
        """Release the executors' database connections."""
        for executor in self.executors.values():
            executor.store.engine.dispose()

    # ---- what the invariants need ---------------------------------------------------------

    def queueings(self) -> list[Queueing]:
        """Every queueing so far, with what became of it."""
        return [Queueing(q.record_id, q.ti.backend, q.key, q.fate) for q in self._queueings]

    # ---- internals ------------------------------------------------------------------------

    def _queue(self, ti: TaskInstance, behaviour: Behaviour) -> None:
        ti.record_id = str(uuid.uuid4())
        ti.state = QUEUED
        self.db.update(ti)
        self._hand_over(ti, behaviour)

    def _hand_over(self, ti: TaskInstance, behaviour: Behaviour) -> None:
        self._by_key[ti.key] = ti.label
        self._current[ti.key] = ti
        self._queueings.append(_Queueing(ti, ti.record_id, ti.label))
        self.executors[ti.backend].queue_workload(self._workload(ti, behaviour), session=None)  # type: ignore[arg-type]

    def _queueing_of(self, ti: TaskInstance) -> _Queueing:
        return next(q for q in reversed(self._queueings) if q.ti is ti and q.record_id == ti.record_id)

    def _event(self, key: TaskInstanceKey, state: str) -> None:
        if state not in (SUCCESS, FAILED):
            return
        label = self._by_key.get(key)
        if label is None:
            log.warning("event %s for a task instance the scheduler never queued: %s", state, key)
            return
        ti = self._current.get(key)
        awaited = ti is not None and ti.state == QUEUED
        self.events.append(Event(label, state, awaited))
        if ti is not None and awaited:
            ti.state = state
            self.db.update(ti)

    def _workload(self, ti: TaskInstance, behaviour: Behaviour) -> ExecuteTask:
        """The workload as the 3.3 scheduler builds it, with a real (unverifiable here) token."""
        now = int(time.time())
        token = jwt.encode(
            {"sub": str(ti.id), "scope": "workload", "iat": now, "exp": now + int(self.task_queued_timeout)},
            self._token_secret,
            algorithm="HS512",
        )
        dto = TaskInstanceDTO(
            id=ti.id,
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            try_number=ti.try_number,
            map_index=ti.map_index,
            dag_version_id=uuid.uuid4(),
            queue="default",
            pool_slots=1,
            priority_weight=1,
            context_carrier={},
            external_executor_id=ti.record_id,
            executor_config=self._executor_config(ti.backend, behaviour),
        )
        return ExecuteTask(
            token=token,
            ti=dto,
            dag_rel_path=Path("chaos.py"),
            bundle_info=BundleInfo(name="dags-folder", version=None),
            log_path=f"{ti.task_id}.log",
        )

    def _executor_config(self, backend: str, behaviour: Behaviour) -> dict[str, Any]:
        environment = [{"name": k, "value": v} for k, v in behaviour.environment().items()]
        if backend == "ecs":
            container = self.settings.ecs.container_name
            return {"overrides": {"containerOverrides": [{"name": container, "environment": environment}]}}
        return {"containerOverrides": {"environment": environment}}
