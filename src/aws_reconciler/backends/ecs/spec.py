"""Resolve and validate the RunTask request of one task instance, at queue time.

Pure and offline (no AWS calls): the executor runs it inside the scheduler so a bad
``executor_config`` fails that one task at once, with a message naming the key, and the
reconciler later only adds the per-attempt ``clientToken``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.model import StructureShape

from ...config.models import EcsSettings
from ...model import TiKey
from ..merge import clone, deep_merge
from ..requests import (
    RequestTemplates,
    TaskConfigRules,
    check_command_not_overridden,
    check_no_identity_tags,
    check_size,
    input_shape,
    plain_fields,
    validate,
)
from ..tags import identity_tags

# ECS rejects a RunTask whose overrides serialise to more than this many characters.
MAX_OVERRIDES_CHARS = 8192
# The reconciler sets these; letting a task choose them would break identity or idempotency.
RESERVED_KEYS = {
    "clientToken": "the reconciler sets it per launch attempt for idempotency",
    "startedBy": "it identifies this deployment's tasks",
    "count": "exactly one task runs per task instance",
}
TASK_CONFIG = TaskConfigRules(
    service="ecs", operation="RunTask", target_key="cluster", reserved=RESERVED_KEYS, settings_option="run_task_kwargs"
)
#: The resolved requests of this process's distinct executor_configs.
TEMPLATES: RequestTemplates[RunTaskTemplate] = RequestTemplates()


def check_settings(ecs: EcsSettings) -> None:
    """``run_task_kwargs`` may not set what the reconciler owns: a :class:`ConfigError` at start-up."""
    TASK_CONFIG.check_section(ecs)


def run_task_shape() -> StructureShape:
    """The RunTask input shape from botocore's bundled service model: the authoritative schema."""
    return input_shape("ecs", "RunTask")


def base_request(ecs: EcsSettings) -> dict[str, Any]:
    """The request every task starts from, built from ``[aws_reconciler_ecs]``."""
    assert ecs.cluster and ecs.task_definition and ecs.container_name
    request: dict[str, Any] = {"cluster": ecs.cluster, "taskDefinition": ecs.task_definition}
    if ecs.launch_type:
        request["launchType"] = ecs.launch_type
    if ecs.capacity_provider_strategy:
        request["capacityProviderStrategy"] = ecs.capacity_provider_strategy
    if ecs.platform_version:
        request["platformVersion"] = ecs.platform_version
    if ecs.subnets or ecs.security_groups:
        request["networkConfiguration"] = {
            "awsvpcConfiguration": {
                "subnets": list(ecs.subnets),
                "securityGroups": list(ecs.security_groups),
                "assignPublicIp": "ENABLED" if ecs.assign_public_ip else "DISABLED",
            }
        }
    request["overrides"] = {"containerOverrides": [{"name": ecs.container_name}]}
    return deep_merge(request, ecs.run_task_kwargs)


def build_run_task_request(
    *,
    ecs: EcsSettings,
    deployment: str,
    record_id: str,
    key: TiKey,
    command: Sequence[str],
    executor_config: Any = None,
    team: str | None = None,
) -> dict[str, Any]:
    """The full RunTask request (without ``clientToken``) or :class:`InvalidExecutorConfig`;
    ``team``: the Airflow team whose executor queued it (tagged for its reconciler).

    What depends on the ``executor_config`` alone is checked, merged and validated once per
    distinct one (see :class:`~aws_reconciler.backends.requests.RequestTemplates`).
    """
    command = list(command)
    return TEMPLATES.build(
        ecs,
        deployment=deployment,
        team=team,
        executor_config=executor_config,
        resolve=lambda: _resolve(ecs, deployment, executor_config),
        fill=lambda template: template.fill(
            deployment=deployment, record_id=record_id, key=key, command=command, team=team
        ),
        validate=lambda request: validate(request, run_task_shape()),
        finish=_check_overrides_size,
        plain=plain_fields(record_id, command),
    )


@dataclass(frozen=True)
class RunTaskTemplate:
    """A RunTask request resolved from the settings and one ``executor_config``, but for the
    task's command and tags. Never handed out: :meth:`fill` returns a copy."""

    request: dict[str, Any]
    # Where the container that runs the Airflow task is in overrides.containerOverrides.
    container: int
    # The tags the settings and executor_config set, in their order (identity tags win).
    user_tags: dict[str, Any]

    def fill(
        self, *, deployment: str, record_id: str, key: TiKey, command: list[str], team: str | None
    ) -> dict[str, Any]:
        """The request of one task."""
        request: dict[str, Any] = clone(self.request)
        request["overrides"]["containerOverrides"][self.container]["command"] = list(command)
        tags = {**self.user_tags, **identity_tags(deployment=deployment, record_id=record_id, key=key, team=team)}
        request["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        return request


def _resolve(ecs: EcsSettings, deployment: str, executor_config: Any) -> RunTaskTemplate:
    overrides = _check_executor_config(executor_config, ecs)
    base = base_request(ecs)
    # A task choosing its own launch mode replaces the configured one rather than adding to it:
    # ECS rejects launchType together with capacityProviderStrategy.
    if "launchType" in overrides:
        base.pop("capacityProviderStrategy", None)
    if "capacityProviderStrategy" in overrides:
        base.pop("launchType", None)
    request = deep_merge(base, overrides)

    container = ecs.container_name
    containers = request.setdefault("overrides", {}).setdefault("containerOverrides", [])
    ours = next((i for i, c in enumerate(containers) if c.get("name") == container), None)
    if ours is None:
        ours = len(containers)
        containers.append({"name": container})

    if request.get("launchType") == "EC2":
        # Invalid for EC2 and a classic source of failed launches in other executors.
        request.pop("platformVersion", None)
    request["startedBy"] = deployment
    user_tags = {t["key"]: t["value"] for t in request.get("tags", []) if isinstance(t, Mapping)}
    return RunTaskTemplate(request=request, container=ours, user_tags=user_tags)


def _check_overrides_size(request: dict[str, Any]) -> None:
    check_size(request["overrides"], limit=MAX_OVERRIDES_CHARS, key="overrides", what="the RunTask overrides")


def _check_executor_config(executor_config: Any, ecs: EcsSettings) -> dict[str, Any]:
    config = TASK_CONFIG.check(executor_config, ecs)
    check_no_identity_tags(tag.get("key") for tag in config.get("tags", []) or [] if isinstance(tag, Mapping))
    containers = (config.get("overrides") or {}).get("containerOverrides") or []
    for item in containers:
        if isinstance(item, Mapping) and item.get("name") == ecs.container_name:
            check_command_not_overridden(
                item,
                key="overrides.containerOverrides.command",
                what=f"the command of container {ecs.container_name!r}",
            )
    return config
