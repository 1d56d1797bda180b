"""What the task runner runs for an ECS task: the essential container's command, environment and logs.

Resolved once, when the task is launched, from the task definition revision the task names and
the RunTask ``overrides`` (AWS also fixes a task's definition at launch: a later revision or a
deregistration does not change a running task).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MISSING_IMAGE_MARKER",
    "ContainerPlan",
    "LogTarget",
    "container_env",
    "local_argv",
    "plan_container",
    "pull_failure",
]

#: An image whose name contains this never pulls: the demo's and the tests' way to make a task
#: fail before it starts, as a typo in an image name does on AWS.
MISSING_IMAGE_MARKER = "does-not-exist"

# "python", "python3", "python3.12", "/usr/local/bin/python3": the interpreter of the image.
_PYTHON = re.compile(r"python(3(\.\d+)*)?")


@dataclass(frozen=True)
class LogTarget:
    """Where the ``awslogs`` driver writes a container's output."""

    account_id: str
    region: str
    group: str
    stream: str
    create_group: bool = False


@dataclass(frozen=True)
class ContainerPlan:
    """The essential container of one task, as the runner starts it.

    ``argv`` is ``entryPoint + command`` (empty when the container has neither: the image's
    default command, which the sandbox cannot run). ``environment`` holds the task definition's
    variables updated by the override's; the runner puts them over its base environment.
    """

    name: str
    image: str
    argv: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)
    stop_timeout: float | None = None
    log: LogTarget | None = None


def _pairs(entries: Any) -> dict[str, str]:
    # ECS's [{"name": ..., "value": ...}] lists; later entries win, as they do on AWS.
    return {str(e["name"]): str(e.get("value", "")) for e in entries or [] if isinstance(e, dict) and "name" in e}


def _essential(definitions: list[dict[str, Any]]) -> dict[str, Any]:
    # "essential" defaults to true; a task has at least one essential container.
    return next((c for c in definitions if c.get("essential", True) is not False), definitions[0])


def _log_target(container: Mapping[str, Any], *, account_id: str, region: str, task_id: str) -> LogTarget | None:
    config = container.get("logConfiguration") or {}
    if config.get("logDriver") != "awslogs":
        return None  # other drivers (or none) ship nowhere the sandbox can serve
    options = config.get("options") or {}
    group = options.get("awslogs-group")
    if not group:
        return None
    prefix = options.get("awslogs-stream-prefix")
    # The awslogs driver's naming on ECS: prefix/container-name/task-id. Without a prefix (only
    # allowed on EC2) AWS names the stream after the Docker container id; the task id stands in.
    stream = f"{prefix}/{container['name']}/{task_id}" if prefix else task_id
    return LogTarget(
        account_id=account_id,
        region=str(options.get("awslogs-region") or region),
        group=str(group),
        stream=stream,
        create_group=str(options.get("awslogs-create-group", "")).lower() == "true",
    )


def plan_container(backend: Any, task: Any) -> ContainerPlan:
    """Resolve the essential container of ``task`` (a moto task object). Caller holds ``MOTO_LOCK``.

    Raises whatever moto raises when the task definition is gone (the caller fails the task).
    """
    definition = backend.describe_task_definition(task.task_definition_arn)
    container = _essential(list(definition.container_definitions))
    name = str(container.get("name", ""))
    override: dict[str, Any] = next(
        (o for o in (task.overrides or {}).get("containerOverrides") or [] if o.get("name") == name),
        {},
    )
    command = override.get("command")
    if command is None:
        command = container.get("command") or []
    argv = tuple(str(a) for a in [*(container.get("entryPoint") or []), *command])
    environment = {**_pairs(container.get("environment")), **_pairs(override.get("environment"))}
    stop_timeout = container.get("stopTimeout")
    # arn:aws:ecs:<region>:<account>:task/<cluster>/<id>
    account_id = task.task_arn.split(":")[4]
    return ContainerPlan(
        name=name,
        image=str(container.get("image", "")),
        argv=argv,
        environment=environment,
        stop_timeout=float(stop_timeout) if stop_timeout is not None else None,
        log=_log_target(container, account_id=account_id, region=task.region_name, task_id=task.id),
    )


def pull_failure(image: str) -> str | None:
    """The ``stoppedReason`` of a task whose image cannot be pulled, or None if it can."""
    if MISSING_IMAGE_MARKER not in image:
        return None
    # The wording of a Fargate task whose image tag does not exist.
    return (
        "CannotPullContainerError: pull image manifest has been retried 5 time(s): "
        f"failed to resolve ref {image}: {image}: not found"
    )


def local_argv(argv: tuple[str, ...], python: str) -> list[str]:
    """The command to run locally: a leading ``python``/``python3`` becomes ``python``.

    The image's interpreter does not exist here; the sandbox's own (with Airflow installed in
    the demo's virtualenv) stands in for it.
    """
    if argv and _PYTHON.fullmatch(os.path.basename(argv[0])):
        return [python, *argv[1:]]
    return list(argv)


def container_env(
    plan: ContainerPlan,
    *,
    base: Mapping[str, str],
    agent: Mapping[str, str],
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The process environment, each layer over the previous one.

    ``base`` (the sandbox's own environment) < ``agent`` (what the ECS agent would set, and
    what points the SDKs at the sandbox) < ``extra`` (``RunnerOptions.extra_env``) < the task
    definition's ``environment`` < the override's ``environment``.
    """
    return {**base, **agent, **extra, **plan.environment}
