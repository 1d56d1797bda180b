"""Deadline alerts whose callbacks run on the executors: one as an ECS task, one as a Batch job.

The run's deadline is one second after it was queued; ``slow`` works longer than that, so every
run misses it. Airflow then hands each alert's ``SyncCallback`` to an executor as an
``ExecuteCallback`` workload: ``notify`` on the default executor (EcsExecutor, an ECS task),
``notify`` again with ``executor="BatchExecutor"`` (a Batch job), and ``fail_loudly``, which
raises, so Airflow records that callback as failed with the executor's reason. The callbacks live
in ``deadline_alerts.py`` beside this file.
"""

from __future__ import annotations

import time
from datetime import timedelta

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.definitions.callback import SyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

DEADLINE = timedelta(seconds=1)


def _alert(path: str, name: str, **kwargs: str) -> DeadlineAlert:
    executor = kwargs.pop("executor", None)
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=DEADLINE,
        callback=SyncCallback(path, kwargs=kwargs or None, executor=executor),
        name=name,
    )


@dag(
    dag_id="aws_reconciler_deadline",
    schedule=None,
    catchup=False,
    params={"slow_seconds": 20},
    tags=["aws-reconciler", "demo"],
    doc_md=__doc__,
    deadline=[
        _alert("deadline_alerts.notify", "late, told on ECS", channel="ecs"),
        _alert("deadline_alerts.notify", "late, told on Batch", channel="batch", executor="BatchExecutor"),
        _alert("deadline_alerts.fail_loudly", "late, and the pager is down"),
    ],
)
def aws_reconciler_deadline() -> None:
    """One task that outlasts the run's deadline."""

    @task
    def slow() -> None:
        """Keeps the run going past its deadline."""
        time.sleep(float(get_current_context()["params"]["slow_seconds"]))

    slow()


aws_reconciler_deadline()
