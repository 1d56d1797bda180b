"""The sandbox's Batch job runner: jobs as local processes, their lifecycle, TerminateJob, CancelJob,
logs; and the reconciler driving real job processes through it.

Every wait polls a condition with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from botocore.config import Config

from aws_reconciler.model import Phase
from aws_reconciler_sandbox import RunnerOptions, SandboxServer
from aws_reconciler_sandbox.runner import DEFAULT_START_FAILURE
from support.world import QUEUE, World, only

REGION = "us-east-1"
DEADLINE = 20.0
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
OPTIONS = RunnerOptions(
    provisioning_delay=0.2,
    pending_delay=0.2,
    poll_interval=0.05,
    default_stop_timeout=1.0,
    extra_env={"FROM_EXTRA": "extra"},
)
LOG_GROUP = "/aws/batch/job"
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


def py(code: str) -> list[str]:
    """A container command; the runner swaps "python" for the sandbox's interpreter."""
    return ["python", "-c", code]


SLEEPER = py("import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """This module's one sandbox, with the task runner on."""
    with SandboxServer(region=REGION, run_tasks=True, runner=OPTIONS) as server:
        yield server


@pytest.fixture
def batch(sandbox: SandboxServer, aws: dict[str, str]) -> Any:
    return sandbox.client("batch", config=NO_RETRY)


@pytest.fixture
def logs(sandbox: SandboxServer) -> Any:
    return sandbox.client("logs", config=NO_RETRY)


def submit(batch: Any, command: list[str] | None = None, *, definition: str = "airflow-job", **extra: Any) -> str:
    args: dict[str, Any] = {"jobName": "job", "jobQueue": QUEUE, "jobDefinition": definition, **extra}
    if command is not None:
        args.setdefault("containerOverrides", {})["command"] = command
    return str(batch.submit_job(**args)["jobId"])


def describe(batch: Any, job_id: str) -> dict[str, Any]:
    [job] = batch.describe_jobs(jobs=[job_id])["jobs"]
    return dict(job)


def wait_status(batch: Any, job_id: str, *statuses: str) -> dict[str, Any]:
    return wait_for(
        lambda: (job := describe(batch, job_id))["status"] in statuses and job, what=f"{job_id} to be {statuses}"
    )


def log_lines(logs: Any, job_id: str) -> list[str]:
    try:
        events = logs.get_log_events(
            logGroupName=LOG_GROUP, logStreamName=f"airflow-job/default/{job_id}", startFromHead=True
        )
    except logs.exceptions.ResourceNotFoundException:
        return []
    return [e["message"] for e in events["events"]]


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# ---- lifecycle -------------------------------------------------------------------------------


def test_jobs_walk_the_lifecycle_and_report_exit_codes_and_logs(batch: Any, logs: Any) -> None:
    ok = submit(batch, py("import time; print('hello from batch'); time.sleep(0.5)"))
    failing = submit(batch, py("import sys, time; time.sleep(0.5); print('oops', file=sys.stderr); sys.exit(3)"))
    seen: dict[str, list[str]] = {ok: [], failing: []}

    def both_finished() -> bool:
        for job in batch.describe_jobs(jobs=[ok, failing])["jobs"]:
            statuses = seen[job["jobId"]]
            if not statuses or statuses[-1] != job["status"]:
                statuses.append(job["status"])
        return all(s[-1] in ("SUCCEEDED", "FAILED") for s in seen.values())

    wait_for(both_finished, what="both jobs to finish")
    order = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"]
    for statuses in seen.values():
        assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses), statuses
        assert "RUNNING" in statuses

    succeeded, failed = describe(batch, ok), describe(batch, failing)
    assert (succeeded["status"], succeeded["container"]["exitCode"]) == ("SUCCEEDED", 0)
    assert (failed["status"], failed["container"]["exitCode"]) == ("FAILED", 3)
    assert failed["statusReason"] == "Essential container in task exited"
    assert failed["attempts"][-1]["container"]["exitCode"] == 3
    assert succeeded["startedAt"] <= succeeded["stoppedAt"]
    assert succeeded["container"]["logStreamName"] == f"airflow-job/default/{ok}"
    assert wait_for(lambda: log_lines(logs, ok), what="the log") == ["hello from batch"]
    assert wait_for(lambda: log_lines(logs, failing), what="the log") == ["oops"]


def test_the_job_gets_batchs_variables_the_definition_and_the_overrides(batch: Any, logs: Any) -> None:
    dump = py("import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.isupper()}))")
    job_id = submit(batch, dump, containerOverrides={"environment": [{"name": "FROM_OVERRIDE", "value": "1"}]})
    wait_status(batch, job_id, "SUCCEEDED")
    [line] = wait_for(lambda: log_lines(logs, job_id), what="the log")
    env = json.loads(line)
    assert env["AWS_BATCH_JOB_ID"] == job_id
    assert env["AWS_BATCH_JQ_NAME"] == QUEUE
    assert env["FROM_OVERRIDE"] == "1" and env["FROM_EXTRA"] == "extra"
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


# ---- stopping --------------------------------------------------------------------------------


def test_terminate_sends_sigterm_and_the_job_fails_with_the_reason(
    sandbox: SandboxServer, batch: Any, logs: Any
) -> None:
    job_id = submit(batch, SLEEPER)
    wait_status(batch, job_id, "RUNNING")
    pid = wait_for(lambda: sandbox.task_processes().get(job_id), what="the job's process")
    wait_for(lambda: log_lines(logs, job_id), what="the sleeper's first line")
    batch.terminate_job(jobId=job_id, reason="aws-reconciler: revoked by Airflow")
    job = wait_status(batch, job_id, "FAILED")
    assert (job["container"]["exitCode"], job["isTerminated"]) == (128 + signal.SIGTERM, True)
    assert job["statusReason"] == "aws-reconciler: revoked by Airflow"
    wait_for(lambda: group_gone(pid), what="the process group to be gone")


def test_a_process_ignoring_sigterm_is_killed_after_the_stop_timeout(
    sandbox: SandboxServer, batch: Any, logs: Any
) -> None:
    stubborn = py(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    job_id = submit(batch, stubborn)
    wait_status(batch, job_id, "RUNNING")
    # Only once it says so does the process ignore SIGTERM.
    wait_for(lambda: "ready" in log_lines(logs, job_id), what="the process to ignore SIGTERM")
    started = time.monotonic()
    batch.terminate_job(jobId=job_id, reason="stop")
    job = wait_status(batch, job_id, "FAILED")
    assert job["container"]["exitCode"] == 128 + signal.SIGKILL
    assert time.monotonic() - started >= OPTIONS.default_stop_timeout


def test_a_held_job_waits_in_runnable_and_cancel_is_honoured(sandbox: SandboxServer, batch: Any) -> None:
    sandbox.hold_runnable(times=1)
    held = submit(batch, SLEEPER)
    other = submit(batch, py("print('passing by')"))
    # The runner took the later job all the way while the held one waited: it did not just lag.
    wait_status(batch, other, "SUCCEEDED")
    assert describe(batch, held)["status"] == "RUNNABLE"
    batch.cancel_job(jobId=held, reason="nobody wants it")
    job = wait_status(batch, held, "FAILED")
    assert (job["isCancelled"], job["statusReason"], job["attempts"]) == (True, "nobody wants it", [])
    assert held not in sandbox.task_processes()


# ---- failures before the start ---------------------------------------------------------------


def test_jobs_that_cannot_start_fail_like_batch(sandbox: SandboxServer, batch: Any) -> None:
    sandbox.fail_next_start()
    planned = submit(batch, SLEEPER)
    batch.register_job_definition(
        jobDefinitionName="broken",
        type="container",
        containerProperties={
            "image": "example.com/does-not-exist:1",
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
        },
    )
    missing_image = submit(batch, SLEEPER, definition="broken")
    no_command = submit(batch)  # the bootstrap's job definition has no command of its own
    for job_id, reason in (
        (planned, DEFAULT_START_FAILURE),
        (missing_image, "CannotPullContainerError"),
        (no_command, "CannotStartContainerError"),
    ):
        job = wait_status(batch, job_id, "FAILED")
        assert job["statusReason"] == "Task failed to start"
        assert reason in job["container"]["reason"]
        assert "exitCode" not in job["container"] and "startedAt" not in job
    assert not set(sandbox.task_processes()) & {planned, missing_image, no_command}


# ---- the reconciler on the runner ------------------------------------------------------------


@only("batch")
def test_the_reconciler_runs_jobs_to_the_end_and_the_executor_shows_their_logs(
    world: World, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows launched by the engine run as processes; their outcomes reach the rows, a revoked row's
    job is terminated, and BatchExecutor.get_task_log reads the job's CloudWatch stream."""
    from aws_reconciler.executor import BatchExecutor
    from support.workloads import FakeTI

    h = world.configure(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.1")
    commands = [py("print('hello from the reconciler')"), py("import sys; sys.exit(4)"), SLEEPER]
    ok, failing, revoked = h.add(3, commands=commands)
    engine = h.engine()

    def phases(*ids: str) -> list[Phase]:
        return [h.row(r).phase for r in ids]

    def progressed(*ids: str, want: set[Phase]) -> bool:
        engine.reconcile()
        return all(p in want for p in phases(*ids))

    wait_for(lambda: progressed(ok, failing, want={Phase.SUCCEEDED, Phase.FAILED}), what="two rows to finish")
    assert (h.row(ok).phase, h.row(ok).exit_code) == (Phase.SUCCEEDED, 0)
    assert (h.row(failing).phase, h.row(failing).exit_code) == (Phase.FAILED, 4)
    wait_for(lambda: progressed(revoked, want={Phase.RUNNING}), what="the sleeper to run")
    h.store.revoke(ids=[revoked])
    wait_for(lambda: progressed(revoked, want={Phase.REVOKED}), what="the revoked row to end revoked")
    row = h.row(revoked)
    assert row.status_reason and row.status_reason.startswith("revoked by Airflow")
    assert row.exit_code == 128 + signal.SIGTERM
    assert h.calls("TerminateJob") == 1

    for name, value in {
        "AWS_ENDPOINT_URL": sandbox.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    executor = BatchExecutor()
    executor._settings = h.settings
    record = h.row(ok)
    sources, lines = executor.get_task_log(FakeTI.of_record(record), record.key.try_number)
    assert lines == ["hello from the reconciler"], sources
    assert sources == [f"CloudWatch Logs group {LOG_GROUP}, stream airflow-job/default/{record.external_id}"]
    executor.store.engine.dispose()
