"""A real ``airflow scheduler`` whose executor cannot start: one clear line, a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow


@pytest.mark.timeout(300)
def test_a_scheduler_with_a_bad_setting_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__API_AUTH__JWT_SECRET="scheduler-start-" + "0123456789abcdef" * 4,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="aws_reconciler.executor.EcsExecutor",
        AIRFLOW__AWS_RECONCILER__STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        # No [aws_reconciler_ecs] cluster: the EcsExecutor must refuse to start.
    )
    airflow = [sys.executable, "-m", "airflow"]
    migrate = subprocess.run([*airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=240)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    scheduler = subprocess.run([*airflow, "scheduler"], env=env, capture_output=True, text=True, timeout=240)

    assert scheduler.returncode != 0
    # The end of the process: the message alone, not the CLI's 40-frame traceback.
    assert scheduler.stderr.strip().splitlines() == [
        "error: EcsExecutor cannot start: EcsExecutor needs [aws_reconciler_ecs] cluster "
        "(AIRFLOW__AWS_RECONCILER_ECS__CLUSTER)"
    ], scheduler.stderr
    # Airflow's own log of the failed start: its two frames, nothing chained from below start().
    assert scheduler.stdout.count('  File "') <= 2, scheduler.stdout
    assert "During handling" not in scheduler.stdout and "The above exception" not in scheduler.stdout
    assert not (tmp_path / "store.db").exists(), "it fails before touching the store"
