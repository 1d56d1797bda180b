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


def env_var_name(section: str, option: str) -> str:
    """The environment variable Airflow uses for ``[section] option``."""
    return f"{ENV_PREFIX}{section.upper()}__{option.upper()}"


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
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None, cfg_path: Path | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.cfg_path = cfg_path if cfg_path is not None else airflow_cfg_path(self.environ)
        self._parser = configparser.ConfigParser(interpolation=None)
        if self.cfg_path.is_file():
            self._parser.read(self.cfg_path, encoding="utf-8")

    def get(self, section: str, option: str) -> RawValue | None:
        """The highest-precedence raw value of ``[section] option``, or ``None`` when unset."""
        name = env_var_name(section, option)
        if name in self.environ:
            return RawValue(self.environ[name], f"env {name}")
        if self._parser.has_option(section, option):
            return RawValue(self._parser.get(section, option), f"{self.cfg_path} [{section}]")
        return None

    def options(self, section: str) -> dict[str, RawValue]:
        """Every option set for ``section`` in the file or the environment, keyed by lower-case name."""
        found: dict[str, RawValue] = {}
        if self._parser.has_section(section):
            for option in self._parser.options(section):
                found[option] = RawValue(self._parser.get(section, option), f"{self.cfg_path} [{section}]")
        prefix = f"{ENV_PREFIX}{section.upper()}__"
        for name, value in self.environ.items():
            if name.upper().startswith(prefix):
                found[name[len(prefix) :].lower()] = RawValue(value, f"env {name}")
        return found
