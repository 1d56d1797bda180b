"""The sandbox's task runner: ECS tasks as local processes, their lifecycle, StopTask, logs, shutdown.

Every wait polls a condition with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config

from aws_reconciler_sandbox import (
    RunnerOptions,
    SandboxControlClient,
    SandboxControlError,
    SandboxServer,
    add_sandbox_parser,
    bootstrap,
)
from aws_reconciler_sandbox.realism import PROFILES
from aws_reconciler_sandbox.runner import DEFAULT_START_FAILURE

REGION = "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
DEADLINE = 20.0
# Short phases keep the suite quick; 0.3 s still leaves several 50 ms polls in each phase.
OPTIONS = RunnerOptions(
    provisioning_delay=0.3,
    pending_delay=0.3,
    poll_interval=0.05,
    extra_env={"FROM_EXTRA": "extra", "SHARED": "extra", "SHARED_WITH_DEFINITION": "extra"},
)
DEFINITION_ENV = {"FROM_DEFINITION": "definition", "SHARED": "definition", "SHARED_WITH_DEFINITION": "definition"}
LOG_GROUP = "/aws-reconciler/tasks"

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], *, what: str, timeout: float = DEADLINE) -> T:
    """Poll ``condition`` every 50 ms until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def client(endpoint_url: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRY,
    )


def run_args(env: dict[str, str], command: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "cluster": env["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"],
        "taskDefinition": env["AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION"],
        "launchType": "FARGATE",
        "startedBy": "airflow",
        "networkConfiguration": {
            "awsvpcConfiguration": {"subnets": env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(",")}
        },
    }
    if command is not None:
        args["overrides"] = {"containerOverrides": [{"name": "base", "command": command}]}
    args.update(overrides)
    return args


def launch(ecs: Any, env: dict[str, str], command: list[str] | None = None, **overrides: Any) -> str:
    response = ecs.run_task(**run_args(env, command, **overrides))
    assert response["failures"] == []
    return str(response["tasks"][0]["taskArn"])


def describe(ecs: Any, arn: str) -> dict[str, Any]:
    return dict(ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"][0])


def wait_status(ecs: Any, arn: str, status: str, timeout: float = DEADLINE) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        task = describe(ecs, arn)
        return task if task["lastStatus"] == status else None

    return wait_for(reached, what=f"{arn} to be {status}", timeout=timeout)


def watch_statuses(ecs: Any, *arns: str) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """For each task, every distinct lastStatus seen, in order, until STOPPED; and the stopped task."""
    seen: dict[str, list[str]] = {arn: [] for arn in arns}
    last: dict[str, dict[str, Any]] = {}

    def all_stopped() -> bool:
        for task in ecs.describe_tasks(cluster="airflow", tasks=list(arns))["tasks"]:
            statuses = seen[task["taskArn"]]
            if not statuses or statuses[-1] != task["lastStatus"]:
                statuses.append(task["lastStatus"])
            last[task["taskArn"]] = task
        return all(statuses and statuses[-1] == "STOPPED" for statuses in seen.values())

    wait_for(all_stopped, what=f"{arns} to stop")
    return {arn: (seen[arn], last[arn]) for arn in arns}


def stream_of(arn: str) -> str:
    return f"airflow/base/{arn.rsplit('/', 1)[1]}"


def log_lines(logs: Any, arn: str) -> list[str]:
    try:
        events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream_of(arn), startFromHead=True)
    except logs.exceptions.ResourceNotFoundException:
        return []
    return [e["message"] for e in events["events"]]


def wait_log(logs: Any, arn: str, text: str) -> list[str]:
    return wait_for(
        lambda: (lines := log_lines(logs, arn)) and any(text in line for line in lines) and lines,
        what=f"{text!r} in the log of {arn}",
    )


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (a /proc scan, no psutil)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces, so split after the ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    # A zombie member left to a parent that does not reap still counts for kill(); only live
    # processes matter.
    return not live_group_members(pgid)


def py(code: str) -> list[str]:
    """A container command; the runner swaps "python" for the sandbox's interpreter."""
    return ["python", "-c", code]


SLEEPER = py("import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)")


def register_definition(ecs: Any, family: str, **container: Any) -> None:
    """A one-container definition like bootstrap's; ``container`` keys override (None removes one)."""
    definition: dict[str, Any] = {
        "name": "base",
        "image": "apache/airflow:3.3.2",
        "essential": True,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": LOG_GROUP, "awslogs-region": REGION, "awslogs-stream-prefix": "airflow"},
        },
    }
    definition.update(container)
    ecs.register_task_definition(
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[{k: v for k, v in definition.items() if v is not None}],
    )


# ---------------------------------------------------------------------------- one sandbox per class


class TestRunner:
    """Tests sharing one sandbox with the runner on (a start plus bootstrap costs ~1 s)."""

    @pytest.fixture(scope="class")
    def sandbox(self) -> Iterator[SandboxServer]:
        with SandboxServer(region=REGION, run_tasks=True, runner=replace(OPTIONS)) as server:
            yield server

    @pytest.fixture(scope="class")
    def env(self, sandbox: SandboxServer) -> dict[str, str]:
        return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, environment=DEFINITION_ENV)

    @pytest.fixture(autouse=True)
    def _no_leftover_faults(self, sandbox: SandboxServer) -> Iterator[None]:
        sandbox.clear_faults()
        yield
        sandbox.clear_faults()

    @pytest.fixture
    def ecs(self, sandbox: SandboxServer, env: dict[str, str]) -> Any:
        return client(sandbox.endpoint_url, "ecs")

    @pytest.fixture
    def logs(self, sandbox: SandboxServer) -> Any:
        return client(sandbox.endpoint_url, "logs")

    def test_lifecycle_exit_code_timestamps_and_logs(
        self, sandbox: SandboxServer, ecs: Any, logs: Any, env: dict[str, str]
    ) -> None:
        # The sleep keeps the task RUNNING for several polls, so that every status is seen.
        arn = launch(ecs, env, py("import time; time.sleep(0.5); print('hello'); import sys; sys.exit(3)"))
        [(seen, task)] = watch_statuses(ecs, arn).values()
        assert seen == ["PROVISIONING", "PENDING", "RUNNING", "STOPPED"]
        assert task["desiredStatus"] == "STOPPED"
        assert task["stopCode"] == "EssentialContainerExited"
        assert task["stoppedReason"] == "Essential container in task exited"
        [container] = task["containers"]
        assert container["exitCode"] == 3 and container["lastStatus"] == "STOPPED"
        assert task["createdAt"] <= task["pullStartedAt"] <= task["pullStoppedAt"] <= task["startedAt"]
        assert task["startedAt"] <= task["stoppingAt"] <= task["stoppedAt"]
        # Exactly where the awslogs driver writes: <prefix>/<container>/<task id>.
        streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=stream_of(arn))["logStreams"]
        assert [s["logStreamName"] for s in streams] == [stream_of(arn)]
        assert wait_log(logs, arn, "hello") == ["hello"]
        assert arn not in sandbox.task_processes()

    def test_the_exact_spec_command_and_a_task_without_logs(
        self, sandbox: SandboxServer, ecs: Any, logs: Any, env: dict[str, str]
    ) -> None:
        arn = launch(ecs, env, py("print('hello'); import sys; sys.exit(3)"))
        # A container without a log configuration: its output is discarded, the task still runs.
        register_definition(ecs, "no-logs", logConfiguration=None)
        quiet = launch(ecs, env, py("print('unseen')"), taskDefinition="no-logs")
        assert wait_status(ecs, arn, "STOPPED")["containers"][0]["exitCode"] == 3
        assert wait_log(logs, arn, "hello") == ["hello"]
        assert wait_status(ecs, quiet, "STOPPED")["containers"][0]["exitCode"] == 0
        assert log_lines(logs, quiet) == []

    def test_environment_layers_reach_the_process(
        self, sandbox: SandboxServer, ecs: Any, logs: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FROM_HOST", "host")
        monkeypatch.setenv("SHARED", "host")
        monkeypatch.setenv("AWS_PROFILE", "the-hosts-own")
        names = [
            "FROM_HOST",
            "FROM_EXTRA",
            "FROM_DEFINITION",
            "FROM_OVERRIDE",
            "SHARED",
            "SHARED_WITH_DEFINITION",
            "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION",
            "AWS_PROFILE",
        ]
        code = (
            f"import json, os, sys; print(json.dumps({{n: os.environ.get(n) for n in {names!r}}})); "
            "print(sys.executable)"
        )
        override = {
            "name": "base",
            "command": py(code),
            "environment": [{"name": "FROM_OVERRIDE", "value": "override"}, {"name": "SHARED", "value": "override"}],
        }
        arn = launch(ecs, env, overrides={"containerOverrides": [override]})
        assert wait_status(ecs, arn, "STOPPED")["containers"][0]["exitCode"] == 0
        lines = wait_log(logs, arn, "FROM_HOST")
        assert json.loads(lines[0]) == {
            "FROM_HOST": "host",  # the sandbox's own environment...
            "FROM_EXTRA": "extra",  # ...< RunnerOptions.extra_env...
            "FROM_DEFINITION": "definition",  # ...< the task definition...
            "FROM_OVERRIDE": "override",  # ...< the RunTask override
            "SHARED": "override",
            "SHARED_WITH_DEFINITION": "definition",
            "AWS_ENDPOINT_URL": sandbox.endpoint_url,  # the task's SDKs reach the sandbox
            "AWS_DEFAULT_REGION": REGION,
            "AWS_PROFILE": None,  # never the host's AWS identity
        }
        assert lines[1] == OPTIONS.python == sys.executable  # "python" became the sandbox's interpreter

    def test_stop_task_sends_sigterm_and_keeps_the_reason(
        self, sandbox: SandboxServer, ecs: Any, logs: Any, env: dict[str, str]
    ) -> None:
        code = (
            "import os, signal, sys, time\n"
            "def bye(*_):\n    print('got SIGTERM', flush=True)\n    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n"
        )
        arn = launch(ecs, env, py(code))
        wait_log(logs, arn, "ready")  # the handler is installed
        pid = sandbox.task_processes()[arn]
        started = time.monotonic()
        stopping = ecs.stop_task(cluster="airflow", task=arn, reason="revoked by Airflow")["task"]
        assert stopping["desiredStatus"] == "STOPPED" and stopping["lastStatus"] in ("RUNNING", "STOPPING")
        task = wait_status(ecs, arn, "STOPPED")
        assert time.monotonic() - started < 5  # SIGTERM, not the 10 s stopTimeout's SIGKILL
        assert task["stopCode"] == "UserInitiated"
        assert task["stoppedReason"] == "revoked by Airflow"
        assert task["containers"][0]["exitCode"] == 0
        assert log_lines(logs, arn) == ["ready", "got SIGTERM"]
        assert wait_for(lambda: group_gone(pid), what="the task's process group to be gone")
        assert arn not in sandbox.task_processes()

    def test_default_sigterm_death_is_exit_code_143(
        self, sandbox: SandboxServer, ecs: Any, env: dict[str, str]
    ) -> None:
        arn = launch(ecs, env, SLEEPER)
        pid = wait_for(lambda: sandbox.task_processes().get(arn), what="the task's process")
        ecs.stop_task(cluster="airflow", task=arn)
        task = wait_status(ecs, arn, "STOPPED")
        assert task["containers"][0]["exitCode"] == 128 + signal.SIGTERM
        assert task["stoppedReason"] == "Task stopped by user"
        assert wait_for(lambda: group_gone(pid), what="the task's process group to be gone")

    def test_process_ignoring_sigterm_is_killed_after_stop_timeout(
        self, sandbox: SandboxServer, ecs: Any, logs: Any, env: dict[str, str]
    ) -> None:
        register_definition(ecs, "stubborn", stopTimeout=1)
        code = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)"
        )
        arn = launch(ecs, env, py(code), taskDefinition="stubborn")
        wait_log(logs, arn, "ready")  # SIGTERM is ignored from here on
        pid = sandbox.task_processes()[arn]
        started = time.monotonic()
        ecs.stop_task(cluster="airflow", task=arn, reason="revoked")
        # While the grace runs, the process lives on and the task is STOPPING.
        assert wait_status(ecs, arn, "STOPPING")["desiredStatus"] == "STOPPED"
        assert not group_gone(pid)
        task = wait_status(ecs, arn, "STOPPED")
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 5, elapsed
        assert task["containers"][0]["exitCode"] == 128 + signal.SIGKILL
        assert task["stopCode"] == "UserInitiated" and task["stoppedReason"] == "revoked"
        assert wait_for(lambda: group_gone(pid), what="the task's process group to be gone")

    def test_stop_before_start_stops_at_once_without_a_process(
        self, sandbox: SandboxServer, ecs: Any, env: dict[str, str]
    ) -> None:
        arn = launch(ecs, env, SLEEPER)
        stopped = ecs.stop_task(cluster="airflow", task=arn, reason="changed my mind")["task"]
        assert stopped["lastStatus"] == "STOPPED"
        assert stopped["stopCode"] == "UserInitiated" and stopped["stoppedReason"] == "changed my mind"
        assert "startedAt" not in stopped and "exitCode" not in stopped["containers"][0]
        # It stays that way: the runner never starts it.
        pending = launch(ecs, env, SLEEPER)
        wait_status(ecs, pending, "PENDING")
        assert ecs.stop_task(cluster="airflow", task=pending)["task"]["lastStatus"] == "STOPPED"
        wait_status(ecs, launch(ecs, env, py("pass")), "STOPPED")  # a later task ran its whole course
        assert arn not in sandbox.task_processes() and pending not in sandbox.task_processes()
        assert describe(ecs, arn)["lastStatus"] == describe(ecs, pending)["lastStatus"] == "STOPPED"
        assert "startedAt" not in describe(ecs, pending)

    def test_fail_next_start_and_missing_image(self, sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
        sandbox.fail_next_start()
        planned = launch(ecs, env, SLEEPER)
        register_definition(ecs, "missing-image", image="registry.example.com/does-not-exist:1.0")
        missing = launch(ecs, env, SLEEPER, taskDefinition="missing-image")
        ok = launch(ecs, env, py("pass"))  # times=1: the plan is used up by the first launch
        watched = watch_statuses(ecs, planned, missing)
        seen, task = watched[planned]
        assert seen == ["PROVISIONING", "STOPPED"]
        assert task["stopCode"] == "TaskFailedToStart"
        assert task["stoppedReason"] == DEFAULT_START_FAILURE
        assert task["containers"] == []
        assert "startedAt" not in task
        seen, task = watched[missing]
        assert seen == ["PROVISIONING", "STOPPED"]
        assert task["stopCode"] == "TaskFailedToStart" and task["containers"] == []
        assert task["stoppedReason"].startswith("CannotPullContainerError")
        assert "does-not-exist" in task["stoppedReason"]
        assert wait_status(ecs, ok, "STOPPED")["stopCode"] == "EssentialContainerExited"
        assert planned not in sandbox.task_processes() and missing not in sandbox.task_processes()

        # Over HTTP, with a reason and several times.
        control = SandboxControlClient(sandbox.endpoint_url)
        control.fail_next_start(reason="ResourceInitializationError: unable to pull secrets", times=2)
        assert control.pending_faults()["start_failures"] == [
            {"reason": "ResourceInitializationError: unable to pull secrets", "remaining": 2}
        ]
        arns = [launch(ecs, env, SLEEPER) for _ in range(2)]
        for arn in arns:
            task = wait_status(ecs, arn, "STOPPED")
            assert task["stoppedReason"] == "ResourceInitializationError: unable to pull secrets"
            assert task["containers"] == []
        assert control.pending_faults()["start_failures"] == []

    def test_a_command_that_cannot_run_fails_to_start(
        self, sandbox: SandboxServer, ecs: Any, env: dict[str, str]
    ) -> None:
        nothing = launch(ecs, env)  # bootstrap's definition has no command: the image's default
        missing = launch(ecs, env, ["/no/such/program"])
        for arn, words in ((nothing, "no command"), (missing, "/no/such/program")):
            task = wait_status(ecs, arn, "STOPPED")
            assert task["stopCode"] == "TaskFailedToStart"
            assert task["stoppedReason"].startswith("CannotStartContainerError") and words in task["stoppedReason"]
            assert "exitCode" not in task["containers"][0]

    def test_set_task_state_stopped_ends_the_process_and_wins(
        self, sandbox: SandboxServer, ecs: Any, env: dict[str, str]
    ) -> None:
        arn = launch(ecs, env, SLEEPER)
        pid = wait_for(lambda: sandbox.task_processes().get(arn), what="the task's process")
        sandbox.set_task_state(task_arn=arn, last_status="STOPPED", exit_code=137, container_reason="OutOfMemoryError")
        assert wait_for(lambda: group_gone(pid), what="the task's process group to be gone")
        wait_for(lambda: arn not in sandbox.task_processes(), what="the process to be reaped")
        task = describe(ecs, arn)
        assert task["stopCode"] == "EssentialContainerExited"
        assert task["containers"][0]["exitCode"] == 137 and task["containers"][0]["reason"] == "OutOfMemoryError"

    def test_two_hundred_concurrent_tasks(self, sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
        # /bin/sleep rather than Python: the point is the runner's scale, not the interpreter's start.
        arns = [
            t["taskArn"] for _ in range(20) for t in ecs.run_task(**run_args(env, ["sleep", "2"], count=10))["tasks"]
        ]
        assert len(arns) == 200
        # Launched within a fraction of the 2 s they sleep: most run side by side.
        wait_for(lambda: len(sandbox.task_processes()) >= 150, what="150 task processes at once")
        wait_for(lambda: not sandbox.task_processes(), what="every task process to end")

        def finished() -> bool:
            tasks = [
                task
                for start in range(0, len(arns), 100)
                for task in ecs.describe_tasks(cluster="airflow", tasks=arns[start : start + 100])["tasks"]
            ]
            return all(t["lastStatus"] == "STOPPED" and t["containers"][0]["exitCode"] == 0 for t in tasks)

        wait_for(finished, what="200 tasks STOPPED with exit code 0")


# ---------------------------------------------------------------------------- sandboxes of their own


def test_server_stop_leaves_no_process() -> None:
    server = SandboxServer(region=REGION, run_tasks=True, runner=replace(OPTIONS)).start()
    try:
        env = bootstrap(endpoint_url=server.endpoint_url, region=REGION)
        ecs = client(server.endpoint_url, "ecs")
        # Each task also starts a child of its own: the whole process group must go.
        code = "import subprocess, time; subprocess.Popen(['sleep', '60']); print('up', flush=True); time.sleep(60)"
        arns = [t["taskArn"] for t in ecs.run_task(**run_args(env, py(code), count=5))["tasks"]]
        pids = wait_for(lambda: len(found := server.task_processes()) == 5 and found, what="5 task processes")
        assert set(pids) == set(arns)
        logs = client(server.endpoint_url, "logs")
        for arn in arns:
            wait_log(logs, arn, "up")
        assert all(len(live_group_members(pid)) == 2 for pid in pids.values())
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < OPTIONS.shutdown_timeout  # they obeyed SIGTERM
    for pid in pids.values():
        assert group_gone(pid), live_group_members(pid)
    assert server.task_processes() == {}
    assert not server.running


def test_reset_ends_the_processes() -> None:
    with SandboxServer(region=REGION, run_tasks=True, runner=replace(OPTIONS)) as server:
        env = bootstrap(endpoint_url=server.endpoint_url, region=REGION)
        arn = launch(client(server.endpoint_url, "ecs"), env, SLEEPER)
        pid = wait_for(lambda: server.task_processes().get(arn), what="the task's process")
        control = SandboxControlClient(server.endpoint_url)
        control.reset()
        assert wait_for(lambda: group_gone(pid), what="the task's process group to be gone")
        wait_for(lambda: not control.task_processes(), what="no task process")


def test_fail_next_start_needs_the_runner() -> None:
    with SandboxServer(region=REGION) as server:
        with pytest.raises(RuntimeError, match="run_tasks"):
            server.fail_next_start()
        with pytest.raises(SandboxControlError) as exc:
            SandboxControlClient(server.endpoint_url).fail_next_start()
        assert exc.value.status == 409
        assert server.task_processes() == {}


def test_sandbox_subcommand_arguments() -> None:
    parser = argparse.ArgumentParser()
    add_sandbox_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sandbox"])
    assert (args.host, args.port, args.region, args.run_tasks, args.env_file) == (
        "127.0.0.1",
        5555,
        "us-east-1",
        True,
        None,
    )
    args = parser.parse_args(
        ["sandbox", "--port", "0", "--no-run-tasks", "--env-file", "x.env", "--region", "eu-west-1"]
    )
    assert (args.port, args.run_tasks, args.env_file, args.region) == (0, False, "x.env", "eu-west-1")
    assert callable(args.func)


def test_sandbox_command_serves_runs_tasks_and_stops_cleanly(tmp_path: Path) -> None:
    env_file = tmp_path / "sandbox.env"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aws_reconciler.cli", "sandbox", "--port", "0", "--env-file", str(env_file)],
            stdout=stdout,
            stderr=stderr,
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the sandbox exited with {proc.returncode}: {err.read_text()}")
            return env_file.exists()

        wait_for(ready, what="the sandbox's env file", timeout=30)
        settings = dict(shlex.split(line)[1].split("=", 1) for line in env_file.read_text().splitlines())
        endpoint = settings["AWS_ENDPOINT_URL"]
        assert f"sandbox ready on {endpoint}" in wait_for(
            lambda: "sandbox ready" in (text := out.read_text()) and text, what="the ready line"
        )
        ecs = boto3.client(
            "ecs",
            endpoint_url=endpoint,
            region_name=settings["AWS_DEFAULT_REGION"],
            aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
            config=NO_RETRY,
        )
        arn = launch(ecs, settings, SLEEPER)
        wait_status(ecs, arn, "RUNNING")
        control = SandboxControlClient(endpoint)
        assert control.realism_state()["settings"] == PROFILES["kind"].to_dict()  # no profile: as kind as ever
        pid = control.task_processes()[arn]
        assert live_group_members(pid) == [pid]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert group_gone(pid), live_group_members(pid)
