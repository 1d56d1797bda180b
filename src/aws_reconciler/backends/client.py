"""The boto3 clients of the reconciler, configured for its own retry and rate control."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.utils import parse_timestamp

from .credentials import assumed_role_session


def aws_client_config(*, max_pool_connections: int, call_timeout: float | None = None) -> Config:
    """No botocore retries: the reconciler classifies failures and backs off per row, so one
    throttled call never blocks a worker thread in hidden retry sleeps.

    ``call_timeout`` bounds a whole call (connect, then the answer): the reconciler's calls must
    land within the lease (``[aws_reconciler] aws_call_timeout``). Without it, botocore-like
    5 s / 30 s.
    """
    if call_timeout is None:
        connect, read = 5.0, 30.0
    else:
        # Connecting to an AWS endpoint takes milliseconds; leave most of the bound to the answer.
        connect = min(2.0, call_timeout / 3)
        read = call_timeout - connect
    return Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=connect,
        read_timeout=read,
        max_pool_connections=max_pool_connections,
    )


def utc_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, answering in UTC with the one ``UTC`` object.

    botocore's own builds a new ``tzlocal()`` for every timestamp it parses: at 10,000 described
    tasks, three timestamps each, that is 30,000 zone objects kept alive as long as the
    observations are (about 8 MiB) and a good part of the parsing time. The answers compare and
    subtract exactly as before; only their zone object differs."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return parse_timestamp(value).astimezone(UTC)


def make_client(
    service: str,
    *,
    region_name: str | None,
    max_pool_connections: int = 16,
    call_timeout: float | None = None,
    role_arn: str | None = None,
) -> Any:
    """A client from the standard credential chain (IRSA, instance role, env), refreshed by boto3;
    with ``role_arn``, as that role (assumed with the chain's identity, refreshed before expiry).

    ``AWS_ENDPOINT_URL`` (the sandbox) is honoured by boto3 itself.
    """
    session = assumed_role_session(role_arn, region_name=region_name) if role_arn else boto3.session.Session()
    # boto3 reaches botocore's session only through this attribute.
    session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=utc_timestamp)
    config = aws_client_config(max_pool_connections=max_pool_connections, call_timeout=call_timeout)
    return session.client(service, region_name=region_name, config=config)
