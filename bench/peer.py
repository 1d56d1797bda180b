"""The peer: ``airflow.providers.amazon.aws.executors.ecs.ecs_executor.AwsEcsExecutor``.

Configured through ``[aws_ecs_executor]`` environment variables with the same cluster, task
definition, container, launch type and network as ours, against the same sandbox (boto3 follows
``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.providers.amazon.aws.executors.ecs.ecs_executor import AwsEcsExecutor

PREFIX = "AIRFLOW__AWS_ECS_EXECUTOR__"
_OURS = "AIRFLOW__AWS_RECONCILER_ECS__"


def configure(world: Mapping[str, str]) -> None:
    """Point the peer's configuration at one sandbox world."""
    os.environ.update(
        {
            f"{PREFIX}CLUSTER": world[f"{_OURS}CLUSTER"],
            f"{PREFIX}TASK_DEFINITION": world[f"{_OURS}TASK_DEFINITION"],
            f"{PREFIX}CONTAINER_NAME": world[f"{_OURS}CONTAINER_NAME"],
            f"{PREFIX}SUBNETS": world[f"{_OURS}SUBNETS"],
            f"{PREFIX}SECURITY_GROUPS": world[f"{_OURS}SECURITY_GROUPS"],
            f"{PREFIX}REGION_NAME": world[f"{_OURS}REGION_NAME"],
            f"{PREFIX}LAUNCH_TYPE": "FARGATE",
        }
    )


def new_executor(world: Mapping[str, str], *, parallelism: int) -> AwsEcsExecutor:
    """A started peer executor (its start-up health check makes one StopTask call)."""
    configure(world)
    executor = AwsEcsExecutor(parallelism=parallelism)
    executor.start()
    return executor


def launched(executor: AwsEcsExecutor) -> int:
    """Tasks whose RunTask was accepted and that the peer now tracks."""
    return len(executor.active_workers.tasks)


def heartbeat_until_launched(executor: AwsEcsExecutor, n: int, *, max_heartbeats: int = 100) -> list[float]:
    """Heartbeat (as the scheduler loop does) until ``n`` tasks run; returns each heartbeat's seconds."""
    import time

    durations = []
    for _ in range(max_heartbeats):
        start = time.perf_counter()
        executor.heartbeat()
        durations.append(time.perf_counter() - start)
        if launched(executor) >= n and not executor.pending_workloads:
            return durations
    raise RuntimeError(f"the peer launched only {launched(executor)} of {n} tasks in {max_heartbeats} heartbeats")


def task_arns(executor: AwsEcsExecutor) -> dict[TaskInstanceKey, str]:
    """TI key -> task ARN, as the scheduler records it in ``ti.external_executor_id``.

    The peer reports each launch as ``running_state(key, arn)``; the scheduler writes that info
    into the TI, which is what a restarted scheduler hands to ``try_adopt_task_instances``.
    """
    return {
        key: str(info)
        for key, (_state, info) in executor.get_event_buffer().items()
        if isinstance(key, TaskInstanceKey)
    }
