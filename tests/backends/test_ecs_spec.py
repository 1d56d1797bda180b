"""RunTask request resolution: settings, run_task_kwargs and executor_config merged and validated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.backends.merge import deep_merge
from aws_reconciler.backends.requests import InvalidExecutorConfig
from aws_reconciler.config import load_settings
from aws_reconciler.config.models import EcsSettings
from aws_reconciler.model import TiKey

KEY = TiKey("etl", "load", "manual__2026-11-21T00:00:00+00:00", 3, 2)


def ecs(**env: str) -> EcsSettings:
    base = {
        "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "main",
        "AIRFLOW__AWS_RECONCILER_ECS__ALLOWED_CLUSTERS": "gpu",
        "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
        "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
        "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
        "AIRFLOW__AWS_RECONCILER_ECS__PLATFORM_VERSION": "1.4.0",
        "AIRFLOW__AWS_RECONCILER_ECS__SUBNETS": "subnet-a,subnet-b",
        "AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS": "sg-1",
        "AIRFLOW__AWS_RECONCILER_ECS__RUN_TASK_KWARGS": json.dumps(
            {"overrides": {"containerOverrides": [{"name": "base", "environment": [{"name": "A", "value": "1"}]}]}}
        ),
    }
    return load_settings(environ={**base, **env}, cfg_path=Path("/none")).ecs


def build(config: Any = None, **env: str) -> dict[str, Any]:
    return build_run_task_request(
        ecs=ecs(**env), deployment="prod", record_id="rec-1", key=KEY, command=["run", "it"], executor_config=config
    )


def container(request: dict[str, Any], name: str = "base") -> dict[str, Any]:
    return next(c for c in request["overrides"]["containerOverrides"] if c["name"] == name)


def test_base_request_carries_identity_and_command() -> None:
    request = build()
    assert request["cluster"] == "main" and request["launchType"] == "FARGATE"
    assert request["startedBy"] == "prod"
    assert "clientToken" not in request  # added per attempt by the reconciler
    assert container(request)["command"] == ["run", "it"]
    tags = {t["key"]: t["value"] for t in request["tags"]}
    assert tags["aws-reconciler:deployment"] == "prod" and tags["aws-reconciler:id"] == "rec-1"
    assert tags["airflow:map_index"] == "3" and tags["airflow:try_number"] == "2"
    assert tags["airflow:run_id"] == "manual__2026-11-21T00:00:00+00:00"
    assert request["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ["subnet-a", "subnet-b"]


def test_container_override_and_environment_merge_by_name() -> None:
    request = build(
        {
            "overrides": {
                "containerOverrides": [
                    {"name": "base", "environment": [{"name": "B", "value": "2"}, {"name": "A", "value": "9"}]},
                    {"name": "sidecar", "memory": 128},
                ]
            }
        }
    )
    ours = container(request)
    assert ours["environment"] == [{"name": "A", "value": "9"}, {"name": "B", "value": "2"}]
    assert ours["command"] == ["run", "it"]
    assert container(request, "sidecar")["memory"] == 128


def test_ec2_never_gets_platform_version_and_modes_replace_each_other() -> None:
    assert "platformVersion" not in build({"launchType": "EC2"})
    spot = build({"capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]})
    assert "launchType" not in spot and spot["capacityProviderStrategy"][0]["capacityProvider"] == "FARGATE_SPOT"


def test_allowed_cluster_and_user_tags() -> None:
    request = build({"cluster": "gpu", "tags": [{"key": "team", "value": "data"}]})
    assert request["cluster"] == "gpu"
    tags = {t["key"]: t["value"] for t in request["tags"]}
    assert tags["team"] == "data" and tags["aws-reconciler:id"] == "rec-1"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"clientToken": "mine"}, "clientToken"),
        ({"startedBy": "someone"}, "startedBy"),
        ({"count": 2}, "count"),
        ({"cluster": "elsewhere"}, "cluster"),
        ({"bogus": 1}, "bogus"),
        ({"overrides": {"cpu": 1024}}, "overrides.cpu"),
        ({"overrides": {"containerOverrides": [{"name": "base", "command": ["x"]}]}}, "command"),
        ({"tags": [{"key": "aws-reconciler:id", "value": "spoof"}]}, "aws-reconciler:id"),
        (["not", "a", "dict"], "executor_config"),
    ],
)
def test_invalid_executor_config_names_the_key(config: Any, key: str) -> None:
    with pytest.raises(InvalidExecutorConfig) as info:
        build(config)
    assert key in info.value.key
    assert key in str(info.value)


def test_an_unknown_key_lists_only_the_keys_a_task_may_set() -> None:
    with pytest.raises(InvalidExecutorConfig) as info:
        build({"overide": {}})
    message = str(info.value)
    listed = set(message.split("one of: ", 1)[1].split(", "))
    assert {"overrides", "tags", "cluster", "launchType"} <= listed
    assert not listed & {"clientToken", "count", "startedBy"}, "the reconciler owns these: never suggest them"


def test_overrides_over_ecs_limit_fail_clearly() -> None:
    big = [{"name": f"V{i}", "value": "x" * 100} for i in range(90)]
    with pytest.raises(InvalidExecutorConfig, match="8192"):
        build({"overrides": {"containerOverrides": [{"name": "base", "environment": big}]}})


def test_deep_merge_does_not_mutate_inputs() -> None:
    base = {"a": {"b": [1]}, "tags": [{"key": "k", "value": "1"}]}
    merged = deep_merge(base, {"a": {"c": 2}, "tags": [{"key": "k", "value": "2"}]})
    assert merged == {"a": {"b": [1], "c": 2}, "tags": [{"key": "k", "value": "2"}]}
    assert base == {"a": {"b": [1]}, "tags": [{"key": "k", "value": "1"}]}
