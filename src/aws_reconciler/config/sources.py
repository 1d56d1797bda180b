"""Where raw option values come from: built-in defaults < ``airflow.cfg`` < environment.

Airflow's own configuration is read directly (with :mod:`configparser`) rather than through
``airflow.configuration.conf`` because the reconciler must run without Airflow installed.
Both the scheduler side and the reconciler read the same file and the same variables, so they
always agree on the effective settings.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "AIRFLOW__"
#: Airflow 3's team-scoped config file section: ``[<team>=<section>]``.
TEAM_SECTION_SEPARATOR = "="


def env_var_name(section: str, option: str, team: str | None = None) -> str:
    """The environment variable Airflow uses for ``[section] option``; for a team's own value,
    ``AIRFLOW__<TEAM>___<SECTION>__<OPTION>`` (Airflow 3's multi-team convention)."""
    return f"{_env_prefix(section, team)}{option.upper()}"


def _env_prefix(section: str, team: str | None) -> str:
    team_part = f"{team.upper()}___" if team else ""
    return f"{ENV_PREFIX}{team_part}{section.upper()}__"


def config_section(section: str, team: str | None = None) -> str:
    """The airflow.cfg section holding ``section``'s options (for a team: ``<team>=<section>``)."""
    return f"{team}{TEAM_SECTION_SEPARATOR}{section}" if team else section


def airflow_cfg_path(environ: Mapping[str, str]) -> Path:
    """Locate ``airflow.cfg`` the way Airflow does: ``AIRFLOW_CONFIG``, else ``$AIRFLOW_HOME``."""
    if environ.get("AIRFLOW_CONFIG"):
        return Path(environ["AIRFLOW_CONFIG"]).expanduser()
    return airflow_home(environ) / "airflow.cfg"


def airflow_home(environ: Mapping[str, str]) -> Path:
    """``$AIRFLOW_HOME``, defaulting to ``~/airflow`` like Airflow itself."""
    return Path(environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()


@dataclass(frozen=True)
class RawValue:
    """One option's raw text and a human-readable description of where it was found."""

    value: str
    origin: str


class RawConfig:
    """Read-only view over ``airflow.cfg`` and the environment for any section.

    Environment beats the file, as in Airflow. Interpolation is disabled because Airflow writes
    literal values and a ``%`` inside a database password must not be interpreted.

    ``team``: the view of one Airflow team's own values, as Airflow 3 reads a team's executor
    configuration (``ExecutorConf``): ``AIRFLOW__<TEAM>___<SECTION>__<OPTION>`` and the file's
    ``[<team>=<section>]``, with no fallback to the deployment-wide values (only to the defaults).
    """

    def __init__(
        self, *, environ: Mapping[str, str] | None = None, cfg_path: Path | None = None, team: str | None = None
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.cfg_path = cfg_path if cfg_path is not None else airflow_cfg_path(self.environ)
        self.team = team
        self._parser = configparser.ConfigParser(interpolation=None)
        if self.cfg_path.is_file():
            self._parser.read(self.cfg_path, encoding="utf-8")

    def scoped(self, team: str | None) -> RawConfig:
        """The same file and environment, seen as ``team``'s values (``None``: deployment-wide)."""
        if team == self.team:
            return self
        view = RawConfig.__new__(RawConfig)
        view.environ, view.cfg_path, view.team, view._parser = self.environ, self.cfg_path, team, self._parser
        return view

    def get(self, section: str, option: str) -> RawValue | None:
        """The highest-precedence raw value of ``[section] option``, or ``None`` when unset."""
        name = env_var_name(section, option, self.team)
        if name in self.environ:
            return RawValue(self.environ[name], f"env {name}")
        cfg_section = config_section(section, self.team)
        if self._parser.has_option(cfg_section, option):
            return RawValue(self._parser.get(cfg_section, option), f"{self.cfg_path} [{cfg_section}]")
        return None

    def options(self, section: str) -> dict[str, RawValue]:
        """Every option set for ``section`` in the file or the environment, keyed by lower-case name."""
        found: dict[str, RawValue] = {}
        cfg_section = config_section(section, self.team)
        if self._parser.has_section(cfg_section):
            for option in self._parser.options(cfg_section):
                found[option] = RawValue(self._parser.get(cfg_section, option), f"{self.cfg_path} [{cfg_section}]")
        prefix = _env_prefix(section, self.team)
        for name, value in self.environ.items():
            if name.upper().startswith(prefix):
                found[name[len(prefix) :].lower()] = RawValue(value, f"env {name}")
        return found
