"""The reconciler's boto3 clients: botocore's answers, with timestamps in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.utils import parse_timestamp

from aws_reconciler.backends.client import make_client, utc_timestamp
from aws_reconciler_sandbox import SandboxServer


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1764633600.25, id="epoch seconds with a fraction (ECS's JSON)"),
        pytest.param(1764633600, id="whole epoch seconds"),
        pytest.param("2026-12-02T00:00:00Z", id="ISO 8601, Z"),
        pytest.param("2026-12-02T01:00:00+01:00", id="ISO 8601 with an offset"),
        pytest.param("Wed, 02 Dec 2026 00:00:00 GMT", id="RFC 822"),
    ],
)
def test_utc_timestamp_is_botocores_instant_in_utc(value: Any) -> None:
    parsed = utc_timestamp(value)
    assert parsed == parse_timestamp(value), "the same instant"
    assert parsed.tzinfo is UTC


def test_a_clients_answers_carry_utc_timestamps(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", sandbox.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ecs = make_client("ecs", region_name=sandbox.region)
    cluster = ecs.create_cluster(clusterName="client-timestamps")["cluster"]["clusterArn"]
    arn = ecs.register_task_definition(
        family="client-timestamps", containerDefinitions=[{"name": "base", "image": "busybox", "memory": 128}]
    )["taskDefinition"]["taskDefinitionArn"]
    [task] = ecs.run_task(cluster=cluster, taskDefinition=arn, launchType="FARGATE")["tasks"]
    created = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]])["tasks"][0]["createdAt"]
    assert isinstance(created, datetime) and created.tzinfo is UTC
