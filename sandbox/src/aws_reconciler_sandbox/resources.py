"""Create the AWS resources the executor needs in a (sandbox) account, and say how to point at them."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import ClientError

__all__ = ["bootstrap"]

_SETTING = "AIRFLOW__AWS_RECONCILER_ECS__"
_BATCH_SETTING = "AIRFLOW__AWS_RECONCILER_BATCH__"
_BATCH_LOG_GROUP = "/aws/batch/job"
_BATCH_SERVICE_ROLE = "aws-reconciler-batch-service"
#: SIGTERM-to-SIGKILL grace of the task container (ECS's default is 30 s): long enough for
#: Airflow's task runner to report a revoked task, short enough for a demo.
DEFAULT_STOP_TIMEOUT = 10


@functools.lru_cache(maxsize=64)
def _client(service: str, endpoint_url: str, region: str, access_key: str, secret_key: str) -> Any:
    # Cached: creating a client (EC2's above all) costs more than bootstrapping with it, and tests
    # bootstrap a clean account for every scenario. boto3 clients are safe to share between threads.
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )


def bootstrap(
    *,
    endpoint_url: str,
    region: str,
    cluster: str = "airflow",
    family: str = "airflow-task",
    container_name: str = "base",
    image: str = "apache/airflow:3.3.2",
    log_group: str = "/aws-reconciler/tasks",
    log_stream_prefix: str = "airflow",
    security_group_name: str = "aws-reconciler-tasks",
    access_key_id: str = "testing",
    secret_access_key: str = "testing",
    environment: Mapping[str, str] | None = None,
    stop_timeout: int = DEFAULT_STOP_TIMEOUT,
    batch: bool = False,
    job_queue: str = "airflow",
    compute_environment: str = "airflow",
    job_definition: str = "airflow-job",
) -> dict[str, str]:
    """Create an ECS cluster, task definition, security group and log group; return the settings.

    With ``batch`` also an AWS Batch compute environment (Fargate, in the default VPC), a job
    queue and a job definition (``image``, ``environment``; Batch's default log group), and the
    ``[aws_reconciler_batch]`` settings to reach them. Off by default: most callers use ECS only.

    ``environment`` goes into the container's ``environment`` (what every task gets, e.g. the
    Airflow settings its processes need); ``stop_timeout`` is the container's ``stopTimeout``.
    Idempotent: running it again reuses the cluster, security group and log group, and the
    latest task definition revision when it already says the same (otherwise it registers a new
    revision, which the family name then resolves to).
    The result maps environment variable names to values, ready to ``export``.
    """
    ecs = _client("ecs", endpoint_url, region, access_key_id, secret_access_key)
    ec2 = _client("ec2", endpoint_url, region, access_key_id, secret_access_key)
    logs = _client("logs", endpoint_url, region, access_key_id, secret_access_key)

    ecs.create_cluster(clusterName=cluster)
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "essential": True,
        # Sorted: the same mapping always gives the same definition (see _current_revision).
        "environment": [{"name": k, "value": str(v)} for k, v in sorted((environment or {}).items())],
        "stopTimeout": stop_timeout,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": log_group,
                "awslogs-region": region,
                "awslogs-stream-prefix": log_stream_prefix,
            },
        },
    }
    definition: dict[str, Any] = {
        "family": family,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE", "EC2"],
        "cpu": "256",
        "memory": "512",
        "containerDefinitions": [container],
    }
    if not _current_revision(ecs, definition):
        ecs.register_task_definition(**definition)

    # moto only wires task networking correctly in the default VPC.
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise RuntimeError(f"no default VPC in {region}")
    vpc_id = vpcs[0]["VpcId"]
    subnets = sorted(
        s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    )
    existing = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "group-name", "Values": [security_group_name]},
        ]
    )["SecurityGroups"]
    if existing:
        security_group = existing[0]["GroupId"]
    else:
        security_group = ec2.create_security_group(
            GroupName=security_group_name, Description="Airflow tasks run by aws-reconciler", VpcId=vpc_id
        )["GroupId"]

    _create_log_group(logs, log_group)

    batch_settings: dict[str, str] = {}
    if batch:
        batch_settings = _bootstrap_batch(
            batch=_client("batch", endpoint_url, region, access_key_id, secret_access_key),
            iam=_client("iam", endpoint_url, region, access_key_id, secret_access_key),
            logs=logs,
            region=region,
            subnets=subnets,
            security_group=security_group,
            job_queue=job_queue,
            compute_environment=compute_environment,
            job_definition=job_definition,
            image=image,
            environment=environment or {},
        )

    return {
        f"{_SETTING}CLUSTER": cluster,
        f"{_SETTING}TASK_DEFINITION": family,
        f"{_SETTING}CONTAINER_NAME": container_name,
        f"{_SETTING}SUBNETS": ",".join(subnets),
        f"{_SETTING}SECURITY_GROUPS": security_group,
        f"{_SETTING}REGION_NAME": region,
        **batch_settings,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
        "AWS_DEFAULT_REGION": region,
    }


def _create_log_group(logs: Any, name: str) -> None:
    try:
        logs.create_log_group(logGroupName=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise


def _bootstrap_batch(
    *,
    batch: Any,
    iam: Any,
    logs: Any,
    region: str,
    subnets: list[str],
    security_group: str,
    job_queue: str,
    compute_environment: str,
    job_definition: str,
    image: str,
    environment: Mapping[str, str],
) -> dict[str, str]:
    """A Fargate compute environment, a job queue over it and a job definition; idempotent."""
    found = batch.describe_compute_environments(computeEnvironments=[compute_environment])["computeEnvironments"]
    if found:
        environment_arn = found[0]["computeEnvironmentArn"]
    else:
        environment_arn = batch.create_compute_environment(
            computeEnvironmentName=compute_environment,
            type="MANAGED",
            state="ENABLED",
            computeResources={
                "type": "FARGATE",
                "maxvCpus": 256,
                "subnets": subnets,
                "securityGroupIds": [security_group],
            },
            serviceRole=_service_role(iam),
        )["computeEnvironmentArn"]
    if not batch.describe_job_queues(jobQueues=[job_queue])["jobQueues"]:
        batch.create_job_queue(
            jobQueueName=job_queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment_arn}],
        )
    container: dict[str, Any] = {
        "image": image,
        # Sorted: the same mapping always gives the same definition (see _current_job_definition).
        "environment": [{"name": k, "value": str(v)} for k, v in sorted(environment.items())],
        "resourceRequirements": [{"type": "VCPU", "value": "0.25"}, {"type": "MEMORY", "value": "512"}],
        "networkConfiguration": {"assignPublicIp": "ENABLED"},
    }
    if not _current_job_definition(batch, job_definition, container):
        batch.register_job_definition(
            jobDefinitionName=job_definition,
            type="container",
            platformCapabilities=["FARGATE"],
            containerProperties=container,
        )
    # Batch creates its default log group itself on first use; existing up front, it can be watched.
    _create_log_group(logs, _BATCH_LOG_GROUP)
    return {
        f"{_BATCH_SETTING}JOB_QUEUE": job_queue,
        f"{_BATCH_SETTING}JOB_DEFINITION": job_definition,
        f"{_BATCH_SETTING}REGION_NAME": region,
    }


def _service_role(iam: Any) -> str:
    """The service role a compute environment names (the sandbox checks only that it exists)."""
    try:
        return str(iam.get_role(RoleName=_BATCH_SERVICE_ROLE)["Role"]["Arn"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchEntity":
            raise
    trust = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
        '"Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}]}'
    )
    return str(iam.create_role(RoleName=_BATCH_SERVICE_ROLE, AssumeRolePolicyDocument=trust)["Role"]["Arn"])


def _current_job_definition(batch: Any, name: str, container: dict[str, Any]) -> bool:
    """Whether the latest active revision of ``name`` already runs ``container`` (only the keys set)."""
    revisions = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]
    if not revisions:
        return False
    latest = max(revisions, key=lambda d: int(d.get("revision", 0)))
    described = latest.get("containerProperties") or {}
    return all(described.get(key) == value for key, value in container.items())


def _current_revision(ecs: Any, definition: dict[str, Any]) -> bool:
    """Whether the family's latest active revision already is ``definition``.

    Compares only what ``definition`` sets: the service adds defaults of its own (``cpu: 0``,
    empty ``portMappings``...), which must not make every bootstrap register a new revision.
    """
    try:
        latest = ecs.describe_task_definition(taskDefinition=definition["family"])["taskDefinition"]
    except ClientError:
        return False  # no revision yet
    if latest.get("status", "ACTIVE") != "ACTIVE":
        return False
    for key, value in definition.items():
        if key == "containerDefinitions":
            described = latest.get(key) or []
            if len(described) != len(value) or any(
                any(have.get(k) != v for k, v in want.items()) for want, have in zip(value, described, strict=True)
            ):
                return False
        elif key == "requiresCompatibilities":
            if sorted(latest.get(key) or []) != sorted(value):
                return False
        elif latest.get(key) != value:
            return False
    return True
