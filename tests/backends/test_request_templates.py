"""Requests built from one template per distinct executor_config: the requests a build of each
task from scratch gives, with the checks of the config paid once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from aws_reconciler.backends.batch import spec as batch_spec
from aws_reconciler.backends.batch.descriptor import BATCH
from aws_reconciler.backends.descriptor import BackendDescriptor
from aws_reconciler.backends.ecs import spec as ecs_spec
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.backends.requests import InvalidExecutorConfig
from aws_reconciler.config import load_settings
from aws_reconciler.model import TiKey

ENV = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "main",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
    "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
    "AIRFLOW__AWS_RECONCILER_ECS__SUBNETS": "subnet-a,subnet-b",
    "AIRFLOW__AWS_RECONCILER_ECS__RUN_TASK_KWARGS": json.dumps(
        {"overrides": {"containerOverrides": [{"name": "base", "environment": [{"name": "A", "value": "1"}]}]}}
    ),
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "jobs",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "airflow-job",
    "AIRFLOW__AWS_RECONCILER_BATCH__SUBMIT_JOB_KWARGS": json.dumps(
        {"containerOverrides": {"environment": [{"name": "A", "value": "1"}]}, "tags": {"team": "data"}}
    ),
}
CONFIG: dict[BackendDescriptor, dict[str, Any]] = {
    ECS: {
        "overrides": {
            "containerOverrides": [{"name": "base", "environment": [{"name": "B", "value": "2"}]}],
            "cpu": "512",
        },
        "tags": [{"key": "cost-center", "value": "42"}],
    },
    BATCH: {"containerOverrides": {"environment": [{"name": "B", "value": "2"}]}, "tags": {"cost-center": "42"}},
}
BACKENDS = pytest.mark.parametrize("descriptor", [ECS, BATCH], ids=["ecs", "batch"])


def new_section(descriptor: BackendDescriptor) -> Any:
    """A settings section no request was built from yet: its requests are resolved from scratch."""
    return descriptor.settings_of(load_settings(environ=ENV, cfg_path=Path("/none")))


def build(descriptor: BackendDescriptor, section: Any, config: Any, n: int = 1, **task: Any) -> dict[str, Any]:
    fields = {
        "record_id": f"rec-{n}",
        "key": TiKey("etl", f"load_{n}", "manual__2026-11-21", -1, 1),
        "command": ["run", f"task {n}"],
        **task,
    }
    return descriptor.build_request(section, deployment="prod", executor_config=config, **fields)


def spec_module(descriptor: BackendDescriptor) -> Any:
    return ecs_spec if descriptor is ECS else batch_spec


@BACKENDS
def test_tasks_of_one_config_get_what_a_build_from_scratch_gives(
    descriptor: BackendDescriptor, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = new_section(descriptor)
    module = spec_module(descriptor)
    validations = []
    validate = module.validate
    monkeypatch.setattr(module, "validate", lambda *args: validations.append(1) or validate(*args))

    # Each task instance has its own copy of the config, as Airflow hands them over.
    requests = [build(descriptor, section, copy.deepcopy(CONFIG[descriptor]), n) for n in range(3)]

    assert len(validations) == 1, "botocore's validation runs once per distinct executor_config"
    for n, request in enumerate(requests):
        expected = build(descriptor, new_section(descriptor), copy.deepcopy(CONFIG[descriptor]), n)
        # Byte for byte: the stored request is what is sent, so even the order of keys is kept.
        assert json.dumps(request) == json.dumps(expected)
    assert len({json.dumps(r) for r in requests}) == 3


@BACKENDS
def test_each_request_is_the_callers_own(descriptor: BackendDescriptor) -> None:
    section = new_section(descriptor)
    first = build(descriptor, section, CONFIG[descriptor], 1)
    # Whatever a caller does to a request it got...
    if descriptor is ECS:
        first["overrides"]["containerOverrides"][0]["environment"].append({"name": "X", "value": "x"})
        first["networkConfiguration"]["awsvpcConfiguration"]["subnets"].clear()
    else:
        first["containerOverrides"]["environment"].append({"name": "X", "value": "x"})
    first["tags"].clear()
    # ...the next task's is untouched.
    second = build(descriptor, section, CONFIG[descriptor], 2)
    assert json.dumps(second) == json.dumps(build(descriptor, new_section(descriptor), CONFIG[descriptor], 2))


@BACKENDS
def test_an_invalid_config_fails_every_task_of_it_naming_the_key(descriptor: BackendDescriptor) -> None:
    section = new_section(descriptor)
    bad = {"overrides": {"cpu": 512}} if descriptor is ECS else {"containerOverrides": {"vcpus": "one"}}
    culprit = "overrides.cpu" if descriptor is ECS else "containerOverrides.vcpus"
    errors = []
    for n in range(3):
        with pytest.raises(InvalidExecutorConfig) as info:
            build(descriptor, section, copy.deepcopy(bad), n)
        errors.append((info.value.key, str(info.value)))
    assert errors == [(culprit, errors[0][1])] * 3
    # The tasks of a valid config are not held back by it.
    assert build(descriptor, section, CONFIG[descriptor])["tags"]


@BACKENDS
@pytest.mark.parametrize("valid_first", [True, False])
def test_configs_equal_in_python_but_not_to_botocore_are_told_apart(
    descriptor: BackendDescriptor, valid_first: bool
) -> None:
    """``True == 1`` in Python; botocore takes only the first for a boolean."""
    section = new_section(descriptor)
    option = "enableExecuteCommand" if descriptor is ECS else "propagateTags"
    good, bad = {option: True}, {option: 1}
    for config in (good, bad) if valid_first else (bad, good):
        if config is good:
            assert build(descriptor, section, config)[option] is True
        else:
            with pytest.raises(InvalidExecutorConfig) as info:
                build(descriptor, section, config)
            assert info.value.key == option


@BACKENDS
def test_a_task_whose_own_fields_are_not_strings_is_checked_whole(descriptor: BackendDescriptor) -> None:
    section = new_section(descriptor)
    build(descriptor, section, CONFIG[descriptor])
    with pytest.raises(InvalidExecutorConfig) as cached:
        build(descriptor, section, CONFIG[descriptor], command=["run", 7])
    with pytest.raises(InvalidExecutorConfig) as scratch:
        build(descriptor, new_section(descriptor), CONFIG[descriptor], command=["run", 7])
    assert str(cached.value) == str(scratch.value)
    assert "command" in cached.value.key


@BACKENDS
def test_the_size_of_each_tasks_request_is_checked(descriptor: BackendDescriptor) -> None:
    section = new_section(descriptor)
    build(descriptor, section, CONFIG[descriptor])
    long = ["run", "x" * (40 * 1024)]
    with pytest.raises(InvalidExecutorConfig) as cached:
        build(descriptor, section, CONFIG[descriptor], command=long)
    with pytest.raises(InvalidExecutorConfig) as scratch:
        build(descriptor, new_section(descriptor), CONFIG[descriptor], command=long)
    assert str(cached.value) == str(scratch.value)
    assert "over AWS's limit" in str(cached.value)


@BACKENDS
def test_other_settings_get_their_own_requests(descriptor: BackendDescriptor) -> None:
    build(descriptor, new_section(descriptor), CONFIG[descriptor])
    option = "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER" if descriptor is ECS else "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE"
    other = descriptor.settings_of(load_settings(environ={**ENV, option: "elsewhere"}, cfg_path=Path("/none")))
    assert build(descriptor, other, CONFIG[descriptor])[descriptor.target_key] == "elsewhere"


@BACKENDS
def test_a_config_that_cannot_be_kept_is_built_for_each_task(descriptor: BackendDescriptor) -> None:
    class Text(str):
        """A value botocore takes as a string, which a local class keeps from pickling."""

    section = new_section(descriptor)
    config = copy.deepcopy(CONFIG[descriptor])
    if descriptor is ECS:
        config["overrides"]["cpu"] = Text("1024")
    else:
        config["containerOverrides"]["environment"][0]["value"] = Text("3")
    for n in range(2):
        request = build(descriptor, section, config, n)
        assert json.dumps(request) == json.dumps(build(descriptor, new_section(descriptor), config, n))
