"""Map an ECS task (as DescribeTasks returns it) to an :class:`Observation`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ...model import Phase
from ..base import Observation
from ..tags import owned_record_id

STARTING_STATUSES = frozenset({"PROVISIONING", "PENDING", "ACTIVATING"})
RUNNING_STATUSES = frozenset({"RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING"})
# Container reasons meaning the container never ran the task: launching again is safe.
PRE_START_REASONS = (
    "CannotPullContainerError",
    "ResourceInitializationError",
    "CannotStartContainerError",
    "CannotCreateContainerError",
    "ContainerRuntimeError",
    "ResourceNotFoundException",
)


# The timestamps an ECS Task State Change event carries as ISO-8601 text (DescribeTasks: datetimes).
EVENT_TIMESTAMPS = ("createdAt", "startedAt", "stoppedAt", "executionStoppedAt", "stoppingAt", "pullStartedAt")


def task_from_event(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The task of an "ECS Task State Change" event in DescribeTasks' shape: EventBridge renders
    timestamps as ISO-8601 text (``2026-12-01T18:00:00.123Z``) where boto3 gives datetimes."""
    if not isinstance(detail.get("taskArn"), str):
        raise ValueError("not an ECS task state change: no taskArn in detail")
    task = dict(detail)
    for name in EVENT_TIMESTAMPS:
        value = task.get(name)
        if isinstance(value, str):
            task[name] = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return task


def tags_of(task: Mapping[str, Any]) -> dict[str, str]:
    """ECS returns tags as a list of {key, value}."""
    return {t["key"]: t.get("value", "") for t in task.get("tags") or [] if "key" in t}


def observe_task(
    task: Mapping[str, Any], *, container_name: str, deployment: str, team: str | None = None
) -> Observation:
    """One task's state. The exit code of ``container_name`` decides success; in Airflow 3 a zero
    exit only means the task runner finished normally (the task's own state went through the
    Execution API), a non-zero one that the container ended abnormally."""
    status = str(task.get("lastStatus", ""))
    tags = tags_of(task)
    record_id = owned_record_id(tags, deployment=deployment, team=team)
    common: dict[str, Any] = {
        "external_id": task["taskArn"],
        "target": task.get("clusterArn"),
        "record_id": record_id,
        "owned": record_id is not None and task.get("startedBy") == deployment,
        "started_at": task.get("startedAt"),
        "created_at": task.get("createdAt"),
        "raw_status": status,
        "version": task.get("version") if isinstance(task.get("version"), int) else None,
    }
    if status in STARTING_STATUSES:
        return Observation(phase=Phase.PROVISIONING, **common)
    if status != "STOPPED":
        return Observation(phase=Phase.RUNNING, **common)

    containers = list(task.get("containers") or [])
    ours = next((c for c in containers if c.get("name") == container_name), containers[0] if containers else None)
    exit_code = ours.get("exitCode") if ours else None
    container_reason = (ours or {}).get("reason") or ""
    stop_code = task.get("stopCode")
    stopped_reason = task.get("stoppedReason") or ""
    never_started = (
        stop_code == "TaskFailedToStart"
        or not containers
        or any(marker in container_reason or marker in stopped_reason for marker in PRE_START_REASONS)
    )
    parts = [p for p in (stop_code, stopped_reason, container_reason) if p]
    if exit_code is not None:
        parts.append(f"exit code {exit_code}")
    succeeded = not never_started and exit_code == 0
    return Observation(
        phase=Phase.SUCCEEDED if succeeded else Phase.FAILED,
        finished_at=task.get("stoppedAt") or task.get("executionStoppedAt"),
        exit_code=exit_code,
        stop_code=stop_code,
        reason="; ".join(parts) or "stopped",
        never_started=never_started,
        **common,
    )
