"""The bulk control operations: many ECS tasks (``task-states``) or Batch jobs (``job-states``)
moved in one call, one event each, all or nothing.

No task runner: tasks stay PROVISIONING and jobs RUNNABLE until these operations move them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from aws_reconciler_sandbox import (
    SandboxControlClient,
    SandboxControlError,
    SandboxServer,
    bootstrap,
    provision_event_queue,
)
from support.waiting import wait_for

REGION = "us-east-1"
TASKS = 30
JOBS = 12


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(region=REGION) as server:
        yield server


@pytest.fixture
def env(sandbox: SandboxServer) -> dict[str, str]:
    sandbox.reset()
    return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)


def launch(sandbox: SandboxServer, env: dict[str, str], n: int) -> list[str]:
    ecs = sandbox.client("ecs")
    arns: list[str] = []
    while len(arns) < n:
        response = ecs.run_task(
            cluster="airflow",
            taskDefinition="airflow-task",
            launchType="FARGATE",
            count=min(10, n - len(arns)),
            networkConfiguration={
                "awsvpcConfiguration": {"subnets": env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(",")}
            },
        )
        arns += [str(t["taskArn"]) for t in response["tasks"]]
    return arns


def submit(sandbox: SandboxServer, n: int) -> list[str]:
    batch = sandbox.client("batch")
    return [
        str(batch.submit_job(jobName=f"bulk-{i}", jobQueue="airflow", jobDefinition="airflow-job")["jobId"])
        for i in range(n)
    ]


def events_queue(sandbox: SandboxServer, *, clusters: Sequence[str] = (), job_queues: Sequence[str] = ()) -> str:
    return provision_event_queue(
        endpoint_url=sandbox.endpoint_url, region=REGION, deployment="bulk", clusters=clusters, job_queues=job_queues
    )


def drain(sandbox: SandboxServer, url: str) -> list[dict[str, Any]]:
    """Every event in the queue (once every event has been delivered), deleted as read."""
    wait_for(lambda: sandbox.event_stats()["pending"] == 0, what="every event to be delivered")
    sqs = sandbox.client("sqs")
    envelopes: list[dict[str, Any]] = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages"):
        envelopes += [json.loads(m["Body"]) for m in messages]
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        )
    return envelopes


def test_every_task_named_moves_and_emits_one_event(sandbox: SandboxServer, env: dict[str, str]) -> None:
    arns = launch(sandbox, env, TASKS)
    url = events_queue(sandbox, clusters=["airflow"])  # after the launches: the queue starts empty

    moved = sandbox.set_task_states(task_arns=arns, last_status="STOPPED", exit_code=0)

    assert [t["arn"] for t in moved] == arns
    assert all(t["lastStatus"] == "STOPPED" and t["containers"][0]["exitCode"] == 0 for t in moved)
    assert {t["arn"]: t["lastStatus"] for t in sandbox.tasks()} == dict.fromkeys(arns, "STOPPED")
    envelopes = drain(sandbox, url)
    assert Counter(e["detail"]["taskArn"] for e in envelopes) == Counter(arns)  # one event per task
    ends = {(e["detail"]["lastStatus"], e["detail"]["containers"][0]["exitCode"]) for e in envelopes}
    assert ends == {("STOPPED", 0)}
    assert {e["detail"]["version"] for e in envelopes} == {2}  # launch, then this change


def test_one_task_is_the_bulk_operation_with_one_item(sandbox: SandboxServer, env: dict[str, str]) -> None:
    [arn] = launch(sandbox, env, 1)
    task_id = arn.rsplit("/", 1)[-1]

    [by_id] = sandbox.set_task_states(task_arns=[task_id], last_status="RUNNING")
    single = sandbox.set_task_state(task_arn=arn, last_status="STOPPED", stopped_reason="done")

    assert by_id["arn"] == arn and by_id["lastStatus"] == "RUNNING"
    assert single["lastStatus"] == "STOPPED" and single["stoppedReason"] == "done"


def test_an_unknown_task_moves_none_and_is_named(sandbox: SandboxServer, env: dict[str, str]) -> None:
    arns = launch(sandbox, env, 3)
    unknown = f"arn:aws:ecs:{REGION}:123456789012:task/airflow/0123456789abcdef"
    url = events_queue(sandbox, clusters=["airflow"])
    control = SandboxControlClient(sandbox.endpoint_url)

    with pytest.raises(SandboxControlError) as missing:
        control.set_task_states(task_arns=[arns[0], unknown, arns[1]], last_status="STOPPED")
    with pytest.raises(SandboxControlError) as twice:
        control.set_task_states(task_arns=[arns[0], arns[0]], last_status="STOPPED")
    with pytest.raises(SandboxControlError) as bad_status:
        control.set_task_states(task_arns=arns, last_status="EXPLODED")
    with pytest.raises(SandboxControlError) as not_a_list:
        control.set_task_states(task_arns=arns[0], last_status="STOPPED")

    assert missing.value.status == 404 and unknown in missing.value.message and arns[0] not in missing.value.message
    assert twice.value.status == 400 and arns[0] in twice.value.message
    assert bad_status.value.status == 400 and not_a_list.value.status == 400
    assert {t["lastStatus"] for t in sandbox.tasks()} == {"PROVISIONING"}
    assert drain(sandbox, url) == []


def test_over_http_the_tasks_move_as_in_process(sandbox: SandboxServer, env: dict[str, str]) -> None:
    arns = launch(sandbox, env, TASKS)

    moved = SandboxControlClient(sandbox.endpoint_url).set_task_states(task_arns=arns, last_status="RUNNING")

    assert [(t["arn"], t["lastStatus"]) for t in moved] == [(arn, "RUNNING") for arn in arns]
    assert all(t["startedAt"] is not None for t in sandbox.tasks())


def test_every_job_named_moves_and_emits_one_event(sandbox: SandboxServer, env: dict[str, str]) -> None:
    job_ids = submit(sandbox, JOBS)
    url = events_queue(sandbox, job_queues=["airflow"])

    moved = SandboxControlClient(sandbox.endpoint_url).set_job_states(job_ids=job_ids, status="SUCCEEDED")

    assert [(j["jobId"], j["status"], j["container"]["exitCode"]) for j in moved] == [
        (job_id, "SUCCEEDED", 0) for job_id in job_ids
    ]
    envelopes = drain(sandbox, url)
    assert Counter(e["detail"]["jobId"] for e in envelopes) == Counter(job_ids)
    assert {e["detail"]["status"] for e in envelopes} == {"SUCCEEDED"}


def test_a_finished_or_unknown_job_moves_none(sandbox: SandboxServer, env: dict[str, str]) -> None:
    job_ids = submit(sandbox, 3)
    sandbox.set_job_state(job_id=job_ids[1], status="FAILED", container_reason="CannotPullContainerError")

    with pytest.raises(ValueError, match=job_ids[1]):
        sandbox.set_job_states(job_ids=job_ids, status="SUCCEEDED")
    with pytest.raises(KeyError, match="no such job: nope"):
        sandbox.set_job_states(job_ids=[job_ids[0], "nope"], status="RUNNING")

    assert [j["status"] for j in sandbox.jobs()] == ["RUNNABLE", "FAILED", "RUNNABLE"]
