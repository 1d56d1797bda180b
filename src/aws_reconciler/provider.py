"""Airflow provider registration: lists the executors and documents every option.

Generated from the settings models so ``airflow config list --section aws_reconciler_ecs
--defaults`` can never drift from what the code reads.
"""

from __future__ import annotations

import json
from typing import Any, get_args

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import __version__
from .config.loader import SECTIONS
from .config.models import SECRET_OPTIONS

EXECUTORS = ["aws_reconciler.executor.EcsExecutor", "aws_reconciler.executor.BatchExecutor"]
SECTION_DESCRIPTIONS = {
    "aws_reconciler": "Shared settings of the aws-reconciler executors and the reconciler process.",
    "aws_reconciler_ecs": "How task instances become ECS tasks (EcsExecutor); mirrors [aws_ecs_executor].",
    "aws_reconciler_batch": "How task instances become AWS Batch jobs (BatchExecutor); mirrors [aws_batch_executor].",
}


def _option_type(field: FieldInfo) -> str:
    annotation = field.annotation
    kinds = {a for a in (get_args(annotation) or (annotation,)) if a is not type(None)}
    if kinds == {bool}:
        return "boolean"
    if kinds == {int}:
        return "integer"
    if kinds == {float}:
        return "float"
    return "string"


def _default(field: FieldInfo) -> str | None:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return None
    else:
        value = field.default
    # Airflow str.format()s defaults, so an empty JSON "{}" would break it: empty means unset.
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, list | dict):
        return (
            ",".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else json.dumps(value)
        )
    return str(value)


def config_sections() -> dict[str, Any]:
    """The ``config`` part of the provider info, one section per settings model."""
    sections: dict[str, Any] = {}
    for model in SECTIONS:
        options = {}
        for name, field in model.model_fields.items():
            options[name] = {
                "description": field.description or name,
                "version_added": "0.1.0",
                "type": _option_type(field),
                "example": None,
                "default": _default(field),
                "sensitive": name in SECRET_OPTIONS,
            }
        sections[model.section] = {"description": SECTION_DESCRIPTIONS[model.section], "options": options}
    return sections


def get_cli_commands() -> list[Any]:
    """The reconciler has its own CLI (``aws-reconciler``); nothing is added to ``airflow``."""
    return []


def get_provider_info() -> dict[str, Any]:
    """Entry point of the ``apache_airflow_provider`` group."""
    return {
        "package-name": "airflow-aws-reconciler",
        "name": "AWS Reconciler",
        "description": (
            "Executors that run task instances, deadline alert callbacks and connection tests as ECS tasks or "
            "AWS Batch jobs, launched by a separate reconciler; multi-team: one executor, reconciler and "
            "identity tag per team."
        ),
        "versions": [__version__],
        "executors": list(EXECUTORS),
        "cli": ["aws_reconciler.provider.get_cli_commands"],
        "config": config_sections(),
    }
