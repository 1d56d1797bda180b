"""Realism that needs the task runner (tasks and jobs that never start, jobs held RUNNABLE), and the
``aws-reconciler sandbox`` command putting a profile in force."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from aws_reconciler_sandbox import RunnerOptions, SandboxControlClient, SandboxServer, bootstrap
from aws_reconciler_sandbox.realism import PROFILES, START_FAILURES
from support.processes import serve_sandbox
from support.waiting import wait_for

REGION = "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
OPTIONS = RunnerOptions(provisioning_delay=0.2, pending_delay=0.2, poll_interval=0.05, shutdown_timeout=2)
SLEEPER = ["python", "-c", "import time; time.sleep(60)"]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(region=REGION, run_tasks=True, runner=OPTIONS) as server:
        yield server


@pytest.fixture(scope="module")
def env(sandbox: SandboxServer) -> dict[str, str]:
    return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)


@pytest.fixture(autouse=True)
def _kind_afterwards(sandbox: SandboxServer) -> Iterator[None]:
    yield
    sandbox.configure_realism(profile="kind")


def launch(sandbox: SandboxServer, env: dict[str, str], command: list[str]) -> str:
    response = sandbox.client("ecs", config=NO_RETRY).run_task(
        cluster="airflow",
        taskDefinition="airflow-task",
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(",")}
        },
        overrides={"containerOverrides": [{"name": "base", "command": command}]},
    )
    return str(response["tasks"][0]["taskArn"])


def submit(batch: Any, command: list[str]) -> str:
    job = batch.submit_job(
        jobName="job", jobQueue="airflow", jobDefinition="airflow-job", containerOverrides={"command": command}
    )
    return str(job["jobId"])


def task_of(sandbox: SandboxServer, arn: str) -> dict[str, Any]:
    return next(t for t in sandbox.tasks() if t["arn"] == arn)


def job_of(sandbox: SandboxServer, job_id: str) -> dict[str, Any]:
    return next(j for j in sandbox.jobs() if j["jobId"] == job_id)


def test_tasks_and_jobs_fail_to_start_after_provisioning(sandbox: SandboxServer, env: dict[str, str]) -> None:
    SandboxControlClient(sandbox.endpoint_url).configure_realism(start_failure_rate=100)
    arn = launch(sandbox, env, SLEEPER)
    job_id = submit(sandbox.client("batch", config=NO_RETRY), SLEEPER)
    task = wait_for(lambda: (t := task_of(sandbox, arn))["lastStatus"] == "STOPPED" and t, what="the task to stop")
    assert task["stopCode"] == "TaskFailedToStart" and task["stoppedReason"] in START_FAILURES
    assert task["containers"] == [] and task["startedAt"] is None
    job = wait_for(lambda: (j := job_of(sandbox, job_id))["status"] == "FAILED" and j, what="the job to fail")
    assert job["statusReason"] == "Task failed to start" and job["container"]["reason"] in START_FAILURES
    assert "exitCode" not in job["container"]
    assert not set(sandbox.task_processes()) & {arn, job_id}
    assert sandbox.realism_state()["injected"] == {"start ecs": 1, "start batch": 1}


def test_jobs_are_held_in_runnable(sandbox: SandboxServer, env: dict[str, str]) -> None:
    batch = sandbox.client("batch", config=NO_RETRY)
    sandbox.configure_realism(runnable_hold_rate=100)
    held = submit(batch, SLEEPER)
    sandbox.configure_realism(runnable_hold_rate=0)
    other = submit(batch, ["python", "-c", "pass"])
    # The runner took the later job all the way while the held one waited: it did not just lag.
    wait_for(lambda: job_of(sandbox, other)["status"] == "SUCCEEDED", what="the other job to succeed")
    assert job_of(sandbox, held)["status"] == "RUNNABLE"
    batch.terminate_job(jobId=held, reason="no capacity for it")
    assert wait_for(lambda: job_of(sandbox, held)["status"] == "FAILED", what="the held job to end")


def test_the_sandbox_command_puts_the_profile_in_force_after_bootstrap(tmp_path: Path) -> None:
    with serve_sandbox(tmp_path, "--no-run-tasks", "--profile", "realistic", "--seed", "5", "--ecs-lag", "1") as served:
        state = SandboxControlClient(served.endpoint_url).realism_state()
    assert state["settings"] == PROFILES["realistic"].changed(seed=5, ecs_lag=1.0).to_dict()
    # Creating the default resources met none of it.
    assert state["injected"] == {}
