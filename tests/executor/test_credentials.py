"""Whose AWS identity each side uses: an Airflow connection on the Airflow side (as the provider's
executors), the boto3 chain and an optional assumed role on the reconciler's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from aws_reconciler.backends.client import make_client
from aws_reconciler.backends.credentials import assumed_role_session
from aws_reconciler.executor.credentials import identity_for
from aws_reconciler_sandbox import SandboxServer

pytestmark = pytest.mark.airflow

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/airflow-cross-account"


@dataclass
class Connection:
    """What Airflow's connection lookup returns, as far as these credentials go."""

    login: str | None = None
    password: str | None = None
    extra_dejson: dict[str, Any] = field(default_factory=dict)


def access_key(session: Any) -> str:
    return str(session.get_credentials().access_key)


def test_a_connections_keys_region_and_endpoint() -> None:
    found = identity_for(
        "etl_aws",
        region_name="us-east-1",
        provider_hook=None,
        get_connection=lambda conn_id: Connection(
            "AKIAETL", "secret", {"region_name": "eu-west-1", "endpoint_url": "http://aws.internal"}
        ),
    )
    assert access_key(found.session) == "AKIAETL"
    assert (found.session.region_name, found.endpoint_url) == ("eu-west-1", "http://aws.internal")
    assert "etl_aws" in found.origin and "secret" not in found.origin


@pytest.mark.parametrize("conn_id", [None, "", "aws_default"])
def test_no_connection_means_the_boto3_chain(conn_id: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    found = identity_for(conn_id, region_name=REGION, provider_hook=None, get_connection=lambda conn_id: None)
    assert access_key(found.session) == "AKIACHAIN"
    assert found.endpoint_url is None


def test_the_amazon_providers_hook_reads_the_connection_when_installed() -> None:
    seen: list[tuple[str, str | None]] = []

    class Hook:
        conn_config = type("Config", (), {"endpoint_url": "http://from-the-hook"})()

        def get_session(self, region_name: str | None = None) -> Any:
            import boto3

            return boto3.session.Session(
                aws_access_key_id="AKIAHOOK", aws_secret_access_key="x", region_name=region_name
            )

    def hook(conn_id: str, region: str | None) -> Hook:
        seen.append((conn_id, region))
        return Hook()

    found = identity_for("prod_aws", region_name=REGION, provider_hook=hook)
    assert seen == [("prod_aws", REGION)]
    assert (access_key(found.session), found.endpoint_url) == ("AKIAHOOK", "http://from-the-hook")


def test_airflows_own_lookup_finds_a_connection_and_misses_an_unknown_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FROM_ENV",
        json.dumps({"conn_type": "aws", "login": "AKIAENV", "password": "p", "extra": {"aws_session_token": "tok"}}),
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    found = identity_for("from_env", region_name=REGION, provider_hook=None)
    credentials = found.session.get_credentials()
    assert (credentials.access_key, credentials.token) == ("AKIAENV", "tok")
    missing = identity_for("no_such_connection", region_name=REGION, provider_hook=None)
    assert access_key(missing.session) == "AKIACHAIN"
    assert "no Airflow connection 'no_such_connection'" in missing.origin


# ---- role assumption (the reconciler's role_arn; a connection's role_arn) ---------------------


@pytest.fixture
def chain(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> SandboxServer:
    monkeypatch.setenv("AWS_ENDPOINT_URL", sandbox.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return sandbox


def test_the_reconciler_assumes_its_role_arn(chain: SandboxServer) -> None:
    own = make_client("sts", region_name=REGION).get_caller_identity()["Arn"]
    assumed = make_client("sts", region_name=REGION, role_arn=ROLE).get_caller_identity()["Arn"]
    assert ":assumed-role/" not in own
    assert assumed.endswith(":assumed-role/airflow-cross-account/aws-reconciler"), assumed


def test_assumed_credentials_are_fetched_when_first_used_and_refreshable(chain: SandboxServer) -> None:
    chain.reset_calls()
    session = assumed_role_session(ROLE, external_id="ext-1", region_name=REGION)
    assert "sts:AssumeRole" not in chain.calls(), "nothing is assumed before a call needs it"
    credentials = session.get_credentials()
    assert credentials.access_key != "AKIACHAIN"
    assert chain.calls().get("sts:AssumeRole") == 1
    assert credentials.refresh_needed() is False  # botocore refreshes it before it expires


def test_a_connection_with_a_role_arn_assumes_it(chain: SandboxServer) -> None:
    found = identity_for(
        "cross",
        region_name=REGION,
        provider_hook=None,
        get_connection=lambda conn_id: Connection("AKIACONN", "s", {"role_arn": ROLE}),
    )
    arn = found.session.client("sts").get_caller_identity()["Arn"]
    assert arn.endswith(":assumed-role/airflow-cross-account/aws-reconciler"), arn
