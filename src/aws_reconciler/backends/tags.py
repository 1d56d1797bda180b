"""Identity tags shared by every backend: who owns a task on AWS, and which record it is."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..model import TiKey

DEPLOYMENT_TAG = "aws-reconciler:deployment"
ID_TAG = "aws-reconciler:id"
#: The Airflow team of the executor that queued it (multi-team deployments): a team's reconciler
#: owns only its own team's tasks, even where teams share a deployment name and a cluster.
TEAM_TAG = "aws-reconciler:team"
IDENTITY_TAGS = frozenset({DEPLOYMENT_TAG, ID_TAG, TEAM_TAG})
_TAG_VALUE_MAX = 256
_DISALLOWED = re.compile(r"[^\w +\-=.:/@]", re.ASCII)


def sanitize_tag_value(value: str) -> str:
    """AWS tag values allow letters, digits, spaces and + - = . _ : / @, up to 256 characters."""
    return _DISALLOWED.sub("_", value)[:_TAG_VALUE_MAX]


def identity_tags(*, deployment: str, record_id: str, key: TiKey, team: str | None = None) -> dict[str, str]:
    """Tags on every task/job. Only the first two (and a team's tag) identify; the rest are for
    humans and billing."""
    return {
        DEPLOYMENT_TAG: deployment,
        ID_TAG: record_id,
        **({TEAM_TAG: team} if team else {}),
        "airflow:dag_id": sanitize_tag_value(key.dag_id),
        "airflow:task_id": sanitize_tag_value(key.task_id),
        "airflow:run_id": sanitize_tag_value(key.run_id),
        "airflow:map_index": str(key.map_index),
        "airflow:try_number": str(key.try_number),
    }


def owned_record_id(tags: Mapping[str, str], *, deployment: str, team: str | None = None) -> str | None:
    """The record id when the tags say this deployment (and this team: no team tag for the
    deployment-wide executors) owns the resource, else ``None``."""
    if tags.get(DEPLOYMENT_TAG) != deployment or tags.get(TEAM_TAG) != team:
        return None
    return tags.get(ID_TAG) or None
