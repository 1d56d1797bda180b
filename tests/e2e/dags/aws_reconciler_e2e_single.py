"""One task: the end-to-end tests' smallest DAG (stuck-in-queued handling)."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="aws_reconciler_e2e_single", schedule=None, catchup=False, tags=["aws-reconciler", "e2e"])
def aws_reconciler_e2e_single() -> None:
    """A single task instance."""

    @task
    def only() -> str:
        """Never reached in the stuck-in-queued test: its ECS task never leaves PROVISIONING."""
        return "ran"

    only()


aws_reconciler_e2e_single()
