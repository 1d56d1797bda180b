"""Resolve and validate the SubmitJob request of one task instance, at queue time.

Pure and offline (no AWS calls), like the ECS twin: the executor runs it inside the scheduler so
a bad ``executor_config`` fails that one task at once with a message naming the key, and the
reconciler later only adds the per-attempt ``jobName``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.model import StructureShape

from ...config.models import BatchSettings
from ...model import TiKey
from ..merge import clone, deep_merge
from ..requests import (
    InvalidExecutorConfig,
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

__all__ = ["InvalidExecutorConfig", "build_submit_job_request", "check_settings", "job_name", "submit_job_shape"]

# AWS Batch rejects a SubmitJob payload over 30 KiB (service quotas page).
MAX_PAYLOAD_BYTES = 30 * 1024
MAX_TAGS = 50
MAX_JOB_NAME = 128
# Batch reserves this prefix for the variables it sets itself.
RESERVED_ENV_PREFIX = "AWS_BATCH"
_NOT_CONTAINER = (
    "the Airflow task's command goes into containerOverrides: use a job definition with containerProperties"
)
# The reconciler sets these, or they would break "one job per task instance".
RESERVED_KEYS = {
    "jobName": "the reconciler names each submit attempt af-<id>-<attempt> (Batch has no client token)",
    "arrayProperties": "exactly one job runs per task instance",
    "dependsOn": "Airflow orders the tasks; a dependency would hold the job in PENDING",
    "nodeOverrides": f"multi-node parallel jobs are not supported; {_NOT_CONTAINER}",
    "ecsPropertiesOverride": f"not supported; {_NOT_CONTAINER}",
    "eksPropertiesOverride": f"not supported; {_NOT_CONTAINER}",
}
TASK_CONFIG = TaskConfigRules(
    service="batch",
    operation="SubmitJob",
    target_key="jobQueue",
    reserved=RESERVED_KEYS,
    settings_option="submit_job_kwargs",
)
#: The resolved requests of this process's distinct executor_configs.
TEMPLATES: RequestTemplates[SubmitJobTemplate] = RequestTemplates()
_NAME_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# What the lookup before a submit needs to fill in; any valid name of the same length would do.
_PLACEHOLDER_ID = "0" * 36


def submit_job_shape() -> StructureShape:
    """The SubmitJob input shape from botocore's bundled service model: the authoritative schema."""
    return input_shape("batch", "SubmitJob")


def job_name(record_id: str, attempt: int) -> str:
    """``af-<id>-<attempt>``: Batch's only handle for idempotency (found with ListJobs' JOB_NAME filter).

    Names allow 128 letters, digits, hyphens and underscores. Airflow's ids are UUIDs and fit;
    any other id is replaced by a digest so that the name stays valid and unique per attempt.
    """
    stem = record_id if _NAME_SAFE.match(record_id) else hashlib.sha256(record_id.encode()).hexdigest()[:40]
    name = f"af-{stem}-{attempt}"
    assert len(name) <= MAX_JOB_NAME
    return name


def check_settings(batch: BatchSettings) -> None:
    """``submit_job_kwargs`` may not set what the reconciler owns: a :class:`ConfigError` at start-up."""
    TASK_CONFIG.check_section(batch)


def base_request(batch: BatchSettings) -> dict[str, Any]:
    """The request every task starts from, built from ``[aws_reconciler_batch]``."""
    assert batch.job_queue and batch.job_definition
    # propagateTags: the ECS task under the job carries the identity tags too (cost allocation,
    # and an operator looking at the cluster sees which task instance a task belongs to).
    request: dict[str, Any] = {
        "jobQueue": batch.job_queue,
        "jobDefinition": batch.job_definition,
        "propagateTags": True,
    }
    return deep_merge(request, batch.submit_job_kwargs)


def build_submit_job_request(
    *,
    batch: BatchSettings,
    deployment: str,
    record_id: str,
    key: TiKey,
    command: Sequence[str],
    executor_config: Any = None,
    team: str | None = None,
) -> dict[str, Any]:
    """The full SubmitJob request (without ``jobName``) or :class:`InvalidExecutorConfig`;
    ``team``: the Airflow team whose executor queued it (tagged for its reconciler).

    What depends on the ``executor_config`` alone is checked, merged and validated once per
    distinct one (see :class:`~aws_reconciler.backends.requests.RequestTemplates`).
    """
    command = list(command)
    return TEMPLATES.build(
        batch,
        deployment=deployment,
        team=team,
        executor_config=executor_config,
        resolve=lambda: _resolve(batch, executor_config),
        fill=lambda template: template.fill(
            deployment=deployment, record_id=record_id, key=key, command=command, team=team
        ),
        validate=lambda request: validate(_as_sent(request), submit_job_shape()),
        finish=_check_payload_size,
        plain=plain_fields(record_id, command),
    )


@dataclass(frozen=True)
class SubmitJobTemplate:
    """A SubmitJob request resolved from the settings and one ``executor_config``, but for the
    task's command and tags. Never handed out: :meth:`fill` returns a copy."""

    request: dict[str, Any]
    # The tags the settings and executor_config set (identity tags win).
    user_tags: Mapping[str, Any]

    def fill(
        self, *, deployment: str, record_id: str, key: TiKey, command: list[str], team: str | None
    ) -> dict[str, Any]:
        """The request of one task."""
        request: dict[str, Any] = clone(self.request)
        request["containerOverrides"]["command"] = list(command)
        request["tags"] = {
            **self.user_tags,
            **identity_tags(deployment=deployment, record_id=record_id, key=key, team=team),
        }
        if len(request["tags"]) > MAX_TAGS:
            raise InvalidExecutorConfig("tags", f"{len(request['tags'])} tags, over AWS's limit of {MAX_TAGS}")
        return request


def _resolve(batch: BatchSettings, executor_config: Any) -> SubmitJobTemplate:
    overrides = _check_executor_config(executor_config, batch)
    request = deep_merge(base_request(batch), overrides)
    container = request.setdefault("containerOverrides", {})
    if not isinstance(container, dict):
        raise InvalidExecutorConfig("containerOverrides", "must be a dict of container overrides")
    _check_environment(container.get("environment"))
    user_tags = request.get("tags") or {}
    if not isinstance(user_tags, Mapping):
        raise InvalidExecutorConfig("tags", "Batch tags are a dict of key: value")
    return SubmitJobTemplate(request=request, user_tags=user_tags)


def _as_sent(request: dict[str, Any]) -> dict[str, Any]:
    # Validated as it will be sent; the name stands in for the per-attempt one of the same length.
    return {**request, "jobName": job_name(_PLACEHOLDER_ID, 1)}


def _check_payload_size(request: dict[str, Any]) -> None:
    what = "the SubmitJob request"
    check_size(_as_sent(request), limit=MAX_PAYLOAD_BYTES, key="containerOverrides", what=what, encode=True)


def _check_executor_config(executor_config: Any, batch: BatchSettings) -> dict[str, Any]:
    config = TASK_CONFIG.check(executor_config, batch)
    tags = config.get("tags")
    if isinstance(tags, Mapping):
        check_no_identity_tags(tags)
    check_command_not_overridden(
        config.get("containerOverrides"), key="containerOverrides.command", what="the container's command"
    )
    return config


def _check_environment(environment: Any) -> None:
    for item in environment or []:
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name.startswith(RESERVED_ENV_PREFIX):
            raise InvalidExecutorConfig(
                f"containerOverrides.environment.{name}", f"names starting with {RESERVED_ENV_PREFIX} are Batch's own"
            )
