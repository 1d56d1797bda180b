"""The processes of one run: the sandbox, a PostgreSQL schema for the task store, and the
``aws-reconciler run`` replicas, each started the way an operator starts it.

Every process runs in its own process group with a marker variable in its environment (the
demo stack's process management, ``aws_reconciler_sandbox.demo.processes``), so that a run
that fails or is interrupted leaves nothing behind: the sandbox's task processes inherit the
marker and a final sweep stops whatever still carries it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3
import sqlalchemy as sa
from botocore.config import Config

from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler.config import Settings, load_settings
from aws_reconciler.store import create_store_engine, migrate
from aws_reconciler_sandbox import SandboxControlClient
from aws_reconciler_sandbox.demo.processes import STACK_MARKER, ManagedProcess, free_port, sweep

from .facts import ROLE_TAG, Launched, launched
from .scenarios import Timing

__all__ = ["DEPLOYMENT", "Lease", "World", "admin_url", "wait_for"]

T = TypeVar("T")

DEPLOYMENT = "chaos"
OTHER = "chaos-other"
REGION = "us-east-1"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
TASK_IMAGE = Path(__file__).resolve().parent / "taskimage"
#: Long enough to outlive any run: foreign tasks and planted orphans must be stopped by someone.
FOREVER = 3600.0


def admin_url() -> str:
    """The PostgreSQL server the suite creates its schemas on (the tests' variable)."""
    return os.environ.get("AWS_RECONCILER_TEST_DATABASE_URL", DEFAULT_ADMIN_URL)


def wait_for(condition: Callable[[], T | None], *, what: str, timeout: float, every: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class Lease:
    """The reconcilers' lease row, on the database's clock."""

    holder: str
    acquired_at: datetime
    generation: int

    @property
    def pid(self) -> int | None:
        """The holder's process id (holders are ``<host>-<pid>-<suffix>``)."""
        parts = self.holder.rsplit("-", 2)
        return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


class World:
    """Starts, inspects and stops the processes of one run; a context manager."""

    def __init__(self, work_dir: Path, *, timing: Timing, log: Callable[[str], None]) -> None:
        self.work_dir = work_dir
        self.timing = timing
        self.log = log
        self.stack_id = uuid.uuid4().hex[:12]
        self.schema = f"chaos_{self.stack_id}"
        self.sandbox: ManagedProcess | None = None
        self.exports: dict[str, str] = {}
        self.replicas: list[ManagedProcess] = []
        #: Replicas down on purpose (killed, not restarted yet): any other that is not running died.
        self.down: set[str] = set()
        self._metrics_ports: dict[str, int] = {}
        # Local endpoints only: never through a proxy from the environment.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.store_url = ""
        #: Leave the schema in place at close (a failed run's rows are evidence).
        self.keep_store = False
        self._admin: sa.engine.Engine | None = None
        self._store: sa.engine.Engine | None = None
        self.control: SandboxControlClient | None = None
        #: The observation settings (none: poll).
        self.observation_env: dict[str, str] = {}
        work_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- starting ---------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        # Nothing of the caller's Airflow or AWS settings may leak into the processes. PYTHONPATH
        # stays: the processes must run the same code as the suite (a snapshot of the tree, say).
        dropped = ("AIRFLOW", "AWS_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update({STACK_MARKER: self.stack_id, "PYTHONUNBUFFERED": "1"})
        return env

    def start_sandbox(self, *, seed: int, faults: Sequence[str], args: Sequence[str] = ()) -> None:
        """``aws-reconciler sandbox --profile realistic --seed N``, tasks running the chaos image."""
        env_file = self.work_dir / "sandbox.env"
        argv = [
            sys.executable, "-m", "aws_reconciler.cli", "sandbox", "--port", "0", "--env-file", str(env_file),
            "--profile", "realistic", "--seed", str(seed),
            # A held answer only has to outlast the reconciler's call timeout; shorter than the
            # profile's 65 s so that held requests do not pile up in the sandbox.
            "--timeout-hold", "5",
            "--task-env", f"PYTHONPATH={TASK_IMAGE}",
            *[arg for rule in faults for arg in ("--fault", rule)],
            *args,
        ]  # fmt: skip
        self.sandbox = ManagedProcess("sandbox", argv, self._base_env(), self.work_dir, cwd=self.work_dir)
        # Only its own shutdown stops the task processes it started in sessions of their own.
        self.sandbox.parent_death_signal = signal.SIGTERM
        self.sandbox.start()

        def ready() -> bool:
            assert self.sandbox is not None
            if not self.sandbox.running:
                raise RuntimeError(f"the sandbox exited: {self.sandbox.tail()}")
            return env_file.exists()

        wait_for(ready, what="the sandbox's env file", timeout=60)
        self.exports = _read_exports(env_file)
        self.control = SandboxControlClient(self.exports["AWS_ENDPOINT_URL"])

    def provision_events(self) -> None:
        """What deploy/events/cloudformation.yaml creates (a rule, queue and DLQ per backend), and
        the settings that make both backends observe by events."""
        from aws_reconciler_sandbox import provision_event_queue

        where = {"endpoint_url": self.exports["AWS_ENDPOINT_URL"], "region": self.exports["AWS_DEFAULT_REGION"]}
        ecs = provision_event_queue(
            **where, deployment=DEPLOYMENT, clusters=[self.exports["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"]]
        )
        batch = provision_event_queue(
            **where, deployment=DEPLOYMENT, job_queues=[self.exports["AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE"]]
        )
        self.observation_env = {
            "AIRFLOW__AWS_RECONCILER_ECS__OBSERVATION": "events",
            "AIRFLOW__AWS_RECONCILER_ECS__EVENTS_QUEUE_URL": ecs,
            "AIRFLOW__AWS_RECONCILER_BATCH__OBSERVATION": "events",
            "AIRFLOW__AWS_RECONCILER_BATCH__EVENTS_QUEUE_URL": batch,
        }

    def create_store(self) -> None:
        """A fresh schema, migrated as the chart's migration job would."""
        self._admin = sa.create_engine(admin_url())
        with self._admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.schema}"))
        url = sa.engine.make_url(admin_url()).update_query_dict({"options": f"-csearch_path={self.schema}"})
        self.store_url = url.render_as_string(hide_password=False)
        self._store = create_store_engine(self.store_url)
        migrate(self._store)

    def settings_env(self) -> dict[str, str]:
        """The ``[aws_reconciler*]`` settings the executors and the reconcilers share."""
        return {
            **{k: v for k, v in self.exports.items() if k.startswith("AIRFLOW__AWS_RECONCILER")},
            "AIRFLOW__AWS_RECONCILER__STORE_URL": self.store_url,
            "AIRFLOW__AWS_RECONCILER__DEPLOYMENT": DEPLOYMENT,
            "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
            **self.timing.reconciler_env(),
            **self.observation_env,
        }

    def settings(self) -> Settings:
        """The executors' settings (no airflow.cfg: everything explicit)."""
        return load_settings(environ=self.settings_env(), cfg_path=self.work_dir / "absent-airflow.cfg")

    def replica(self, name: str) -> ManagedProcess:
        """A new ``aws-reconciler run`` (not started); it keeps its metrics port across restarts."""
        port = self._metrics_ports.setdefault(name, free_port())
        env = {
            **self._base_env(),
            **{k: v for k, v in self.exports.items() if k.startswith("AWS_")},
            **self.settings_env(),
            "AIRFLOW_HOME": str(self.work_dir),
            "AIRFLOW_CONFIG": str(self.work_dir / "absent-airflow.cfg"),
            # Leadership is read from the lease row; /readyz says when a standby is up.
            "AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS": f"127.0.0.1:{port}",
        }
        process = ManagedProcess(name, [sys.executable, "-m", "aws_reconciler", "run"], env, self.work_dir)
        self.replicas.append(process)
        return process

    # ---- looking ------------------------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise, with the end of its log, when the sandbox or a replica not down on purpose died."""
        dead = [p for p in self.replicas if not p.running and p.name not in self.down]
        if self.sandbox is not None and not self.sandbox.running:
            dead.insert(0, self.sandbox)
        if dead:
            process = dead[0]
            raise RuntimeError(
                f"{process.name} exited by itself (status {process.returncode}); its log ends:\n{process.tail(20)}"
            )

    def lease(self) -> Lease | None:
        """The lease row, or None before anyone took it."""
        assert self._store is not None
        with self._store.connect() as conn:
            row = conn.execute(
                sa.text("SELECT holder, acquired_at, transitions FROM aws_reconciler_lease WHERE name = :name"),
                {"name": f"reconciler-{DEPLOYMENT}"},
            ).first()
        return Lease(row.holder, row.acquired_at, int(row.transitions)) if row is not None else None

    def database_now(self) -> datetime:
        """The database's clock (the lease's)."""
        assert self._store is not None
        with self._store.connect() as conn:
            now: datetime = conn.execute(sa.text("SELECT now()")).scalar_one()
            return now

    def standing_by(self, process: ManagedProcess) -> bool:
        """``process`` is up and its /readyz says it is a standby (it waits for the lease)."""
        if not process.running:
            return False
        url = f"http://127.0.0.1:{self._metrics_ports[process.name]}/readyz"
        try:
            with self._http.open(url, timeout=2) as response:
                return bool(json.loads(response.read()).get("role") == "standby")
        except (OSError, ValueError):  # not serving yet, or not ready (503)
            return False

    def leader(self) -> ManagedProcess | None:
        """The replica that holds the lease, if it is alive."""
        lease = self.lease()
        if lease is None:
            return None
        return next((p for p in self.replicas if p.running and p.pid == lease.pid), None)

    def launched(self) -> list[Launched]:
        """Every task and job the sandbox ever launched."""
        assert self.control is not None
        return launched(self.control.tasks(), self.control.jobs())

    def calls(self) -> dict[str, int]:
        """Requests the sandbox received, ``"service:Operation"`` -> count."""
        assert self.control is not None
        return dict(self.control.calls())

    def injected(self) -> dict[str, int]:
        """How often each realism behaviour struck, ``"<kind> <service:Operation>"``."""
        assert self.control is not None
        return dict(self.control.realism_state()["injected"])

    # ---- what the suite launches itself ------------------------------------------------------

    def client(self, service: str) -> Any:
        """A boto3 client for the sandbox, retrying as a careful caller would (realism is on)."""
        return boto3.client(
            service,
            endpoint_url=self.exports["AWS_ENDPOINT_URL"],
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard", "max_attempts": 10}, read_timeout=10),
        )

    def plant(self) -> None:
        """Tasks and jobs the reconciler must leave alone (another deployment's, or not quite its
        own) and orphans it must stop (its own identity, no row)."""
        run = self.exports
        ecs_request: dict[str, Any] = {
            "cluster": run["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"],
            "taskDefinition": run["AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION"],
            "launchType": "FARGATE",
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": run["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(","),
                    "securityGroups": run["AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS"].split(","),
                }
            },
        }
        container = run["AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME"]
        command = ["python", "-m", "airflow.sdk.execution_time.execute_workload"]
        forever = [{"name": "CHAOS_SECONDS", "value": f"{FOREVER:g}"}]
        ecs_variants = [
            # (startedBy, deployment tag, role)
            (OTHER, OTHER, "foreign"),  # another deployment
            (DEPLOYMENT, OTHER, "foreign"),  # our startedBy, another deployment's tag
            (OTHER, DEPLOYMENT, "foreign"),  # our tag, another startedBy: not ours either
            (None, None, "foreign"),  # nobody's
            (DEPLOYMENT, DEPLOYMENT, "orphan"),  # ours, but no row: stopped after orphan_grace
            (DEPLOYMENT, DEPLOYMENT, "orphan"),
        ]
        ecs = self.client("ecs")
        for n, (started_by, deployment, role) in enumerate(ecs_variants):
            tags = [{"key": ROLE_TAG, "value": role}]
            if deployment is not None:
                tags += [{"key": DEPLOYMENT_TAG, "value": deployment}, {"key": ID_TAG, "value": str(uuid.uuid4())}]
            request = {
                **ecs_request,
                "tags": tags,
                "clientToken": f"chaos-plant-{self.stack_id}-{n}",
                "overrides": {"containerOverrides": [{"name": container, "command": command, "environment": forever}]},
            }
            if started_by is not None:
                request["startedBy"] = started_by
            ecs.run_task(**request)
        batch = self.client("batch")
        batch_variants: list[tuple[dict[str, str], str]] = [
            ({DEPLOYMENT_TAG: OTHER}, "foreign"),
            ({}, "foreign"),
            ({DEPLOYMENT_TAG: DEPLOYMENT}, "orphan"),
        ]
        for n, (identity, role) in enumerate(batch_variants):
            record_id = str(uuid.uuid4())
            job_tags = {ROLE_TAG: role, **identity}
            if identity:
                job_tags[ID_TAG] = record_id
            batch.submit_job(
                jobName=f"af-{record_id}-1" if role == "orphan" else f"chaos-plant-{n}",
                jobQueue=run["AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE"],
                jobDefinition=run["AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION"],
                containerOverrides={"command": command, "environment": forever},
                tags=job_tags,
            )

    # ---- stopping ------------------------------------------------------------------------------

    def stop_replicas(self) -> None:
        """SIGTERM every replica, as Kubernetes does, SIGKILL after a deadline."""
        for process in self.replicas:
            process.stop(timeout=15)

    def close(self) -> None:
        """Stop the replicas, then the sandbox; sweep; drop the schema."""
        self.stop_replicas()
        if self.sandbox is not None:
            self.sandbox.stop(timeout=30)
        left = sweep(self.stack_id)
        if left:
            self.log(f"stopped {len(left)} leftover process(es): {left}")
        if self._store is not None:
            self._store.dispose()
        if self._admin is not None and not self.keep_store:
            with self._admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
        if self._admin is not None:
            self._admin.dispose()


def _read_exports(path: Path) -> dict[str, str]:
    """``export NAME=VALUE`` lines (values shell-quoted) as a dict."""
    pairs = (shlex.split(line)[1].split("=", 1) for line in path.read_text().splitlines() if line.strip())
    return {name: value for name, value in pairs}
