"""The sandbox's Batch shims through real boto3 clients over HTTP (task runner off)."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from aws_reconciler_sandbox import SandboxControlClient, SandboxControlError, SandboxServer, bootstrap

REGION = "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def batch(sandbox: SandboxServer, aws: dict[str, str]) -> Any:
    return boto3.client(
        "batch",
        endpoint_url=sandbox.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRY,
    )


def submit(batch: Any, name: str = "job", **extra: Any) -> str:
    args = {"jobName": name, "jobQueue": "airflow", "jobDefinition": "airflow-job", **extra}
    return str(batch.submit_job(**args)["jobId"])


def describe(batch: Any, job_id: str) -> dict[str, Any]:
    [job] = batch.describe_jobs(jobs=[job_id])["jobs"]
    return dict(job)


def code_of(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def test_a_submitted_job_waits_in_runnable_with_the_fields_aws_sets(sandbox: SandboxServer, batch: Any) -> None:
    """moto alone would have finished the job inside SubmitJob."""
    job_id = submit(batch, tags={"k": "v"}, containerOverrides={"command": ["echo", "hi"]})
    for _ in range(5):
        job = describe(batch, job_id)
    assert job["status"] == "RUNNABLE"
    assert job["tags"] == {"k": "v"}
    assert job["jobDefinition"].endswith(":job-definition/airflow-job:1")
    assert job["container"]["command"] == ["echo", "hi"]
    assert "createdAt" in job and "startedAt" not in job and "stoppedAt" not in job
    assert "exitCode" not in job["container"] and "logStreamName" not in job["container"]
    assert job["attempts"] == []
    assert batch.list_tags_for_resource(resourceArn=job["jobArn"])["tags"] == {"k": "v"}
    # The definition is pinned at submission: a new revision changes no submitted job.
    batch.register_job_definition(
        jobDefinitionName="airflow-job",
        type="container",
        containerProperties={
            "image": "other:1",
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
        },
    )
    assert describe(batch, job_id)["container"]["image"] == "apache/airflow:3.3.2"


def test_a_finished_job_shows_its_exit_code_in_the_container_and_the_attempt(
    sandbox: SandboxServer, batch: Any
) -> None:
    job_id = submit(batch)
    sandbox.set_job_state(job_id=job_id, status="STARTING")
    running = sandbox.set_job_state(job_id=job_id, status="RUNNING")
    assert running["container"]["logStreamName"] == f"airflow-job/default/{job_id}"
    sandbox.set_job_state(job_id=job_id, status="FAILED", exit_code=3)
    job = describe(batch, job_id)
    assert (job["status"], job["statusReason"], job["container"]["exitCode"]) == (
        "FAILED",
        "Essential container in task exited",
        3,
    )
    assert job["startedAt"] <= job["stoppedAt"]
    [attempt] = job["attempts"]
    assert attempt["container"]["exitCode"] == 3
    assert attempt["container"]["logStreamName"] == f"airflow-job/default/{job_id}"
    assert attempt["container"]["taskArn"] == job["container"]["taskArn"]
    with pytest.raises(ValueError, match="finished"):
        sandbox.set_job_state(job_id=job_id, status="RUNNING")


def test_a_job_that_failed_to_start_has_a_reason_and_no_exit_code(sandbox: SandboxServer, batch: Any) -> None:
    job_id = submit(batch)
    sandbox.set_job_state(job_id=job_id, status="FAILED", container_reason="CannotPullContainerError: not found")
    job = describe(batch, job_id)
    assert job["statusReason"] == "Task failed to start"
    assert job["container"]["reason"] == "CannotPullContainerError: not found"
    assert "exitCode" not in job["container"] and "startedAt" not in job
    assert job["attempts"][0]["container"]["reason"] == "CannotPullContainerError: not found"


def test_describe_jobs_omits_unknown_ids_keeps_order_and_caps_at_100(batch: Any) -> None:
    first, second = submit(batch, "a"), submit(batch, "b")
    found = batch.describe_jobs(jobs=[second, "no-such-job", first, second])["jobs"]
    assert [j["jobId"] for j in found] == [second, first]
    with pytest.raises(ClientError) as info:
        batch.describe_jobs(jobs=[first] * 101)
    assert code_of(info) == "ClientException"
    with pytest.raises(ClientError):
        batch.describe_jobs(jobs=[])  # moto alone would describe every job


def test_list_jobs_defaults_to_running_and_paginates(sandbox: SandboxServer, batch: Any) -> None:
    ids = [submit(batch, f"j{i}") for i in range(250)]
    sandbox.set_job_state(job_id=ids[0], status="RUNNING")
    assert [j["jobId"] for j in batch.list_jobs(jobQueue="airflow")["jobSummaryList"]] == [ids[0]]

    listed: list[str] = []
    pages = 0
    kwargs: dict[str, Any] = {"jobQueue": "airflow", "jobStatus": "RUNNABLE", "maxResults": 100}
    while True:
        page = batch.list_jobs(**kwargs)
        pages += 1
        assert len(page["jobSummaryList"]) <= 100
        listed += [j["jobId"] for j in page["jobSummaryList"]]
        if "nextToken" not in page:
            break
        kwargs["nextToken"] = page["nextToken"]
    assert (pages, listed) == (3, ids[1:])
    assert "tags" not in page["jobSummaryList"][0], "ListJobs returns no tags: discovery must describe"
    with pytest.raises(ClientError) as info:
        batch.list_jobs(jobQueue="no-such-queue", jobStatus="RUNNABLE")
    assert code_of(info) == "ClientException"


def test_list_jobs_filters_ignore_the_status_and_list_newest_first(sandbox: SandboxServer, batch: Any) -> None:
    old = submit(batch, "af-rec-1")
    time.sleep(0.002)  # distinct createdAt milliseconds for the ordering below
    new = submit(batch, "af-rec-1")  # Batch allows duplicate names; the reconciler never makes them
    other = submit(batch, "af-rec-10")
    sandbox.set_job_state(job_id=old, status="FAILED", status_reason="Cancelled")

    def names(value: str) -> list[str]:
        page = batch.list_jobs(
            jobQueue="airflow", jobStatus="RUNNING", filters=[{"name": "JOB_NAME", "values": [value]}]
        )
        return [j["jobId"] for j in page["jobSummaryList"]]

    assert names("af-rec-1") == [new, old]
    assert names("AF-REC-1") == [new, old]  # case-insensitive
    assert names("af-rec-1*") == [other, new, old]  # prefix
    assert names("af-rec-2") == []
    created = describe(batch, new)["createdAt"] // 1000
    after = batch.list_jobs(jobQueue="airflow", filters=[{"name": "AFTER_CREATED_AT", "values": [str(created + 60)]}])
    assert after["jobSummaryList"] == []  # moto alone ignores this filter
    with pytest.raises(ClientError):
        batch.list_jobs(
            jobQueue="airflow",
            filters=[{"name": "JOB_NAME", "values": ["a"]}, {"name": "JOB_DEFINITION", "values": ["b"]}],
        )


def test_cancel_fails_a_waiting_job_and_leaves_a_started_one(sandbox: SandboxServer, batch: Any) -> None:
    waiting, running = submit(batch, "w"), submit(batch, "r")
    sandbox.set_job_state(job_id=running, status="RUNNING")
    batch.cancel_job(jobId=waiting, reason="no longer wanted")
    batch.cancel_job(jobId=running, reason="no longer wanted")  # succeeds, does nothing (as on AWS)
    cancelled = describe(batch, waiting)
    assert (cancelled["status"], cancelled["statusReason"], cancelled["isCancelled"]) == (
        "FAILED",
        "no longer wanted",
        True,
    )
    assert cancelled["attempts"] == []
    assert describe(batch, running)["status"] == "RUNNING"


def test_terminate_fails_a_job_in_any_state(sandbox: SandboxServer, batch: Any) -> None:
    waiting, running = submit(batch, "w"), submit(batch, "r")
    sandbox.set_job_state(job_id=running, status="RUNNING")
    for job_id in (waiting, running):
        batch.terminate_job(jobId=job_id, reason="stop it")
        job = describe(batch, job_id)
        assert (job["status"], job["statusReason"], job["isTerminated"]) == ("FAILED", "stop it", True)
    with pytest.raises(ClientError):
        batch.terminate_job(jobId="no-such-job", reason="x")


def test_injected_throttling_and_phantom_submits(sandbox: SandboxServer, batch: Any) -> None:
    sandbox.inject_error(
        operation="SubmitJob", code="TooManyRequestsException", message="Too Many Requests", status=429
    )
    with pytest.raises(ClientError) as info:
        submit(batch)
    assert code_of(info) == "TooManyRequestsException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert sandbox.jobs() == []

    sandbox.inject_error(operation="batch:SubmitJob", code="ServerException", message="boom", status=500, phantom=True)
    with pytest.raises(ClientError):
        submit(batch, "phantom")
    assert [j["jobName"] for j in sandbox.jobs()] == ["phantom"]  # it was created nonetheless
    assert sandbox.calls()["batch:SubmitJob"] == 2


def test_submit_validates_like_batch(batch: Any) -> None:
    for bad in ({"jobName": "-starts-with-hyphen"}, {"jobName": "x" * 129}, {"jobQueue": "missing"}):
        with pytest.raises(ClientError) as info:
            batch.submit_job(**{"jobName": "ok", "jobQueue": "airflow", "jobDefinition": "airflow-job", **bad})
        assert code_of(info) == "ClientException"
    with pytest.raises(ClientError, match="AWS_BATCH"):
        submit(batch, containerOverrides={"environment": [{"name": "AWS_BATCH_JOB_ID", "value": "x"}]})


def test_http_control_api_for_jobs(sandbox: SandboxServer, batch: Any) -> None:
    control = SandboxControlClient(sandbox.endpoint_url)
    job_id = submit(batch, "controlled")
    [job] = control.jobs(queue="airflow")
    assert (job["jobId"], job["request"]["jobName"]) == (job_id, "controlled")
    assert control.jobs(queue="nothing-here") == []
    moved = control.set_job_state(job_id=job_id, status="SUCCEEDED")
    assert (moved["status"], moved["container"]["exitCode"]) == ("SUCCEEDED", 0)
    with pytest.raises(SandboxControlError) as missing:
        control.set_job_state(job_id="no-such-job", status="RUNNING")
    assert missing.value.status == 404
    with pytest.raises(SandboxControlError) as bad:
        control.set_job_state(job_id=job_id, status="EXPLODED")
    assert bad.value.status == 400
    with pytest.raises(SandboxControlError) as no_runner:
        control.hold_runnable(times=1)
    assert no_runner.value.status == 409
    control.reset()
    assert control.jobs() == []


def test_bootstrap_with_batch_is_idempotent_and_complete(sandbox: SandboxServer, aws: dict[str, str]) -> None:
    again = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)
    assert again == aws
    assert {k: v for k, v in aws.items() if "BATCH" in k} == {
        "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "airflow",
        "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "airflow-job",
        "AIRFLOW__AWS_RECONCILER_BATCH__REGION_NAME": REGION,
    }
    assert aws["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"] == "airflow"
    batch = sandbox.client("batch")
    [queue] = batch.describe_job_queues(jobQueues=["airflow"])["jobQueues"]
    assert queue["state"] == "ENABLED"
    [environment] = batch.describe_compute_environments(computeEnvironments=["airflow"])["computeEnvironments"]
    assert environment["computeResources"]["type"] == "FARGATE"
    definitions = batch.describe_job_definitions(jobDefinitionName="airflow-job", status="ACTIVE")["jobDefinitions"]
    assert len(definitions) == 1, "bootstrap registered the same definition twice"
    assert sandbox.client("logs").describe_log_groups(logGroupNamePrefix="/aws/batch/job")["logGroups"]
    # Without batch=True, nothing of Batch is created or returned.
    sandbox.reset()
    plain = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)
    assert not any("BATCH" in k for k in plain)
    assert batch.describe_job_queues()["jobQueues"] == []
