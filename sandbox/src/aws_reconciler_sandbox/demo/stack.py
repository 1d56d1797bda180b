"""The whole system on one machine: sandbox (fake AWS that runs the tasks), database, reconciler
and Airflow 3 (api-server, scheduler, dag-processor, triggerer as separate processes), for the demo and
for the end-to-end tests.

Usage::

    with DemoStack(StackOptions()) as stack:
        run_id = stack.api.trigger("aws_reconciler_example")
        stack.api.wait_run_finished("aws_reconciler_example", run_id, timeout=300)

Everything lives in a fresh work directory: ``airflow/`` (AIRFLOW_HOME, task logs), ``logs/``
(one file per process start) and, without PostgreSQL, the SQLite database. Every process runs
in its own process group and is stopped on exit, on Ctrl-C, SIGTERM and on failure (SIGTERM to
the group, SIGKILL after a deadline); a final sweep stops anything that escaped, and the children
die with the orchestrator even if it is killed with -9 (see ``processes.py``).

Database: a fresh PostgreSQL database (``demo_<random>``, dropped at the end) on the server at
``AWS_RECONCILER_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) holds
Airflow's metadata and the task store. Without a reachable server the stack falls back to a SQLite
file in the work directory: it works for the demo, but SQLite serialises every writer, so the
scheduler, the dag-processor, the api-server and the reconciler wait on each other's locks, runs
are slower and ``database is locked`` errors can appear under load. PostgreSQL is what the
end-to-end tests use. A fallback to SQLite is logged; ``StackOptions(database="postgres")``
refuses it instead.

The processes, as an operator would run them: ``aws-reconciler sandbox``
(the sandbox with its ECS task and Batch job runners; ECS tasks and Batch jobs get Airflow's
settings from the task definition's and job definition's environment), ``aws-reconciler db
migrate`` and ``aws-reconciler run`` (both backends), ``airflow db migrate``, ``airflow
api-server``, ``airflow dag-processor``, ``airflow triggerer`` (deferrable operators wait there) and
``airflow scheduler`` with
``AIRFLOW__CORE__EXECUTOR=aws_reconciler.executor.EcsExecutor,aws_reconciler.executor.BatchExecutor``
(ECS the default; a task with ``executor="BatchExecutor"`` becomes a Batch job; ``airflow
standalone`` would force the LocalExecutor). Ports are picked free at start; the simple auth manager makes every
REST call an admin's, so the demo and the tests drive Airflow through its public API.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from .airflow_api import AirflowApi, WaitTimeout, wait_for
from .processes import STACK_MARKER, ManagedProcess, free_port, process_tree, sweep

#: The example DAGs shipped with the package (package data).
SHIPPED_DAGS = Path(__file__).resolve().parent / "dags"
EXAMPLE_DAG_ID = "aws_reconciler_example"
INVALID_CONFIG_DAG_ID = "aws_reconciler_invalid_config"
DEADLINE_DAG_ID = "aws_reconciler_deadline"

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
ADMIN_URL_ENV = "AWS_RECONCILER_TEST_DATABASE_URL"
DEPLOYMENT = "airflow"
#: Both executors; the first is the default, ``executor="BatchExecutor"`` picks the second.
EXECUTORS = "aws_reconciler.executor.EcsExecutor,aws_reconciler.executor.BatchExecutor"
REGION = "us-east-1"

#: Each team's executors in multi-team stacks (``<team>=...`` in ``[core] executor``).
TEAM_EXECUTORS = "aws_reconciler.executor.EcsExecutor"
#: Processes in start order; stopped in :data:`STOP_ORDER`.
SANDBOX, RECONCILER, API_SERVER, DAG_PROCESSOR, SCHEDULER, TRIGGERER = (
    "sandbox",
    "reconciler",
    "api-server",
    "dag-processor",
    "scheduler",
    "triggerer",
)
# Airflow first (no new work), the reconciler before the sandbox (so it does not see its tasks
# vanish), the sandbox before the api-server (its task processes talk to the api-server).
STOP_ORDER = (SCHEDULER, TRIGGERER, DAG_PROCESSOR, RECONCILER, SANDBOX, API_SERVER)

# Our environment must not leak into the stack: an operator's AIRFLOW__*, AWS_* or PYTHONPATH
# would silently change what runs. Everything the processes need is set explicitly.
_DROPPED_ENV_PREFIXES = ("AIRFLOW", "AWS_", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")

Log = Callable[[str], None]
T = TypeVar("T")


def _default_log(message: str) -> None:
    print(f"[stack {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class StackOptions:
    """What to run and how. The defaults are the demo's."""

    #: Where logs, AIRFLOW_HOME and (without PostgreSQL) the database go; default a new temp dir.
    work_dir: Path | None = None
    #: Remove ``work_dir`` at the end when the run went well (always kept after a failure).
    cleanup_work_dir: bool = False
    dags_folder: Path = SHIPPED_DAGS
    #: DAGs that must be parsed before the stack counts as ready.
    wait_for_dags: Sequence[str] = (EXAMPLE_DAG_ID,)
    #: "auto": PostgreSQL when reachable, else SQLite.
    database: Literal["auto", "postgres", "sqlite"] = "auto"
    #: PostgreSQL server URL with rights to CREATE DATABASE; default from ``ADMIN_URL_ENV``.
    admin_url: str | None = None
    #: Task processes each cost a full Airflow task runner (~250 MB RSS, seconds of CPU to start).
    parallelism: int = 8
    reconcile_interval: float = 1.0
    resync_interval: float = 5.0
    orphan_grace: float = 10.0
    #: Extra variables for the Airflow processes (scheduler, dag-processor, api-server).
    airflow_env: Mapping[str, str] = field(default_factory=dict)
    #: Extra variables for ``aws-reconciler run``.
    reconciler_env: Mapping[str, str] = field(default_factory=dict)
    #: Extra variables for the ECS task processes (the sandbox runner passes its own env on).
    task_env: Mapping[str, str] = field(default_factory=dict)
    #: Seconds every ECS task stays PROVISIONING (the sandbox's default is half a second); a
    #: long one models a cluster without capacity, where task instances get stuck in queued.
    provisioning_delay: float | None = None
    startup_timeout: float = 240.0
    #: Airflow teams (multi-team mode), each with its own DAG folder (a DAG bundle of the team), its
    #: own EcsExecutor in the scheduler and its own reconciler (``aws-reconciler --team <team> run``).
    #: Every team gets the deployment-wide settings as its own (Airflow's team settings do not fall
    #: back to them); ``airflow_env`` adds or overrides a team's (``AIRFLOW__<TEAM>___...``).
    teams: Mapping[str, Path] = field(default_factory=dict)
    #: How the reconciler observes its tasks: by AWS's events (an EventBridge rule and an SQS queue
    #: per backend, provisioned as deploy/events/ does), or by polling. A stack with teams polls:
    #: its teams share one cluster, and one queue cannot be read by several reconcilers.
    observation: Literal["poll", "events"] = "events"
    log: Log = _default_log


@dataclass
class StoreRow:
    """One row of ``aws_reconciler_task``, as the demo and the tests read it."""

    id: str
    backend: str
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    owner: str | None
    desired: str
    phase: str
    external_id: str | None
    attempt: int
    status_reason: str | None
    last_error: str | None
    exit_code: int | None
    created_at: datetime
    launched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    reported_at: datetime | None
    #: ``task``, ``callback`` or ``connection_test``.
    kind: str = "task"
    #: Airflow's team of the executor that wrote the row (multi-team stacks).
    team: str | None = None
    #: Airflow's state of the try when the executor reported the row.
    ti_state: str | None = None


class StackError(RuntimeError):
    """The stack could not start or a process died; the message lists the log files."""


class DemoStack:
    """Starts, inspects, breaks on purpose and stops the local stack (see the module docstring)."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.log = self.options.log
        self.stack_id = uuid.uuid4().hex[:12]
        self.work_dir = Path(self.options.work_dir or tempfile.mkdtemp(prefix="aws-reconciler-stack-"))
        self.airflow_home = self.work_dir / "airflow"
        self.log_dir = self.work_dir / "logs"
        self.processes: dict[str, ManagedProcess] = {}
        self.database_url = ""
        self.database_kind: Literal["postgres", "sqlite"] = "sqlite"
        self.api_port = 0
        self.sandbox_port = 0
        self.metrics_port = 0
        self.team_metrics_ports: dict[str, int] = {}
        self.sandbox_env: dict[str, str] = {}
        #: The observation settings (none: the reconciler polls).
        self.observation_env: dict[str, str] = {}
        self.api = AirflowApi("http://127.0.0.1:0")
        self._admin_url: str | None = None
        self._database_name: str | None = None
        self._engine: Engine | None = None
        self._jwt_secret = secrets.token_urlsafe(48)
        self._started_at = 0.0
        self._failed = False
        # Processes killed on purpose (kill -9 in a test) are not failures until started again.
        self._down: set[str] = set()

    # ---- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> DemoStack:
        try:
            self.start()
        except BaseException:
            self._failed = True
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._failed = True
            if not issubclass(exc_type, KeyboardInterrupt):
                self.log(self.describe_logs())
        self.stop()

    def start(self) -> DemoStack:
        """Bring everything up, in dependency order, each step with a deadline."""
        self._started_at = time.monotonic()
        for directory in (self.airflow_home, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.sandbox_port = free_port()
        self.metrics_port = free_port()
        self.team_metrics_ports = {team: free_port() for team in self.options.teams}
        self.api = AirflowApi(f"http://127.0.0.1:{self.api_port}")
        self.log(f"work directory {self.work_dir}")

        self._create_database()
        self._start_sandbox()
        self._run_step("airflow-db-migrate", [sys.executable, "-m", "airflow", "db", "migrate"], self.airflow_env())
        for team in self.options.teams:
            # The scheduler refuses executors of teams its database does not know.
            self._run_step(
                f"airflow-teams-create-{team}",
                [sys.executable, "-m", "airflow", "teams", "create", team],
                self.airflow_env(),
            )
        self._run_step(
            "reconciler-db-migrate",
            [sys.executable, "-m", "aws_reconciler.cli", "db", "migrate"],
            self.reconciler_env(),
        )
        self.start_reconciler()
        for team in self.options.teams:
            self.start_reconciler(team)
        airflow_started = utc_now()
        self._spawn(
            API_SERVER,
            [
                sys.executable,
                "-m",
                "airflow",
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--workers",
                "1",
            ],
            self.airflow_env(),
        )
        self._spawn(DAG_PROCESSOR, [sys.executable, "-m", "airflow", "dag-processor"], self.airflow_env())
        # Deferrable operators hand their wait to a trigger; a real deployment runs a triggerer.
        self._spawn(TRIGGERER, [sys.executable, "-m", "airflow", "triggerer", "--skip-serve-logs"], self.airflow_env())
        self.start_scheduler()

        deadline = self.options.startup_timeout
        self.wait(lambda: self.api.health(), "the api-server to answer", deadline)
        self.wait_scheduler_running(started_after=airflow_started, timeout=deadline)
        self.wait(lambda: self.api.component_healthy("dag_processor"), "the dag-processor to heartbeat", deadline)
        self.wait(lambda: self.api.component_healthy("triggerer"), "the triggerer to heartbeat", deadline)
        self.wait_reconciler_leading(timeout=deadline)
        for team in self.options.teams:
            self.wait_reconciler_leading(timeout=deadline, team=team)
        for dag_id in self.options.wait_for_dags:
            self.wait(partial(self.api.dag, dag_id), f"DAG {dag_id} to be parsed", deadline)
            self.api.unpause(dag_id)
        self.log(
            f"ready in {time.monotonic() - self._started_at:.0f} s: Airflow UI at {self.api.base_url}, "
            f"reconciler metrics at {self.metrics_url}"
        )
        return self

    def stop(self) -> None:
        """Stop every process (scheduler first), sweep leftovers, drop the database. Idempotent.

        A second Ctrl-C while this runs is ignored: interrupting the clean-up is what would
        leave processes behind.
        """
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
        try:
            self._stop_all()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _stop_all(self) -> None:
        if any(p.running for p in self.processes.values()):
            self.log("stopping every process of the stack ...")
        for name in STOP_ORDER:
            # Teams' reconcilers stop with the deployment-wide one, before the sandbox.
            teams = [reconciler_of(team) for team in self.options.teams] if name == RECONCILER else []
            for each in (name, *teams):
                process = self.processes.get(each)
                if process is not None and process.popen is not None:
                    process.stop()
        for process in self.processes.values():  # anything not in STOP_ORDER
            process.stop()
        left = sweep(self.stack_id, log=self.log)
        if left:
            self.log(f"WARNING: could not stop processes {left}")
        self._drop_database()
        if self.options.cleanup_work_dir and not self._failed:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        elif self.processes:
            self.log(f"logs kept in {self.log_dir}")

    # ---- environments -----------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """Our environment minus anything that would change Airflow's or boto3's behaviour."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV_PREFIXES)}
        env.update({STACK_MARKER: self.stack_id, "PYTHONUNBUFFERED": "1"})
        return env

    def _airflow_common(self) -> dict[str, str]:
        """What every Airflow process, task processes included, must agree on."""
        return {
            # Never write the operator's ~/airflow: everything lives in the work directory.
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.options.dags_folder),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            # Task processes too: parsing the DAG file checks every task's ``executor=`` against
            # this list (an unknown "BatchExecutor" fails the whole DAG file in the task).
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS + "".join(f";{team}={TEAM_EXECUTORS}" for team in self.options.teams),
            **self._multi_team(),
        }

    def _multi_team(self) -> dict[str, str]:
        """Multi-team mode: each team's DAG folder is a DAG bundle of that team (task processes
        find their bundle by name through the same list)."""
        if not self.options.teams:
            return {}
        local = "airflow.dag_processing.bundles.local.LocalDagBundle"
        bundles = [{"name": "dags-folder", "classpath": local, "kwargs": {}}] + [
            {"name": f"{team}-dags", "classpath": local, "kwargs": {"path": str(folder)}, "team_name": team}
            for team, folder in self.options.teams.items()
        ]
        return {
            "AIRFLOW__CORE__MULTI_TEAM": "True",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        }

    def _team_settings(self) -> dict[str, str]:
        """Each team's own copy of our deployment-wide settings (``AIRFLOW__<TEAM>___AWS_RECONCILER...``),
        with its reconciler's own metrics port: a team's settings never fall back to the others."""
        ours = {**self.sandbox_env, **self._reconciler_settings()}
        env: dict[str, str] = {}
        for team in self.options.teams:
            for name, value in ours.items():
                if name.startswith("AIRFLOW__AWS_RECONCILER"):
                    env[f"AIRFLOW__{team.upper()}___{name.removeprefix('AIRFLOW__')}"] = value
            port = self.team_metrics_ports[team]
            env[f"AIRFLOW__{team.upper()}___AWS_RECONCILER__METRICS_ADDRESS"] = f"127.0.0.1:{port}"
        return env

    def task_env(self) -> dict[str, str]:
        """What ECS task and Batch job processes get on top of the sandbox's environment (through the
        task and job definitions' ``environment``): the execution API, the executors and the DAG
        files, but neither database credentials nor the JWT signing secret, as on AWS."""
        return {**self._airflow_common(), **self.options.task_env}

    def _reconciler_settings(self) -> dict[str, str]:
        """``[aws_reconciler]`` settings; the executors read the same ones (they must agree)."""
        return {
            "AIRFLOW__AWS_RECONCILER__DEPLOYMENT": DEPLOYMENT,
            "AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL": str(self.options.reconcile_interval),
            "AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL": str(self.options.resync_interval),
            # A running task's end noticed within a few seconds, as the demo's other timings are compressed.
            "AIRFLOW__AWS_RECONCILER__RUNNING_DESCRIBE_INTERVAL": "3",
            "AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE": str(self.options.orphan_grace),
            # A killed reconciler's lease expires quickly, so a restarted one takes over in seconds.
            "AIRFLOW__AWS_RECONCILER__LEASE_DURATION": "6",
            "AIRFLOW__AWS_RECONCILER__RENEW_DEADLINE": "4",
            "AIRFLOW__AWS_RECONCILER__RETRY_PERIOD": "1",
            "AIRFLOW__AWS_RECONCILER__BACKOFF_BASE": "1",
            "AIRFLOW__AWS_RECONCILER__BACKOFF_MAX": "10",
        }

    def airflow_env(self) -> dict[str, str]:
        """The scheduler's, dag-processor's and api-server's environment."""
        env = self.base_env()
        env.update(self._airflow_common())
        env.update(self.sandbox_env)
        env.update(self._reconciler_settings())
        env.update(self.observation_env)
        env.update(self._team_settings())
        env.update(
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}/",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__PARALLELISM": str(self.options.parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                # A scheduler killed with -9 is declared dead after this long and its task
                # instances are adopted at the next orphan check (defaults: 30 s and 300 s).
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
                "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            }
        )
        if self.database_kind == "postgres":
            # Airflow derives its async URL by swapping in asyncpg, which is not installed; the
            # psycopg (3) driver the project uses has an async flavour of its own.
            async_url = make_url(self.database_url).set(drivername="postgresql+psycopg_async")
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = async_url.render_as_string(hide_password=False)
        env.update(self.options.airflow_env)
        return env

    def reconciler_env(self) -> dict[str, str]:
        """``aws-reconciler run``: the store (Airflow's database) and the sandbox, nothing of Airflow."""
        env = self.base_env()
        # Its own AIRFLOW_HOME, so that it never reads the operator's ~/airflow/airflow.cfg.
        env["AIRFLOW_HOME"] = str(self.airflow_home)
        env.update(self.sandbox_env)
        env.update(self._reconciler_settings())
        env.update(self.observation_env)
        env.update(self._team_settings())
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.database_url
        # Its own free port: the default (9109) would collide between stacks and after restarts
        # of another reconciler on this machine.
        env["AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS"] = f"127.0.0.1:{self.metrics_port}"
        # The reconciler refuses launches older than the workload token: same value as Airflow's.
        timeout = self.options.airflow_env.get("AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT")
        if timeout is not None:
            env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] = timeout
        env.update(self.options.reconciler_env)
        return env

    # ---- processes --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> ManagedProcess:
        process = self.processes.get(name)
        if process is None:
            process = ManagedProcess(name=name, argv=list(argv), env=dict(env), log_dir=self.log_dir, cwd=self.work_dir)
            if name == SANDBOX:
                process.parent_death_signal = signal.SIGTERM
            self.processes[name] = process
        else:
            process.argv, process.env = list(argv), dict(env)
        process.start()
        self.log(f"started {name} (pid {process.pid}), log {process.log_path}")
        return process

    def _run_step(self, name: str, argv: Sequence[str], env: Mapping[str, str], timeout: float = 180) -> None:
        """Run a command to completion (migrations), failing with its log on error."""
        process = ManagedProcess(name=name, argv=list(argv), env=dict(env), log_dir=self.log_dir, cwd=self.work_dir)
        self.processes[name] = process
        started = time.monotonic()
        process.start()
        assert process.popen is not None
        try:
            code = process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.stop(timeout=5)
            raise StackError(f"{name} did not finish in {timeout:.0f} s\n{self.describe_logs()}") from None
        if code != 0:
            raise StackError(f"{name} failed with exit code {code}\n{self.describe_logs()}")
        self.log(f"{name} done in {time.monotonic() - started:.1f} s")

    def wait(
        self,
        condition: Callable[[], T | None],
        what: str,
        timeout: float,
        interval: float = 0.5,
        on_timeout: Callable[[], str] | None = None,
    ) -> T:
        """``wait_for`` that also fails fast, with the logs, when a process of the stack died."""

        def check() -> T | None:
            self.check_processes()
            return condition()

        try:
            return wait_for(check, timeout=timeout, interval=interval, what=what, on_timeout=on_timeout)
        except WaitTimeout as exc:
            raise StackError(f"{exc}\n{self.describe_logs()}") from None

    def check_processes(self) -> None:
        """Raise :class:`StackError` when a long-running process exited that should not have."""
        teams = [reconciler_of(team) for team in self.options.teams]
        for name in (SANDBOX, RECONCILER, *teams, API_SERVER, DAG_PROCESSOR, TRIGGERER, SCHEDULER):
            process = self.processes.get(name)
            if process is not None and process.popen is not None and not process.running and name not in self._down:
                raise StackError(f"{name} exited with code {process.returncode}\n{self.describe_logs(name)}")

    def describe_logs(self, first: str | None = None) -> str:
        """Every log file of the stack, and the end of the most relevant one."""
        lines = ["logs of the stack:"]
        for process in self.processes.values():
            for path in process.log_paths:
                lines.append(f"  {process.name:<22} {path}")
        focus = self.processes.get(first) if first else None
        if focus is not None:
            lines.append(f"--- last lines of {focus.log_path} ---")
            lines.append(focus.tail(40))
        return "\n".join(lines)

    # ---- sandbox ----------------------------------------------------------------------------

    def sandbox_argv(self, env_file: Path) -> list[str]:
        """The command serving the sandbox with its task runner on ``sandbox_port``."""
        argv = [
            sys.executable,
            "-m",
            "aws_reconciler.cli",
            "sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.sandbox_port),
            "--region",
            REGION,
            "--env-file",
            str(env_file),
        ]
        if self.options.provisioning_delay is not None:
            argv += ["--provisioning-delay", str(self.options.provisioning_delay)]
        for name, value in self.task_env().items():
            argv += ["--task-env", f"{name}={value}"]
        return argv

    def _start_sandbox(self) -> None:
        env_file = self.work_dir / "sandbox.env"
        env_file.unlink(missing_ok=True)
        self._spawn(SANDBOX, self.sandbox_argv(env_file), self.base_env())
        exports = self.wait(lambda: _read_exports(env_file), "the sandbox to write its settings", 60)
        self.sandbox_env = dict(exports)
        # Fargate needs no container instances; without a launch type moto picks EC2 and fails.
        self.sandbox_env.setdefault("AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE", "FARGATE")
        self.log(f"sandbox serving at {self.sandbox_env.get('AWS_ENDPOINT_URL')}")
        if self.options.observation == "events" and not self.options.teams:
            self._provision_events()

    def _provision_events(self) -> None:
        """Per backend, what deploy/events/cloudformation.yaml creates, and the settings to read it."""
        from ..events import provision_event_queue

        env = self.sandbox_env
        for backend, clusters, job_queues in (
            ("ECS", [env["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"]], []),
            ("BATCH", [], [env["AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE"]]),
        ):
            url = provision_event_queue(
                endpoint_url=env["AWS_ENDPOINT_URL"],
                region=REGION,
                deployment=DEPLOYMENT,
                clusters=clusters,
                job_queues=job_queues,
            )
            self.observation_env[f"AIRFLOW__AWS_RECONCILER_{backend}__OBSERVATION"] = "events"
            self.observation_env[f"AIRFLOW__AWS_RECONCILER_{backend}__EVENTS_QUEUE_URL"] = url
        self.log("the reconciler observes by events (an EventBridge rule and an SQS queue per backend)")

    @property
    def metrics_url(self) -> str:
        """The reconciler's Prometheus endpoint (``/healthz`` and ``/readyz`` beside it)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def team_metrics_url(self, team: str) -> str:
        """A team's reconciler's Prometheus endpoint."""
        return f"http://127.0.0.1:{self.team_metrics_ports[team]}/metrics"

    @property
    def sandbox(self) -> Any:
        """A ``SandboxControlClient`` for the sandbox (faults, task snapshots)."""
        from .. import SandboxControlClient

        return SandboxControlClient(self.sandbox_env["AWS_ENDPOINT_URL"])

    def ecs_tasks(self) -> list[dict[str, Any]]:
        """Every ECS task the sandbox knows (``GET /_sandbox/tasks``)."""
        return list(self.sandbox.tasks())

    def batch_jobs(self) -> list[dict[str, Any]]:
        """Every Batch job the sandbox knows (``GET /_sandbox/jobs``)."""
        return list(self.sandbox.jobs())

    # ---- reconciler and scheduler: start, kill -9, restart ----------------------------------

    def start_reconciler(self, team: str | None = None) -> ManagedProcess:
        """Start (again) ``aws-reconciler run`` (``team``: that team's, ``aws-reconciler --team <team> run``)."""
        name = reconciler_of(team)
        self._down.discard(name)
        scope = ["--team", team] if team else []
        return self._spawn(name, [sys.executable, "-m", "aws_reconciler.cli", *scope, "run"], self.reconciler_env())

    def start_scheduler(self) -> ManagedProcess:
        """Start (again) ``airflow scheduler``."""
        self._down.discard(SCHEDULER)
        return self._spawn(
            SCHEDULER, [sys.executable, "-m", "airflow", "scheduler", "--skip-serve-logs"], self.airflow_env()
        )

    def ensure_running(self) -> None:
        """Start again the reconciler or scheduler if a test left it down (killed on purpose)."""
        if RECONCILER in self._down:
            self.start_reconciler()
        for team in self.options.teams:
            if reconciler_of(team) in self._down:
                self.start_reconciler(team)
        if SCHEDULER in self._down:
            self.start_scheduler()

    def scheduler_log(self) -> str:
        """Every scheduler log so far, concatenated (restarts write new files)."""
        process = self.processes.get(SCHEDULER)
        if process is None:
            return ""
        return "".join(path.read_text(errors="replace") for path in process.log_paths if path.exists())

    def scheduler_job_id(self) -> int | None:
        """The id of the newest running scheduler job."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT max(id) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running'")
            ).scalar()
        return int(value) if value is not None else None

    def kill(self, name: str) -> None:
        """``kill -9`` a process group of the stack (a crash); it stays down until started again."""
        process = self.processes[name]
        self._down.add(name)
        self.log(f"kill -9 {name} (pid {process.pid}, group {sorted(process_tree(process.pid or 0))})")
        process.kill()

    def wait_reconciler_leading(self, timeout: float = 60, *, team: str | None = None) -> None:
        """Until the current reconciler process (of ``team``) holds its lease (a restart waits for expiry)."""
        pid = self.processes[reconciler_of(team)].pid
        lease = f"reconciler-{DEPLOYMENT}" + (f"#{team}" if team else "")

        def holder_is_current() -> bool:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.text("SELECT holder, expires_at FROM aws_reconciler_lease WHERE name = :name"),
                    {"name": lease},
                ).first()
            return row is not None and f"-{pid}-" in str(row.holder)

        self.wait(holder_is_current, f"reconciler pid {pid} to hold the lease", timeout)

    def wait_scheduler_running(self, *, started_after: datetime, timeout: float = 90) -> int:
        """Until a scheduler job started after ``started_after`` heartbeats; returns its job id."""

        def job() -> int | None:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.text(
                        "SELECT id FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
                        "AND start_date >= :after ORDER BY id DESC"
                    ),
                    {"after": started_after},
                ).first()
            return int(row.id) if row is not None else None

        return int(self.wait(job, "a new scheduler job", timeout))

    # ---- database ---------------------------------------------------------------------------

    def _create_database(self) -> None:
        choice = self.options.database
        admin = self.options.admin_url or os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL)
        if choice in ("auto", "postgres"):
            problem = postgres_problem(admin)
            if problem is None:
                name = f"demo_{uuid.uuid4().hex[:12]}"
                engine = sa.create_engine(_psycopg(admin), isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                engine.dispose()
                self._admin_url, self._database_name = admin, name
                self.database_kind = "postgres"
                self.database_url = _psycopg(admin, database=name)
                self.log(f"database: PostgreSQL {make_url(self.database_url).render_as_string(hide_password=True)}")
                return
            if choice == "postgres":
                raise StackError(f"PostgreSQL is required but {problem}")
            self.log(f"{problem}; falling back to SQLite (slower, single writer: see the docs)")
        self.database_kind = "sqlite"
        self.database_url = f"sqlite:///{self.work_dir / 'airflow.db'}"
        self.log(f"database: SQLite {self.work_dir / 'airflow.db'}")

    def _drop_database(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._admin_url is None or self._database_name is None:
            return
        name, self._database_name = self._database_name, None
        try:
            engine = sa.create_engine(_psycopg(self._admin_url), isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                # FORCE: a process killed with -9 can leave a backend that has not noticed yet.
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()
        except Exception as exc:
            self.log(f"WARNING: could not drop database {name}: {exc}")

    @property
    def engine(self) -> Engine:
        """An engine on the stack's database (Airflow's tables and the task store)."""
        if self._engine is None:
            from aws_reconciler.store.database import create_store_engine

            self._engine = create_store_engine(self.database_url, pool_size=2)
        return self._engine

    def store_rows(
        self, *, dag_id: str | None = None, run_id: str | None = None, kind: str | None = None
    ) -> list[StoreRow]:
        """Rows of the task store, oldest first, optionally of one DAG (run) and of one kind
        (``task``, ``callback``: a callback's row carries its DAG and run)."""
        from aws_reconciler.store.tables import task

        query = sa.select(*[task.c[name] for name in StoreRow.__dataclass_fields__]).order_by(task.c.created_at)
        if dag_id is not None:
            query = query.where(task.c.dag_id == dag_id)
        if run_id is not None:
            query = query.where(task.c.run_id == run_id)
        if kind is not None:
            query = query.where(task.c.kind == kind)
        with self.engine.connect() as conn:
            return [StoreRow(**dict(row)) for row in conn.execute(query).mappings()]

    def airflow_callbacks(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Airflow's ``callback`` rows of the run's missed deadlines (id, state, output, path,
        executor), which no REST endpoint shows."""
        found = []
        with self.engine.connect() as conn:
            for row in conn.execute(sa.text("SELECT id, state, output, data FROM callback")).mappings():
                data = _plain(row["data"] if isinstance(row["data"], dict) else json.loads(row["data"]))
                run = ((data.get("kwargs") or {}).get("context") or {}).get("dag_run") or {}
                if data.get("dag_id") == dag_id and run.get("dag_run_id") == run_id:
                    found.append(
                        {
                            "id": str(row["id"]),
                            "state": row["state"],
                            "output": row["output"],
                            "path": data.get("path"),
                            "executor": data.get("executor"),
                        }
                    )
        return found

    def task_instance_rows(self, dag_id: str, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        """Airflow's own ``task_instance`` rows of the run (fields the REST API does not show:
        ``external_executor_id`` = our record id, ``queued_by_job_id`` = the owning scheduler)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT task_id, map_index, try_number, state, external_executor_id, queued_by_job_id "
                    "FROM task_instance WHERE dag_id = :dag_id AND run_id = :run_id"
                ),
                {"dag_id": dag_id, "run_id": run_id},
            ).mappings()
            return {(r["task_id"], int(r["map_index"])): dict(r) for r in rows}

    def elapsed(self) -> float:
        """Seconds since :meth:`start` began."""
        return time.monotonic() - self._started_at


def reconciler_of(team: str | None) -> str:
    """The process name of the reconciler of ``team`` (``None``: the deployment-wide one)."""
    return f"{RECONCILER}-{team}" if team else RECONCILER


def _plain(value: Any) -> Any:
    """A value of Airflow's extended JSON columns without its type wrappers (``{"__type": ..., "__var": ...}``)."""
    if isinstance(value, dict):
        if "__type" in value and "__var" in value:
            return _plain(value["__var"])
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _psycopg(url: str, *, database: str | None = None) -> str:
    """``url`` with the psycopg (3) driver, which the project installs (psycopg2 may be absent)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def postgres_problem(url: str) -> str | None:
    """None when a PostgreSQL server answers at ``url``, else why not (without the password)."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(_psycopg(url), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL unreachable at {shown} ({type(exc).__name__})"


_EXPORT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _read_exports(path: Path) -> dict[str, str] | None:
    """``export NAME=VALUE`` lines (shell-quoted or not) as a dict; None until the file is complete.

    The sandbox writes the file once it serves; an empty or half-written file reads as None.
    """
    if not path.exists():
        return None
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _EXPORT.match(line)
        if match:
            parts = shlex.split(match.group(2)) or [""]
            values[match.group(1)] = parts[0]
    return values if "AWS_ENDPOINT_URL" in values else None


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the block runs, so ``with DemoStack()`` cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def utc_now() -> datetime:
    """Aware UTC now (store and Airflow timestamps are UTC)."""
    return datetime.now(UTC)


__all__ = [
    "DEADLINE_DAG_ID",
    "EXAMPLE_DAG_ID",
    "INVALID_CONFIG_DAG_ID",
    "SHIPPED_DAGS",
    "DemoStack",
    "StackError",
    "StackOptions",
    "StoreRow",
    "postgres_problem",
    "sigterm_as_keyboard_interrupt",
    "utc_now",
]
