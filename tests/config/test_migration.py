"""From the amazon provider's settings to ours: ``config migrate`` and the start-up warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aws_reconciler.config import load_settings
from aws_reconciler.config.migration import plan_migration, provider_warnings, render_cfg, render_env
from aws_reconciler.config.sources import RawConfig

PROVIDER_CFG = """\
[aws_ecs_executor]
conn_id = aws_default
region_name = eu-west-1
cluster = prod
container_name = airflow-worker
task_definition = airflow-task:7
launch_type = FARGATE
subnets = subnet-a,subnet-b
security_groups = sg-1
assign_public_ip = False
max_run_task_attempts = 5
run_task_kwargs = {"propagateTags": "TASK_DEFINITION"}
check_health_on_startup = False
platform_version =

[aws_batch_executor]
job_name = airflow
job_queue = jobs
job_definition = airflow-job
max_submit_job_attempts = 4
check_health_on_startup = False
"""


def raw(tmp_path: Path, text: str, **env: str) -> RawConfig:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(text)
    return RawConfig(environ=env, cfg_path=cfg)


def test_every_provider_option_maps_or_says_why_not(tmp_path: Path) -> None:
    plan = plan_migration(raw(tmp_path, PROVIDER_CFG))
    mapped = {(s.section, s.option): s.value for s in plan.settings}
    assert mapped == {
        ("aws_reconciler_ecs", "region_name"): "eu-west-1",
        ("aws_reconciler_ecs", "cluster"): "prod",
        ("aws_reconciler_ecs", "container_name"): "airflow-worker",
        ("aws_reconciler_ecs", "task_definition"): "airflow-task:7",
        ("aws_reconciler_ecs", "launch_type"): "FARGATE",
        ("aws_reconciler_ecs", "subnets"): "subnet-a,subnet-b",
        ("aws_reconciler_ecs", "security_groups"): "sg-1",
        ("aws_reconciler_ecs", "assign_public_ip"): "False",
        ("aws_reconciler_ecs", "max_launch_attempts"): "5",
        ("aws_reconciler_ecs", "run_task_kwargs"): '{"propagateTags": "TASK_DEFINITION"}',
        ("aws_reconciler_ecs", "aws_conn_id"): "aws_default",
        ("aws_reconciler", "check_health_on_startup"): "False",
        ("aws_reconciler_batch", "job_queue"): "jobs",
        ("aws_reconciler_batch", "job_definition"): "airflow-job",
        ("aws_reconciler_batch", "max_submit_job_attempts"): "4",
    }
    assert sorted(where.split(" (")[0] for where, _ in plan.dropped) == ["[aws_batch_executor] job_name"]
    assert plan.unknown == [] and plan.conflicts == []


def test_the_printed_settings_load_as_ours(tmp_path: Path) -> None:
    plan = plan_migration(raw(tmp_path, PROVIDER_CFG))
    converted = tmp_path / "ours.cfg"
    converted.write_text(render_cfg(plan))
    settings = load_settings(environ={}, cfg_path=converted)
    assert (settings.ecs.cluster, settings.ecs.max_launch_attempts, settings.ecs.subnets) == (
        "prod",
        5,
        ["subnet-a", "subnet-b"],
    )
    assert settings.ecs.run_task_kwargs == {"propagateTags": "TASK_DEFINITION"}
    assert settings.batch.targets == ["jobs"] and settings.batch.max_attempts == 4
    assert settings.core.check_health_on_startup is False
    env = dict(line.removeprefix("export ").split("=", 1) for line in render_env(plan).splitlines())
    assert env["AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS"] == "5"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {}, []),
        (PROVIDER_CFG, {}, ["run `aws-reconciler config migrate`"]),
        (PROVIDER_CFG, {"AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "prod"}, []),
        (PROVIDER_CFG, {"AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "other"}, ["[aws_reconciler_ecs] cluster = 'other'"]),
    ],
)
def test_start_up_warns_about_provider_settings_left_behind(
    tmp_path: Path, text: str, env: dict[str, str], expected: list[str]
) -> None:
    warnings = provider_warnings(raw(tmp_path, text, **env))
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected, strict=True):
        assert fragment in warning


def test_config_migrate_command(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(PROVIDER_CFG)
    env = {"AIRFLOW_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "aws_reconciler", "config", "migrate"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "\n[aws_reconciler_ecs]\n# from [aws_ecs_executor] assign_public_ip" in result.stdout
    assert "\ncluster = prod\n" in result.stdout
    assert "max_launch_attempts = 5" in result.stdout
    assert "# from [aws_ecs_executor] conn_id (from " in result.stdout
    assert "\naws_conn_id = aws_default\n" in result.stdout
    assert "note: [aws_batch_executor] job_name" in result.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "aws_reconciler", "config", "show"], env=env, capture_output=True, text=True
    )
    assert "run `aws-reconciler config migrate`" in shown.stderr

    empty = tmp_path / "empty.cfg"
    empty.write_text("")
    nothing = subprocess.run(
        [sys.executable, "-m", "aws_reconciler", "config", "migrate"],
        env={**env, "AIRFLOW_CONFIG": str(empty)},
        capture_output=True,
        text=True,
    )
    assert nothing.returncode == 1 and "no [aws_ecs_executor] or [aws_batch_executor] settings" in nothing.stderr


def test_config_migrate_env_format_is_what_a_shell_exports(tmp_path: Path) -> None:
    # The documented use: `eval "$(aws-reconciler config migrate --format env)"`, JSON quotes and all.
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(PROVIDER_CFG)
    printed = subprocess.run(
        [sys.executable, "-m", "aws_reconciler", "config", "migrate", "--format", "env"],
        env={"AIRFLOW_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0, printed.stderr
    shell = subprocess.run(["sh", "-c", f"{printed.stdout}\nenv"], env={}, capture_output=True, text=True, check=True)
    exported = dict(line.split("=", 1) for line in shell.stdout.splitlines() if line.startswith("AIRFLOW__"))
    from_env = load_settings(environ=exported, cfg_path=tmp_path / "absent.cfg")
    assert from_env.ecs.run_task_kwargs == {"propagateTags": "TASK_DEFINITION"}
    # Both formats say the same.
    converted = tmp_path / "ours.cfg"
    converted.write_text(render_cfg(plan_migration(raw(tmp_path, PROVIDER_CFG))))
    from_cfg = load_settings(environ={}, cfg_path=converted)
    assert (from_env.core, from_env.ecs, from_env.batch) == (from_cfg.core, from_cfg.ecs, from_cfg.batch)
