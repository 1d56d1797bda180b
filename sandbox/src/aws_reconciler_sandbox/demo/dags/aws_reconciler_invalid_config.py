"""An invalid ``executor_config`` fails only its own task, at once, with a message naming the key.

``bad_config`` asks for a ``clientToken``, which the reconciler owns (it is its idempotency
key): the executor rejects the task when the scheduler queues it, nothing is launched on ECS,
and the reason appears in Airflow's event log ("state mismatch ... Extra info: invalid
executor_config key 'clientToken' ...") and in the scheduler log. ``good`` runs normally.
Kept apart from the main example so that DAG's outcome stays clean.
"""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(
    dag_id="aws_reconciler_invalid_config",
    schedule=None,
    catchup=False,
    tags=["aws-reconciler", "demo"],
    doc_md=__doc__,
)
def aws_reconciler_invalid_config() -> None:
    """One bad task, one good one, independent of each other."""

    @task(executor_config={"clientToken": "chosen-by-the-dag"})
    def bad_config() -> None:
        """Never runs: the executor fails it when it is queued."""
        raise AssertionError("a task with an invalid executor_config must never start")

    @task
    def good() -> str:
        """Unaffected by its neighbour."""
        return "ran"

    bad_config()
    good()


aws_reconciler_invalid_config()
