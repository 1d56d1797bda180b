"""Where an ECS task's Airflow container logs: the API server's log view asks this.

Only read calls the API server's role may make (deploy/iam/scheduler-policy.json):
DescribeTaskDefinition, never DescribeTasks (its answer carries the workload token).
"""

from __future__ import annotations

from typing import Any

from ...config.models import EcsSettings
from ..descriptor import LogLocation, LogLookup, LogSubject, LogsUnavailable

#: How long a family name (no revision) stays resolved to its latest revision's log options.
FAMILY_TTL = 300.0


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
