"""``[aws_reconciler_batch]`` settings and the SubmitJob request: merged, validated, named per attempt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aws_reconciler.backends.batch.spec import (
    MAX_PAYLOAD_BYTES,
    InvalidExecutorConfig,
    build_submit_job_request,
    check_settings,
    job_name,
)
from aws_reconciler.config import BatchSettings, ConfigError, describe_settings, load_settings
from aws_reconciler.model import TiKey

KEY = TiKey("etl", "load", "manual__2026-11-21T00:00:00+00:00", 3, 2)
BASE = {
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "main",
    "AIRFLOW__AWS_RECONCILER_BATCH__ALLOWED_JOB_QUEUES": "gpu, spot",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "airflow-job:3",
    "AIRFLOW__AWS_RECONCILER_BATCH__SUBMIT_JOB_KWARGS": json.dumps(
        {
            "containerOverrides": {
                "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
            },
            "timeout": {"attemptDurationSeconds": 3600},
            "tags": {"team": "data"},
        }
    ),
}


def batch(**env: str) -> BatchSettings:
    return load_settings(environ={**BASE, **env}, cfg_path=Path("/none")).batch


def build(config: Any = None, *, record_id: str = "rec-1", **env: str) -> dict[str, Any]:
    return build_submit_job_request(
        batch=batch(**env),
        deployment="prod",
        record_id=record_id,
        key=KEY,
        command=["run", "it"],
        executor_config=config,
    )


# ---- settings --------------------------------------------------------------------------------


def test_settings_parse_and_enable_the_backend() -> None:
    settings = load_settings(environ=BASE, cfg_path=Path("/none"))
    assert settings.batch.enabled and not settings.ecs.enabled
    settings.require_backend()  # Batch alone is enough for the reconciler
    assert settings.batch.targets == ["main", "gpu", "spot"]
    assert settings.batch.max_submit_job_attempts == 3
    assert settings.batch.submit_job_kwargs["timeout"] == {"attemptDurationSeconds": 3600}
    assert settings.core.batch_submit_rate == 50 and settings.core.batch_describe_rate == 50
    # The RUNNABLE timeout defaults to the workload token's lifetime.
    assert settings.batch.runnable_timeout is None
    assert settings.runnable_timeout == settings.task_queued_timeout == 600
    shown = {(s, o): v for s, o, v, _ in describe_settings(settings)}
    assert shown[("aws_reconciler_batch", "job_queue")] == "main"
    explicit = load_settings(
        environ={**BASE, "AIRFLOW__AWS_RECONCILER_BATCH__RUNNABLE_TIMEOUT": "1800"}, cfg_path=Path("/none")
    )
    assert explicit.runnable_timeout == 1800


def test_no_backend_at_all_names_both_options() -> None:
    settings = load_settings(environ={}, cfg_path=Path("/none"))
    with pytest.raises(ConfigError) as info:
        settings.require_backend()
    assert "[aws_reconciler_ecs] cluster" in str(info.value)
    assert "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE" in str(info.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": ""}, "job_definition"),
        ({"AIRFLOW__AWS_RECONCILER_BATCH__SUBMIT_JOB_KWARGS": "{oops"}, "[aws_reconciler_batch] submit_job_kwargs"),
        ({"AIRFLOW__AWS_RECONCILER_BATCH__RUNNABLE_TIMEOUT": "0"}, "[aws_reconciler_batch] runnable_timeout"),
        ({"AIRFLOW__AWS_RECONCILER_BATCH__MAX_SUBMIT_JOB_ATTEMPTS": "0"}, "max_submit_job_attempts"),
        ({"AIRFLOW__AWS_RECONCILER__BATCH_SUBMIT_RATE": "fast"}, "[aws_reconciler] batch_submit_rate"),
    ],
)
def test_bad_settings_name_the_option(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**BASE, **env}, cfg_path=Path("/none"))
    assert expected in str(info.value)


@pytest.mark.parametrize("key", ["jobName", "arrayProperties", "dependsOn", "eksPropertiesOverride", "jobQueue"])
def test_submit_job_kwargs_may_not_set_what_the_reconciler_owns(key: str) -> None:
    settings = batch(AIRFLOW__AWS_RECONCILER_BATCH__SUBMIT_JOB_KWARGS=json.dumps({key: "x"}))
    with pytest.raises(ConfigError, match=rf"submit_job_kwargs: .*{key}|set the queue with job_queue"):
        check_settings(settings)


# ---- the request -----------------------------------------------------------------------------


def test_request_carries_queue_definition_identity_and_command() -> None:
    request = build()
    assert request["jobQueue"] == "main" and request["jobDefinition"] == "airflow-job:3"
    assert "jobName" not in request  # named per attempt by the reconciler
    assert request["containerOverrides"]["command"] == ["run", "it"]
    assert request["propagateTags"] is True
    assert request["tags"] == {
        "team": "data",
        "aws-reconciler:deployment": "prod",
        "aws-reconciler:id": "rec-1",
        "airflow:dag_id": "etl",
        "airflow:task_id": "load",
        "airflow:run_id": "manual__2026-11-21T00:00:00+00:00",
        "airflow:map_index": "3",
        "airflow:try_number": "2",
    }
    assert request["timeout"] == {"attemptDurationSeconds": 3600}


def test_executor_config_merges_environment_and_resources_by_name() -> None:
    request = build(
        {
            "jobQueue": "gpu",
            "containerOverrides": {
                "environment": [{"name": "B", "value": "task"}, {"name": "C", "value": "3"}],
                "resourceRequirements": [{"type": "GPU", "value": "1"}, {"type": "MEMORY", "value": "8192"}],
            },
            "tags": {"cost-center": "42"},
            "propagateTags": False,
        }
    )
    container = request["containerOverrides"]
    assert request["jobQueue"] == "gpu"
    assert container["environment"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "task"},
        {"name": "C", "value": "3"},
    ]
    assert container["resourceRequirements"] == [
        {"type": "VCPU", "value": "1"},
        {"type": "MEMORY", "value": "8192"},
        {"type": "GPU", "value": "1"},
    ]
    assert request["tags"]["cost-center"] == "42" and request["tags"]["team"] == "data"
    assert request["propagateTags"] is False


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"jobName": "mine"}, "jobName"),
        ({"arrayProperties": {"size": 10}}, "arrayProperties"),
        ({"dependsOn": [{"jobId": "x"}]}, "dependsOn"),
        ({"ecsPropertiesOverride": {}}, "ecsPropertiesOverride"),
        ({"eksPropertiesOverride": {}}, "eksPropertiesOverride"),
        ({"nodeOverrides": {}}, "nodeOverrides"),
        ({"bogus": 1}, "bogus"),
        ({"jobQueue": "not-configured"}, "jobQueue"),
        ({"containerOverrides": {"command": ["x"]}}, "containerOverrides.command"),
        ({"containerOverrides": {"vcpus": "many"}}, "containerOverrides.vcpus"),
        ({"containerOverrides": {"environment": [{"name": "AWS_BATCH_X", "value": "1"}]}}, "AWS_BATCH_X"),
        ({"tags": {"aws-reconciler:id": "x"}}, "tags.aws-reconciler:id"),
        ({"tags": [{"key": "a", "value": "b"}]}, "tags"),
        ({"tags": {f"t{i}": "v" for i in range(45)}}, "tags"),
        ({"retryStrategy": {"attempts": "3"}}, "retryStrategy.attempts"),
        ("not a dict", "executor_config"),
    ],
)
def test_invalid_executor_config_names_the_key(config: Any, named: str) -> None:
    with pytest.raises(InvalidExecutorConfig) as info:
        build(config)
    assert named in str(info.value), str(info.value)


def test_an_unknown_key_lists_only_the_keys_a_task_may_set() -> None:
    with pytest.raises(InvalidExecutorConfig) as info:
        build({"containerOverride": {}})
    listed = set(str(info.value).split("one of: ", 1)[1].split(", "))
    assert {"containerOverrides", "timeout", "tags"} <= listed
    assert not listed & {"jobName", "arrayProperties", "dependsOn", "nodeOverrides"}


def test_a_request_over_batchs_payload_limit_fails_clearly() -> None:
    big = [{"name": f"V{i}", "value": "x" * 1000} for i in range(MAX_PAYLOAD_BYTES // 1000)]
    with pytest.raises(InvalidExecutorConfig, match="30720") as info:
        build({"containerOverrides": {"environment": big}})
    assert info.value.key == "containerOverrides"


def test_job_names_are_valid_distinct_per_attempt_and_stable() -> None:
    assert job_name("0b5c1f9e-6f0e-4c8e-9a43-2f0f5e0c4a11", 1) == "af-0b5c1f9e-6f0e-4c8e-9a43-2f0f5e0c4a11-1"
    odd = "scheduled:" + "x" * 54
    names = {job_name(odd, attempt) for attempt in (1, 2, 99)}
    assert len(names) == 3
    assert all(len(n) <= 128 and n.replace("-", "").replace("_", "").isalnum() for n in names)
    assert job_name(odd, 2) == job_name(odd, 2)
    assert job_name("a" * 64, 123456) == f"af-{'a' * 64}-123456"
