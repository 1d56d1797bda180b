"""Settings: layering, parsing, clear errors and redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aws_reconciler.cli import main
from aws_reconciler.config import ConfigError, describe_settings, load_settings

BASE = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "c1",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "td",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
}


def write_cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "airflow.cfg"
    path.write_text(text)
    return path


def test_environment_beats_airflow_cfg_beats_defaults(tmp_path: Path) -> None:
    cfg = write_cfg(
        tmp_path,
        "[aws_reconciler]\nreconcile_interval = 3\norphan_grace = 30\n"
        "[aws_reconciler_ecs]\ncluster = from-file\nsubnets = a, b\n"
        "[database]\nsql_alchemy_conn = postgresql://airflow:s3cret@db/airflow\n"
        "[scheduler]\ntask_queued_timeout = 900\n",
    )
    env = {**BASE, "AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE": "60"}
    settings = load_settings(environ=env, cfg_path=cfg)
    assert settings.core.reconcile_interval == 3  # file
    assert settings.core.orphan_grace == 60  # env wins over file
    assert settings.core.resync_interval == 60  # default
    assert settings.ecs.cluster == "c1"
    assert settings.ecs.subnets == ["a", "b"]
    # Defaults taken from Airflow's own sections.
    assert settings.store_url == "postgresql://airflow:s3cret@db/airflow"
    assert settings.task_queued_timeout == 900
    origins = {(s, o): origin for s, o, _, origin in describe_settings(settings)}
    assert origins[("aws_reconciler", "orphan_grace")] == "env AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE"
    assert origins[("aws_reconciler", "reconcile_interval")].endswith("[aws_reconciler]")
    assert origins[("aws_reconciler", "resync_interval")] == "default"


def test_json_and_list_options_parse() -> None:
    env = {
        **BASE,
        "AIRFLOW__AWS_RECONCILER_ECS__CAPACITY_PROVIDER_STRATEGY": json.dumps(
            [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
        ),
        "AIRFLOW__AWS_RECONCILER_ECS__RUN_TASK_KWARGS": '{"propagateTags": "TASK_DEFINITION"}',
        "AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS": '["sg-1", "sg-2"]',
        "AIRFLOW__AWS_RECONCILER_ECS__ASSIGN_PUBLIC_IP": "true",
    }
    ecs = load_settings(environ=env, cfg_path=Path("/none")).ecs
    assert ecs.capacity_provider_strategy == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    assert ecs.run_task_kwargs == {"propagateTags": "TASK_DEFINITION"}
    assert ecs.security_groups == ["sg-1", "sg-2"]
    assert ecs.assign_public_ip is True


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "SPOT"}, "[aws_reconciler_ecs] launch_type = 'SPOT'"),
        ({"AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL": "-1"}, "[aws_reconciler] reconcile_interval = '-1'"),
        ({"AIRFLOW__AWS_RECONCILER__DEPLOYMENT": "has spaces!"}, "[aws_reconciler] deployment"),
        ({"AIRFLOW__AWS_RECONCILER_ECS__RUN_TASK_KWARGS": "{oops"}, "[aws_reconciler_ecs] run_task_kwargs"),
        ({"AIRFLOW__AWS_RECONCILER__CLUSTR": "x"}, "unknown option [aws_reconciler] clustr"),
        ({"AIRFLOW__AWS_RECONCILER__LEASE_DURATION": "5"}, "renew_deadline"),
        ({"AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": ""}, "task_definition"),
        ({"AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "soon"}, "[scheduler] task_queued_timeout"),
    ],
)
def test_bad_settings_name_the_option(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**BASE, **env}, cfg_path=Path("/none"))
    assert expected in str(info.value)


def test_launch_type_and_capacity_strategy_are_exclusive() -> None:
    env = {
        **BASE,
        "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
        "AIRFLOW__AWS_RECONCILER_ECS__CAPACITY_PROVIDER_STRATEGY": '[{"capacityProvider": "FARGATE"}]',
    }
    with pytest.raises(ConfigError, match="launch_type or capacity_provider_strategy"):
        load_settings(environ=env, cfg_path=Path("/none"))


def test_secrets_never_shown(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", "postgresql://reconciler:hunter2@db:5432/airflow")
    monkeypatch.setenv("AIRFLOW_CONFIG", "/nonexistent/airflow.cfg")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "postgresql://reconciler:***@db:5432/airflow" in out
    assert "env AIRFLOW__AWS_RECONCILER_ECS__CLUSTER" in out


def test_cli_bad_setting_exits_nonzero_with_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONFIG", "/nonexistent/airflow.cfg")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE", "a while")
    assert main(["config", "show"]) == 2
    assert "[aws_reconciler] orphan_grace = 'a while'" in capsys.readouterr().err
