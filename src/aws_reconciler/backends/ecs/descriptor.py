"""ECS as a backend: what the factory, the executor, ``check`` and the log view need of it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ...config import Settings
from ...config.models import EcsSettings
from ...model import Backend, Clock
from ..descriptor import BackendDescriptor, LogLocation, LogLookup, LogSubject, LogsUnavailable, Probe
from ..ratelimit import TokenBucket
from .backend import EcsBackend
from .spec import build_run_task_request

#: How long a family name (no revision) stays resolved to its latest revision's log options.
FAMILY_TTL = 300.0
# A bare task id: IAM builds the ARN in the caller's own account, so a policy scoped to
# `task/<cluster>/*` is evaluated exactly as for real tasks.
_MISSING_TASK = "0" * 32


def _build(settings: Settings, *, client: Any, may_act: Callable[[], bool], clock: Clock | None) -> EcsBackend:
    core, ecs = settings.core, settings.ecs
    assert ecs.container_name is not None
    return EcsBackend(
        client=client,
        deployment=core.deployment,
        clusters=ecs.targets,
        container_name=ecs.container_name,
        run_task_bucket=TokenBucket(rate=core.ecs_run_task_rate, burst=core.ecs_run_task_burst),
        describe_bucket=TokenBucket(rate=core.ecs_describe_rate, burst=core.ecs_describe_burst),
        fargate_bucket=TokenBucket(rate=core.fargate_launch_rate, burst=core.fargate_launch_burst),
        may_act=may_act,
    )


def probes(settings: Settings, client: Any) -> list[Probe]:
    """Every ECS call the reconciler makes, per configured cluster, in a form that changes nothing."""
    ecs, deployment = settings.ecs, settings.core.deployment
    assert ecs.task_definition is not None
    found = [
        Probe(
            f"ecs:DescribeTaskDefinition {ecs.task_definition}",
            partial(client.describe_task_definition, taskDefinition=ecs.task_definition),
        )
    ]
    for cluster in ecs.targets:
        found += [
            Probe(f"ecs:ListTasks {cluster}", partial(client.list_tasks, cluster=cluster, startedBy=deployment)),
            Probe(
                f"ecs:DescribeTasks {cluster}",
                partial(client.describe_tasks, cluster=cluster, tasks=[_MISSING_TASK], include=["TAGS"]),
            ),
            Probe(
                f"ecs:StopTask {cluster}",
                partial(client.stop_task, cluster=cluster, task=_MISSING_TASK, reason="aws-reconciler check"),
            ),
            # count=0 is rejected by parameter validation after authorisation: nothing can launch.
            Probe(
                f"ecs:RunTask {cluster} {ecs.task_definition}",
                partial(
                    client.run_task,
                    cluster=cluster,
                    taskDefinition=ecs.task_definition,
                    count=0,
                    startedBy=deployment,
                    tags=[{"key": "aws-reconciler:deployment", "value": deployment}],
                ),
            ),
        ]
    return found


def task_id_of(task_arn: str) -> str:
    """The id at the end of an ECS task ARN (``.../task/<cluster>/<id>`` or old ``.../task/<id>``)."""
    return task_arn.rsplit("/", 1)[-1]


def is_pinned(task_definition: str) -> bool:
    """``family:revision`` or a revision ARN: names one immutable revision (a bare family does not)."""
    return ":" in task_definition.rsplit("/", 1)[-1]


def _log_configurations(lookup: LogLookup, task_definition: str) -> tuple[str, dict[str, dict[str, Any] | None]]:
    definition = lookup.client("ecs").describe_task_definition(taskDefinition=task_definition)["taskDefinition"]
    # Only what locating the stream needs, so the cache stays small.
    containers = {str(c.get("name")): c.get("logConfiguration") for c in definition.get("containerDefinitions") or []}
    return str(definition.get("taskDefinitionArn") or task_definition), containers


def locate_logs(lookup: LogLookup, ecs: EcsSettings, subject: LogSubject) -> LogLocation:
    """Where the ``awslogs`` driver writes the Airflow container of this task:
    ``<awslogs-stream-prefix>/<container>/<task id>`` in ``awslogs-group``.

    The task definition is what the task's RunTask request named (one field of the stored request,
    read once per record). Its log options come from DescribeTaskDefinition, cached: forever for a
    revision (immutable), for :data:`FAMILY_TTL` for a bare family, which a later registration
    moves to a new revision. Not DescribeTasks: its answer carries the container command, i.e. the
    workload token, which has no business in the API server (botocore logs bodies at DEBUG).
    """
    container_name = ecs.container_name
    if not container_name:
        raise LogsUnavailable("[aws_reconciler_ecs] container_name is not set, so the task's container is unknown")
    task_definition = lookup.memo(
        "ecs:record-task-definition", subject.record_id, lambda: subject.request_field("taskDefinition")
    )
    if not task_definition:
        raise LogsUnavailable(f"the launch request of task record {subject.record_id} names no task definition")
    definition_arn, configurations = lookup.memo(
        "ecs:log-configurations",
        task_definition,
        lambda: _log_configurations(lookup, task_definition),
        ttl=None if is_pinned(task_definition) else FAMILY_TTL,
    )
    if container_name not in configurations:
        raise LogsUnavailable(f"task definition {definition_arn} has no container named {container_name!r}")
    config = configurations[container_name] or {}
    driver = config.get("logDriver")
    if driver != "awslogs":
        raise LogsUnavailable(
            f"container {container_name!r} of task definition {definition_arn} does not log to CloudWatch Logs "
            f"(log driver: {driver or 'none'}); configure the awslogs log driver with awslogs-group and "
            "awslogs-stream-prefix to see its output here"
        )
    options = config.get("options") or {}
    group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
    if not group:
        raise LogsUnavailable(f"container {container_name!r} of task definition {definition_arn} sets no awslogs-group")
    if not prefix:
        raise LogsUnavailable(
            f"container {container_name!r} of task definition {definition_arn} sets no awslogs-stream-prefix: its "
            "stream is then named after the Docker container id, which Airflow cannot know; set awslogs-stream-prefix"
        )
    return LogLocation(
        group=str(group),
        stream=f"{prefix}/{container_name}/{task_id_of(subject.external_id)}",
        region=str(options["awslogs-region"]) if options.get("awslogs-region") else None,
    )


ECS = BackendDescriptor(
    kind=Backend.ECS,
    service="ecs",
    executor_name="EcsExecutor",
    target_key="cluster",
    section=lambda settings: settings.ecs,
    build_request=lambda section, **request: build_run_task_request(ecs=section, **request),
    build=_build,
    probes=probes,
    locate_logs=locate_logs,
)
