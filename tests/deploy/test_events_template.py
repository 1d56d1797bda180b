"""deploy/events/cloudformation.yaml: lint-clean, and wired the way the reconciler's events mode reads it.

cfn-lint (pinned in the `test` extra) checks the template against CloudFormation's resource
schemas, informational findings included. The assertions below pin what the linter cannot know:
the rules match exactly what the consumer accepts (the descriptors' ``event_source`` /
``event_detail_type``, detail read in DescribeTasks' / DescribeJobs' shape), only their own rule
may write into a queue, undeliverable and unconsumable events end in an alarmed dead-letter
queue, and the consumer's grant is the one of deploy/iam/reconciler-policy.json.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from deploy_support import REPO

from aws_reconciler.backends.batch.descriptor import BATCH
from aws_reconciler.backends.descriptor import BackendDescriptor
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.config.models import BatchSettings, EcsSettings

TEMPLATE = REPO / "deploy" / "events" / "cloudformation.yaml"
IAM_POLICY = REPO / "deploy" / "iam" / "reconciler-policy.json"
#: cfn-lint's command line, from the interpreter running the tests (the `test` extra installs it).
CFN_LINT = [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())"]

CLUSTER = "arn:aws:ecs:eu-west-1:123456789012:cluster/airflow-tasks"
OTHER_CLUSTER = "arn:aws:ecs:eu-west-1:123456789012:cluster/someone-else"
JOB_QUEUE = "arn:aws:batch:eu-west-1:123456789012:job-queue/airflow-jobs"
OTHER_JOB_QUEUE = "arn:aws:batch:eu-west-1:123456789012:job-queue/someone-else"


@dataclass(frozen=True)
class Side:
    """One backend's part of the template."""

    descriptor: BackendDescriptor
    prefix: str  # logical ids: <prefix>EventsQueue, <prefix>EventsRule ...
    slug: str  # queue names: <deployment>-<slug>-events
    condition: str
    parameter: str  # the list of clusters / job queues
    # The detail field the rule filters on, and the describe answer the consumer reads detail as.
    detail_field: str
    described_as: tuple[str, str]  # (botocore service, shape)
    settings: type[EcsSettings] | type[BatchSettings]


SIDES = [
    Side(ECS, "Ecs", "ecs", "HasEcs", "ClusterArns", "clusterArn", ("ecs", "Task"), EcsSettings),
    Side(BATCH, "Batch", "batch", "HasBatch", "JobQueueArns", "jobQueue", ("batch", "JobDetail"), BatchSettings),
]
BY_NAME = {side.slug: side for side in SIDES}


@cache
def template() -> dict[str, Any]:
    """The template with intrinsics in their long form ({"Ref": ...}, {"Fn::GetAtt": [...]})."""
    from cfnlint.decode import decode

    decoded, problems = decode(str(TEMPLATE))
    assert not problems and decoded is not None, problems
    return json.loads(json.dumps(decoded))


def resources() -> dict[str, Any]:
    return dict(template()["Resources"])


def properties(logical_id: str) -> dict[str, Any]:
    return dict(resources()[logical_id]["Properties"])


def get_att(logical_id: str, attribute: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [logical_id, attribute]}


def resolve(node: Any, parameters: dict[str, Any]) -> Any:
    """``node`` with every ``Ref`` to a parameter replaced by its value (what CloudFormation sends)."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in parameters:
            return parameters[node["Ref"]]
        return {key: resolve(value, parameters) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, parameters) for value in node]
    return node


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CFN_LINT, "--include-checks", "I", "--regions", "us-east-1", "eu-west-1", "--", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---- lint ---------------------------------------------------------------------------------


def test_cfn_lint_finds_nothing() -> None:
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_cfn_lint_is_the_pinned_version() -> None:
    """Findings depend on the linter's rules and schemas: the one in use is the `test` extra's pin."""
    import tomllib
    from importlib.metadata import version

    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    (pin,) = [p for p in pins if p.startswith("cfn-lint==")]
    assert version("cfn-lint") == pin.removeprefix("cfn-lint=="), "pip install -e .[test]"


def test_cfn_lint_finds_a_broken_template(tmp_path: Path) -> None:
    """The linter really runs and reads the resource schemas: a misspelt property fails."""
    broken = tmp_path / "broken.yaml"
    text = TEMPLATE.read_text()
    assert "SqsManagedSseEnabled: true" in text
    broken.write_text(text.replace("SqsManagedSseEnabled: true", "SqsManagedSseEnable: true", 1))
    result = cfn_lint(broken)
    assert result.returncode != 0 and "SqsManagedSseEnable" in result.stdout, result.stdout + result.stderr


# ---- what the consumer reads ----------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES, ids=lambda s: s.slug)
def test_rule_matches_what_the_consumer_accepts(side: Side) -> None:
    import botocore.session

    rule = properties(f"{side.prefix}EventsRule")
    assert rule["EventBusName"] == "default" and rule["State"] == "ENABLED"
    assert rule["EventPattern"] == {
        "source": [side.descriptor.event_source],
        "detail-type": [side.descriptor.event_detail_type],
        "detail": {side.detail_field: {"Ref": side.parameter}},
    }
    # The consumer reads an event's detail as the describe call's answer: the field filtered on is
    # one of its members (the target's ARN, which is why the parameters take ARNs, not names).
    service, shape = side.described_as
    members = botocore.session.get_session().get_service_model(service).shape_for(shape).members
    assert side.detail_field in members
    assert "ARN" in template()["Parameters"][side.parameter]["Description"]


@pytest.mark.parametrize(
    ("side", "event", "matches"),
    [
        ("ecs", {"source": "aws.ecs", "detail-type": "ECS Task State Change", "target": CLUSTER}, True),
        ("ecs", {"source": "aws.ecs", "detail-type": "ECS Task State Change", "target": OTHER_CLUSTER}, False),
        ("ecs", {"source": "aws.ecs", "detail-type": "ECS Container Instance State Change", "target": CLUSTER}, False),
        ("batch", {"source": "aws.batch", "detail-type": "Batch Job State Change", "target": JOB_QUEUE}, True),
        ("batch", {"source": "aws.batch", "detail-type": "Batch Job State Change", "target": OTHER_JOB_QUEUE}, False),
        ("batch", {"source": "aws.ecs", "detail-type": "Batch Job State Change", "target": JOB_QUEUE}, False),
    ],
    ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else str(v),
)
def test_rule_selects_state_changes_of_the_given_targets_only(side: str, event: dict[str, str], matches: bool) -> None:
    """EventBridge's matching (moto's implementation) of the deployed pattern against AWS-shaped events."""
    from moto.events.models import EventPattern

    chosen = BY_NAME[side]
    given = {chosen.parameter: [CLUSTER if side == "ecs" else JOB_QUEUE]}
    pattern = resolve(properties(f"{chosen.prefix}EventsRule")["EventPattern"], given)
    detail = {chosen.detail_field: event["target"], "lastStatus": "RUNNING", "status": "RUNNING"}
    message = {
        "version": "0",
        "id": "3317b2af-7005-47ee-b0ae-1b7e6c6c53a5",
        "detail-type": event["detail-type"],
        "source": event["source"],
        "account": "123456789012",
        "time": "2026-12-01T18:00:00Z",
        "region": "eu-west-1",
        "resources": [],
        "detail": detail,
    }
    assert EventPattern.load(json.dumps(pattern)).matches_event(message) is matches


# ---- delivery: queue, dead letters, policy, alarms ------------------------------------------


@pytest.mark.parametrize("side", SIDES, ids=lambda s: s.slug)
def test_queue_with_a_dead_letter_queue_both_encrypted(side: Side) -> None:
    queue = properties(f"{side.prefix}EventsQueue")
    dlq = properties(f"{side.prefix}EventsDeadLetterQueue")
    assert queue["QueueName"] == {"Fn::Sub": f"${{Deployment}}-{side.slug}-events"}
    assert dlq["QueueName"] == {"Fn::Sub": f"${{Deployment}}-{side.slug}-events-dlq"}
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": get_att(f"{side.prefix}EventsDeadLetterQueue", "Arn"),
        "maxReceiveCount": 5,
    }
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    # Redriven messages keep their first enqueue time: the DLQ must keep them longer than the queue.
    assert queue["MessageRetentionPeriod"] < dlq["MessageRetentionPeriod"]
    assert queue["SqsManagedSseEnabled"] is True and dlq["SqsManagedSseEnabled"] is True
    assert "KmsMasterKeyId" not in queue and "KmsMasterKeyId" not in dlq


@pytest.mark.parametrize("side", SIDES, ids=lambda s: s.slug)
def test_rule_targets_the_queue_and_dead_letters_what_it_cannot_deliver(side: Side) -> None:
    (target,) = properties(f"{side.prefix}EventsRule")["Targets"]
    assert target["Arn"] == get_att(f"{side.prefix}EventsQueue", "Arn")
    assert target["DeadLetterConfig"] == {"Arn": get_att(f"{side.prefix}EventsDeadLetterQueue", "Arn")}
    assert set(target["RetryPolicy"]) == {"MaximumEventAgeInSeconds", "MaximumRetryAttempts"}
    # No input transformation: the consumer parses the whole event envelope.
    assert not {"Input", "InputPath", "InputTransformer"} & set(target)


@pytest.mark.parametrize("side", SIDES, ids=lambda s: s.slug)
def test_only_the_rule_may_send_into_the_queues(side: Side) -> None:
    policy = properties(f"{side.prefix}EventsQueuePolicy")
    queues = [f"{side.prefix}EventsQueue", f"{side.prefix}EventsDeadLetterQueue"]
    assert policy["Queues"] == [{"Ref": q} for q in queues]
    statements = policy["PolicyDocument"]["Statement"]
    (allow,) = [s for s in statements if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert allow["Resource"] == [get_att(q, "Arn") for q in queues]
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": get_att(f"{side.prefix}EventsRule", "Arn")}}
    for deny in (s for s in statements if s["Effect"] == "Deny"):
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize("side", SIDES, ids=lambda s: s.slug)
def test_an_alarm_fires_on_the_first_dead_letter(side: Side) -> None:
    alarm = properties(f"{side.prefix}EventsDeadLetterAlarm")
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": get_att(f"{side.prefix}EventsDeadLetterQueue", "QueueName")}
    ]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["TreatMissingData"] == "notBreaching"


# ---- conditions, outputs, the reconciler's grant --------------------------------------------


def test_each_backend_only_when_its_targets_are_given() -> None:
    conditions = template()["Conditions"]
    for side in SIDES:
        joined = {"Fn::Join": ["", {"Ref": side.parameter}]}
        assert conditions[side.condition] == {"Fn::Not": [{"Fn::Equals": [joined, ""]}]}
        assert template()["Parameters"][side.parameter]["Default"] == ""
        for section in ("Resources", "Outputs"):
            ours = [name for name in template()[section] if name.startswith(side.prefix)]
            assert ours, section
            for name in ours:
                assert template()[section][name]["Condition"] == side.condition, name


@pytest.mark.parametrize("side", SIDES, ids=lambda s: s.slug)
def test_outputs_are_what_the_settings_take(side: Side) -> None:
    outputs = template()["Outputs"]
    url = outputs[f"{side.prefix}EventsQueueUrl"]
    assert url["Value"] == {"Ref": f"{side.prefix}EventsQueue"}  # Ref of a queue is its URL
    assert url["Description"] == f"[{side.settings.section}] events_queue_url"
    assert "events_queue_url" in side.settings.model_fields
    assert outputs[f"{side.prefix}EventsQueueArn"]["Value"] == get_att(f"{side.prefix}EventsQueue", "Arn")
    assert outputs[f"{side.prefix}EventsDeadLetterQueueUrl"]["Value"] == {"Ref": f"{side.prefix}EventsDeadLetterQueue"}


def test_the_consumer_policy_is_the_iam_documents_grant() -> None:
    """Same actions as deploy/iam's SqsConsumeStateChangeEvents, on the queues that statement names."""
    (iam,) = [s for s in json.loads(IAM_POLICY.read_text())["Statement"] if s["Sid"] == "SqsConsumeStateChangeEvents"]
    (managed,) = properties("ReconcilerEventsPolicy")["PolicyDocument"]["Statement"]
    assert managed["Sid"] == iam["Sid"] and managed["Effect"] == "Allow"
    assert sorted(managed["Action"]) == sorted(iam["Action"])
    assert managed["Resource"] == [
        {"Fn::If": [side.condition, get_att(f"{side.prefix}EventsQueue", "Arn"), {"Ref": "AWS::NoValue"}]}
        for side in SIDES
    ]
    names = {properties(f"{side.prefix}EventsQueue")["QueueName"]["Fn::Sub"] for side in SIDES}
    iam_names = {arn.rsplit(":", 1)[1] for arn in iam["Resource"]}
    assert {name.replace("${Deployment}", "${DEPLOYMENT}") for name in names} == iam_names
    assert properties("ReconcilerEventsPolicy")["Roles"] == {
        "Fn::If": ["HasRole", [{"Ref": "ReconcilerRoleName"}], {"Ref": "AWS::NoValue"}]
    }


@pytest.mark.parametrize(
    ("deployment", "accepted"),
    [("airflow", True), ("prod-airflow_2", True), ("a" * 36, True), ("a" * 37, False), ("team.airflow", False)],
)
def test_deployment_names_the_queues_within_sqs_limits(deployment: str, accepted: bool) -> None:
    pattern = template()["Parameters"]["Deployment"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, deployment)) is accepted
    if accepted:
        for side in SIDES:
            name = f"{deployment}-{side.slug}-events-dlq"
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", name), name
