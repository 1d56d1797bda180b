"""The world of a Batch scenario: sandbox, settings, store, fake clock, engines (no fixtures here)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine as DbEngine

from aws_reconciler.backends.batch.backend import BatchBackend
from aws_reconciler.backends.batch.descriptor import BATCH
from aws_reconciler.backends.batch.spec import build_submit_job_request
from aws_reconciler.backends.client import aws_client_config
from aws_reconciler.backends.tags import ID_TAG
from aws_reconciler.config import Settings
from aws_reconciler.model import Backend, TiKey
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.factory import build_backend, controller_settings
from aws_reconciler.store import NewTask, TaskRecord, TaskStore
from aws_reconciler_sandbox import SandboxServer
from support.scenario import FakeClock

REGION = "us-east-1"
DEPLOYMENT = "airflow"
QUEUE = "airflow"
DEFINITION = "airflow-job"


@dataclass
class Harness:
    """One scenario's world, built by the ``make_harness`` fixture."""

    sandbox: SandboxServer
    settings: Settings
    db: DbEngine
    store: TaskStore
    clock: FakeClock
    engines: list[Controller] = field(default_factory=list)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.db.dispose()

    def client(self) -> Any:
        """A Batch client configured like the reconciler's: no botocore retries."""
        return self.sandbox.client(
            "batch", config=aws_client_config(max_pool_connections=self.settings.core.launch_concurrency + 4)
        )

    def backend(self, *, client: Any = None) -> BatchBackend:
        """The factory's Batch backend on the fake clock, pausing only briefly after AWS throttles."""
        backend = build_backend(
            BATCH, self.settings, client=client if client is not None else self.client(), clock=self.clock
        )
        assert isinstance(backend, BatchBackend)
        backend.throttle_pause = 0.01
        return backend

    def engine(
        self,
        *,
        backend: Any = None,
        is_leader: Callable[[], bool] = lambda: True,
        rng: Callable[[], float] = lambda: 0.0,
    ) -> Controller:
        """A fresh Batch engine on the shared store and clock (closed at teardown)."""
        engine = Controller(
            store=self.store,
            backend=backend if backend is not None else self.backend(),
            settings=controller_settings(self.settings, Backend.BATCH),
            is_leader=is_leader,
            clock=self.clock,
            rng=rng,
        )
        self.engines.append(engine)
        return engine

    def add(
        self,
        n: int = 1,
        *,
        commands: list[list[str]] | None = None,
        ids: list[str] | None = None,
        executor_config: Any = None,
    ) -> list[str]:
        """Insert ``n`` pending rows the way the BatchExecutor does; returns their ids."""
        rows: list[NewTask] = []
        for i in range(n):
            record_id = ids[i] if ids else str(uuid.uuid4())
            # One task instance per row: rows of one TI key would supersede each other.
            key = TiKey("scenario_dag", f"task_{i}", f"manual__2030-01-01T00:00:00_{record_id}", -1, 1)
            command = commands[i] if commands else ["airflow", "tasks", "run", key.task_id]
            spec = build_submit_job_request(
                batch=self.settings.batch,
                deployment=DEPLOYMENT,
                record_id=record_id,
                key=key,
                command=command,
                executor_config=executor_config,
            )
            rows.append(
                NewTask(
                    id=record_id,
                    backend=Backend.BATCH,
                    owner="scheduler-1",
                    key=key,
                    queue="default",
                    target=spec["jobQueue"],
                    spec=spec,
                )
            )
        self.store.add(rows)
        return [r.id for r in rows]

    def row(self, record_id: str) -> TaskRecord:
        record = self.store.get(record_id)
        assert record is not None, f"no row {record_id}"
        return record

    def jobs_of(self, record_id: str) -> list[dict[str, Any]]:
        """Every Batch job in the sandbox carrying this record's id tag, oldest first."""
        return [j for j in self.sandbox.jobs() if j["tags"].get(ID_TAG) == record_id]

    def job(self, job_id: str) -> dict[str, Any]:
        [found] = [j for j in self.sandbox.jobs() if j["jobId"] == job_id]
        return found

    def calls(self, operation: str) -> int:
        return self.sandbox.calls().get(f"batch:{operation}", 0)

    def create_queue(self, name: str) -> None:
        """Another job queue over the bootstrap's compute environment."""
        self.client().create_job_queue(
            jobQueueName=name,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "airflow"}],
        )

    def submit_foreign_job(self, *, tags: dict[str, str] | None, queue: str = QUEUE, name: str = "foreign") -> str:
        """SubmitJob behind the reconciler's back (another deployment, a human, a lost row)."""
        args: dict[str, Any] = {"jobName": name, "jobQueue": queue, "jobDefinition": DEFINITION}
        if tags is not None:
            args["tags"] = tags
        return str(self.sandbox.client("batch").submit_job(**args)["jobId"])
