"""Create the AWS resources the executor needs in a (sandbox) account, and say how to point at them."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import ClientError

__all__ = ["bootstrap"]

_SETTING = "AIRFLOW__AWS_RECONCILER_ECS__"


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
) -> dict[str, str]:
    """Create an ECS cluster, task definition, security group and log group; return the settings.

    Idempotent: running it again reuses the cluster, security group and log group (and registers
    one more task definition revision, which the family name then resolves to).
    The result maps environment variable names to values, ready to ``export``.
    """
    ecs = _client("ecs", endpoint_url, region, access_key_id, secret_access_key)
    ec2 = _client("ec2", endpoint_url, region, access_key_id, secret_access_key)
    logs = _client("logs", endpoint_url, region, access_key_id, secret_access_key)

    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE", "EC2"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": container_name,
                "image": image,
                "essential": True,
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": log_group,
                        "awslogs-region": region,
                        "awslogs-stream-prefix": log_stream_prefix,
                    },
                },
            }
        ],
    )

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
