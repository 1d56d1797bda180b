"""Resolve the effective settings and explain where each came from.

A bad value stops start-up with a :class:`ConfigError` that names the option, where it was set
and the value (never the value of a secret), so an operator can fix it without reading code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from .models import SECRET_OPTIONS, BatchSettings, CoreSettings, EcsSettings, SectionSettings
from .sources import RawConfig, airflow_home, env_var_name

SECTIONS: tuple[type[SectionSettings], ...] = (CoreSettings, EcsSettings, BatchSettings)
DEFAULT_TASK_QUEUED_TIMEOUT = 600.0
REDACTED = "***"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the option and its origin."""


@dataclass(frozen=True)
class Settings:
    """Every section, validated, plus values derived from Airflow's own configuration."""

    core: CoreSettings
    ecs: EcsSettings
    batch: BatchSettings
    store_url: str
    task_queued_timeout: float
    origins: Mapping[tuple[str, str], str]

    def require_backend(self) -> None:
        """Fail clearly when the reconciler would have nothing to reconcile."""
        if not self.ecs.enabled and not self.batch.enabled:
            raise ConfigError(
                f"no backend is configured: set [aws_reconciler_ecs] cluster "
                f"(env {env_var_name('aws_reconciler_ecs', 'cluster')}) and/or [aws_reconciler_batch] job_queue "
                f"(env {env_var_name('aws_reconciler_batch', 'job_queue')})"
            )

    @property
    def runnable_timeout(self) -> float:
        """Seconds a Batch job may stay RUNNABLE; the workload token's lifetime unless set."""
        return self.batch.runnable_timeout or self.task_queued_timeout


def load_settings(*, environ: Mapping[str, str] | None = None, cfg_path: Path | None = None) -> Settings:
    """Read defaults < ``airflow.cfg`` < environment and validate every section."""
    raw = RawConfig(environ=environ, cfg_path=cfg_path)
    origins: dict[tuple[str, str], str] = {}
    models: dict[str, SectionSettings] = {}
    for model in SECTIONS:
        models[model.section] = _load_section(model, raw, origins)
    core = models["aws_reconciler"]
    ecs = models["aws_reconciler_ecs"]
    batch = models["aws_reconciler_batch"]
    assert isinstance(core, CoreSettings) and isinstance(ecs, EcsSettings) and isinstance(batch, BatchSettings)
    return Settings(
        core=core,
        ecs=ecs,
        batch=batch,
        store_url=_store_url(core, raw, origins),
        task_queued_timeout=_task_queued_timeout(core, raw, origins),
        origins=origins,
    )


def _load_section(model: type[SectionSettings], raw: RawConfig, origins: dict[tuple[str, str], str]) -> SectionSettings:
    section = model.section
    values: dict[str, Any] = {}
    for option, found in raw.options(section).items():
        if option not in model.model_fields:
            known = ", ".join(sorted(model.model_fields))
            raise ConfigError(f"unknown option [{section}] {option} (from {found.origin}); known options: {known}")
        if not found.value.strip():
            # `airflow config` writes provider options out as "option = ": empty means unset.
            continue
        values[option] = found.value
        origins[(section, option)] = found.origin
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_explain(section, exc, values, origins)) from None


def _explain(
    section: str, exc: ValidationError, values: Mapping[str, Any], origins: Mapping[tuple[str, str], str]
) -> str:
    lines = []
    for error in exc.errors():
        option = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if option:
            shown = REDACTED if option in SECRET_OPTIONS else values.get(option, "<default>")
            origin = origins.get((section, option), "default")
            lines.append(f"invalid setting [{section}] {option} = {shown!r} (from {origin}): {message}")
        else:
            lines.append(f"invalid settings in [{section}]: {message}")
    return "; ".join(lines)


def _store_url(core: CoreSettings, raw: RawConfig, origins: dict[tuple[str, str], str]) -> str:
    if core.store_url is not None:
        return core.store_url.get_secret_value()
    found = raw.get("database", "sql_alchemy_conn")
    if found is not None:
        origins[("aws_reconciler", "store_url")] = f"{found.origin} sql_alchemy_conn"
        return found.value
    # Airflow's own default when nothing is configured.
    default = f"sqlite:///{airflow_home(raw.environ)}/airflow.db"
    origins[("aws_reconciler", "store_url")] = "default (Airflow's default database)"
    return default


def _task_queued_timeout(core: CoreSettings, raw: RawConfig, origins: dict[tuple[str, str], str]) -> float:
    if core.task_queued_timeout is not None:
        return core.task_queued_timeout
    found = raw.get("scheduler", "task_queued_timeout")
    if found is None:
        return DEFAULT_TASK_QUEUED_TIMEOUT
    try:
        value = float(found.value)
    except ValueError:
        raise ConfigError(
            f"invalid setting [scheduler] task_queued_timeout = {found.value!r} (from {found.origin}): not a number"
        ) from None
    origins[("aws_reconciler", "task_queued_timeout")] = f"{found.origin} task_queued_timeout"
    return value


def describe_settings(settings: Settings) -> list[tuple[str, str, str, str]]:
    """Rows of (section, option, value, origin) for ``aws-reconciler config show``; secrets redacted."""
    rows: list[tuple[str, str, str, str]] = []
    for model in (settings.core, settings.ecs, settings.batch):
        section = type(model).section
        for option in type(model).model_fields:
            if option == "section":
                continue
            value: Any = getattr(model, option)
            if option == "store_url":
                value = redact_url(settings.store_url)
            elif option == "task_queued_timeout":
                value = settings.task_queued_timeout
            origin = settings.origins.get((section, option), "default")
            rows.append((section, option, _render(value), origin))
    return rows


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to print and log."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return REDACTED
