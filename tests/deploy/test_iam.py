"""deploy/iam: valid documents, least privilege, and every AWS call of the code granted.

The code is scanned for boto3 operations (``client.run_task``, ``logs.get_log_events``...);
each must be allowed by the policy of the process that makes it: calls under
``src/aws_reconciler/executor/`` run in Airflow's scheduler / API server
(``scheduler-policy.json``), everything else in the reconciler (``reconciler-policy.json``).
Conversely, a granted action that no code uses fails unless it is listed as implicit below.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from deploy_support import REPO

IAM = REPO / "deploy" / "iam"
SRC = REPO / "src" / "aws_reconciler"
POLICIES = ("reconciler-policy.json", "scheduler-policy.json")
TRUST = "irsa-trust-policy.json"
SERVICES = ("ecs", "batch", "logs", "sqs")
#: Code that runs against fake AWS only.
NOT_DEPLOYED = ("sandbox", "demo")

SAMPLE = {
    "AWS_ACCOUNT_ID": "123456789012",
    "REGION": "eu-west-1",
    "CLUSTER": "airflow-tasks",
    "TASK_DEFINITION_FAMILY": "airflow-task",
    "TASK_ROLE_NAME": "airflow-task",
    "EXECUTION_ROLE_NAME": "ecsTaskExecutionRole",
    "BATCH_JOB_QUEUE": "airflow-jobs",
    "BATCH_JOB_DEFINITION": "airflow-job",
    "ECS_LOG_GROUP": "/ecs/airflow-task",
    "BATCH_LOG_GROUP": "/aws/batch/job",
    "OIDC_PROVIDER": "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
    "NAMESPACE": "airflow",
    "SERVICE_ACCOUNT": "aws-reconciler",
    "DEPLOYMENT": "airflow",
}

#: Granted although no code calls them: AWS authorises them as part of another call.
IMPLICIT = {
    "reconciler-policy.json": {
        "ecs:TagResource": "RunTask with tags (tag on create)",
        "iam:PassRole": "RunTask of a task definition with task / execution roles",
        "batch:TagResource": "SubmitJob with tags",
    },
    "scheduler-policy.json": {},
}

#: Batch operations IAM authorises as their single-message action (there is no sqs:DeleteMessageBatch).
AUTHORISED_AS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
}

#: Actions without resource-level permissions: the only ones allowed on "Resource": "*".
NO_RESOURCE_LEVEL = {"ecs:ListTasks", "ecs:DescribeTaskDefinition", "batch:DescribeJobs", "batch:ListJobs"}

#: Resource ids that would match every resource of a type.
OPEN_ENDED = {"task/*", "task-definition/*", "cluster/*", "job-queue/*", "job-definition/*", "role/*"}

ARN = {
    "ecs": re.compile(r"^arn:aws:ecs:[a-z0-9-]+:\d{12}:(cluster|task|task-definition)/[\w./:*-]+$"),
    "batch": re.compile(r"^arn:aws:batch:[a-z0-9-]+:\d{12}:(job|job-queue|job-definition)/[\w.:*-]+$"),
    "iam": re.compile(r"^arn:aws:iam::\d{12}:(role|oidc-provider)/[\w+=,.@/-]+$"),
    "logs": re.compile(r"^arn:aws:logs:[a-z0-9-]+:\d{12}:log-group:[\w./#-]+:log-stream:\*$"),
    "sqs": re.compile(r"^arn:aws:sqs:[a-z0-9-]+:\d{12}:[\w-]{1,80}$"),
}


def load(name: str) -> dict[str, Any]:
    return json.loads((IAM / name).read_text())


def substituted(name: str) -> str:
    text = (IAM / name).read_text()
    return re.sub(r"\$\{(\w+)\}", lambda m: SAMPLE[m.group(1)], text)


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def statements(name: str) -> list[dict[str, Any]]:
    return list(json.loads(substituted(name))["Statement"])


def granted(name: str) -> set[str]:
    return {action for statement in statements(name) for action in as_list(statement["Action"])}


# ---- the code's AWS calls -----------------------------------------------------------------


@cache
def operation_names() -> dict[str, dict[str, str]]:
    """boto3 method name -> {service: API operation} for the services the code uses."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    names: dict[str, dict[str, str]] = {}
    for service in SERVICES:
        for operation in session.get_service_model(service).operation_names:
            names.setdefault(xform_name(operation), {})[service] = operation
    return names


def aws_calls() -> Iterator[tuple[str, str, str]]:
    """(module, service, action): the IAM action authorising each call of :func:`operations`."""
    for module, service, operation in operations():
        action = AUTHORISED_AS.get(f"{service}:{operation}", f"{service}:{operation}")
        yield module, service, action.split(":", 1)[1]


def operations() -> Iterator[tuple[str, str, str]]:
    """(module, service, Operation) for every boto3 operation referenced in deployed code."""
    names = operation_names()
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC)
        if module.parts[0] in NOT_DEPLOYED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Attribute) and node.attr in names):
                continue
            services = names[node.attr]
            if len(services) > 1:
                # Same method in several services (tag_resource...): the module or receiver says which.
                hint = " ".join([*module.parts, ast.unparse(node.value)])
                services = {s: op for s, op in services.items() if s in hint}
                assert len(services) == 1, f"{module}:{node.lineno}: cannot tell the service of {node.attr}"
            ((service, operation),) = services.items()
            yield str(module), service, operation


def policy_for(module: str) -> str:
    # The executor, and each backend's log locator (backends/<service>/logs.py), run in the
    # scheduler and the API server; everything else in the reconciler.
    in_airflow = module.startswith("executor/") or (module.startswith("backends/") and module.endswith("/logs.py"))
    return "scheduler-policy.json" if in_airflow else "reconciler-policy.json"


def test_the_scan_finds_the_reconcilers_calls() -> None:
    """Guards the tests below against a scan that finds nothing."""
    found = {f"{service}:{op}" for _, service, op in aws_calls()}
    assert {"ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks"} <= found
    assert {"batch:SubmitJob", "batch:DescribeJobs", "batch:ListJobs", "batch:TerminateJob"} <= found
    assert "logs:GetLogEvents" in found
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"} <= found


def test_every_aws_call_is_granted_to_the_process_that_makes_it() -> None:
    missing = [
        f"{module}: {service}:{operation} not in deploy/iam/{policy_for(module)}"
        for module, service, operation in aws_calls()
        if f"{service}:{operation}" not in granted(policy_for(module))
    ]
    assert missing == []


@pytest.mark.parametrize("name", POLICIES)
def test_nothing_is_granted_that_no_code_needs(name: str) -> None:
    used = {f"{service}:{op}" for module, service, op in aws_calls() if policy_for(module) == name}
    unused = granted(name) - used - set(IMPLICIT[name])
    assert unused == set(), f"deploy/iam/{name} grants actions no code calls: {sorted(unused)}"


# ---- document checks ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [*POLICIES, TRUST])
def test_valid_iam_policy_documents(name: str) -> None:
    from moto.iam.policy_validation import IAMPolicyDocumentValidator, IAMTrustPolicyDocumentValidator

    document = substituted(name)
    validator = IAMTrustPolicyDocumentValidator if name == TRUST else IAMPolicyDocumentValidator
    validator(document).validate()
    # Managed policies: at most 6,144 characters, whitespace not counted.
    assert len(re.sub(r"\s", "", document)) <= 6144


@pytest.mark.parametrize("name", [*POLICIES, TRUST])
def test_placeholders_are_known_and_documented(name: str) -> None:
    placeholders = set(re.findall(r"\$\{(\w+)\}", (IAM / name).read_text()))
    readme = (IAM / "README.md").read_text()
    for placeholder in placeholders:
        assert placeholder in SAMPLE, f"unknown placeholder ${{{placeholder}}} in {name}"
        assert f"${{{placeholder}}}" in readme, f"${{{placeholder}}} is not explained in deploy/iam/README.md"


@pytest.mark.parametrize("name", POLICIES)
def test_statements_are_narrow(name: str) -> None:
    sids = [statement["Sid"] for statement in statements(name)]
    assert len(sids) == len(set(sids)), "Sids must be unique"
    for statement in statements(name):
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{statement['Sid']}: wildcard action {action}"
        for resource in as_list(statement["Resource"]):
            if resource == "*":
                unbounded = set(as_list(statement["Action"])) - NO_RESOURCE_LEVEL
                assert not unbounded, f"{statement['Sid']}: {sorted(unbounded)} support resource-level permissions"
                continue
            service = resource.split(":")[2]
            assert ARN[service].match(resource), f"{statement['Sid']}: malformed ARN {resource}"
            # Named resources only; the one family-wide wildcard is Batch job ids (unknown in advance).
            resource_id = resource.split(":", 5)[5]
            assert not resource_id.startswith("*"), f"{statement['Sid']}: {resource}"
            assert resource_id not in OPEN_ENDED, f"{statement['Sid']}: {resource} names no specific resource"


def _statement(name: str, action: str) -> dict[str, Any]:
    (found,) = [s for s in statements(name) if action in as_list(s["Action"])]
    return found


CLUSTER_ARN = "arn:aws:ecs:eu-west-1:123456789012:cluster/airflow-tasks"


def test_run_task_only_for_the_task_definition_family_in_the_cluster() -> None:
    run = _statement("reconciler-policy.json", "ecs:RunTask")
    assert as_list(run["Resource"]) == ["arn:aws:ecs:eu-west-1:123456789012:task-definition/airflow-task:*"]
    assert run["Condition"] == {"ArnEquals": {"ecs:cluster": CLUSTER_ARN}}


@pytest.mark.parametrize("action", ["ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks"])
def test_task_actions_are_bound_to_the_cluster(action: str) -> None:
    statement = _statement("reconciler-policy.json", action)
    assert statement["Condition"]["ArnEquals"]["ecs:cluster"] == CLUSTER_ARN
    for resource in as_list(statement["Resource"]):
        assert resource in ("*", "arn:aws:ecs:eu-west-1:123456789012:task/airflow-tasks/*")


def test_tag_resource_only_while_launching() -> None:
    tag = _statement("reconciler-policy.json", "ecs:TagResource")
    assert tag["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}
    assert as_list(tag["Action"]) == ["ecs:TagResource"]


def test_pass_role_only_to_ecs_tasks() -> None:
    pass_role = _statement("reconciler-policy.json", "iam:PassRole")
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    assert sorted(as_list(pass_role["Resource"])) == [
        "arn:aws:iam::123456789012:role/airflow-task",
        "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
    ]


def test_submit_job_only_to_the_queue_and_job_definition() -> None:
    submit = _statement("reconciler-policy.json", "batch:SubmitJob")
    assert sorted(as_list(submit["Resource"])) == [
        "arn:aws:batch:eu-west-1:123456789012:job-definition/airflow-job",
        "arn:aws:batch:eu-west-1:123456789012:job-definition/airflow-job:*",
        "arn:aws:batch:eu-west-1:123456789012:job-queue/airflow-jobs",
    ]


def test_scheduler_reads_logs_only() -> None:
    for action in granted("scheduler-policy.json"):
        assert action.split(":")[1].startswith(("Get", "Describe", "List")), action
    logs = _statement("scheduler-policy.json", "logs:GetLogEvents")
    assert sorted(as_list(logs["Resource"])) == [
        "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/batch/job:log-stream:*",
        "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/airflow-task:log-stream:*",
    ]


def test_trust_policy_is_bound_to_one_service_account() -> None:
    (statement,) = json.loads(substituted(TRUST))["Statement"]
    provider = SAMPLE["OIDC_PROVIDER"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"]["Federated"] == f"arn:aws:iam::123456789012:oidc-provider/{provider}"
    assert statement["Condition"]["StringEquals"] == {
        f"{provider}:aud": "sts.amazonaws.com",
        f"{provider}:sub": "system:serviceaccount:airflow:aws-reconciler",
    }


def test_policies_are_pretty_printed_json() -> None:
    """Reviewable diffs: two-space indented JSON, as written by json.dumps(indent=2)."""
    for name in [*POLICIES, TRUST]:
        text = (IAM / name).read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", name


def test_batch_jobs_are_stopped_and_tagged_only_with_our_deployment_tag() -> None:
    """Batch has no cluster to bound TerminateJob/CancelJob: the deployment tag does, as it does for tagging."""
    stop = _statement("reconciler-policy.json", "batch:TerminateJob")
    assert set(as_list(stop["Action"])) == {"batch:TerminateJob", "batch:CancelJob"}
    assert stop["Condition"] == {"StringEquals": {"aws:ResourceTag/aws-reconciler:deployment": "airflow"}}
    tag = _statement("reconciler-policy.json", "batch:TagResource")
    assert tag["Condition"] == {"StringEquals": {"aws:RequestTag/aws-reconciler:deployment": "airflow"}}


def test_event_queues_are_read_only_those_of_the_deployment() -> None:
    """The reconciler consumes its own two queues: not their dead-letter queues, not another deployment's
    (a `${DEPLOYMENT}-*` wildcard would match deployment `airflow-prod`'s queues for deployment `airflow`)."""
    consume = _statement("reconciler-policy.json", "sqs:ReceiveMessage")
    assert set(as_list(consume["Action"])) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    assert as_list(consume["Resource"]) == [
        "arn:aws:sqs:eu-west-1:123456789012:airflow-ecs-events",
        "arn:aws:sqs:eu-west-1:123456789012:airflow-batch-events",
    ]
    assert "sqs:SendMessage" not in granted("reconciler-policy.json")


def test_batch_operations_map_to_real_actions() -> None:
    """AUTHORISED_AS names operations botocore knows, each mapped to an operation of the same service."""
    import botocore.session

    session = botocore.session.get_session()
    for batch, single in AUTHORISED_AS.items():
        (service, operation), (same, action) = batch.split(":"), single.split(":")
        assert same == service and service in SERVICES
        known = session.get_service_model(service).operation_names
        assert operation in known and action in known, batch
