"""Team a's DAG (a DAG bundle of team_a): runs on team_a's own EcsExecutor and reconciler."""

from __future__ import annotations

import time

from airflow.sdk import dag, get_current_context, task


@dag(dag_id="team_a_work", schedule=None, catchup=False, params={"seconds": 0}, tags=["aws-reconciler", "e2e"])
def team_a_work() -> None:
    """One task that works for ``seconds``."""

    @task
    def work() -> str:
        """Works, then says which team it was."""
        seconds = float(get_current_context()["params"]["seconds"])
        for second in range(int(seconds)):
            time.sleep(1)
            print(f"team_a working: {second + 1}/{seconds:.0f} s", flush=True)
        return "team_a"

    work()


team_a_work()
