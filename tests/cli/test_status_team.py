"""``aws-reconciler --team T status``: that team's settings and rows only, as its reconciler sees them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aws_reconciler.cli import ExitCode, main
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.store import NewTask, TaskStore, create_store_engine, migrate


def _add(store: TaskStore, task_id: str, phase: Phase) -> None:
    store.add(
        [
            NewTask(
                id=f"{store.team or 'wide'}-{task_id}",
                backend=Backend.ECS,
                owner="1",
                key=TiKey("dag", task_id, "run", -1, 1),
                queue=None,
                target="airflow",
                spec={"cluster": "airflow"},
                phase=phase,
                status_reason=f"failed in {store.team}" if phase is Phase.FAILED else None,
            )
        ]
    )


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One task store with rows of the deployment-wide executors and of two teams.

    Only the deployment-wide settings and team_a's name the store: a team's settings never fall
    back to the deployment-wide ones, so `--team team_a` reading them is what finds the store.
    """
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", url)
    monkeypatch.setenv("AIRFLOW__TEAM_A___AWS_RECONCILER__STORE_URL", url)
    # Recorded, so the team `--team` puts into the environment is gone after the test.
    monkeypatch.setenv("AWS_RECONCILER_TEAM", "")
    engine = create_store_engine(url)
    migrate(engine)
    wide, team_a, team_b = (TaskStore(engine, team=team) for team in (None, "team_a", "team_b"))
    _add(wide, "w1", Phase.PENDING)
    _add(team_a, "a1", Phase.PENDING)
    _add(team_a, "a2", Phase.FAILED)
    _add(team_b, "b1", Phase.FAILED)
    _add(team_b, "b2", Phase.RUNNING)


def _status(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main([*argv, "status", "--json"]) == ExitCode.OK
    document: dict[str, object] = json.loads(capsys.readouterr().out)
    return document


@pytest.mark.usefixtures("stores")
def test_status_of_a_team_counts_and_lists_only_its_rows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    team_a = _status(capsys, "--team", "team_a")
    assert team_a["team"] == "team_a"
    assert team_a["counts"] == {"ecs": {"pending": 1, "failed": 1}}
    assert team_a["oldest_waiting"]["ecs"]["task_id"] == "a1"  # type: ignore[index]
    assert [f["reason"] for f in team_a["recent_failures"]] == ["failed in team_a"]  # type: ignore[attr-defined]

    # Without --team (which stays in this process's environment): the deployment-wide executors'
    # rows, what `aws-reconciler run` reconciles.
    monkeypatch.setenv("AWS_RECONCILER_TEAM", "")
    wide = _status(capsys)
    assert wide["team"] is None
    assert wide["counts"] == {"ecs": {"pending": 1}}
    assert wide["recent_failures"] == []

    assert main(["--team", "team_a", "status"]) == ExitCode.OK
    text = capsys.readouterr().out
    assert text.splitlines()[0].endswith(", rows of team team_a")
    assert "failed in team_a" in text and "failed in team_b" not in text


@pytest.mark.usefixtures("stores")
def test_status_of_a_team_reads_the_teams_own_settings(capsys: pytest.CaptureFixture[str]) -> None:
    # team_b names no store of its own and Airflow's database is not configured: the same
    # configuration error its reconciler would stop on.
    assert main(["--team", "team_b", "status"]) == ExitCode.CONFIG
    error = capsys.readouterr().err
    assert "store_url" in error, error
