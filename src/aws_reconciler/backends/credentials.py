"""AWS sessions: the standard credential chain, optionally through an assumed role.

A role assumed here is refreshed by botocore before its credentials expire (the same machinery as
``role_arn`` in ``~/.aws/config``), so a process runs for weeks on temporary credentials and
recovers from an expiry without a restart.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.session
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

#: ``RoleSessionName`` of every role this product assumes (visible in CloudTrail).
SESSION_NAME = "aws-reconciler"


def assumed_role_session(
    role_arn: str,
    *,
    base: boto3.session.Session | None = None,
    external_id: str | None = None,
    region_name: str | None = None,
    session_name: str = SESSION_NAME,
) -> boto3.session.Session:
    """A session whose calls run as ``role_arn``, assumed with ``base``'s credentials (the standard
    chain by default) when first needed and again before they expire.

    ``AWS_ENDPOINT_URL`` applies to STS too (the sandbox answers AssumeRole).
    """
    base = base or boto3.session.Session()
    extra: dict[str, Any] = {"RoleSessionName": session_name}
    if external_id:
        extra["ExternalId"] = external_id
    source = base._session  # botocore session of the base: its credentials and config
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=source.create_client,
        source_credentials=source.get_credentials(),
        role_arn=role_arn,
        extra_args=extra,
    )
    assumed = botocore.session.Session()
    assumed._credentials = DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method="assume-role")
    return boto3.session.Session(botocore_session=assumed, region_name=region_name or base.region_name)
