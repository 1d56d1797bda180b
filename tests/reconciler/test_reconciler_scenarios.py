"""Scenarios of the reconciler: real ``Controller`` cycles against the sandbox and a real task store.

Each test sets up a world (rows built the way the executor builds them, tasks on the fake AWS,
injected faults), runs cycles, moves a fake clock instead of sleeping, and asserts what AWS
and the store end up with. Store-touching scenarios run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import boto3
import pytest
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.exc import OperationalError

from aws_reconciler.backends.client import aws_client_config
from aws_reconciler.backends.ecs import backend as ecs_backend_module
from aws_reconciler.backends.ecs.backend import EcsBackend
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.backends.errors import Outcome
from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler.config import Settings
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.factory import build_backend, controller_settings
from aws_reconciler.reconciler.leader import LeaderElector
from aws_reconciler.reconciler.manager import Manager
from aws_reconciler.reconciler.result import Result
from aws_reconciler.store import (
    LeaseStore,
    NewTask,
    TaskRecord,
    TaskStore,
    Waker,
    create_store_engine,
    database_now,
    migrate,
)
from aws_reconciler.store.lease import Fence
from aws_reconciler_sandbox import FAKE_CREDENTIALS, SandboxServer, bootstrap
from support.scenario import Crash, FakeClock
from support.stores import make_settings

REGION = "us-east-1"
DEPLOYMENT = "airflow"


# ---- harness -------------------------------------------------------------------------------


@dataclass
class Harness:
    """One scenario's world: sandbox, settings, store, clock and the engines built on them."""

    sandbox: SandboxServer
    settings: Settings
    db: DbEngine
    store: TaskStore
    clock: FakeClock
    engines: list[Controller] = field(default_factory=list)

    def client(self) -> Any:
        """An ECS client configured like the reconciler's: no botocore retries."""
        return self.sandbox.client(
            "ecs", config=aws_client_config(max_pool_connections=self.settings.core.launch_concurrency + 4)
        )

    def backend(self, *, client: Any = None) -> EcsBackend:
        """The factory's ECS backend, pausing only briefly (real time) after AWS throttles."""
        backend = build_backend(ECS, self.settings, client=client if client is not None else self.client())
        assert isinstance(backend, EcsBackend)
        backend.throttle_pause = 0.01
        return backend

    def engine(
        self,
        *,
        backend: Any = None,
        is_leader: Callable[[], bool] = lambda: True,
        fence: Callable[[], Fence | None] | None = None,
        rng: Callable[[], float] = lambda: 0.0,
    ) -> Controller:
        """A fresh engine on the shared store and clock (closed at teardown)."""
        engine = Controller(
            store=self.store,
            backend=backend if backend is not None else self.backend(),
            settings=controller_settings(self.settings),
            is_leader=is_leader,
            fence=fence,
            clock=self.clock,
            rng=rng,
        )
        self.engines.append(engine)
        return engine

    def add(self, n: int = 1, *, commands: list[list[str]] | None = None, ids: list[str] | None = None) -> list[str]:
        """Insert ``n`` pending rows the way the executor does; returns their ids."""
        rows: list[NewTask] = []
        for i in range(n):
            record_id = ids[i] if ids else str(uuid.uuid4())
            # One task instance per row: rows of one TI key would supersede each other.
            key = TiKey("scenario_dag", f"task_{i}", f"manual__2030-01-01T00:00:00_{record_id}", -1, 1)
            command = commands[i] if commands else ["airflow", "tasks", "run", key.task_id]
            spec = build_run_task_request(
                ecs=self.settings.ecs, deployment=DEPLOYMENT, record_id=record_id, key=key, command=command
            )
            rows.append(
                NewTask(
                    id=record_id,
                    backend=Backend.ECS,
                    owner="scheduler-1",
                    key=key,
                    queue="default",
                    target=spec["cluster"],
                    spec=spec,
                )
            )
        self.store.add(rows)
        return [r.id for r in rows]

    def row(self, record_id: str) -> TaskRecord:
        record = self.store.get(record_id)
        assert record is not None, f"no row {record_id}"
        return record

    def tasks_of(self, record_id: str) -> list[dict[str, Any]]:
        """Every ECS task in the sandbox carrying this record's id tag."""
        return [t for t in self.sandbox.tasks() if t["tags"].get(ID_TAG) == record_id]

    def task(self, arn: str) -> dict[str, Any]:
        [found] = [t for t in self.sandbox.tasks() if t["arn"] == arn]
        return found

    def calls(self, operation: str) -> int:
        return self.sandbox.calls().get(f"ecs:{operation}", 0)

    def start_foreign_task(self, *, started_by: str | None, tags: dict[str, str] | None) -> str:
        """RunTask behind the reconciler's back (another deployment, a human, a lost row)."""
        ecs = boto3.client("ecs", endpoint_url=self.sandbox.endpoint_url, region_name=REGION, **FAKE_CREDENTIALS)
        args: dict[str, Any] = {
            "cluster": self.settings.ecs.cluster,
            "taskDefinition": self.settings.ecs.task_definition,
            "launchType": "FARGATE",
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": list(self.settings.ecs.subnets),
                    "securityGroups": list(self.settings.ecs.security_groups),
                }
            },
        }
        if started_by is not None:
            args["startedBy"] = started_by
        if tags is not None:
            args["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        return str(ecs.run_task(**args)["tasks"][0]["taskArn"])


HarnessFactory = Callable[..., Harness]


def cycle(engine: Controller) -> Result:
    """One reconcile cycle."""
    return engine.reconcile()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """One sandbox per module: moto's state is process-wide, so never two at once."""
    server = SandboxServer(region=REGION).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws(sandbox: SandboxServer) -> Iterator[dict[str, str]]:
    """A clean sandbox account: cluster "airflow", task definition "airflow-task", network."""
    sandbox.reset()
    env = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)
    yield env
    sandbox.clear_faults()


@pytest.fixture
def make_harness(
    request: pytest.FixtureRequest, store_url: str, aws: dict[str, str], sandbox: SandboxServer
) -> Iterator[HarnessFactory]:
    """``make_harness(**env)``: settings = bootstrap output + ``env``; a migrated store (SQLite/PostgreSQL)."""
    built: list[Harness] = []

    def factory(**env: str) -> Harness:
        airflow_env = {k: v for k, v in aws.items() if k.startswith("AIRFLOW__")}
        settings: Settings = make_settings(store_url, **{**airflow_env, **env})
        db = create_store_engine(store_url)
        migrate(db)
        clock = FakeClock()
        harness = Harness(sandbox=sandbox, settings=settings, db=db, store=TaskStore(db, clock=clock), clock=clock)
        built.append(harness)
        return harness

    yield factory
    for harness in built:
        for engine in harness.engines:
            engine.close()
        harness.db.dispose()


# ---- 1. launch and lifecycle ---------------------------------------------------------------


def test_launch_carries_identity_and_the_row_follows_the_task_lifecycle(make_harness: HarnessFactory) -> None:
    """A launch carries the identity (tags, startedBy, clientToken <id>-1, the workload's command);
    the row follows the task: provisioning -> running -> succeeded (exit 0) / failed (exit 137)."""
    h = make_harness()
    commands = [["airflow", "tasks", "run", "ok"], ["airflow", "tasks", "run", "killed"]]
    ok, killed = h.add(2, commands=commands)
    engine = h.engine()

    assert cycle(engine).stats.launched == 2
    for record_id, command in zip((ok, killed), commands, strict=True):
        row = h.row(record_id)
        assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
        [task] = h.tasks_of(record_id)
        assert task["arn"] == row.external_id
        assert task["startedBy"] == DEPLOYMENT
        assert task["clientToken"] == f"{record_id}-1"
        assert task["tags"][DEPLOYMENT_TAG] == DEPLOYMENT
        assert task["tags"]["airflow:dag_id"] == "scenario_dag"
        assert task["tags"]["airflow:try_number"] == "1"
        ours = [c for c in task["overrides"]["containerOverrides"] if c["name"] == "base"]
        assert [c["command"] for c in ours] == [command]

    ok_arn, killed_arn = h.row(ok).external_id, h.row(killed).external_id
    assert ok_arn and killed_arn
    for arn in (ok_arn, killed_arn):
        h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    cycle(engine)
    for record_id in (ok, killed):
        row = h.row(record_id)
        assert row.phase is Phase.RUNNING
        assert row.started_at is not None
        assert row.finished_at is None

    h.sandbox.set_task_state(task_arn=ok_arn, last_status="STOPPED", exit_code=0)
    h.sandbox.set_task_state(task_arn=killed_arn, last_status="STOPPED", exit_code=137)
    stats = cycle(engine).stats
    assert (stats.finished, stats.failed) == (1, 1)

    succeeded = h.row(ok)
    assert (succeeded.phase, succeeded.exit_code) == (Phase.SUCCEEDED, 0)
    assert succeeded.finished_at is not None
    failed = h.row(killed)
    assert (failed.phase, failed.exit_code) == (Phase.FAILED, 137)
    assert failed.status_reason and "137" in failed.status_reason
    assert failed.finished_at is not None

    # Finished rows are never relaunched: Airflow's retries own re-execution.
    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("RunTask") == 2


# ---- 2. crash and lost answers -------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 120], ids=["one-row", "120-rows-paginated"])
def test_crash_after_run_task_then_a_new_engine_adopts_the_task(make_harness: HarnessFactory, rows: int) -> None:
    """The process dies after RunTask but before the ARN is stored: a new process ends up with exactly
    one ECS task per row, each row carrying its ARN, without launching again (discovery pages
    through ListTasks and finds every lost launch)."""
    h = make_harness()
    ids = h.add(rows)
    backend = h.backend()
    real_launch = backend.launch
    crashed = threading.Condition()
    launched: list[str] = []

    def launch_then_crash(**kwargs: Any) -> str:
        real_launch(**kwargs)
        with crashed:
            launched.append(kwargs["record_id"])
            crashed.notify_all()
        raise Crash

    backend.launch = launch_then_crash  # type: ignore[method-assign]
    first = h.engine(backend=backend)
    with pytest.raises(Crash):
        cycle(first)
    with crashed:  # every launch already submitted reaches AWS before the "process" is gone
        assert crashed.wait_for(lambda: len(launched) == rows, timeout=30)
    first.close()

    arns: dict[str, str] = {}
    for record_id in ids:
        row = h.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
        [task] = h.tasks_of(record_id)
        arns[record_id] = task["arn"]

    second = h.engine()  # a new process: new engine, new backend and client, same store
    cycle(second)

    assert h.calls("RunTask") == rows
    for record_id in ids:
        assert [t["arn"] for t in h.tasks_of(record_id)] == [arns[record_id]]
        row = h.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, arns[record_id])
        assert row.launched_at is not None

    # And the adopted rows are tracked from then on (DescribeTasks in batches of at most 100).
    for arn in arns.values():
        h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    cycle(second)
    assert all(h.row(r).phase is Phase.RUNNING for r in ids)


def test_crash_after_run_task_is_recovered_by_client_token_when_discovery_misses_it(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when discovery cannot see the lost task (ListTasks lags behind RunTask), relaunching the
    launching row with the same attempt returns the task ECS already started."""
    h = make_harness()
    [record_id] = h.add()
    backend = h.backend()
    real_launch = backend.launch

    def launch_then_crash(**kwargs: Any) -> str:
        real_launch(**kwargs)
        raise Crash

    monkeypatch.setattr(backend, "launch", launch_then_crash)
    first = h.engine(backend=backend)
    with pytest.raises(Crash):
        cycle(first)
    first.close()
    [task] = h.tasks_of(record_id)

    second_backend = h.backend()
    monkeypatch.setattr(second_backend, "discover", lambda: [])
    cycle(h.engine(backend=second_backend))

    assert h.calls("RunTask") == 2
    assert [t["arn"] for t in h.tasks_of(record_id)] == [task["arn"]]
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, task["arn"])


@pytest.mark.parametrize("recovered_by", ["client_token", "discovery"])
def test_phantom_500_on_run_task_leaves_exactly_one_task(make_harness: HarnessFactory, recovered_by: str) -> None:
    """RunTask launches but the caller sees a 500: the row keeps its attempt, and the next try
    (same clientToken, or discovery by tags) finds the task instead of starting a second one."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60")
    [record_id] = h.add()
    engine = h.engine()
    h.sandbox.inject_error(
        operation="RunTask", code="ServerException", message="Service unavailable", status=500, phantom=True
    )

    stats = cycle(engine).stats
    assert stats.launched == 0
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
    assert row.last_error and "ServerException" in row.last_error
    assert row.next_attempt_at and row.next_attempt_at > h.clock()
    [task] = h.tasks_of(record_id)  # it did launch

    # Not before the backoff: the same cycle time yields no new RunTask.
    cycle(engine)
    assert h.calls("RunTask") == 1

    if recovered_by == "client_token":
        h.clock.set(row.next_attempt_at)  # well within resync_interval: no discovery
        cycle(engine)
        assert h.calls("RunTask") == 2
    else:
        h.clock.advance(60)  # discovery is due and adopts the task before any relaunch
        cycle(engine)
        assert h.calls("RunTask") == 1

    assert [t["arn"] for t in h.tasks_of(record_id)] == [task["arn"]]
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, task["arn"])


# ---- 3. capacity failures and terminal errors -----------------------------------------------


def test_capacity_failures_back_off_and_use_a_new_client_token_per_attempt(make_harness: HarnessFactory) -> None:
    """RESOURCE:MEMORY twice: the row returns to pending with backoff (attempt counted), is not
    relaunched before the backoff elapses, then launches; three RunTasks with distinct tokens."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    tokens: list[str] = []
    client = h.client()
    client.meta.events.register(
        "provide-client-params.ecs.RunTask", lambda params, **_: tokens.append(params["clientToken"])
    )
    engine = h.engine(backend=h.backend(client=client), rng=lambda: 1.0)  # full backoff: 2 s, then 4 s
    [record_id] = h.add()
    h.sandbox.fail_run_task(reason="RESOURCE:MEMORY", times=2)

    for attempt, delay in ((1, 2), (2, 4)):
        stats = cycle(engine).stats
        assert stats.launch_retries == 1
        row = h.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.PENDING, attempt, None)
        assert row.last_error and "RESOURCE:MEMORY" in row.last_error
        assert row.next_attempt_at == h.clock() + timedelta(seconds=delay)
        assert h.tasks_of(record_id) == []

        h.clock.set(row.next_attempt_at - timedelta(milliseconds=1))
        cycle(engine)
        assert h.calls("RunTask") == attempt, "relaunched before the backoff elapsed"
        h.clock.set(row.next_attempt_at)

    assert cycle(engine).stats.launched == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 3)
    assert row.last_error is None
    assert tokens == [f"{record_id}-1", f"{record_id}-2", f"{record_id}-3"]
    [task] = h.tasks_of(record_id)
    assert (task["arn"], task["clientToken"]) == (row.external_id, f"{record_id}-3")


def test_capacity_failures_beyond_max_launch_attempts_fail_the_row(make_harness: HarnessFactory) -> None:
    """Capacity that never comes back: after max_launch_attempts the row fails with AWS's reason."""
    h = make_harness(AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS="2")
    engine = h.engine()
    [record_id] = h.add()
    h.sandbox.fail_run_task(reason="RESOURCE:CPU", times=None)

    cycle(engine)
    h.clock.set(h.row(record_id).next_attempt_at or h.clock())
    cycle(engine)

    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.FAILED, 2)
    assert row.status_reason and "2 launch attempts" in row.status_reason and "RESOURCE:CPU" in row.status_reason
    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("RunTask") == 2


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/r is not authorized to perform"),
        ("ClientException", "TaskDefinition is inactive"),
    ],
)
def test_terminal_launch_error_fails_the_row_with_the_aws_reason(
    make_harness: HarnessFactory, code: str, message: str
) -> None:
    """A non-retriable RunTask error fails the row at once, in AWS's own words, and is not retried."""
    h = make_harness()
    engine = h.engine()
    [record_id] = h.add()
    h.sandbox.inject_error(operation="RunTask", code=code, message=message)

    assert cycle(engine).stats.failed == 1
    row = h.row(record_id)
    assert row.phase is Phase.FAILED
    assert row.status_reason and code in row.status_reason and message in row.status_reason
    assert row.finished_at is not None

    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("RunTask") == 1
    assert h.tasks_of(record_id) == []


# ---- 4. tasks that never started -----------------------------------------------------------


@pytest.mark.parametrize(
    "failed_start",
    [
        {"stop_code": "TaskFailedToStart", "stopped_reason": "ResourceInitializationError", "empty_containers": True},
        {"container_reason": "CannotPullContainerError: pull image manifest has been retried 5 time(s)"},
    ],
    ids=["TaskFailedToStart", "CannotPullContainerError"],
)
def test_task_stopped_before_its_container_started_is_relaunched_up_to_max_attempts(
    make_harness: HarnessFactory, failed_start: dict[str, Any]
) -> None:
    """A task that stops before its container ran is relaunched with attempt+1 (a new clientToken),
    up to max_launch_attempts; then the row fails naming the attempts."""
    h = make_harness(AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS="2")
    engine = h.engine()
    [record_id] = h.add()

    cycle(engine)
    first_arn = h.row(record_id).external_id
    assert first_arn
    h.sandbox.set_task_state(task_arn=first_arn, last_status="STOPPED", **failed_start)
    assert cycle(engine).stats.launch_retries == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PENDING, 1, None)
    assert row.next_attempt_at and row.next_attempt_at > h.clock()
    assert row.last_error and "before its container started" in row.last_error

    h.clock.set(row.next_attempt_at)
    assert cycle(engine).stats.launched == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 2)
    second_arn = row.external_id
    assert second_arn and second_arn != first_arn
    assert sorted(t["clientToken"] for t in h.tasks_of(record_id)) == [f"{record_id}-1", f"{record_id}-2"]

    h.sandbox.set_task_state(task_arn=second_arn, last_status="STOPPED", **failed_start)
    assert cycle(engine).stats.failed == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.FAILED, 2)
    assert row.status_reason and "2 launch attempts" in row.status_reason

    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("RunTask") == 2


def test_a_64_character_record_id_still_gets_a_new_client_token_per_attempt(make_harness: HarnessFactory) -> None:
    """Ids fill the store's 64-character column; clientToken is capped at 64 characters too, and
    must still differ per attempt, or ECS would answer a relaunch with the task that failed."""
    h = make_harness(AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS="2")
    engine = h.engine()
    [record_id] = h.add(ids=[uuid.uuid4().hex + uuid.uuid4().hex])
    assert len(record_id) == 64

    cycle(engine)
    first = h.row(record_id).external_id
    assert first
    h.sandbox.set_task_state(
        task_arn=first, last_status="STOPPED", stop_code="TaskFailedToStart", empty_containers=True
    )
    cycle(engine)
    h.clock.set(h.row(record_id).next_attempt_at or h.clock())
    cycle(engine)

    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 2)
    assert row.external_id not in (None, first)
    tokens = [t["clientToken"] for t in h.tasks_of(record_id)]
    assert len(set(tokens)) == 2
    assert all(len(token) <= 64 for token in tokens)


def test_task_that_ran_and_failed_is_not_relaunched(make_harness: HarnessFactory) -> None:
    """A container that started and exited non-zero is a task failure, never a relaunch."""
    h = make_harness()
    engine = h.engine()
    [record_id] = h.add()
    cycle(engine)
    arn = h.row(record_id).external_id
    assert arn
    h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    h.sandbox.set_task_state(task_arn=arn, last_status="STOPPED", exit_code=1)
    cycle(engine)
    h.clock.advance(3600)
    cycle(engine)
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.exit_code) == (Phase.FAILED, 1, 1)
    assert h.calls("RunTask") == 1


# ---- 5. revoke -----------------------------------------------------------------------------


def test_revoke_stops_a_running_task_and_ends_a_pending_row_without_launching(
    make_harness: HarnessFactory,
) -> None:
    """Revoking a running row issues StopTask and ends it revoked once the task is seen stopped;
    revoking a pending row ends it revoked without any RunTask."""
    h = make_harness()
    engine = h.engine()
    [running] = h.add()
    cycle(engine)
    arn = h.row(running).external_id
    assert arn
    h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    cycle(engine)
    assert h.row(running).phase is Phase.RUNNING

    [pending] = h.add()
    assert h.store.revoke(ids=[running, pending]) == 2
    stats = cycle(engine).stats
    assert stats.stopped == 1
    assert h.calls("StopTask") == 1
    task = h.task(arn)
    assert (task["desiredStatus"], task["stopCode"]) == ("STOPPED", "UserInitiated")
    assert "revoked" in (task["stoppedReason"] or "")
    assert h.row(running).phase is Phase.STOPPING

    never = h.row(pending)
    assert (never.phase, never.attempt) == (Phase.REVOKED, 0)
    assert never.status_reason and "revoked" in never.status_reason
    assert h.tasks_of(pending) == []
    assert h.calls("RunTask") == 1

    # The container handled SIGTERM and exited 0: a revoked row never counts as a success.
    h.sandbox.set_task_state(task_arn=arn, last_status="STOPPED", exit_code=0)
    assert cycle(engine).stats.revoked == 1
    row = h.row(running)
    assert row.phase is Phase.REVOKED
    assert row.status_reason and row.status_reason.startswith("revoked by Airflow")
    assert row.finished_at is not None
    assert h.calls("StopTask") == 1


# ---- 6. orphans ----------------------------------------------------------------------------


def test_orphans_are_stopped_after_the_grace_and_foreign_tasks_never(make_harness: HarnessFactory) -> None:
    """A task with our deployment tag + startedBy but no open row (or a duplicate of a launched row)
    is stopped once orphan_grace has passed, not before; tasks of another deployment, untagged tasks
    and our own rows' tasks never are."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    engine = h.engine()
    [record_id] = h.add()
    cycle(engine)
    ours = h.row(record_id).external_id
    assert ours
    h.sandbox.set_task_state(task_arn=ours, last_status="RUNNING")

    ours_tags = {DEPLOYMENT_TAG: DEPLOYMENT}
    orphans = [
        h.start_foreign_task(started_by=DEPLOYMENT, tags={**ours_tags, ID_TAG: "lost-record"}),
        h.start_foreign_task(started_by=DEPLOYMENT, tags={**ours_tags, ID_TAG: record_id}),  # a duplicate
    ]
    keep = {
        "our own row's task": ours,
        "other deployment": h.start_foreign_task(started_by="other", tags={DEPLOYMENT_TAG: "other", ID_TAG: "x"}),
        "our startedBy, no tags": h.start_foreign_task(started_by=DEPLOYMENT, tags=None),
        "our startedBy, other tag": h.start_foreign_task(
            started_by=DEPLOYMENT, tags={DEPLOYMENT_TAG: "other", ID_TAG: "y"}
        ),
        "our tags, other startedBy": h.start_foreign_task(started_by="other", tags={**ours_tags, ID_TAG: "z"}),
        "no startedBy": h.start_foreign_task(started_by=None, tags={**ours_tags, ID_TAG: "w"}),
    }

    h.clock.advance(1)
    assert cycle(engine).stats.orphans_stopped == 0  # first seen now
    h.clock.advance(119)
    assert cycle(engine).stats.orphans_stopped == 0
    assert h.calls("StopTask") == 0

    h.clock.advance(1)
    assert cycle(engine).stats.orphans_stopped == 2
    for arn in orphans:
        stopped = h.task(arn)
        assert (stopped["desiredStatus"], stopped["stopCode"]) == ("STOPPED", "UserInitiated")
        assert "orphan" in (stopped["stoppedReason"] or "")

    h.clock.advance(3600)
    cycle(engine)
    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("StopTask") == 2
    for name, arn in keep.items():
        assert h.task(arn)["desiredStatus"] == "RUNNING", name
    row = h.row(record_id)
    assert (row.phase, row.external_id) == (Phase.RUNNING, ours)


def test_task_of_a_row_given_back_to_pending_is_not_stopped_as_an_orphan(make_harness: HarnessFactory) -> None:
    """A launch whose answer was lost (500) and whose retry is then throttled leaves the row pending
    while its task runs on AWS. However long the throttling lasts, the orphan sweep must not stop
    that task: the row's next launch (same clientToken) adopts it."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    engine = h.engine()
    [record_id] = h.add()
    h.sandbox.inject_error(operation="RunTask", code="ServerException", message="Internal", status=500, phantom=True)
    cycle(engine)
    [task] = h.tasks_of(record_id)

    h.sandbox.inject_error(operation="RunTask", code="ThrottlingException", message="Rate exceeded", times=None)
    h.clock.set(h.row(record_id).next_attempt_at or h.clock())
    cycle(engine)  # the retry is throttled: the attempt is given back
    assert (h.row(record_id).phase, h.row(record_id).attempt) == (Phase.PENDING, 0)
    for _ in range(4):  # throttled for well over orphan_grace, with a discovery every cycle
        h.clock.advance(61)
        cycle(engine)
        assert h.row(record_id).phase is Phase.PENDING
    assert h.calls("StopTask") == 0

    h.sandbox.clear_faults()
    h.clock.advance(61)
    cycle(engine)
    assert h.calls("StopTask") == 0
    assert [t["arn"] for t in h.tasks_of(record_id)] == [task["arn"]]
    assert h.task(task["arn"])["desiredStatus"] == "RUNNING"
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, task["arn"])


# ---- 7. isolation --------------------------------------------------------------------------


def test_one_row_whose_launch_raises_never_blocks_the_others(make_harness: HarnessFactory) -> None:
    """Of 20 due rows, one whose launch raises unexpectedly: the 19 others launch in the same cycle;
    the bad one is retried later with the SAME attempt (its outcome is unknown) until it launches."""
    h = make_harness()
    ids = h.add(20)
    bad = ids[7]
    backend = h.backend()
    real_launch = backend.launch
    broken = {bad}

    def launch(*, record_id: str, attempt: int, spec: Any) -> str:
        if record_id in broken:
            raise RuntimeError("connection pool is full (simulated)")
        return real_launch(record_id=record_id, attempt=attempt, spec=spec)

    backend.launch = launch  # type: ignore[method-assign]
    engine = h.engine(backend=backend)

    stats = cycle(engine).stats
    assert (stats.launched, stats.launch_retries) == (19, 1)
    assert h.calls("RunTask") == 19
    for record_id in ids:
        if record_id != bad:
            assert h.row(record_id).phase is Phase.PROVISIONING
    row = h.row(bad)
    assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
    assert row.last_error and "RuntimeError" in row.last_error
    assert row.next_attempt_at and row.next_attempt_at > h.clock()

    # Still broken after the backoff: the others progress, the bad row keeps its attempt.
    h.clock.set(row.next_attempt_at)
    for record_id in ids:
        arn = h.row(record_id).external_id
        if arn:
            h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    cycle(engine)
    assert all(h.row(r).phase is Phase.RUNNING for r in ids if r != bad)
    row = h.row(bad)
    assert (row.phase, row.attempt) == (Phase.LAUNCHING, 1)

    broken.clear()
    h.clock.set(row.next_attempt_at or h.clock())
    assert cycle(engine).stats.launched == 1
    row = h.row(bad)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
    [task] = h.tasks_of(bad)
    assert task["clientToken"] == f"{bad}-1"
    assert len(h.sandbox.tasks()) == 20


def test_one_row_whose_bookkeeping_fails_never_blocks_the_others(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error while recording one row's observation is counted and contained; the other
    rows are recorded in the same cycle, and the bad row catches up once the store recovers."""
    h = make_harness()
    ids = h.add(5)
    bad = ids[2]
    engine = h.engine()
    cycle(engine)
    for record_id in ids:
        arn = h.row(record_id).external_id
        assert arn
        h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")

    real_transition = h.store.transition

    def transition(record_id: str, **kwargs: Any) -> bool:
        if record_id == bad:
            raise OperationalError("UPDATE aws_reconciler_task", {}, Exception("database is locked"))
        return real_transition(record_id, **kwargs)

    monkeypatch.setattr(h.store, "transition", transition)
    assert cycle(engine).stats.row_errors == 1
    assert [h.row(r).phase for r in ids] == [Phase.RUNNING] * 2 + [Phase.PROVISIONING] + [Phase.RUNNING] * 2

    monkeypatch.undo()
    assert cycle(engine).stats.row_errors == 0
    assert h.row(bad).phase is Phase.RUNNING


# ---- 8. throttling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [("ThrottlingException", "Rate exceeded"), ("InvalidParameterException", "Rate exceeded")],
    ids=["ThrottlingException", "InvalidParameter-RateExceeded"],
)
def test_throttled_launches_cost_no_attempt_and_slow_the_cycle(
    make_harness: HarnessFactory, code: str, message: str
) -> None:
    """RunTask throttled for 5 of 10 rows: those go back to pending with their attempt given back,
    the cycle asks to be requeued no sooner than backoff_base, and later cycles launch them all."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    ids = h.add(10)
    engine = h.engine()
    h.sandbox.inject_error(operation="RunTask", code=code, message=message, times=5)

    result = cycle(engine)
    assert (result.stats.throttled, result.stats.launched) == (5, 5)
    assert result.requeue_after >= 2
    throttled = [r for r in ids if h.row(r).phase is Phase.PENDING]
    assert len(throttled) == 5
    for record_id in throttled:
        row = h.row(record_id)
        assert (row.attempt, row.external_id) == (0, None)
        assert row.last_error and message in row.last_error
        assert row.next_attempt_at and row.next_attempt_at > h.clock()

    h.clock.advance(300)
    result = cycle(engine)
    assert (result.stats.throttled, result.stats.launched) == (0, 5)
    assert result.requeue_after == 0.5
    for record_id in ids:
        row = h.row(record_id)
        assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
        [task] = h.tasks_of(record_id)
        assert task["clientToken"] == f"{record_id}-1"
    assert h.calls("RunTask") == 15


def _elector(h: Harness, *, holder: str = "replica-a", monotonic: Callable[[], float] | None = None) -> LeaderElector:
    core = h.settings.core
    return LeaderElector(
        leases=LeaseStore(h.db),
        name=f"reconciler-{DEPLOYMENT}",
        holder=holder,
        lease_duration=core.lease_duration,
        renew_deadline=core.renew_deadline,
        retry_period=core.retry_period,
        monotonic=monotonic or time.monotonic,
    )


def _runner(h: Harness, *, holder: str = "replica-a", acquire: bool = True) -> tuple[Manager, Controller]:
    """A runner over one engine, wired like ``build_manager``; the lease is taken once, no threads."""
    elector = _elector(h, holder=holder)
    if acquire:
        assert elector.try_once()
    engine = h.engine(is_leader=elector.is_leader)
    core = h.settings.core
    runner = Manager(
        engines=[engine],
        elector=elector,
        waker=Waker(h.db),
        interval=core.reconcile_interval,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
    )
    return runner, engine


def test_a_throttled_describe_slows_the_runner_but_launches_go_on(make_harness: HarnessFactory) -> None:
    """DescribeTasks throttled: the cycle does not give up. Rows it could not describe wait, new rows
    are still launched, the runner counts the trouble and comes back no sooner than backoff_base;
    once AWS answers again the rows catch up."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="4", AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="5")
    runner, _engine = _runner(h)
    [record_id] = h.add()
    try:
        assert runner.cycle() == 5
        arn = h.row(record_id).external_id
        assert arn
        h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")

        h.sandbox.inject_error(operation="DescribeTasks", code="ThrottlingException", message="Rate exceeded", times=2)
        [fresh] = h.add()
        assert runner.cycle() >= 4
        assert h.row(fresh).phase is Phase.PROVISIONING, "a throttled describe held up a launch"
        assert h.row(record_id).phase is Phase.PROVISIONING, "nothing known of it, nothing decided"
        assert runner.cycle() >= 4
        assert runner.health.consecutive_failures == 2
        assert runner.health.last_error and "ThrottlingException" in runner.health.last_error
        assert [e.outcome for e in runner.health.history[-1].errors] == [Outcome.THROTTLED]

        assert runner.cycle() == 5
        assert runner.health.consecutive_failures == 0
        assert runner.health.last_error is None
        assert runner.health.last_cycle_ok_at is not None
        assert h.row(record_id).phase is Phase.RUNNING
    finally:
        runner.waker.close()


def test_one_failed_describe_batch_does_not_skip_the_cycle(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of three describe batches one is throttled: the rows of the other two are recorded, a pending
    row is launched and a revoked one stopped, all in that same cycle; the throttled batch's row is
    left as it was (unknown is not gone) and catches up next cycle."""
    monkeypatch.setattr(ecs_backend_module, "DESCRIBE_BATCH", 1)
    h = make_harness()
    engine = h.engine()
    ids = h.add(3)
    cycle(engine)
    arns = [h.row(r).external_id for r in ids]
    for arn in arns:
        assert arn
        h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    [pending] = h.add()
    [revoked] = h.add()
    h.store.revoke(ids=[revoked])  # before its launch: ends revoked without one
    h.store.revoke(ids=[ids[2]])
    h.sandbox.inject_error(operation="DescribeTasks", code="ThrottlingException", message="Rate exceeded")

    result = cycle(engine)
    assert [e.outcome for e in result.errors] == [Outcome.THROTTLED]
    assert (result.stats.launched, result.stats.stopped, result.stats.revoked) == (1, 1, 1)
    phases = [h.row(r).phase for r in ids]
    # Which batch was throttled depends on the order ARNs are described in: exactly one row waits.
    assert sorted(phases[:2]) == [Phase.PROVISIONING, Phase.RUNNING] or phases[:2] == [Phase.RUNNING] * 2
    assert h.row(pending).phase is Phase.PROVISIONING
    assert h.calls("StopTask") == 1

    cycle(engine)
    assert [h.row(r).phase for r in ids[:2]] == [Phase.RUNNING, Phase.RUNNING]


def test_runner_waits_at_least_backoff_base_after_a_throttled_cycle(make_harness: HarnessFactory) -> None:
    """When AWS throttled launches, the runner's next pass is no sooner than backoff_base, even with
    a shorter reconcile_interval: hammering a throttled API only prolongs the throttling."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    runner, _engine = _runner(h)
    h.add(3)
    try:
        h.sandbox.inject_error(operation="RunTask", code="ThrottlingException", message="Rate exceeded", times=3)
        assert runner.cycle() >= 2
        assert runner.health.history[-1].stats.throttled == 3
        h.clock.advance(300)
        assert runner.cycle() == 0.5
    finally:
        runner.waker.close()


# ---- 9. expired workloads ------------------------------------------------------------------


def test_expired_workload_is_failed_not_launched(make_harness: HarnessFactory) -> None:
    """A row older than task_queued_timeout (its Airflow token has expired) is failed with that reason
    and never reaches RunTask; a fresh row in the same cycle still launches."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__TASK_QUEUED_TIMEOUT="300")
    engine = h.engine()
    [stale] = h.add()
    h.clock.advance(301)
    [fresh] = h.add()

    stats = cycle(engine).stats
    assert (stats.failed, stats.launched) == (1, 1)
    row = h.row(stale)
    assert (row.phase, row.attempt) == (Phase.FAILED, 0)
    assert row.status_reason and "task_queued_timeout" in row.status_reason
    assert h.tasks_of(stale) == []
    assert h.calls("RunTask") == 1
    assert h.row(fresh).phase is Phase.PROVISIONING


# ---- 10. launch concurrency ----------------------------------------------------------------


class _OverlapClient:
    """An ECS client whose ``run_task`` only proceeds once ``parties`` calls are in flight together."""

    def __init__(self, client: Any, *, parties: int) -> None:
        self._client = client
        self._barrier = threading.Barrier(parties, timeout=20)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def run_task(self, **kwargs: Any) -> Any:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._barrier.wait()
            return self._client.run_task(**kwargs)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_launches_run_concurrently_up_to_launch_concurrency(make_harness: HarnessFactory) -> None:
    """64 due rows with launch_concurrency 16: RunTask calls overlap (8 must be in flight at once for
    any to proceed) and never exceed 16, so throughput is bound by rate limits, not latency."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__LAUNCH_CONCURRENCY="16")
    ids = h.add(64)
    client = _OverlapClient(h.client(), parties=8)
    engine = h.engine(backend=h.backend(client=client))

    assert cycle(engine).stats.launched == 64
    assert 8 <= client.max_in_flight <= 16
    assert all(h.row(r).phase is Phase.PROVISIONING for r in ids)
    assert len(h.sandbox.tasks()) == 64


# ---- 11. leader fencing --------------------------------------------------------------------


def test_a_replica_that_is_not_leader_launches_and_stops_nothing(make_harness: HarnessFactory) -> None:
    """Without the lease an engine never calls RunTask or StopTask (pending rows, a revoked running
    row and a due orphan all wait), while a leading engine in the same state acts on all three."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="0")
    leader = h.engine()
    [revoked] = h.add()
    cycle(leader)
    arn = h.row(revoked).external_id
    assert arn
    h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    cycle(leader)
    pending = h.add(3)
    h.store.revoke(ids=[revoked])
    orphan = h.start_foreign_task(started_by=DEPLOYMENT, tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "lost"})
    run_tasks = h.calls("RunTask")

    follower = h.engine(is_leader=lambda: False)
    for _ in range(3):
        h.clock.advance(120)
        stats = cycle(follower).stats
        assert (stats.launched, stats.stopped, stats.orphans_stopped) == (0, 0, 0)
    assert h.calls("RunTask") == run_tasks
    assert h.calls("StopTask") == 0
    assert all(h.row(r).phase is Phase.PENDING and h.row(r).attempt == 0 for r in pending)
    assert h.row(revoked).phase is Phase.RUNNING
    assert h.task(orphan)["desiredStatus"] == "RUNNING"

    stats = cycle(h.engine()).stats
    assert (stats.launched, stats.stopped, stats.orphans_stopped) == (3, 1, 1)


def test_a_leader_whose_renewals_stall_stops_acting_before_its_lease_can_expire(
    make_harness: HarnessFactory,
) -> None:
    """Fencing: once renew_deadline has passed without a successful renewal, the engine launches
    nothing, though the lease row (lease_duration) still names this replica."""
    h = make_harness()
    now = [1000.0]
    elector = _elector(h, monotonic=lambda: now[0])
    assert elector.try_once()
    engine = h.engine(is_leader=elector.is_leader)
    ids = h.add(2)

    now[0] += h.settings.core.renew_deadline
    assert cycle(engine).stats.launched == 0
    assert h.calls("RunTask") == 0
    assert all(h.row(r).phase is Phase.PENDING for r in ids)

    assert elector.try_once()  # a renewal succeeds again: it acts again
    assert cycle(engine).stats.launched == 2


def test_a_paused_ex_leader_writes_nothing_after_a_takeover(make_harness: HarnessFactory) -> None:
    """The leader was paused past its lease and another replica took over. By its own monotonic
    clock it still leads, but no store write it fences with its lease generation lands: no launch
    is claimed (so none is sent) and nothing it observes is recorded."""
    h = make_harness()
    a = _elector(h, monotonic=lambda: 1000.0)
    assert a.try_once()
    engine = h.engine(is_leader=a.is_leader, fence=a.fence)
    [running] = h.add()
    assert cycle(engine).stats.launched == 1, "fenced writes of the leader land"
    arn = h.row(running).external_id
    assert arn
    h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    pending = h.add(2)

    with h.db.connect() as conn:
        past_expiry = database_now(conn) + timedelta(seconds=60)
    leases = LeaseStore(h.db)
    assert leases.acquire_or_renew(name=f"reconciler-{DEPLOYMENT}", holder="b", duration=15, now=past_expiry).held
    assert a.is_leader()

    stats = cycle(engine).stats
    assert (stats.launched, stats.finished) == (0, 0)
    assert h.calls("RunTask") == 1
    assert all((h.row(r).phase, h.row(r).attempt) == (Phase.PENDING, 0) for r in pending)
    assert h.row(running).phase is Phase.PROVISIONING


def test_standby_runner_does_not_reconcile_while_another_replica_holds_the_lease(
    make_harness: HarnessFactory,
) -> None:
    """Two replicas: the one without the lease only waits (retry_period) and makes no AWS call."""
    h = make_harness()
    active = _elector(h, holder="replica-a")
    assert active.try_once()
    standby, _engine = _runner(h, holder="replica-b", acquire=False)
    h.add(2)
    h.sandbox.reset_calls()  # forget the bootstrap's calls
    try:
        assert not standby.elector.try_once()
        assert standby.cycle() == h.settings.core.retry_period
        assert standby.health.leader is False
        assert standby.health.cycles == 0
        assert h.sandbox.calls() == {}
    finally:
        standby.waker.close()


def test_run_once_reconciles_one_cycle_and_releases_the_lease(make_harness: HarnessFactory) -> None:
    """``aws-reconciler run --once``: takes the lease, launches what is due, exits 0 and releases the
    lease at once so a standby does not wait for it to expire."""
    h = make_harness()
    runner, _engine = _runner(h, acquire=False)
    ids = h.add(3)

    assert runner.run(once=True) == 0
    assert all(h.row(r).phase is Phase.PROVISIONING for r in ids)
    h.clock.advance(1)  # well within lease_duration: only a release lets replica-b in
    assert _elector(h, holder="replica-b").try_once()


def test_request_stop_lets_no_new_launch_start(make_harness: HarnessFactory) -> None:
    """After SIGTERM (request_stop) a cycle starts no launch, and the rows stay pending, not
    half-launched, for the next reconciler to take."""
    h = make_harness()
    runner, _engine = _runner(h)
    ids = h.add(3)
    try:
        runner.request_stop()
        runner.cycle()
        assert h.calls("RunTask") == 0
        assert all((h.row(r).phase, h.row(r).attempt) == (Phase.PENDING, 0) for r in ids)
    finally:
        runner.waker.close()


# ---- 12. AWS as it really behaves: eventual consistency, budgets, hung calls, restarts --------


class _Lagging:
    """An ECS client to which the tasks in ``hidden`` do not exist yet: DescribeTasks answers
    MISSING for them and ListTasks omits them, as ECS does for a while after RunTask."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.hidden: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def describe_tasks(self, **kwargs: Any) -> Any:
        response = self._client.describe_tasks(**kwargs)
        tasks = [t for t in response.get("tasks") or [] if t["taskArn"] not in self.hidden]
        missing = [{"arn": arn, "reason": "MISSING"} for arn in kwargs["tasks"] if arn in self.hidden]
        return {**response, "tasks": tasks, "failures": [*(response.get("failures") or []), *missing]}

    def list_tasks(self, **kwargs: Any) -> Any:
        response = self._client.list_tasks(**kwargs)
        return {**response, "taskArns": [a for a in response.get("taskArns") or [] if a not in self.hidden]}


def test_a_task_missing_right_after_its_launch_is_not_taken_for_gone(make_harness: HarnessFactory) -> None:
    """ECS answers MISSING (and ListTasks omits the task) for a while after RunTask. Within
    missing_grace of the launch the row stays open and its task is never stopped as an orphan;
    once AWS shows the task the row follows it. A task still unknown after the grace is gone."""
    h = make_harness(
        AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1",
        AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="10",
        AIRFLOW__AWS_RECONCILER__MISSING_GRACE="60",
    )
    client = _Lagging(h.client())
    engine = h.engine(backend=h.backend(client=client))
    ids = h.add(2)
    assert cycle(engine).stats.launched == 2
    arns = [h.row(r).external_id or "" for r in ids]
    client.hidden.update(arns)

    for _ in range(3):  # 45 s of MISSING, with a discovery every cycle
        h.clock.advance(15)
        stats = cycle(engine).stats
        assert (stats.failed, stats.orphans_stopped) == (0, 0)
        assert [h.row(r).phase for r in ids] == [Phase.PROVISIONING] * 2
    assert h.calls("StopTask") == 0

    client.hidden.clear()
    for arn in arns:
        h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    cycle(engine)
    assert [h.row(r).phase for r in ids] == [Phase.RUNNING] * 2

    client.hidden.add(arns[0])  # now it really is gone: its launch is 46 s old, then 61 s
    h.clock.advance(1)
    cycle(engine)
    assert h.row(ids[0]).phase is Phase.RUNNING
    h.clock.advance(15)
    assert cycle(engine).stats.failed == 1
    row = h.row(ids[0])
    assert row.phase is Phase.FAILED
    assert row.status_reason and "MISSING" in row.status_reason


def test_an_orphans_grace_counts_from_its_creation_across_restarts(make_harness: HarnessFactory) -> None:
    """Every restart used to give an orphan a fresh grace. The grace counts from the task's own
    createdAt: a reconciler that starts after the grace has passed stops the orphan at its first
    discovery; one that starts earlier waits only for the rest."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    orphan = h.start_foreign_task(started_by=DEPLOYMENT, tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "lost"})

    h.clock.advance(60)
    assert cycle(h.engine()).stats.orphans_stopped == 0  # process 1, 60 s into the grace
    h.clock.advance(65)
    assert cycle(h.engine()).stats.orphans_stopped == 1  # process 2, its first discovery
    assert h.task(orphan)["desiredStatus"] == "STOPPED"


def test_a_stop_aws_refuses_is_one_warning_and_is_sent_again(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A throttled StopTask for a revoked row is one WARNING line naming the task and AWS's error
    (no ERROR, no traceback), the row stays as it was, and the next cycle sends the stop again."""
    h = make_harness()
    engine = h.engine()
    [record_id] = h.add()
    cycle(engine)
    arn = h.row(record_id).external_id
    assert arn
    h.store.revoke(ids=[record_id])
    h.sandbox.inject_error(operation="StopTask", code="ThrottlingException", message="Rate exceeded")

    caplog.clear()
    with caplog.at_level("INFO", logger="aws_reconciler"):
        stats = cycle(engine).stats
    assert (stats.stopped, stats.row_errors) == (0, 0)
    assert [r.levelname for r in caplog.records if r.levelno >= 30] == ["WARNING"]
    [warning] = [r for r in caplog.records if r.levelno >= 30]
    assert arn in warning.getMessage() and record_id in warning.getMessage()
    assert "ThrottlingException" in warning.getMessage()
    assert warning.exc_info is None
    assert h.row(record_id).phase is Phase.PROVISIONING

    assert cycle(engine).stats.stopped == 1
    assert h.row(record_id).phase is Phase.STOPPING
    assert h.calls("StopTask") == 2


def test_a_launch_burst_is_spread_over_cycles_that_keep_observing(make_harness: HarnessFactory) -> None:
    """30 due rows, while Fargate's bucket lets 7 out per interval (burst 5, 10/s, 0.2 s): each cycle
    launches no more than that, asks to be run again at once, and still records what it observes
    (a task that stopped is finished in the first cycle, not after the burst)."""
    h = make_harness(
        AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.2",
        AIRFLOW__AWS_RECONCILER__FARGATE_LAUNCH_BURST="5",
        AIRFLOW__AWS_RECONCILER__FARGATE_LAUNCH_RATE="10",
    )
    engine = h.engine()
    [earlier] = h.add()
    cycle(engine)
    arn = h.row(earlier).external_id
    assert arn
    h.sandbox.set_task_state(task_arn=arn, last_status="STOPPED", exit_code=0)
    burst = h.add(30)

    first = cycle(engine)
    assert first.stats.finished == 1
    assert 1 <= first.stats.launched <= 7
    assert first.stats.deferred == 30 - first.stats.launched - first.stats.in_flight
    assert first.requeue_after == 0
    for _ in range(20):
        if all(h.row(r).phase is Phase.PROVISIONING for r in burst):
            break
        assert cycle(engine).stats.launched <= 7
    assert all(h.row(r).phase is Phase.PROVISIONING for r in burst)
    assert h.calls("RunTask") == 31


def test_the_next_cycle_is_wanted_when_the_soonest_row_is_due(make_harness: HarnessFactory) -> None:
    """A capacity failure backs a row off for 2 s (full jitter): the cycle asks to come back then,
    not after the 5 s interval, and not sooner."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    engine = h.engine(rng=lambda: 1.0)
    h.add()
    h.sandbox.fail_run_task(reason="RESOURCE:MEMORY")
    assert cycle(engine).requeue_after == 2
    h.clock.advance(2)
    assert cycle(engine).requeue_after == 5


class _HangingClient:
    """An ECS client whose RunTask for the commands in ``hang`` blocks until ``release`` is set."""

    def __init__(self, client: Any, *, hang: str) -> None:
        self._client = client
        self.hang = hang
        self.release = threading.Event()
        self.hung = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def run_task(self, **kwargs: Any) -> Any:
        if self.hang in str(kwargs.get("overrides")):
            self.hung.set()
            self.release.wait(timeout=60)
        return self._client.run_task(**kwargs)


def test_a_hung_launch_does_not_hold_up_the_next_pass(make_harness: HarnessFactory) -> None:
    """A RunTask that hangs (until the client's timeout, on AWS) keeps only its own row waiting: the
    cycle ends after one interval, and the next ones record a finished task and stop a revoked one
    while the call is still in flight; its outcome is collected when it arrives."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.3")
    client = _HangingClient(h.client(), hang="hangs-here")
    engine = h.engine(backend=h.backend(client=client))
    done, revoked = h.add(2)
    cycle(engine)
    [hanging] = h.add(commands=[["airflow", "tasks", "run", "hangs-here"]])
    try:
        stats = cycle(engine).stats
        assert client.hung.is_set() and stats.in_flight == 1
        assert h.row(hanging).phase is Phase.LAUNCHING

        done_arn = h.row(done).external_id
        assert done_arn
        h.sandbox.set_task_state(task_arn=done_arn, last_status="STOPPED", exit_code=0)
        h.store.revoke(ids=[revoked])
        stats = cycle(engine).stats
        assert (stats.finished, stats.stopped, stats.in_flight) == (1, 1, 1)
        assert not client.release.is_set(), "the pass waited for the hung call"
        assert h.row(hanging).phase is Phase.LAUNCHING
    finally:
        client.release.set()
    for _ in range(50):
        if cycle(engine).stats.launched:
            break
    row = h.row(hanging)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
    assert h.calls("RunTask") == 3


def test_ambiguous_launch_failures_back_off_longer_each_time(make_harness: HarnessFactory) -> None:
    """Three 5xx in a row keep attempt 1 (the same clientToken), and each retry waits at least twice
    as long as the one before: a 5xx outage is not retried every second forever."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    engine = h.engine(rng=lambda: 0.0)
    [record_id] = h.add()
    h.sandbox.inject_error(operation="RunTask", code="ServerException", message="boom", status=500, times=3)
    delays = []
    for _ in range(3):
        cycle(engine)
        row = h.row(record_id)
        assert (row.phase, row.attempt) == (Phase.LAUNCHING, 1)
        assert row.next_attempt_at
        delays.append((row.next_attempt_at - h.clock()).total_seconds())
        h.clock.set(row.next_attempt_at)
    assert delays == [1, 2, 4]
    assert cycle(engine).stats.launched == 1


def test_a_row_superseded_by_a_newer_queueing_is_stopped_and_ends_revoked(make_harness: HarnessFactory) -> None:
    """The scheduler queued the same try again (a reschedule's next poke) while the previous
    queueing's task still runs: that task is stopped, its row ends revoked ("superseded"), and only
    the new row is launched."""
    h = make_harness()
    engine = h.engine()
    [old] = h.add()
    cycle(engine)
    arn = h.row(old).external_id
    assert arn
    h.sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    cycle(engine)
    key = h.row(old).key
    new = str(uuid.uuid4())
    spec = build_run_task_request(ecs=h.settings.ecs, deployment=DEPLOYMENT, record_id=new, key=key, command=["x"])
    h.clock.advance(30)
    h.store.add(
        [
            NewTask(
                id=new,
                backend=Backend.ECS,
                owner="scheduler-1",
                key=key,
                queue="default",
                target=spec["cluster"],
                spec=spec,
            )
        ]
    )

    stats = cycle(engine).stats
    assert (stats.stopped, stats.launched) == (1, 1)
    assert "superseded" in (h.task(arn)["stoppedReason"] or "")
    h.sandbox.set_task_state(task_arn=arn, last_status="STOPPED", exit_code=0)
    cycle(engine)
    row = h.row(old)
    assert row.phase is Phase.REVOKED
    assert row.status_reason and row.status_reason.startswith("superseded")
    assert h.row(new).phase is Phase.PROVISIONING
