"""Two teams' executors in one scheduler (Airflow 3 multi-team), on one shared task store.

Airflow builds one executor instance per team (``EcsExecutor(team_name=...)``), all with the
scheduler's job id. Each reads its team's own settings, writes rows of its team, tags its tasks
with its team, and reports and adopts only its own rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.executors.executor_loader import ExecutorLoader, ExecutorName
from airflow.utils.state import TaskInstanceState

from aws_reconciler.backends.tags import TEAM_TAG
from aws_reconciler.config import load_settings
from aws_reconciler.executor import EcsExecutor
from aws_reconciler.model import Backend, Phase
from aws_reconciler.store import TaskStore
from support.workloads import FakeTI, clear_airflow_tis, make_workload, rid

pytestmark = pytest.mark.airflow


@pytest.fixture(autouse=True)
def _no_task_instances() -> None:
    clear_airflow_tis()


def team_env(team: str, cluster: str) -> dict[str, str]:
    prefix = f"AIRFLOW__{team.upper()}___AWS_RECONCILER"
    return {
        f"{prefix}_ECS__CLUSTER": cluster,
        f"{prefix}_ECS__TASK_DEFINITION": f"td-{team}",
        f"{prefix}_ECS__CONTAINER_NAME": "base",
        f"{prefix}_ECS__LAUNCH_TYPE": "FARGATE",
    }


@pytest.fixture
def teams(store_url: str) -> Iterator[dict[str, EcsExecutor]]:
    environ = {
        "AIRFLOW__AWS_RECONCILER__STORE_URL": store_url,
        **team_env("team_a", "cluster-a"),
        **team_env("team_b", "cluster-b"),
    }
    executors = {}
    for team in ("team_a", "team_b"):
        executor = EcsExecutor(parallelism=8, team_name=team)
        executor.job_id = 5  # one scheduler: the same job id for every team's executor
        # A team's store URL is its own setting too; here both teams share one store.
        settings = load_settings(
            environ={**environ, f"AIRFLOW__{team.upper()}___AWS_RECONCILER__STORE_URL": store_url},
            cfg_path=Path("/none"),
            team=team,
        )
        executor._settings = settings
        executor.start()
        executors[team] = executor
    yield executors
    for executor in executors.values():
        executor.store.engine.dispose()


def test_airflow_loads_our_executor_for_a_team() -> None:
    # ExecutorLoader refuses a team executor whose class does not declare multi-team support.
    executor = ExecutorLoader.load_executor(ExecutorName("aws_reconciler.executor.EcsExecutor", team_name="team_a"))
    assert isinstance(executor, EcsExecutor) and executor.team_name == "team_a"


def test_each_team_writes_reports_and_adopts_only_its_own_rows(teams: dict[str, EcsExecutor], store: TaskStore) -> None:
    a, b = teams["team_a"], teams["team_b"]
    work = {"team_a": make_workload("a_task"), "team_b": make_workload("b_task")}
    for team, workload in work.items():
        teams[team].queue_workload(workload, session=None)  # type: ignore[arg-type]
        teams[team].heartbeat()

    rows: dict[str, Any] = {team: store.get(rid(w)) for team, w in work.items()}
    for team, cluster in (("team_a", "cluster-a"), ("team_b", "cluster-b")):
        row = rows[team]
        assert (row.team, row.target) == (team, cluster), "the team's own row, with the team's own settings"
        assert {t["key"]: t["value"] for t in row.spec["tags"]}[TEAM_TAG] == team

    # Both finish; on the scheduler's heartbeat each executor reports its own, and only its own.
    for workload in work.values():
        assert store.transition(rid(workload), expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)
    b.heartbeat()
    assert dict(b.get_event_buffer()) == {work["team_b"].ti.key: (TaskInstanceState.SUCCESS, "succeeded")}
    a.heartbeat()
    assert dict(a.get_event_buffer()) == {work["team_a"].ti.key: (TaskInstanceState.SUCCESS, "succeeded")}

    # Adoption by id or by key never takes another team's row.
    foreign = FakeTI.of(work["team_a"])
    assert list(b.try_adopt_task_instances([foreign])) == [foreign]  # type: ignore[list-item]
    assert list(a.try_adopt_task_instances([FakeTI.of(work["team_a"], external_executor_id=None)])) == []  # type: ignore[list-item]
    # The deployment-wide scope sees neither team's rows.
    assert store.open_tasks(backend=Backend.ECS) == []
