"""Resolve the effective settings and explain where each came from.

A bad value stops start-up with a :class:`ConfigError` that names the option, where it was set
and the value (never the value of a secret), so an operator can fix it without reading code.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from .migration import provider_warnings
from .models import EMPTY_MEANS_OFF, SECRET_OPTIONS, BatchSettings, CoreSettings, EcsSettings, SectionSettings
from .sources import RawConfig, config_section, env_var_name

SECTIONS: tuple[type[SectionSettings], ...] = (CoreSettings, EcsSettings, BatchSettings)
DEFAULT_TASK_QUEUED_TIMEOUT = 600.0
REDACTED = "***"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the option and its origin."""


#: The environment variable naming the Airflow team whose settings a process reads (a team's own
#: reconciler; ``aws-reconciler --team`` sets it). The executors get their team from Airflow.
TEAM_ENV = "AWS_RECONCILER_TEAM"
#: Airflow's rule for team names (``airflow teams create``).
TEAM_NAME = re.compile(r"^[A-Za-z0-9_-]{3,50}$")


class _FromEnvironment:
    """The default of ``load_settings(team=...)``: the team named by :data:`TEAM_ENV`, if any."""


FROM_ENVIRONMENT = _FromEnvironment()


def check_team_name(team: str) -> str:
    """``team`` when Airflow would accept it as a team's name; else :class:`ConfigError` saying why."""
    if not TEAM_NAME.match(team):
        raise ConfigError(
            f"invalid team name {team!r}: Airflow's team names are 3-50 letters, digits, '-' and '_' "
            f"(from --team or {TEAM_ENV})"
        )
    return team


#: Airflow's own resolved value of ``[section] option`` (``conf.get``), for the scheduler side,
#: where Airflow resolves its ``_cmd`` and ``_secret`` options and defaults; ``None`` when unset.
AirflowConf = Callable[[str, str], str | None]

NO_STORE = (
    "no task store is configured: set [aws_reconciler] store_url (env AIRFLOW__AWS_RECONCILER__STORE_URL) "
    "or store_url_cmd, or Airflow's [database] sql_alchemy_conn / sql_alchemy_conn_cmd"
)


@dataclass(frozen=True)
class Settings:
    """Every section, validated, plus values derived from Airflow's own configuration.

    ``warnings`` are things an operator should hear about at start-up that do not stop it
    (provider settings left behind, say); the commands and executors log them once.
    """

    core: CoreSettings
    ecs: EcsSettings
    batch: BatchSettings
    resolved_store_url: str | None
    task_queued_timeout: float
    origins: Mapping[tuple[str, str], str]
    warnings: tuple[str, ...] = field(default=())
    #: ``[aws_reconciler] token_key`` (or the output of ``token_key_cmd``); ``None``: not configured.
    token_key: SecretStr | None = field(default=None, repr=False)
    #: The Airflow team these settings are of (multi-team deployments); ``None``: deployment-wide.
    team: str | None = None

    @property
    def store_url(self) -> str:
        """The task store's URL; :class:`ConfigError` when none is configured anywhere.

        Never a SQLite file invented on the spot: a reconciler and a scheduler that each fell back
        to their own file would each see an empty store, and nothing would ever launch or fail.
        """
        if self.resolved_store_url is None:
            raise ConfigError(NO_STORE)
        return self.resolved_store_url

    def require_backend(self) -> None:
        """Fail clearly when the reconciler would have nothing to reconcile."""
        if not self.ecs.enabled and not self.batch.enabled:
            ecs = config_section("aws_reconciler_ecs", self.team)
            batch = config_section("aws_reconciler_batch", self.team)
            raise ConfigError(
                f"no backend is configured{self.of_team}: set [{ecs}] cluster "
                f"(env {env_var_name('aws_reconciler_ecs', 'cluster', self.team)}) and/or [{batch}] job_queue "
                f"(env {env_var_name('aws_reconciler_batch', 'job_queue', self.team)})"
            )

    @property
    def of_team(self) -> str:
        """`` for team <name>`` in messages, or nothing outside multi-team deployments."""
        return f" for team {self.team}" if self.team else ""

    @property
    def token_key_origin(self) -> str:
        """Where ``token_key`` came from, for messages about it."""
        return self.origins.get(("aws_reconciler", "token_key"), "default")

    @property
    def runnable_timeout(self) -> float:
        """Seconds a Batch job may stay RUNNABLE; the workload token's lifetime unless set."""
        return self.batch.runnable_timeout or self.task_queued_timeout


def load_settings(
    *,
    environ: Mapping[str, str] | None = None,
    cfg_path: Path | None = None,
    airflow_conf: AirflowConf | None = None,
    team: str | _FromEnvironment | None = FROM_ENVIRONMENT,
) -> Settings:
    """Read defaults < ``airflow.cfg`` < environment and validate every section.

    ``airflow_conf`` (the scheduler side) resolves what only Airflow can: ``sql_alchemy_conn_secret``
    through its secrets backend, and its default database.

    ``team``: the Airflow team whose settings to read (Airflow 3's team-scoped convention:
    ``AIRFLOW__<TEAM>___AWS_RECONCILER_ECS__CLUSTER``, ``[<team>=aws_reconciler_ecs]``; no
    fallback to the deployment-wide values, as Airflow's own ``ExecutorConf``). Airflow's
    ``[database]`` and ``[scheduler]`` are deployment-wide, so a team's store defaults to
    Airflow's database like everyone's. By default the team named by ``AWS_RECONCILER_TEAM``
    (what ``aws-reconciler --team`` sets), else none.
    """
    raw = RawConfig(environ=environ, cfg_path=cfg_path)
    if isinstance(team, _FromEnvironment):
        team = raw.environ.get(TEAM_ENV) or None
    if team is not None:
        check_team_name(team)
    ours = raw.scoped(team)
    origins: dict[tuple[str, str], str] = {}
    models: dict[str, SectionSettings] = {}
    for model in SECTIONS:
        models[model.section] = _load_section(model, ours, origins)
    core = models["aws_reconciler"]
    ecs = models["aws_reconciler_ecs"]
    batch = models["aws_reconciler_batch"]
    assert isinstance(core, CoreSettings) and isinstance(ecs, EcsSettings) and isinstance(batch, BatchSettings)
    return Settings(
        core=core,
        ecs=ecs,
        batch=batch,
        resolved_store_url=_store_url(core, raw, origins, airflow_conf),
        task_queued_timeout=_task_queued_timeout(core, raw, origins),
        origins=origins,
        warnings=tuple(provider_warnings(ours)),
        token_key=_token_key(core, origins),
        team=team,
    )


def _load_section(model: type[SectionSettings], raw: RawConfig, origins: dict[tuple[str, str], str]) -> SectionSettings:
    section = model.section
    values: dict[str, Any] = {}
    for option, found in raw.options(section).items():
        if option not in model.model_fields:
            known = ", ".join(sorted(model.model_fields))
            shown = config_section(section, raw.team)
            raise ConfigError(f"unknown option [{shown}] {option} (from {found.origin}); known options: {known}")
        if not found.value.strip() and option not in EMPTY_MEANS_OFF:
            # `airflow config` writes provider options out as "option = ": empty means unset.
            continue
        values[option] = found.value
        origins[(section, option)] = found.origin
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_explain(section, exc, values, origins, team=raw.team)) from None


def _explain(
    section: str,
    exc: ValidationError,
    values: Mapping[str, Any],
    origins: Mapping[tuple[str, str], str],
    *,
    team: str | None = None,
) -> str:
    lines = []
    named = config_section(section, team)
    for error in exc.errors():
        option = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if option:
            shown = REDACTED if option in SECRET_OPTIONS else values.get(option, "<default>")
            origin = origins.get((section, option), "default")
            lines.append(f"invalid setting [{named}] {option} = {shown!r} (from {origin}): {message}")
        else:
            lines.append(f"invalid settings in [{named}]: {message}")
    return "; ".join(lines)


def _store_url(
    core: CoreSettings, raw: RawConfig, origins: dict[tuple[str, str], str], airflow_conf: AirflowConf | None
) -> str | None:
    key = ("aws_reconciler", "store_url")
    if core.store_url is not None:
        return core.store_url.get_secret_value()
    if core.store_url_cmd:
        origins[key] = f"output of [aws_reconciler] store_url_cmd ({origins.get(('aws_reconciler', 'store_url_cmd'))})"
        return run_command("[aws_reconciler] store_url_cmd", core.store_url_cmd)
    found = raw.get("database", "sql_alchemy_conn")
    if found is not None and found.value.strip():
        origins[key] = f"{found.origin} sql_alchemy_conn"
        return found.value
    command = raw.get("database", "sql_alchemy_conn_cmd")
    if command is not None and command.value.strip():
        origins[key] = f"output of {command.origin} sql_alchemy_conn_cmd"
        return run_command("[database] sql_alchemy_conn_cmd", command.value)
    if airflow_conf is not None:
        value = airflow_conf("database", "sql_alchemy_conn")
        if value:
            origins[key] = "Airflow's [database] sql_alchemy_conn"
            return value
    secret = raw.get("database", "sql_alchemy_conn_secret")
    if secret is not None and secret.value.strip():
        raise ConfigError(
            f"[database] sql_alchemy_conn_secret (from {secret.origin}) needs Airflow's secrets backend, which the "
            "reconciler does not load: give it [aws_reconciler] store_url or store_url_cmd"
        )
    return None


def _token_key(core: CoreSettings, origins: dict[tuple[str, str], str]) -> SecretStr | None:
    if core.token_key is not None:
        return core.token_key
    if core.token_key_cmd:
        command_origin = origins.get(("aws_reconciler", "token_key_cmd"))
        origins[("aws_reconciler", "token_key")] = f"output of [aws_reconciler] token_key_cmd ({command_origin})"
        return SecretStr(run_command("[aws_reconciler] token_key_cmd", core.token_key_cmd))
    return None


def run_command(option: str, command: str, *, timeout: float = 60) -> str:
    """The output of an Airflow-style ``*_cmd`` option (no shell, as Airflow runs them).

    The output is a secret: it never appears in an error; stderr's first line may.
    """
    try:
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{option} = {command!r} could not run: {type(exc).__name__}: {exc}") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise ConfigError(f"{option} = {command!r} exited {result.returncode}: {reason}")
    value = result.stdout.strip()
    if not value:
        raise ConfigError(f"{option} = {command!r} printed nothing")
    return value


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
                value = redact_url(settings.resolved_store_url) if settings.resolved_store_url else "(not configured)"
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
