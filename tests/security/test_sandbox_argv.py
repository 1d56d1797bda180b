"""The sandbox keeps the Airflow workload token out of its task processes' arguments, which every
local user can read (``ps``, ``/proc/<pid>/cmdline``): the workload reaches the process in a file
only its user can read, as Airflow's entry point's ``--json-path``."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.executor.workload import stored_key, workload_command
from aws_reconciler_sandbox import SandboxServer
from aws_reconciler_sandbox.workloadfiles import JSON_PATH, json_string_of
from support.stores import make_settings
from support.waiting import wait_for
from support.workloads import jwt_expiring_at, make_workload

pytestmark = pytest.mark.airflow


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["python", "-m", "x", "--json-string", "{}"], (3, 5, "{}")),
        (["python", "-m", "x", "--json-string={}", "--other"], (3, 4, "{}")),
        (["python", "-m", "x", "--json-path", "/w.json"], None),
        (["python", "-c", "print(1)", "--json-string"], None),
    ],
)
def test_where_a_command_passes_its_workload_inline(argv: list[str], found: tuple[int, int, str] | None) -> None:
    assert json_string_of(argv) == found


def test_a_running_sandbox_task_shows_no_token_in_its_arguments(
    sandbox: SandboxServer, aws_env: dict[str, str]
) -> None:
    settings = make_settings("sqlite://", **{k: v for k, v in aws_env.items() if k.startswith("AIRFLOW__")})
    container = settings.ecs.container_name
    environment = [{"name": "TASK_SECONDS", "value": "120"}]
    workload = make_workload(
        "argv",
        token=jwt_expiring_at(datetime.now(UTC) + timedelta(minutes=10)),
        executor_config={"overrides": {"containerOverrides": [{"name": container, "environment": environment}]}},
    )
    record_id = workload.ti.external_executor_id or ""
    request = build_run_task_request(
        ecs=settings.ecs,
        deployment="argv-test",
        record_id=record_id,
        key=stored_key(workload, record_id),
        command=workload_command(workload),
        executor_config=workload.ti.executor_config,
    )
    ecs = sandbox.client("ecs")
    [task] = ecs.run_task(**request, clientToken=str(uuid.uuid4()))["tasks"]
    arn = task["taskArn"]
    pid = wait_for(lambda: sandbox.task_processes().get(arn), timeout=30, what="the task's process")

    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    shown = subprocess.run(
        ["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout
    for what, text in (("/proc/<pid>/cmdline", b" ".join(argv).decode()), ("ps", shown)):
        assert workload.token not in text, f"{what} shows the workload token"
        assert workload.token.split(".")[2] not in text, f"{what} shows the token's signature"
        assert "--json-string" not in text and JSON_PATH in text, what
    path = argv[argv.index(JSON_PATH.encode()) + 1].decode()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.stat(path).st_uid == os.getuid()
    assert workload.token in Path(path).read_text(), "the process gets the workload whole"

    logs = sandbox.client("logs")

    def said() -> list[str] | None:
        events = logs.filter_log_events(logGroupName="/aws-reconciler/tasks").get("events") or []
        lines = [e["message"] for e in events if str(workload.ti.id) in e["message"]]
        return lines or None

    [line] = wait_for(said, timeout=30, what="the task's output")
    assert line == f"workload of task instance {workload.ti.id} read from a file of mode 600"

    ecs.stop_task(cluster=request["cluster"], task=arn, reason="done")
    wait_for(lambda: not os.path.exists(path), timeout=60, what="the workload file to be removed with its task")
