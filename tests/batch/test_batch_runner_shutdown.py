"""Stopping the sandbox ends every Batch job process (its own module: one SandboxServer at a time)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from aws_reconciler_sandbox import RunnerOptions, SandboxServer, bootstrap

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], *, what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def test_server_stop_ends_every_job_process_and_fails_its_job() -> None:
    options = RunnerOptions(provisioning_delay=0.1, pending_delay=0.1, poll_interval=0.05, shutdown_timeout=2.0)
    with SandboxServer(run_tasks=True, runner=options) as server:
        bootstrap(endpoint_url=server.endpoint_url, region=server.region, batch=True)
        job_id = server.client("batch").submit_job(
            jobName="sleeper",
            jobQueue="airflow",
            jobDefinition="airflow-job",
            containerOverrides={"command": ["python", "-c", "import time; time.sleep(60)"]},
        )["jobId"]
        pid = wait_for(lambda: server.task_processes().get(job_id), what="the job's process")
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    [job] = server.jobs()
    assert (job["status"], job["statusReason"]) == ("FAILED", "The sandbox's task runner was stopped")
    assert job["container"]["exitCode"] == 143
