"""The sandbox's EventBridge: ECS and Batch state changes reach SQS as AWS delivers them, through the
rules a user provisions with boto3, and the realism knobs delay, duplicate, reorder and lose them.

One sandbox with the task runner serves the module; its realism clock is driven by hand, so that
delays and reorder holds end exactly when a test says, and nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.config import Config
from realism_support import ManualClock

from aws_reconciler_sandbox import (
    PROFILES,
    RealismSettings,
    RunnerOptions,
    SandboxControlClient,
    SandboxServer,
    add_sandbox_parser,
    bootstrap,
    provision_event_queue,
)
from aws_reconciler_sandbox.cli import realism_from_args
from aws_reconciler_sandbox.events import (
    DEAD_LETTER_MAX_RECEIVES,
    REORDER_HOLD,
    EventResourceNames,
    batch_event_pattern,
    ecs_event_pattern,
    queue_policy_allows,
)
from aws_reconciler_sandbox.realism import IMMEDIATE, Realism
from support.waiting import wait_for

REGION = "us-east-1"
ACCOUNT = "123456789012"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/airflow"
JOB_QUEUE_ARN = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/airflow"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
OPTIONS = RunnerOptions(provisioning_delay=0.1, pending_delay=0.1, poll_interval=0.05, shutdown_timeout=2)
EXIT_3 = ["python", "-c", "raise SystemExit(3)"]
SLEEPER = ["python", "-c", "import time; time.sleep(60)"]
ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CLOCK = ManualClock()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(region=REGION, run_tasks=True, runner=OPTIONS, clock=CLOCK) as server:
        yield server


@pytest.fixture(scope="module")
def env(sandbox: SandboxServer) -> dict[str, str]:
    return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)


@pytest.fixture(autouse=True)
def _kind_and_settled_afterwards(sandbox: SandboxServer) -> Iterator[None]:
    yield
    sandbox.configure_realism(profile="kind")
    # Whatever a test left delayed or held back goes out now, not into the next test's counts.
    CLOCK.advance(3600)
    wait_for(lambda: sandbox.event_stats()["pending"] == 0, what="every event to be delivered")


@dataclass
class Deployments:
    """Event queues provisioned through ``provision_event_queue``; their resources go afterwards."""

    sandbox: SandboxServer
    made: list[EventResourceNames]

    def ecs(self, *clusters: str) -> str:
        return self._provision("ecs", clusters=clusters or ("airflow",))

    def batch(self, *job_queues: str) -> str:
        return self._provision("batch", job_queues=job_queues or ("airflow",))

    def _provision(self, service: str, **resources: tuple[str, ...]) -> str:
        deployment = f"t{uuid.uuid4().hex[:10]}"
        self.made.append(EventResourceNames.of(deployment, service))
        return provision_event_queue(
            endpoint_url=self.sandbox.endpoint_url, region=REGION, deployment=deployment, **resources
        )

    @property
    def last(self) -> EventResourceNames:
        return self.made[-1]


@pytest.fixture
def deployments(sandbox: SandboxServer, env: dict[str, str]) -> Iterator[Deployments]:
    made = Deployments(sandbox, [])
    yield made
    events, sqs = sandbox.client("events"), sandbox.client("sqs")
    for names in made.made:
        events.remove_targets(Rule=names.rule, Ids=[names.target_id])
        events.delete_rule(Name=names.rule)
        for queue in (names.queue, names.dead_letter_queue):
            sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"])


def drain(sandbox: SandboxServer, url: str) -> list[dict[str, Any]]:
    """Every message in the queue, oldest first, as the envelopes they carry (deleted as read)."""
    sqs = sandbox.client("sqs")
    envelopes: list[dict[str, Any]] = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
        for message in messages:
            envelopes.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return envelopes


def delivered(sandbox: SandboxServer, *, held: int = 0) -> dict[str, int]:
    """Wait until nothing is on its way but ``held`` events held back for reordering."""
    return wait_for(
        lambda: (s := sandbox.event_stats())["pending"] == s["held"] == held and s,
        what=f"every event delivered but {held} held back",
    )


def task_of(sandbox: SandboxServer, arn: str) -> dict[str, Any]:
    return next(t for t in sandbox.tasks() if t["arn"] == arn)


def run_task(sandbox: SandboxServer, env: dict[str, str], command: list[str]) -> str:
    response = sandbox.client("ecs", config=NO_RETRY).run_task(
        cluster="airflow",
        taskDefinition="airflow-task",
        launchType="FARGATE",
        startedBy="airflow",
        tags=[{"key": "deployment", "value": "events"}],
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(",")}
        },
        overrides={"containerOverrides": [{"name": "base", "command": command}]},
    )
    return str(response["tasks"][0]["taskArn"])


def task_status(sandbox: SandboxServer, arn: str, status: str) -> None:
    wait_for(lambda: task_of(sandbox, arn)["lastStatus"] == status, what=f"the task to be {status}")


def versions(envelopes: list[dict[str, Any]]) -> list[int]:
    return [e["detail"]["version"] for e in envelopes]


# ---------------------------------------------------------------------- both services


@dataclass(frozen=True)
class Service:
    """What differs between an ECS task's and a Batch job's run, for the scenarios they share."""

    name: str
    source: str
    detail_type: str
    statuses: tuple[str, ...]
    provision: Callable[[Deployments], str]  # -> the queue URL
    start: Callable[[SandboxServer, dict[str, str]], str]  # -> the resource ARN, running EXIT_3
    finished: Callable[[SandboxServer, str], bool]
    status_of: Callable[[dict[str, Any]], str]
    check_detail: Callable[[SandboxServer, str, list[dict[str, Any]]], None]


def _submit(sandbox: SandboxServer, env: dict[str, str]) -> str:
    job = sandbox.client("batch", config=NO_RETRY).submit_job(
        jobName="events",
        jobQueue="airflow",
        jobDefinition="airflow-job",
        containerOverrides={"command": EXIT_3},
        tags={"deployment": "events"},
    )
    return str(job["jobArn"])


def _check_task_details(sandbox: SandboxServer, arn: str, envelopes: list[dict[str, Any]]) -> None:
    details = [e["detail"] for e in envelopes]
    assert versions(envelopes) == [1, 2, 3, 4]  # every change numbered, as DescribeTasks numbers it
    for detail in details:
        assert detail["taskArn"] == arn and detail["clusterArn"] == CLUSTER_ARN
        assert detail["startedBy"] == "airflow" and detail["group"] == "family:airflow-task"
        assert detail["launchType"] == "FARGATE" and detail["taskDefinitionArn"].endswith(
            "task-definition/airflow-task:1"
        )
        assert "tags" not in detail  # ECS events carry no tags
        assert ISO_MILLIS.match(detail["createdAt"]) and ISO_MILLIS.match(detail["updatedAt"])
    assert [d["desiredStatus"] for d in details] == ["RUNNING", "RUNNING", "RUNNING", "STOPPED"]
    running, stopped = details[2], details[3]
    assert ISO_MILLIS.match(running["startedAt"]) and ISO_MILLIS.match(running["pullStartedAt"])
    assert "stoppedAt" not in running and "exitCode" not in running["containers"][0]
    assert stopped["stopCode"] == "EssentialContainerExited" and ISO_MILLIS.match(stopped["stoppedAt"])
    container = stopped["containers"][0]
    assert container["name"] == "base" and container["lastStatus"] == "STOPPED" and container["exitCode"] == 3
    assert container["containerArn"].startswith(f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/airflow/")
    described = sandbox.client("ecs").describe_tasks(cluster="airflow", tasks=[arn])["tasks"][0]
    assert described["version"] == stopped["version"]  # the same number DescribeTasks shows


def _check_job_details(sandbox: SandboxServer, arn: str, envelopes: list[dict[str, Any]]) -> None:
    details = [e["detail"] for e in envelopes]
    for detail in details:
        assert detail["jobArn"] == arn and detail["jobId"] == arn.rsplit("/", 1)[-1]
        assert detail["jobName"] == "events" and detail["jobQueue"] == JOB_QUEUE_ARN
        assert detail["jobDefinition"].endswith("job-definition/airflow-job:1")
        assert detail["tags"] == {"deployment": "events"}  # DescribeJobs' tags, as Batch sends them
        assert isinstance(detail["createdAt"], int)  # Batch's epoch milliseconds, as DescribeJobs
    failed = details[-1]
    assert failed["container"]["exitCode"] == 3 and failed["container"]["logStreamName"]
    assert failed["statusReason"] == "Essential container in task exited"
    assert failed["startedAt"] <= failed["stoppedAt"] and failed["attempts"][0]["container"]["exitCode"] == 3
    assert "startedAt" not in details[0] and details[0]["attempts"] == []


SERVICES = [
    Service(
        name="ecs",
        source="aws.ecs",
        detail_type="ECS Task State Change",
        statuses=("PROVISIONING", "PENDING", "RUNNING", "STOPPED"),
        provision=Deployments.ecs,
        start=lambda sandbox, env: run_task(sandbox, env, EXIT_3),
        finished=lambda sandbox, arn: task_of(sandbox, arn)["lastStatus"] == "STOPPED",
        status_of=lambda detail: str(detail["lastStatus"]),
        check_detail=_check_task_details,
    ),
    Service(
        name="batch",
        source="aws.batch",
        detail_type="Batch Job State Change",
        statuses=("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "FAILED"),
        provision=Deployments.batch,
        start=_submit,
        finished=lambda sandbox, arn: any(j["jobArn"] == arn and j["status"] == "FAILED" for j in sandbox.jobs()),
        status_of=lambda detail: str(detail["status"]),
        check_detail=_check_job_details,
    ),
]


@pytest.mark.parametrize("service", SERVICES, ids=[s.name for s in SERVICES])
def test_a_provisioned_queue_receives_every_change_in_order(
    sandbox: SandboxServer, env: dict[str, str], deployments: Deployments, service: Service
) -> None:
    url = service.provision(deployments)
    arn = service.start(sandbox, env)
    wait_for(lambda: service.finished(sandbox, arn), what=f"the {service.name} run to end")
    delivered(sandbox)
    envelopes = drain(sandbox, url)

    assert [service.status_of(e["detail"]) for e in envelopes] == list(service.statuses)
    for envelope in envelopes:
        assert set(envelope) == {
            "version",
            "id",
            "detail-type",
            "source",
            "account",
            "time",
            "region",
            "resources",
            "detail",
        }
        assert envelope["version"] == "0" and uuid.UUID(envelope["id"])
        assert envelope["source"] == service.source and envelope["detail-type"] == service.detail_type
        assert envelope["account"] == ACCOUNT and envelope["region"] == REGION
        assert envelope["resources"] == [arn] and ISO_SECONDS.match(envelope["time"])
    assert len({e["id"] for e in envelopes}) == len(envelopes)
    service.check_detail(sandbox, arn, envelopes)


def test_a_stop_is_an_event_of_its_own(sandbox: SandboxServer, env: dict[str, str], deployments: Deployments) -> None:
    url = deployments.ecs()
    arn = run_task(sandbox, env, SLEEPER)
    task_status(sandbox, arn, "RUNNING")
    sandbox.client("ecs").stop_task(cluster="airflow", task=arn, reason="no longer wanted")
    task_status(sandbox, arn, "STOPPED")
    delivered(sandbox)
    details = [e["detail"] for e in drain(sandbox, url)]
    assert [(d["lastStatus"], d["desiredStatus"]) for d in details] == [
        ("PROVISIONING", "RUNNING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "RUNNING"),
        ("RUNNING", "STOPPED"),  # StopTask asked: desiredStatus changed
        ("STOPPING", "STOPPED"),
        ("STOPPED", "STOPPED"),
    ]
    assert [d["version"] for d in details] == [1, 2, 3, 4, 5, 6]
    assert details[3]["stopCode"] == details[5]["stopCode"] == "UserInitiated"
    assert details[5]["stoppedReason"] == "no longer wanted"


# ---------------------------------------------------------------------- routing


def test_only_enabled_matching_rules_with_a_permitting_queue_get_the_events(
    sandbox: SandboxServer, env: dict[str, str], deployments: Deployments
) -> None:
    sandbox.client("ecs").create_cluster(clusterName="other")
    events, sqs = sandbox.client("events"), sandbox.client("sqs")
    wanted = deployments.ecs()
    other_cluster = deployments.ecs("other")
    disabled = deployments.ecs(CLUSTER_ARN)
    events.disable_rule(Name=deployments.last.rule)
    # A rule and queue made by hand, without the queue policy EventBridge needs; its target's
    # dead-letter queue, borrowed from the wanted deployment, lets the rule send.
    bare = sqs.create_queue(QueueName=f"bare-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    bare_arn = sqs.get_queue_attributes(QueueUrl=bare, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    dlq = sqs.get_queue_url(QueueName=deployments.made[0].dead_letter_queue)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = f"bare-{uuid.uuid4().hex[:8]}"
    rule_arn = events.put_rule(Name=rule, EventPattern=json.dumps(ecs_event_pattern([CLUSTER_ARN])))["RuleArn"]
    events.put_targets(Rule=rule, Targets=[{"Id": "q", "Arn": bare_arn, "DeadLetterConfig": {"Arn": dlq_arn}}])
    allow = {"Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sqs:SendMessage"}
    sqs.set_queue_attributes(QueueUrl=dlq, Attributes={"Policy": json.dumps({"Statement": [allow]})})
    before = sandbox.event_stats()
    try:
        arn = run_task(sandbox, env, EXIT_3)
        task_status(sandbox, arn, "STOPPED")
        after = delivered(sandbox)
        assert versions(drain(sandbox, wanted)) == [1, 2, 3, 4]
        assert drain(sandbox, other_cluster) == drain(sandbox, disabled) == drain(sandbox, bare) == []
        assert after["sent"] - before["sent"] == 4
        assert after["refused"] - before["refused"] == after["dead_lettered"] - before["dead_lettered"] == 4
        # What the bare queue could not take is in the dead-letter queue, saying why.
        dead = sqs.receive_message(
            QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
        )
        assert [json.loads(m["Body"])["detail"]["version"] for m in dead["Messages"]] == [1, 2, 3, 4]
        attributes = dead["Messages"][0]["MessageAttributes"]
        assert attributes["ERROR_CODE"]["StringValue"] == "NO_PERMISSIONS"
        assert attributes["RULE_ARN"]["StringValue"] == rule_arn
        assert attributes["TARGET_ARN"]["StringValue"] == bare_arn
    finally:
        events.remove_targets(Rule=rule, Ids=["q"])
        events.delete_rule(Name=rule)
        sqs.delete_queue(QueueUrl=bare)


def test_a_long_poll_waits_without_stopping_the_sandbox(
    sandbox: SandboxServer, env: dict[str, str], deployments: Deployments
) -> None:
    url = deployments.ecs()
    polled: list[dict[str, Any]] = []
    # Without WaitTimeSeconds: the queue's 20 s long polling applies.
    poll = threading.Thread(target=lambda: polled.append(sandbox.client("sqs").receive_message(QueueUrl=url)))
    poll.start()
    try:
        wait_for(lambda: sandbox.calls().get("sqs:ReceiveMessage"), what="the long poll to begin")
        # Served while the poll waits; its first event ends the poll.
        arn = run_task(sandbox, env, EXIT_3)
        poll.join(timeout=30)
        assert not poll.is_alive()
        assert [json.loads(m["Body"])["detail"]["taskArn"] for m in polled[0]["Messages"]] == [arn]
    finally:
        poll.join(timeout=30)
    task_status(sandbox, arn, "STOPPED")


def test_queue_policies_are_read_as_sqs_reads_them_for_eventbridge() -> None:
    queue, rule = "arn:aws:sqs:us-east-1:123456789012:q", "arn:aws:events:us-east-1:123456789012:rule/r"

    def policy(**statement: Any) -> str:
        base = {"Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sqs:SendMessage"}
        return json.dumps({"Statement": [{**base, **statement}]})

    assert queue_policy_allows(policy(Resource=queue), queue_arn=queue, rule_arn=rule)
    assert queue_policy_allows(
        policy(Action="sqs:*", Condition={"ArnLike": {"aws:SourceArn": "*:rule/*"}}), queue_arn=queue, rule_arn=rule
    )
    assert queue_policy_allows(policy(Principal="*"), queue_arn=queue, rule_arn=rule)
    assert not queue_policy_allows(None, queue_arn=queue, rule_arn=rule)
    assert not queue_policy_allows(
        policy(Condition={"ArnEquals": {"aws:SourceArn": rule + "2"}}), queue_arn=queue, rule_arn=rule
    )
    assert not queue_policy_allows(policy(Principal={"Service": "sns.amazonaws.com"}), queue_arn=queue, rule_arn=rule)
    assert not queue_policy_allows(policy(Action="sqs:ReceiveMessage"), queue_arn=queue, rule_arn=rule)
    assert not queue_policy_allows(policy(Resource=queue + "-other"), queue_arn=queue, rule_arn=rule)
    assert not queue_policy_allows(policy(Effect="Deny"), queue_arn=queue, rule_arn=rule)
    # A Deny of plain-text transport does not touch EventBridge, which sends over TLS.
    deny_plain = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:*",
        "Resource": queue,
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    allow = json.loads(policy(Resource=queue))["Statement"][0]
    assert queue_policy_allows(json.dumps({"Statement": [allow, deny_plain]}), queue_arn=queue, rule_arn=rule)
    deny_all = {**deny_plain, "Condition": {"Bool": {"aws:SecureTransport": "true"}}}
    assert not queue_policy_allows(json.dumps({"Statement": [allow, deny_all]}), queue_arn=queue, rule_arn=rule)


# ---------------------------------------------------------------------- unkindness


def test_with_duplicates_every_event_arrives_twice(
    sandbox: SandboxServer, env: dict[str, str], deployments: Deployments
) -> None:
    url = deployments.ecs()
    sandbox.configure_realism(event_duplicate=100)
    arn = run_task(sandbox, env, EXIT_3)
    task_status(sandbox, arn, "STOPPED")
    delivered(sandbox)
    envelopes = drain(sandbox, url)
    assert versions(envelopes) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [e["id"] for e in envelopes[::2]] == [e["id"] for e in envelopes[1::2]]  # the same event, twice
    assert len({e["id"] for e in envelopes}) == 4


def test_with_loss_no_event_arrives(sandbox: SandboxServer, env: dict[str, str], deployments: Deployments) -> None:
    url = deployments.ecs()
    before = sandbox.event_stats()
    injected = sandbox.realism_state()["injected"].get("event-loss ecs", 0)
    SandboxControlClient(sandbox.endpoint_url).configure_realism(event_loss=100)  # over HTTP, as the CLI's users
    arn = run_task(sandbox, env, EXIT_3)
    task_status(sandbox, arn, "STOPPED")
    after = delivered(sandbox)
    # The rule matched every change, and each was lost on the way.
    assert after["matched"] - before["matched"] == after["lost"] - before["lost"] == 4
    assert sandbox.realism_state()["injected"]["event-loss ecs"] - injected == 4
    assert drain(sandbox, url) == []


def test_a_reordered_event_is_overtaken_by_the_next_one(
    sandbox: SandboxServer, env: dict[str, str], deployments: Deployments
) -> None:
    url = deployments.ecs()
    sandbox.configure_realism(event_reorder=100)
    arn = run_task(sandbox, env, SLEEPER)
    task_status(sandbox, arn, "RUNNING")
    delivered(sandbox, held=1)
    assert versions(drain(sandbox, url)) == [2, 1]  # PENDING overtook PROVISIONING; RUNNING is held
    # With nothing after it, a held event goes out once the hold ends.
    CLOCK.advance(REORDER_HOLD)
    delivered(sandbox)
    assert versions(drain(sandbox, url)) == [3]
    sandbox.client("ecs").stop_task(cluster="airflow", task=arn)
    task_status(sandbox, arn, "STOPPED")
    delivered(sandbox, held=1)
    CLOCK.advance(REORDER_HOLD)
    delivered(sandbox)
    assert versions(drain(sandbox, url)) == [5, 4, 6]


def test_a_delayed_event_arrives_when_its_delay_is_over(
    sandbox: SandboxServer, env: dict[str, str], deployments: Deployments
) -> None:
    url = deployments.ecs()
    sandbox.configure_realism(event_delay_ms=2000)  # no p99 above it: every event waits exactly 2 s
    arn = run_task(sandbox, env, SLEEPER)
    task_status(sandbox, arn, "RUNNING")
    # The sandbox's clock has not moved: all three changes are still on their way.
    assert sandbox.event_stats()["pending"] == 3
    assert drain(sandbox, url) == []
    CLOCK.advance(1.0)
    assert sandbox.event_stats()["pending"] == 3
    CLOCK.advance(1.0)
    delivered(sandbox)
    assert versions(drain(sandbox, url)) == [1, 2, 3]  # delays never reorder one task's events
    sandbox.client("ecs").stop_task(cluster="airflow", task=arn)
    task_status(sandbox, arn, "STOPPED")


def test_delays_never_reorder_the_events_of_one_task(
    sandbox: SandboxServer, env: dict[str, str], deployments: Deployments
) -> None:
    url = deployments.ecs()
    # Widely spread delays: drawn alone, the later changes would often overtake the earlier ones.
    sandbox.configure_realism(seed=1, event_delay_ms=1000, event_delay_p99_ms=30000)
    arn = run_task(sandbox, env, EXIT_3)
    task_status(sandbox, arn, "STOPPED")
    CLOCK.advance(3600)
    delivered(sandbox)
    assert versions(drain(sandbox, url)) == [1, 2, 3, 4]


def test_a_reset_drops_the_events_on_their_way(sandbox: SandboxServer, env: dict[str, str]) -> None:
    provision_event_queue(endpoint_url=sandbox.endpoint_url, region=REGION, deployment="reset", clusters=["airflow"])
    sandbox.configure_realism(event_delay_ms=1000)
    run_task(sandbox, env, EXIT_3)
    wait_for(lambda: sandbox.event_stats()["pending"] > 0, what="an event on its way")
    sandbox.reset()
    assert set(sandbox.event_stats().values()) == {0}
    # The default resources again, for the tests after this one (the default VPC's subnets are new).
    env.update(bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True))


# ---------------------------------------------------------------------- provisioning


@pytest.mark.parametrize(
    ("service", "pattern"),
    [
        ("ecs", ecs_event_pattern([CLUSTER_ARN, "arn:aws:ecs:us-east-1:123456789012:cluster/other"])),
        ("batch", batch_event_pattern([JOB_QUEUE_ARN, "arn:aws:batch:us-east-1:123456789012:job-queue/other"])),
    ],
)
def test_provision_event_queue_creates_what_the_cloudformation_template_does(
    sandbox: SandboxServer, deployments: Deployments, service: str, pattern: dict[str, Any]
) -> None:
    other = pattern["detail"]["clusterArn" if service == "ecs" else "jobQueue"][1]
    url = deployments.ecs("airflow", other) if service == "ecs" else deployments.batch("airflow", other)
    names = deployments.last
    assert names.queue == names.rule == names.dead_letter_queue.removesuffix("-dlq")
    assert names.queue.endswith(f"-{service}-events")
    sqs, events = sandbox.client("sqs"), sandbox.client("events")
    assert sqs.get_queue_url(QueueName=names.queue)["QueueUrl"] == url
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    dlq_url = sqs.get_queue_url(QueueName=names.dead_letter_queue)["QueueUrl"]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == DEAD_LETTER_MAX_RECEIVES == 5
    assert attributes["ReceiveMessageWaitTimeSeconds"] == "20" and attributes["MessageRetentionPeriod"] == "86400"
    assert dlq["MessageRetentionPeriod"] == "1209600"

    rule = events.describe_rule(Name=names.rule)
    assert rule["State"] == "ENABLED" and rule["EventBusName"] == "default"
    assert json.loads(rule["EventPattern"]) == pattern
    (target,) = events.list_targets_by_rule(Rule=names.rule)["Targets"]
    assert (target["Id"], target["Arn"]) == ("events-queue", attributes["QueueArn"])
    assert target["DeadLetterConfig"] == {"Arn": dlq["QueueArn"]}
    for queue in (attributes, dlq):
        assert queue_policy_allows(queue["Policy"], queue_arn=queue["QueueArn"], rule_arn=rule["Arn"])
        assert not queue_policy_allows(queue["Policy"], queue_arn=queue["QueueArn"], rule_arn=rule["Arn"] + "-other")

    # Idempotent, and a second call replaces the pattern.
    deployment = names.queue.removesuffix(f"-{service}-events")
    resources = {"clusters": ["airflow"]} if service == "ecs" else {"job_queues": ["airflow"]}
    again = provision_event_queue(endpoint_url=sandbox.endpoint_url, region=REGION, deployment=deployment, **resources)
    assert again == url and len(events.list_targets_by_rule(Rule=names.rule)["Targets"]) == 1
    assert json.loads(events.describe_rule(Name=names.rule)["EventPattern"])["detail"] == {
        k: v[:1] for k, v in pattern["detail"].items()
    }


def test_provision_event_queue_refuses_what_cannot_be_made(sandbox: SandboxServer) -> None:
    for resources in ({}, {"clusters": ["airflow"], "job_queues": ["airflow"]}):
        with pytest.raises(ValueError, match=r"give clusters \(the ECS queue\) or job_queues"):
            provision_event_queue(endpoint_url=sandbox.endpoint_url, region=REGION, deployment="d", **resources)
    for deployment in ("a b", "-leading", "x" * 37):
        with pytest.raises(ValueError, match="1-36 letters"):
            provision_event_queue(
                endpoint_url=sandbox.endpoint_url, region=REGION, deployment=deployment, clusters=["airflow"]
            )


# ---------------------------------------------------------------------- the policy's draws


def test_event_fates_are_seeded_and_independent() -> None:
    assert Realism(PROFILES["kind"]).event_fate("ecs") is IMMEDIATE

    def fates(**settings: Any) -> list[Any]:
        realism = Realism(RealismSettings(seed=3, **settings))
        return [realism.event_fate("ecs") for _ in range(500)]

    unkind = {"event_delay_ms": 300.0, "event_delay_p99_ms": 2000.0, "event_duplicate": 10.0, "event_reorder": 10.0}
    first = fates(**unkind)
    assert first == fates(**unkind)  # the same seed, the same fates
    assert 20 < sum(f.duplicate for f in first) < 80 and 20 < sum(f.reorder for f in first) < 80
    delays = sorted(f.delay for f in first)
    assert 0.2 < delays[250] < 0.45 and delays[-1] <= 10.0  # the median, and the cap at 5 x p99
    # Switching loss on loses some events and leaves the others' draws as they were.
    lossy = fates(**unkind, event_loss=50.0)
    kept = [(a, b) for a, b in zip(first, lossy, strict=True) if not b.lost]
    assert 150 < len(kept) < 350 and all(a == b for a, b in kept)


def test_the_realistic_profile_delays_and_rarely_duplicates_or_reorders_but_never_loses() -> None:
    realistic = PROFILES["realistic"]
    assert realistic.event_delay_ms > 0 and realistic.event_loss == 0
    assert 0 < realistic.event_duplicate <= 5 and 0 < realistic.event_reorder <= 5
    kind = PROFILES["kind"]
    assert (kind.event_delay_ms, kind.event_duplicate, kind.event_reorder, kind.event_loss) == (0, 0, 0, 0)


def test_the_event_knobs_are_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    add_sandbox_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "sandbox",
            "--event-delay-ms",
            "500",
            "--event-delay-p99-ms",
            "3000",
            "--event-duplicate",
            "5",
            "--event-reorder",
            "4",
            "--event-loss",
            "1",
        ]
    )
    assert realism_from_args(args) == RealismSettings(
        event_delay_ms=500, event_delay_p99_ms=3000, event_duplicate=5, event_reorder=4, event_loss=1
    )
    with pytest.raises(SystemExit, match="event_loss: 101 is not a percentage"):
        realism_from_args(parser.parse_args(["sandbox", "--event-loss", "101"]))
