"""The backend descriptors: one per service, and what the factory, executors and ``check`` derive from them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from aws_reconciler.backends.batch.descriptor import BATCH
from aws_reconciler.backends.descriptor import BackendDescriptor, LogSubject
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.backends.registry import DESCRIPTORS, descriptor_for, enabled
from aws_reconciler.config import ConfigError, Settings, load_settings
from aws_reconciler.model import Backend, TiKey

ECS_ENV = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "main",
    "AIRFLOW__AWS_RECONCILER_ECS__ALLOWED_CLUSTERS": "gpu, main, spot",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
    "AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS": "5",
}
BATCH_ENV = {
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "jobs",
    "AIRFLOW__AWS_RECONCILER_BATCH__ALLOWED_JOB_QUEUES": '["big"]',
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "airflow-job",
    "AIRFLOW__AWS_RECONCILER_BATCH__MAX_SUBMIT_JOB_ATTEMPTS": "7",
}
KEY = TiKey("dag", "task", "run", -1, 1)


def settings_with(tmp_path: Path, **env: str) -> Settings:
    return load_settings(environ=env, cfg_path=tmp_path / "absent.cfg")


def test_one_descriptor_per_backend_kind() -> None:
    assert sorted(d.kind for d in DESCRIPTORS) == sorted(Backend)
    for kind in Backend:
        assert descriptor_for(kind).kind is kind


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        (ECS_ENV, [Backend.ECS]),
        (BATCH_ENV, [Backend.BATCH]),
        ({**BATCH_ENV, **ECS_ENV}, [Backend.ECS, Backend.BATCH]),
    ],
)
def test_enabled_backends_follow_their_target_setting(
    tmp_path: Path, env: dict[str, str], expected: list[Backend]
) -> None:
    assert [d.kind for d in enabled(settings_with(tmp_path, **env))] == expected


@pytest.mark.parametrize(
    ("descriptor", "targets", "attempts"),
    [(ECS, ["main", "gpu", "spot"], 5), (BATCH, ["jobs", "big"], 7)],
)
def test_targets_default_first_without_repeats_and_attempt_budget(
    tmp_path: Path, descriptor: BackendDescriptor, targets: list[str], attempts: int
) -> None:
    section = descriptor.settings_of(settings_with(tmp_path, **ECS_ENV, **BATCH_ENV))
    assert section.targets == targets
    assert section.max_attempts == attempts


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [
        (ECS, "EcsExecutor needs [aws_reconciler_ecs] cluster (AIRFLOW__AWS_RECONCILER_ECS__CLUSTER)"),
        (BATCH, "BatchExecutor needs [aws_reconciler_batch] job_queue (AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE)"),
    ],
)
def test_require_names_the_missing_option(tmp_path: Path, descriptor: BackendDescriptor, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        descriptor.require(settings_with(tmp_path))
    assert str(info.value) == message


def test_require_runs_the_backends_own_start_up_checks(tmp_path: Path) -> None:
    bad = settings_with(tmp_path, **BATCH_ENV, AIRFLOW__AWS_RECONCILER_BATCH__SUBMIT_JOB_KWARGS='{"jobName": "x"}')
    with pytest.raises(ConfigError, match="submit_job_kwargs: 'jobName' cannot be set"):
        BATCH.require(bad)
    assert BATCH.require(settings_with(tmp_path, **BATCH_ENV)).target == "jobs"


@pytest.mark.parametrize(("descriptor", "target"), [(ECS, "main"), (BATCH, "jobs")])
def test_built_request_names_its_target_under_the_descriptors_key(
    tmp_path: Path, descriptor: BackendDescriptor, target: str
) -> None:
    settings = settings_with(tmp_path, **ECS_ENV, **BATCH_ENV)
    request = descriptor.build_request(
        descriptor.settings_of(settings),
        deployment="airflow",
        record_id="0" * 36,
        key=KEY,
        command=["true"],
        executor_config=None,
    )
    assert request[descriptor.target_key] == target


class _Lookup:
    """A log lookup answering from a fixed DescribeTaskDefinition / DescribeJobs reply."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def client(self, service: str, region: str | None = None) -> Any:
        lookup = self

        class Client:
            def describe_task_definition(self, **_: Any) -> Any:
                lookup.calls.append("DescribeTaskDefinition")
                return lookup.answers["task_definition"]

            def describe_jobs(self, **_: Any) -> Any:
                lookup.calls.append("DescribeJobs")
                return lookup.answers["jobs"]

        return Client()

    def memo(self, namespace: str, key: Any, compute: Any, *, ttl: float | None = None) -> Any:
        return compute()


def test_ecs_locator_reads_one_request_field_never_the_spec(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, **ECS_ENV)
    asked: list[str] = []

    def field(name: str) -> str:
        asked.append(name)
        return "airflow-task:3"

    options = {"awslogs-group": "/airflow", "awslogs-stream-prefix": "p"}
    lookup = _Lookup(
        {
            "task_definition": {
                "taskDefinition": {
                    "taskDefinitionArn": "arn:td/airflow-task:3",
                    "containerDefinitions": [
                        {"name": "base", "logConfiguration": {"logDriver": "awslogs", "options": options}}
                    ],
                }
            }
        }
    )
    subject = LogSubject(record_id="r1", external_id="arn:aws:ecs:r:1:task/main/abc123", request_field=field)
    location = ECS.locate_logs(lookup, settings.ecs, subject)
    assert (location.group, location.stream) == ("/airflow", "p/base/abc123")
    assert asked == ["taskDefinition"]


def test_batch_locator_has_no_stream_until_the_job_started(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, **BATCH_ENV)
    subject = LogSubject(record_id="r1", external_id="job-1", request_field=lambda name: None)
    waiting = _Lookup({"jobs": {"jobs": [{"container": {}}]}})
    assert BATCH.locate_logs(waiting, settings.batch, subject) is None
    started = _Lookup({"jobs": {"jobs": [{"container": {"logStreamName": "s/1"}}]}})
    location = BATCH.locate_logs(started, settings.batch, subject)
    assert location is not None and (location.group, location.stream) == ("/aws/batch/job", "s/1")


def test_executors_take_kind_and_behaviour_from_their_descriptor() -> None:
    pytest.importorskip("airflow")
    from aws_reconciler.executor import BatchExecutor, EcsExecutor

    assert (EcsExecutor.backend, EcsExecutor.descriptor) == (Backend.ECS, ECS)
    assert (BatchExecutor.backend, BatchExecutor.descriptor) == (Backend.BATCH, BATCH)
    # Nothing backend-specific is left on the executor classes themselves.
    for cls in (EcsExecutor, BatchExecutor):
        assert set(vars(cls)) - {"__module__", "__doc__", "descriptor", "backend", "__firstlineno__"} <= {
            "__static_attributes__",
            "__qualname__",
        }


@pytest.mark.parametrize(
    ("descriptor", "option", "value", "message"),
    [
        (ECS, "RUN_TASK_KWARGS", '{"count": 2}', "run_task_kwargs: 'count' cannot be set: exactly one task runs"),
        (ECS, "RUN_TASK_KWARGS", '{"startedBy": "x"}', "run_task_kwargs: 'startedBy' cannot be set"),
        (ECS, "RUN_TASK_KWARGS", '{"cluster": "other"}', "run_task_kwargs: set the cluster with cluster"),
        (BATCH, "SUBMIT_JOB_KWARGS", '{"jobQueue": "q"}', "submit_job_kwargs: set the jobQueue with job_queue"),
        (BATCH, "SUBMIT_JOB_KWARGS", '{"dependsOn": []}', "submit_job_kwargs: 'dependsOn' cannot be set"),
    ],
)
def test_request_options_may_not_set_what_the_reconciler_owns(
    tmp_path: Path, descriptor: BackendDescriptor, option: str, value: str, message: str
) -> None:
    section = "ECS" if descriptor is ECS else "BATCH"
    settings = settings_with(
        tmp_path, **ECS_ENV, **BATCH_ENV, **{f"AIRFLOW__AWS_RECONCILER_{section}__{option}": value}
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        descriptor.require(settings)
