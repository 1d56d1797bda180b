"""The boto3 ECS client, configured for the reconciler's own retry and rate control."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def aws_client_config(*, max_pool_connections: int) -> Config:
    """No botocore retries: the reconciler classifies failures and backs off per row, so one
    throttled call never blocks a worker thread in hidden retry sleeps."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=max_pool_connections,
    )


def make_client(service: str, *, region_name: str | None, max_pool_connections: int = 16) -> Any:
    """A client from the standard credential chain (IRSA, instance role, env), refreshed by boto3.

    ``AWS_ENDPOINT_URL`` (the sandbox) is honoured by boto3 itself.
    """
    session = boto3.session.Session()
    return session.client(
        service, region_name=region_name, config=aws_client_config(max_pool_connections=max_pool_connections)
    )
