"""A team's settings, read as Airflow 3 reads a team's executor configuration.

``AIRFLOW__<TEAM>___<SECTION>__<OPTION>`` and airflow.cfg's ``[<team>=<section>]``; no fallback to
the deployment-wide values (only to the defaults), as Airflow's ``ExecutorConf``. Airflow's own
``[database]`` and ``[scheduler]`` are deployment-wide.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.cli import main
from aws_reconciler.config import ConfigError, describe_settings, load_settings
from aws_reconciler.config.migration import plan_migration, render_cfg, render_env
from aws_reconciler.config.sources import RawConfig

GLOBAL = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "shared",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "td",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
    "AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE": "30",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow@db/airflow",
}
TEAM_A = {
    "AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__CLUSTER": "cluster-a",
    "AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__TASK_DEFINITION": "td-a",
    "AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
}
NO_FILE = Path("/nonexistent/airflow.cfg")


def test_a_team_reads_its_own_values_and_the_defaults_not_the_deployment_wide_ones() -> None:
    settings = load_settings(environ={**GLOBAL, **TEAM_A}, cfg_path=NO_FILE, team="team_a")
    assert settings.team == "team_a"
    assert (settings.ecs.cluster, settings.ecs.task_definition) == ("cluster-a", "td-a")
    # [aws_reconciler] orphan_grace is set for everyone but not for the team: the default applies.
    assert settings.core.orphan_grace == 120
    # Airflow's database is deployment-wide: every team's store defaults to it.
    assert settings.store_url == "postgresql://airflow@db/airflow"
    origins = {(s, o): origin for s, o, _, origin in describe_settings(settings)}
    assert origins[("aws_reconciler_ecs", "cluster")] == "env AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__CLUSTER"

    deployment_wide = load_settings(environ={**GLOBAL, **TEAM_A}, cfg_path=NO_FILE, team=None)
    assert (deployment_wide.team, deployment_wide.ecs.cluster, deployment_wide.core.orphan_grace) == (
        None,
        "shared",
        30,
    )


def test_a_teams_airflow_cfg_section_is_named_team_equals_section(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(
        "[aws_reconciler_ecs]\ncluster = shared\ntask_definition = td\ncontainer_name = base\n"
        "[team_b=aws_reconciler_ecs]\ncluster = cluster-b\ntask_definition = td-b\ncontainer_name = main\n"
        "[team_b=aws_reconciler]\ndeployment = prod-b\n"
    )
    settings = load_settings(
        environ={"AIRFLOW__TEAM_B___AWS_RECONCILER__ORPHAN_GRACE": "5"}, cfg_path=cfg, team="team_b"
    )
    assert (settings.ecs.cluster, settings.ecs.container_name) == ("cluster-b", "main")
    assert (settings.core.deployment, settings.core.orphan_grace) == ("prod-b", 5)
    origins = {(s, o): origin for s, o, _, origin in describe_settings(settings)}
    assert origins[("aws_reconciler_ecs", "cluster")] == f"{cfg} [team_b=aws_reconciler_ecs]"


def test_the_team_comes_from_aws_reconciler_team_when_not_given() -> None:
    settings = load_settings(environ={**GLOBAL, **TEAM_A, "AWS_RECONCILER_TEAM": "team_a"}, cfg_path=NO_FILE)
    assert (settings.team, settings.ecs.cluster) == ("team_a", "cluster-a")


@pytest.mark.parametrize(
    ("environ", "team", "expected"),
    [
        (
            {"AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__CLUSTR": "x"},
            "team_a",
            "unknown option [team_a=aws_reconciler_ecs] clustr (from env AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__CLUSTR)",
        ),
        (
            {"AIRFLOW__TEAM_A___AWS_RECONCILER__ORPHAN_GRACE": "soon"},
            "team_a",
            "invalid setting [team_a=aws_reconciler] orphan_grace = 'soon'",
        ),
        ({}, "a", "invalid team name 'a'"),
        ({}, "team a", "invalid team name 'team a'"),
    ],
)
def test_bad_team_settings_name_the_team_scoped_option(environ: dict[str, str], team: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**GLOBAL, **environ}, cfg_path=NO_FILE, team=team)
    assert expected in str(info.value)


def test_a_team_without_its_own_backend_is_told_the_team_scoped_option() -> None:
    settings = load_settings(environ=GLOBAL, cfg_path=NO_FILE, team="team_c")
    with pytest.raises(ConfigError) as info:
        ECS.require(settings)
    assert str(info.value) == (
        "EcsExecutor for team team_c needs [team_c=aws_reconciler_ecs] cluster "
        "(AIRFLOW__TEAM_C___AWS_RECONCILER_ECS__CLUSTER)"
    )
    with pytest.raises(
        ConfigError, match=r"no backend is configured for team team_c: set \[team_c=aws_reconciler_ecs\]"
    ):
        settings.require_backend()


def test_a_teams_provider_settings_migrate_to_the_teams_own() -> None:
    environ = {
        "AIRFLOW__TEAM_A___AWS_ECS_EXECUTOR__CLUSTER": "cluster-a",
        "AIRFLOW__TEAM_A___AWS_ECS_EXECUTOR__MAX_RUN_TASK_ATTEMPTS": "5",
        "AIRFLOW__AWS_ECS_EXECUTOR__CLUSTER": "shared",
    }
    plan = plan_migration(RawConfig(environ=environ, cfg_path=NO_FILE).scoped("team_a"))
    assert [(s.section, s.option, s.value) for s in plan.settings] == [
        ("aws_reconciler_ecs", "cluster", "cluster-a"),
        ("aws_reconciler_ecs", "max_launch_attempts", "5"),
    ]
    assert render_cfg(plan).startswith("[team_a=aws_reconciler_ecs]\n")
    assert "export AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__CLUSTER=cluster-a\n" in render_env(plan)


def test_the_cli_takes_the_team(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {**GLOBAL, **TEAM_A}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_CONFIG", str(NO_FILE))
    # Recorded, so the team `--team` puts into the environment is gone after the test.
    monkeypatch.setenv("AWS_RECONCILER_TEAM", "")
    assert main(["--team", "team_a", "config", "show", "--json"]) == 0
    assert '"cluster-a"' in capsys.readouterr().out
    assert main(["--team", "x", "config", "show"]) == 2
    assert "invalid team name 'x'" in capsys.readouterr().err
