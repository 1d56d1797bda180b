"""Task logs in the Airflow UI: ``EcsExecutor.get_task_log`` against the sandbox, whose task runner
runs each task's command as a process and writes its output to CloudWatch Logs like ``awslogs``.

Rows are written as the executor writes them and launched by a reconciler engine; the executor
reads the logs through its own boto3 clients (``AWS_ENDPOINT_URL`` points them at the sandbox).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey

from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.backends.ecs.logs import is_pinned, task_id_of
from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.executor import EcsExecutor
from aws_reconciler.executor.logs import LogLocation, TaskLogs
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.factory import build_backend, controller_settings
from aws_reconciler.store import NewTask, TaskStore, create_store_engine
from aws_reconciler_sandbox import SandboxServer, bootstrap
from aws_reconciler_sandbox.runner import RunnerOptions
from support.waiting import wait_for

if TYPE_CHECKING:
    from conftest import SettingsFactory

pytestmark = pytest.mark.airflow

REGION = "us-east-1"
RUN_ID = "manual__2030-01-01T00:00:00+00:00"
GROUP = "/aws-reconciler/tasks"


@dataclass
class FakeTI:
    """What the API server hands ``get_task_log``: a TaskInstance (or TaskInstanceHistory)."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    external_executor_id: str | None

    @property
    def key(self) -> TaskInstanceKey:
        return TaskInstanceKey(self.dag_id, self.task_id, self.run_id, self.try_number, self.map_index)


def command(*lines: str, sleep: float = 30) -> list[str]:
    """Print ``lines``, then keep running (the UI reads logs of RUNNING task instances)."""
    return ["python", "-c", f"import time\nfor line in {list(lines)!r}: print(line, flush=True)\ntime.sleep({sleep})"]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(
        region=REGION,
        run_tasks=True,
        runner=RunnerOptions(provisioning_delay=0.2, pending_delay=0.2, poll_interval=0.05, shutdown_timeout=2),
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_env(sandbox: SandboxServer) -> dict[str, str]:
    env = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)
    ecs = sandbox.client("ecs")
    base = {"name": "base", "image": "apache/airflow:3.3.2", "essential": True}
    task = {"networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256", "memory": "512"}
    ecs.register_task_definition(family="no-logs", containerDefinitions=[base], **task)
    ecs.register_task_definition(
        family="no-prefix",
        containerDefinitions=[
            {**base, "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": GROUP}}}
        ],
        **task,
    )
    ecs.register_task_definition(
        family="firelens",
        containerDefinitions=[{**base, "logConfiguration": {"logDriver": "awsfirelens", "options": {}}}],
        **task,
    )
    return env


@dataclass
class World:
    """An executor as the API server has it, its store, and an engine that launches rows."""

    executor: EcsExecutor
    store: TaskStore
    engine: Controller
    sandbox: SandboxServer

    def add(self, *lines: str, task_definition: str | None = None, try_number: int = 1, task_id: str = "t") -> str:
        """A pending row, as the executor writes it; returns its id."""
        settings = self.executor.settings
        record_id = str(uuid.uuid4())
        key = TiKey("logs_dag", task_id, RUN_ID, -1, try_number)
        spec = build_run_task_request(
            ecs=settings.ecs,
            deployment=settings.core.deployment,
            record_id=record_id,
            key=key,
            command=command(*lines),
        )
        if task_definition is not None:
            spec["taskDefinition"] = task_definition
        self.store.add(
            [
                NewTask(
                    id=record_id,
                    backend=Backend.ECS,
                    owner="1",
                    key=key,
                    queue="default",
                    target=spec["cluster"],
                    spec=spec,
                )
            ]
        )
        return record_id

    def launch(self) -> None:
        """One reconcile cycle: every pending row gets its ECS task."""
        self.engine.reconcile()

    def arn(self, record_id: str) -> str:
        record = self.store.get(record_id)
        assert record is not None and record.external_id, f"{record_id} not launched"
        return record.external_id

    def ti(self, record_id: str | None, *, try_number: int = 1, task_id: str = "t") -> FakeTI:
        return FakeTI("logs_dag", task_id, RUN_ID, -1, try_number, record_id)

    def log(self, record_id: str | None, *, try_number: int = 1, task_id: str = "t") -> tuple[list[str], list[str]]:
        return self.executor.get_task_log(self.ti(record_id, try_number=try_number, task_id=task_id), try_number)


@pytest.fixture
def world(
    sandbox: SandboxServer,
    aws_env: dict[str, str],
    sqlite_url: str,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    # The executor's clients use the standard chain, as in the API server; here it leads to the sandbox.
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, aws_env[name])
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    settings = make_settings(sqlite_url, **{k: v for k, v in aws_env.items() if k.startswith("AIRFLOW__")})
    executor = EcsExecutor(parallelism=4)
    executor._settings = settings
    executor.start()
    store = TaskStore(executor.store.engine)
    engine = Controller(
        store=store,
        backend=build_backend(ECS, settings, client=sandbox.client("ecs")),
        settings=controller_settings(settings),
    )
    try:
        yield World(executor=executor, store=store, engine=engine, sandbox=sandbox)
    finally:
        engine.close()
        executor.store.engine.dispose()


def test_executor_init_does_no_io(sandbox: SandboxServer) -> None:
    """The API server instantiates executors for logs: construction touches neither AWS nor a database."""
    sandbox.reset_calls()
    executor = EcsExecutor(parallelism=1)
    assert executor._settings is None and executor._store is None
    assert executor._task_logs is None
    assert sandbox.calls() == {}


def test_lines_a_running_task_printed(world: World) -> None:
    record_id = world.add("starting up", "step 1 of 2", "step 2 of 2")
    world.launch()
    task_id = task_id_of(world.arn(record_id))

    def lines() -> list[str]:
        return world.log(record_id)[1]

    assert wait_for(lambda: lines() == ["starting up", "step 1 of 2", "step 2 of 2"], timeout=30, what="the lines")
    sources, printed = world.log(record_id)
    assert sources == [f"CloudWatch Logs group {GROUP}, stream airflow/base/{task_id}"]
    [task] = [t for t in world.sandbox.tasks() if t["arn"] == world.arn(record_id)]
    assert task["lastStatus"] == "RUNNING", "read while the task runs"

    # A TI without our id (Airflow < 3.3) is found by its key and try number.
    assert world.log(None)[1] == printed


def test_log_view_refreshes_call_only_get_log_events(world: World) -> None:
    """The task definition is described once; later refreshes call only GetLogEvents (never
    DescribeTasks, whose answer would carry the workload token): the page, then the call that
    hands the same token back, which is how CloudWatch says "end of stream"."""
    record_id = world.add("hello")
    world.launch()
    wait_for(lambda: world.log(record_id)[1] == ["hello"], timeout=30, what="the line")
    world.sandbox.reset_calls()
    for _ in range(3):
        assert world.log(record_id)[1] == ["hello"]
    calls = world.sandbox.calls()
    assert calls == {"logs:GetLogEvents": 6}, calls


def test_pages_are_followed_and_the_output_is_bounded(world: World) -> None:
    printed = [f"line {i:02d}" for i in range(25)]
    record_id = world.add(*printed)
    world.launch()
    logs = world.executor.task_logs()
    logs.page_size = 10
    wait_for(lambda: world.log(record_id)[1] == printed, timeout=30, what="25 lines over 3 pages")

    logs.max_lines = 12
    sources, lines = world.log(record_id)
    assert lines == printed[:12], "a stable prefix, so Airflow's log_pos stays right"
    assert sources[1].startswith("aws-reconciler: showing the first 12 lines; the rest is in CloudWatch Logs")


def test_not_launched_yet(world: World) -> None:
    record_id = world.add("never printed")
    sources, lines = world.log(record_id)
    assert lines == []
    [message] = sources
    assert message.startswith(
        f"aws-reconciler: task record {record_id} (ecs, phase pending, attempt 0): not launched yet"
    )
    assert "they appear here once the container runs" in message


def test_no_record_for_the_try(world: World) -> None:
    assert world.log(str(uuid.uuid4()), task_id="unknown") == (
        ["aws-reconciler: no task record for try 1 of this task instance yet"],
        [],
    )


def test_the_try_viewed_is_the_try_read(world: World) -> None:
    """The UI may show try 1 while try 2 runs: the TI's id names try 2, so try 1 is found by key."""
    first = world.add("try one", try_number=1, task_id="retried")
    second = world.add("try two", try_number=2, task_id="retried")
    ti = world.ti(second, try_number=2, task_id="retried")
    assert first in world.executor.get_task_log(ti, 1)[0][0]
    assert second in world.executor.get_task_log(ti, 2)[0][0]


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("no-logs", "does not log to CloudWatch Logs (log driver: none); configure the awslogs log driver"),
        ("firelens", "does not log to CloudWatch Logs (log driver: awsfirelens)"),
        ("no-prefix", "sets no awslogs-stream-prefix: its stream is then named after the Docker container id"),
    ],
)
def test_logs_not_configured(world: World, family: str, expected: str) -> None:
    record_id = world.add("invisible", task_definition=family)
    world.launch()
    world.arn(record_id)
    sources, lines = world.log(record_id)
    assert lines == []
    [message] = sources
    assert message.startswith("aws-reconciler: container 'base' of task definition arn:aws:ecs:")
    assert f":task-definition/{family}:1 " in message
    assert expected in message


def test_stream_not_there_yet(world: World) -> None:
    """Launched, but the container has written nothing yet (no stream)."""
    record_id = world.add("later")
    arn = "arn:aws:ecs:us-east-1:123456789012:task/airflow/0123456789abcdef0123456789abcdef"
    assert world.store.transition(record_id, expect_phases=[Phase.PENDING], phase=Phase.PROVISIONING, external_id=arn)
    sources, lines = world.log(record_id)
    assert lines == []
    [message] = sources
    assert message.startswith(
        f"aws-reconciler: CloudWatch Logs group {GROUP}, stream airflow/base/0123456789abcdef0123456789abcdef "
        "does not exist yet: the container has not started or written any output"
    )
    assert "phase provisioning" in message


def test_aws_refusing_the_read_is_shown_not_raised(world: World) -> None:
    record_id = world.add("secret")
    world.launch()
    wait_for(lambda: world.log(record_id)[1] == ["secret"], timeout=30, what="the line")
    world.sandbox.inject_error(
        operation="logs:GetLogEvents",
        code="AccessDeniedException",
        message="not authorized to perform logs:GetLogEvents",
    )
    assert world.log(record_id) == (
        [
            "aws-reconciler: could not read the task's logs: AccessDeniedException: "
            "not authorized to perform logs:GetLogEvents"
        ],
        [],
    )


def test_unreachable_store_is_shown_without_details(world: World) -> None:
    world.executor._store = TaskStore(create_store_engine("sqlite:////nonexistent/dir/x.db"))
    sources, lines = world.log(str(uuid.uuid4()))
    assert (sources, lines) == (["aws-reconciler: could not read the task's logs: OperationalError"], [])


# ---- units -------------------------------------------------------------------------------------


def test_pinned_task_definitions() -> None:
    assert is_pinned("airflow-task:3")
    assert is_pinned("arn:aws:ecs:us-east-1:1:task-definition/airflow-task:3")
    assert not is_pinned("airflow-task")
    assert not is_pinned("arn:aws:ecs:us-east-1:1:task-definition/airflow-task")


def test_memo_caches_success_only_and_expires() -> None:
    now = [0.0]
    logs = TaskLogs(region_name=None, monotonic=lambda: now[0], cache_size=2)
    calls: list[str] = []

    def compute(value: str) -> Callable[[], str]:
        def inner() -> str:
            calls.append(value)
            if value == "boom":
                raise RuntimeError(value)
            return value

        return inner

    assert logs.memo("n", "a", compute("a")) == "a"
    assert logs.memo("n", "a", compute("x")) == "a"
    with pytest.raises(RuntimeError):
        logs.memo("n", "b", compute("boom"))
    assert logs.memo("n", "b", compute("b")) == "b"
    assert logs.memo("n", "t", compute("t1"), ttl=10) == "t1"  # evicts "a" (least recently used)
    now[0] = 11
    assert logs.memo("n", "t", compute("t2"), ttl=10) == "t2"
    assert logs.memo("n", "a", compute("a2")) == "a2"
    assert calls == ["a", "boom", "b", "t1", "t2", "a2"]


def test_a_backend_hook_may_return_a_plain_tuple(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook contract: ``(group, stream)`` works like a :class:`LogLocation`."""
    record_id = world.add("via tuple")
    world.launch()
    record = world.store.get(record_id)
    assert record is not None
    location = world.executor._log_location(record)
    assert isinstance(location, LogLocation) and location.region == REGION
    monkeypatch.setattr(world.executor, "_log_location", lambda record: (location.group, location.stream))
    assert wait_for(lambda: world.log(record_id)[1] == ["via tuple"], timeout=30, what="the line")


def test_sources_never_contain_the_workload_token(world: World) -> None:
    """Nothing of the launch request but its task definition is read for logs."""
    record_id = world.add("x")
    world.store.transition(
        record_id, expect_phases=[Phase.PENDING], last_error="launch failed: ThrottlingException: Rate exceeded"
    )
    sources, _ = world.log(record_id)
    record = world.store.get(record_id)
    assert record is not None and record.spec is not None
    spec = record.spec
    command_json = spec["overrides"]["containerOverrides"][0]["command"][-1]
    assert command_json not in " ".join(sources)
    assert "last error: launch failed: ThrottlingException: Rate exceeded" in sources[0]


def test_the_log_view_reads_with_the_identity_of_the_airflow_connection(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[aws_reconciler_ecs] aws_conn_id``: the API server's AWS calls use that Airflow connection
    (defined here the way Airflow reads connections from the environment), not its own chain."""
    import dataclasses
    import json

    record_id = world.add("read with the connection")
    world.launch()
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOGS_READER",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIALOGSREADER",
                "password": "from-the-connection",
                "extra": {"region_name": REGION, "endpoint_url": world.sandbox.endpoint_url},
            }
        ),
    )
    # Nothing of the process's own chain leads to the sandbox: only the connection's endpoint does.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATHECHAIN")
    settings = world.executor.settings
    world.executor._settings = dataclasses.replace(
        settings, ecs=settings.ecs.model_copy(update={"aws_conn_id": "logs_reader"})
    )
    world.executor._task_logs = None

    assert wait_for(lambda: world.log(record_id)[1] == ["read with the connection"], timeout=30, what="the line")
    credentials = world.executor.task_logs().client("logs")._request_signer._credentials
    assert credentials.access_key == "AKIALOGSREADER"
