"""Credentials of the scheduler's and the API server's AWS calls, the Airflow way: a connection.

The executors call AWS only to show task logs (CloudWatch Logs, from the API server). Like the
amazon provider's executors they take their identity from an Airflow connection
(``[aws_reconciler_ecs] aws_conn_id``, default ``aws_default``):

- with the amazon provider installed, through its ``AwsBaseHook``: every option of its AWS
  connection type works (role assumption, profiles, endpoint URLs...);
- without it, from the connection's own fields: ``login`` / ``password`` (access key id and
  secret), and in ``extra`` ``aws_session_token``, ``region_name``, ``profile_name``,
  ``role_arn`` (with ``external_id``) and ``endpoint_url``;
- no such connection, or ``aws_conn_id`` empty: the standard boto3 chain, as the provider does.

The reconciler never imports Airflow and always uses the boto3 chain (plus ``role_arn``).
Nothing here logs a credential; a connection that cannot be read is logged by its id only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3

from ..backends.credentials import assumed_role_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AwsIdentity:
    """A session to make clients from, and the endpoint the connection names (``None``: AWS's)."""

    session: boto3.session.Session
    endpoint_url: str | None = None
    #: Where it came from, for messages (never a credential).
    origin: str = "the boto3 credential chain"


def identity_for(
    conn_id: str | None,
    *,
    region_name: str | None,
    provider_hook: Callable[[str, str | None], Any] | None = None,
    get_connection: Callable[[str], Any] | None = None,
) -> AwsIdentity:
    """The identity of Airflow connection ``conn_id`` (see the module docstring).

    ``provider_hook(conn_id, region)`` and ``get_connection(conn_id)`` replace the amazon
    provider's hook and Airflow's connection lookup (tests); by default both are looked up.
    """
    if not conn_id:
        return AwsIdentity(boto3.session.Session(region_name=region_name))
    hook_factory = provider_hook if provider_hook is not None else _provider_hook()
    if hook_factory is not None:
        hook = hook_factory(conn_id, region_name)
        return AwsIdentity(
            hook.get_session(region_name=region_name),
            getattr(getattr(hook, "conn_config", None), "endpoint_url", None),
            f"Airflow connection {conn_id!r} (amazon provider)",
        )
    connection = (get_connection or _airflow_connection)(conn_id)
    if connection is None:
        return AwsIdentity(
            boto3.session.Session(region_name=region_name),
            origin=f"the boto3 credential chain (no Airflow connection {conn_id!r})",
        )
    return _from_connection(conn_id, connection, region_name)


def connection_clients(conn_id: str | None, *, config: Any) -> Callable[[str, str | None], Any]:
    """A client factory ``(service, region) -> client`` with the identity of ``conn_id``, looked up
    once per region on first use (the caller serialises calls: a boto3 session is not thread-safe)."""
    identities: dict[str | None, AwsIdentity] = {}

    def client(service: str, region: str | None) -> Any:
        identity = identities.get(region)
        if identity is None:
            identity = identities[region] = identity_for(conn_id, region_name=region)
            log.info("AWS calls for task logs use %s", identity.origin)
        return identity.session.client(service, region_name=region, endpoint_url=identity.endpoint_url, config=config)

    return client


def _from_connection(conn_id: str, connection: Any, region_name: str | None) -> AwsIdentity:
    extra = connection.extra_dejson if hasattr(connection, "extra_dejson") else dict(connection.extra or {})
    session = boto3.session.Session(
        aws_access_key_id=connection.login or None,
        aws_secret_access_key=connection.password or None,
        aws_session_token=extra.get("aws_session_token") or None,
        region_name=extra.get("region_name") or region_name,
        profile_name=extra.get("profile_name") or None,
    )
    if extra.get("role_arn"):
        session = assumed_role_session(
            str(extra["role_arn"]), base=session, external_id=extra.get("external_id"), region_name=region_name
        )
    return AwsIdentity(session, extra.get("endpoint_url") or None, f"Airflow connection {conn_id!r}")


def _provider_hook() -> Callable[[str, str | None], Any] | None:
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    except ImportError:
        return None
    return lambda conn_id, region: AwsBaseHook(aws_conn_id=conn_id, region_name=region)


def _airflow_connection(conn_id: str) -> Any | None:
    """The connection from Airflow's secrets backends and database, or ``None`` when none has that id."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None
