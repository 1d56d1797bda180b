"""End to end: two Airflow teams in one scheduler (multi-team mode, AIP-67).

Each team has a DAG bundle, its own EcsExecutor in the scheduler (``...;team_a=...EcsExecutor``)
with its own settings (``AIRFLOW__TEAM_A___AWS_RECONCILER_ECS__...``) and its own reconciler
(``aws-reconciler --team team_a run``). The teams share everything else on purpose, the worst
case for keeping them apart: one task store (Airflow's database), one deployment name (so ECS
``startedBy`` is the same) and one ECS cluster. Each team's rows and tags stay its own, and a
team's reconciler never touches another team's tasks, not even as orphans.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import RUN_TIMEOUT, counter, ecs_tasks_by_record, never_started, running_stack, wait_rows_reported

from aws_reconciler.backends.tags import TEAM_TAG
from aws_reconciler_sandbox.demo.stack import DEPLOYMENT, DemoStack, StoreRow, reconciler_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TEAM_DAGS = Path(__file__).resolve().parent / "dags_teams"
TEAMS = ("team_a", "team_b")
#: A setting of each team's own: its RunTask requests carry its cost-center tag.
COST_CENTER = {"team_a": "cc-a", "team_b": "cc-b"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    work_dir: Path = tmp_path_factory.mktemp("e2e-teams")
    own = {
        f"AIRFLOW__{team.upper()}___AWS_RECONCILER_ECS__RUN_TASK_KWARGS": json.dumps(
            {"tags": [{"key": "cost-center", "value": value}]}
        )
        for team, value in COST_CENTER.items()
    }
    with running_stack(
        work_dir,
        teams={team: TEAM_DAGS / team for team in TEAMS},
        wait_for_dags=tuple(f"{team}_work" for team in TEAMS),
        airflow_env=own,
    ) as started:
        yield started


@pytest.fixture
def healthy(stack: DemoStack) -> Iterator[DemoStack]:
    try:
        yield stack
    finally:
        stack.ensure_running()


def only_row(stack: DemoStack, team: str, run_id: str) -> StoreRow:
    (row,) = stack.store_rows(dag_id=f"{team}_work", run_id=run_id)
    return row


def test_each_team_runs_with_its_own_settings_rows_and_tags(stack: DemoStack) -> None:
    runs = {team: stack.api.trigger(f"{team}_work") for team in TEAMS}
    for team, run_id in runs.items():
        assert stack.api.wait_run_finished(f"{team}_work", run_id, timeout=RUN_TIMEOUT)["state"] == "success"

    scheduler = stack.scheduler_job_id()
    tasks = ecs_tasks_by_record(stack)
    for team, run_id in runs.items():
        (row,) = wait_rows_reported(stack, f"{team}_work", run_id)
        assert (row.team, row.backend, row.phase, row.owner) == (team, "ecs", "succeeded", str(scheduler)), row
        (task,) = [t for t in tasks[row.id] if not never_started(t)]
        assert task["startedBy"] == DEPLOYMENT, "the teams share one deployment name"
        assert task["tags"][TEAM_TAG] == team
        assert task["tags"]["cost-center"] == COST_CENTER[team], "the team's own run_task_kwargs"
    assert not [r for r in stack.store_rows() if r.team is None and r.dag_id.startswith("team_")]


def test_a_teams_reconciler_never_touches_another_teams_tasks(healthy: DemoStack) -> None:
    stack = healthy
    run_id = stack.api.trigger("team_b_work", conf={"seconds": 90})

    def running() -> StoreRow | None:
        rows = stack.store_rows(dag_id="team_b_work", run_id=run_id)
        return rows[0] if rows and rows[0].phase == "running" else None

    row = stack.wait(running, "team_b's task to run", RUN_TIMEOUT)
    stack.kill(reconciler_of("team_b"))

    # Team B's task now runs with no reconciler of its own. Team A's and the deployment-wide
    # reconcilers list the same cluster with the same startedBy and see it at every discovery;
    # four discoveries each (15 s at resync_interval 5) outlast orphan_grace (10 s).
    others = {"team_a": stack.team_metrics_url("team_a"), "deployment-wide": stack.metrics_url}
    before = {name: counter(url, "aws_reconciler_aws_requests", operation="ListTasks") for name, url in others.items()}
    stops = {name: counter(url, "aws_reconciler_stops") for name, url in others.items()}

    def discovered_four_times() -> bool:
        return all(
            counter(url, "aws_reconciler_aws_requests", operation="ListTasks") >= before[name] + 4
            for name, url in others.items()
        )

    stack.wait(discovered_four_times, "four discoveries by team_a's and the deployment-wide reconcilers", 120)
    for name, url in others.items():
        assert counter(url, "aws_reconciler_stops") == stops[name], f"the {name} reconciler stopped something"
        assert counter(url, "aws_reconciler_orphans_found") == 0, f"the {name} reconciler took it for an orphan"
    (task,) = [t for t in stack.ecs_tasks() if t["arn"] == row.external_id]
    assert task["lastStatus"] == "RUNNING", task

    # Team B's own reconciler takes its task over again, and the run ends normally.
    stack.start_reconciler("team_b")
    stack.wait_reconciler_leading(team="team_b")
    run = stack.api.wait_run_finished("team_b_work", run_id, timeout=RUN_TIMEOUT)
    assert run["state"] == "success"
    (done,) = wait_rows_reported(stack, "team_b_work", run_id)
    assert (done.id, done.team, done.phase, done.attempt) == (row.id, "team_b", "succeeded", 1)
