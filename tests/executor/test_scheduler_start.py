"""A real ``airflow scheduler`` whose executor cannot start: one clear line, a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow


ECS = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "airflow",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
}
PASSWORD = "Sched-Pa55word"

# (settings, the one line the scheduler ends with) -- the CLI's corpus is in tests/cli.
CORPUS = {
    "no-cluster": (
        {},
        "error: EcsExecutor cannot start: EcsExecutor needs [aws_reconciler_ecs] cluster "
        "(AIRFLOW__AWS_RECONCILER_ECS__CLUSTER)",
    ),
    "deployment": (
        {**ECS, "AIRFLOW__AWS_RECONCILER__DEPLOYMENT": "my airflow"},
        "contains ' '; allowed: at most 36 characters",
    ),
    "json": (
        {**ECS, "AIRFLOW__AWS_RECONCILER_ECS__RUN_TASK_KWARGS": "{count: 2}"},
        "[aws_reconciler_ecs] run_task_kwargs",
    ),
    "store-driver": (
        {**ECS, "AIRFLOW__AWS_RECONCILER__STORE_URL": f"postgrs://airflow:{PASSWORD}@db/airflow"},
        "[aws_reconciler] store_url = 'postgrs://airflow:***@db/airflow' names an unknown database dialect",
    ),
}


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__API_AUTH__JWT_SECRET="scheduler-start-" + "0123456789abcdef" * 4,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="aws_reconciler.executor.EcsExecutor",
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=240
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("settings", "line"), list(CORPUS.values()), ids=list(CORPUS))
def test_a_scheduler_with_a_bad_setting_exits_non_zero_with_one_line(
    airflow_env: dict[str, str], tmp_path: Path, settings: dict[str, str], line: str
) -> None:
    env = {**airflow_env, "AIRFLOW__AWS_RECONCILER__STORE_URL": f"sqlite:///{tmp_path / 'store.db'}", **settings}
    scheduler = subprocess.run(
        [sys.executable, "-m", "airflow", "scheduler"], env=env, capture_output=True, text=True, timeout=240
    )

    assert scheduler.returncode != 0
    # The end of the process: the message alone, not the CLI's 40-frame traceback.
    lines = scheduler.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: EcsExecutor cannot start: "), scheduler.stderr
    assert line in lines[0]
    assert PASSWORD not in scheduler.stderr + scheduler.stdout
    # Airflow's own log of the failed start: its two frames, nothing chained from below start().
    assert scheduler.stdout.count('  File "') <= 2, scheduler.stdout
    assert "During handling" not in scheduler.stdout and "The above exception" not in scheduler.stdout
    assert not (tmp_path / "store.db").exists(), "it fails before touching the store"
