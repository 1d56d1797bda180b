"""A team's tasks on AWS carry its team tag, and a team's reconciler owns only those.

Teams may share a deployment name and a cluster (ECS ``startedBy`` is then the same for all of
them): ownership, and with it every stop of an orphan, is decided by the tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aws_reconciler.backends.batch.spec import build_submit_job_request
from aws_reconciler.backends.batch.states import observe_job
from aws_reconciler.backends.ecs.spec import build_run_task_request
from aws_reconciler.backends.ecs.states import observe_task
from aws_reconciler.backends.requests import InvalidExecutorConfig
from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG, TEAM_TAG, owned_record_id
from aws_reconciler.config import load_settings
from aws_reconciler.model import TiKey

KEY = TiKey("etl", "load", "manual__2026-11-21T00:00:00+00:00", -1, 1)
ENV = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "shared",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "td",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
    "AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE": "FARGATE",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "q",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "jd",
}
SETTINGS = load_settings(environ=ENV, cfg_path=Path("/none"))


@pytest.mark.parametrize(
    ("tags", "team", "owned"),
    [
        ({DEPLOYMENT_TAG: "airflow", ID_TAG: "r1"}, None, "r1"),
        ({DEPLOYMENT_TAG: "airflow", ID_TAG: "r1", TEAM_TAG: "team_a"}, "team_a", "r1"),
        # Another team's task in the same deployment: not ours, so never an orphan of ours.
        ({DEPLOYMENT_TAG: "airflow", ID_TAG: "r1", TEAM_TAG: "team_b"}, "team_a", None),
        # A team's task is not the deployment-wide executors' either, and the other way round.
        ({DEPLOYMENT_TAG: "airflow", ID_TAG: "r1", TEAM_TAG: "team_a"}, None, None),
        ({DEPLOYMENT_TAG: "airflow", ID_TAG: "r1"}, "team_a", None),
        ({DEPLOYMENT_TAG: "other", ID_TAG: "r1", TEAM_TAG: "team_a"}, "team_a", None),
    ],
)
def test_ownership_needs_the_deployment_and_the_team(tags: dict[str, str], team: str | None, owned: str | None) -> None:
    assert owned_record_id(tags, deployment="airflow", team=team) == owned


def _ecs(team: str | None, executor_config: Any = None) -> dict[str, Any]:
    return build_run_task_request(
        ecs=SETTINGS.ecs,
        deployment="airflow",
        record_id="r1",
        key=KEY,
        command=["x"],
        executor_config=executor_config,
        team=team,
    )


def test_a_teams_requests_carry_its_team_tag_and_others_do_not() -> None:
    tags = {t["key"]: t["value"] for t in _ecs("team_a")["tags"]}
    assert (tags[TEAM_TAG], tags[DEPLOYMENT_TAG], tags[ID_TAG]) == ("team_a", "airflow", "r1")
    assert TEAM_TAG not in {t["key"] for t in _ecs(None)["tags"]}
    batch = build_submit_job_request(
        batch=SETTINGS.batch, deployment="airflow", record_id="r1", key=KEY, command=["x"], team="team_b"
    )
    assert batch["tags"][TEAM_TAG] == "team_b"


def test_a_task_cannot_claim_a_team() -> None:
    with pytest.raises(InvalidExecutorConfig, match=TEAM_TAG):
        _ecs(None, {"tags": [{"key": TEAM_TAG, "value": "team_b"}]})


def test_observations_are_owned_by_their_team_only() -> None:
    def ecs_task(team: str | None) -> dict[str, Any]:
        tags = [{"key": DEPLOYMENT_TAG, "value": "airflow"}, {"key": ID_TAG, "value": "r1"}]
        if team:
            tags.append({"key": TEAM_TAG, "value": team})
        return {"taskArn": "arn:1", "lastStatus": "RUNNING", "startedBy": "airflow", "tags": tags}

    assert observe_task(ecs_task("team_a"), container_name="base", deployment="airflow", team="team_a").owned
    assert not observe_task(ecs_task("team_b"), container_name="base", deployment="airflow", team="team_a").owned
    assert not observe_task(ecs_task("team_a"), container_name="base", deployment="airflow").owned
    job = {"jobId": "j1", "status": "RUNNING", "tags": {DEPLOYMENT_TAG: "airflow", ID_TAG: "r1", TEAM_TAG: "team_a"}}
    assert observe_job(job, deployment="airflow", team="team_a").owned
    assert not observe_job(job, deployment="airflow", team="team_b").owned
