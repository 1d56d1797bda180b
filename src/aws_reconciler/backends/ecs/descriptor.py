"""ECS as a backend: what the factory, the executor, ``check`` and the log view need of it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ...config import Settings
from ...model import Backend, Clock
from ..descriptor import BackendDescriptor, Probe
from ..ratelimit import TokenBucket
from .backend import EcsBackend
from .logs import locate_logs
from .spec import build_run_task_request, check_settings

# A bare task id: IAM builds the ARN in the caller's own account, so a policy scoped to
# `task/<cluster>/*` is evaluated exactly as for real tasks.
_MISSING_TASK = "0" * 32


def _build(settings: Settings, *, client: Any, may_act: Callable[[], bool], clock: Clock | None) -> EcsBackend:
    core, ecs = settings.core, settings.ecs
    check_settings(ecs)
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
        team=settings.team,
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


ECS = BackendDescriptor(
    kind=Backend.ECS,
    service="ecs",
    executor_name="EcsExecutor",
    target_key="cluster",
    event_source="aws.ecs",
    event_detail_type="ECS Task State Change",
    section=lambda settings: settings.ecs,
    build_request=lambda section, **request: build_run_task_request(ecs=section, **request),
    build=_build,
    probes=probes,
    locate_logs=locate_logs,
    check_settings=check_settings,
)
