"""Create the AWS resources the executor needs in a (sandbox) account, and say how to point at them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import ClientError

__all__ = ["bootstrap"]

_SETTING = "AIRFLOW__AWS_RECONCILER_ECS__"
#: SIGTERM-to-SIGKILL grace of the task container (ECS's default is 30 s): long enough for
#: Airflow's task runner to report a revoked task, short enough for a demo.
DEFAULT_STOP_TIMEOUT = 10


def _client(service: str, endpoint_url: str, region: str, access_key: str, secret_key: str) -> Any:
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
) -> dict[str, str]:
    """Create an ECS cluster, task definition, security group and log group; return the settings.

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

    try:
        logs.create_log_group(logGroupName=log_group)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise

    return {
        f"{_SETTING}CLUSTER": cluster,
        f"{_SETTING}TASK_DEFINITION": family,
        f"{_SETTING}CONTAINER_NAME": container_name,
        f"{_SETTING}SUBNETS": ",".join(subnets),
        f"{_SETTING}SECURITY_GROUPS": security_group,
        f"{_SETTING}REGION_NAME": region,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
        "AWS_DEFAULT_REGION": region,
    }


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
