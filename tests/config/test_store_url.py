"""Where the store URL comes from: ours, our command, Airflow's, Airflow's command; never invented."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aws_reconciler.config import ConfigError, load_settings

URL = "postgresql+psycopg://airflow:Pa55-cmd@db/airflow"


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "print-url.py"
    path.write_text(body)
    return f"{sys.executable} {path}"


def test_ours_wins_over_airflows(tmp_path: Path) -> None:
    env = {"AIRFLOW__AWS_RECONCILER__STORE_URL": "sqlite:///ours.db", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": URL}
    assert load_settings(environ=env, cfg_path=tmp_path / "none").store_url == "sqlite:///ours.db"


@pytest.mark.parametrize(
    "option", ["AIRFLOW__AWS_RECONCILER__STORE_URL_CMD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"]
)
def test_a_cmd_option_runs_its_command(tmp_path: Path, option: str) -> None:
    command = script(tmp_path, f"print({URL!r})")
    settings = load_settings(environ={option: command}, cfg_path=tmp_path / "none")
    assert settings.store_url == URL
    assert "output of" in settings.origins[("aws_reconciler", "store_url")]


def test_a_failing_command_is_one_line_without_its_output(tmp_path: Path) -> None:
    command = script(tmp_path, f"import sys\nprint({URL!r})\nprint('vault sealed', file=sys.stderr)\nsys.exit(3)")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"AIRFLOW__AWS_RECONCILER__STORE_URL_CMD": command}, cfg_path=tmp_path / "none")
    message = str(info.value)
    assert "[aws_reconciler] store_url_cmd" in message and "exited 3: vault sealed" in message
    assert "Pa55-cmd" not in message


def test_no_store_anywhere_is_an_error_when_used_never_a_sqlite_file(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cfg_path=tmp_path / "none")
    with pytest.raises(ConfigError, match="no task store is configured: set \\[aws_reconciler\\] store_url"):
        _ = settings.store_url


def test_airflows_secret_option_needs_airflow(tmp_path: Path) -> None:
    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET": "airflow/connections/db"}
    with pytest.raises(ConfigError, match="needs Airflow's secrets backend"):
        load_settings(environ=env, cfg_path=tmp_path / "none")
    # On the scheduler side Airflow resolves it.
    resolved = load_settings(environ=env, cfg_path=tmp_path / "none", airflow_conf=lambda section, option: URL)
    assert resolved.store_url == URL
