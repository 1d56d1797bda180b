"""The demo DAG: every task instance becomes one ECS task or one AWS Batch job, launched by the reconciler.

Airflow runs both executors: ``EcsExecutor`` (the default) and ``BatchExecutor``, which the
tasks with ``executor="BatchExecutor"`` (``batch_sum`` and ``report``) use.

22 task instances in one run (21 ECS tasks, ``flaky`` runs twice, ``wait_in_triggerer`` is queued
twice, and 2 Batch jobs):

- ``make_items`` returns 15 numbers; ``square`` is mapped over them (dynamic task mapping, 15
  task instances); ``total`` adds the squares up (XComs travel through the Execution API);
- ``batch_sum`` adds the items up as an AWS Batch job (``executor="BatchExecutor"``);
- ``flaky`` fails on its first try and succeeds on its second (``retries=1``): Airflow's own
  retry re-runs it as a *new* ECS task; the reconciler never relaunches a task that ran;
- ``long_running`` works for about 20 seconds and prints its progress (visible in the Airflow UI
  while it runs: the executor serves the container's CloudWatch log);
- ``wait_in_triggerer`` is a deferrable sensor: its ECS task hands the wait to a trigger and exits,
  the triggerer (not a container) waits, and when the trigger fires Airflow queues the same try
  again, as a second ECS task that finishes it;
- ``report`` waits for all of them, also as a Batch job.

Every task is cheap on purpose: each task instance is a full Airflow task runner process
(~250 MB), so ``max_active_tasks`` keeps a two-core machine responsive.

Run configuration (``conf`` of the trigger): ``items`` (how many mapped task instances),
``square_seconds`` (how long each works) and ``long_running_seconds``. The end-to-end tests
change them to have many tasks running when they kill the scheduler or the reconciler.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseSensorOperator, dag, get_current_context, task

ITEMS = 15
LONG_RUNNING_SECONDS = 20
DEFERRED_SECONDS = 5


class WaitInTriggerer(BaseSensorOperator):
    """A deferrable sensor: waits ``seconds`` in the triggerer, then resumes in a new container.

    The standard ``TimeDeltaSensor`` measures from the run's start and does not defer at all when
    it starts late; this one always defers, so every run goes through the triggerer.
    """

    def __init__(self, *, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def execute(self, context: Any) -> None:
        print(f"deferring for {self.seconds} s: the triggerer waits, this container exits", flush=True)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=self.seconds)), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> str:
        """Runs in the second queueing of the same try, after the trigger fired."""
        print(f"resumed after the trigger fired: {event}", flush=True)
        return "resumed"


@dag(
    dag_id="aws_reconciler_example",
    schedule=None,
    catchup=False,
    max_active_tasks=8,
    max_active_runs=1,
    params={"items": ITEMS, "square_seconds": 0, "long_running_seconds": LONG_RUNNING_SECONDS},
    tags=["aws-reconciler", "demo"],
    doc_md=__doc__,
)
def aws_reconciler_example() -> None:
    """Fan out, retry, run long, gather."""

    @task
    def make_items() -> list[int]:
        """The input of the mapped task."""
        return list(range(1, int(get_current_context()["params"]["items"]) + 1))

    @task
    def square(x: int) -> int:
        """One mapped task instance per item."""
        time.sleep(float(get_current_context()["params"]["square_seconds"]))
        print(f"{x} squared is {x * x}")
        return x * x

    @task
    def total(values: Any) -> int:
        """Gathers the mapped results."""
        result = sum(values)
        print(f"sum of squares: {result}")
        return result

    @task(retries=1, retry_delay=timedelta(seconds=3))
    def flaky() -> str:
        """Fails on try 1 on purpose; Airflow retries it as a new ECS task, which succeeds."""
        try_number = get_current_context()["ti"].try_number
        if try_number == 1:
            raise RuntimeError("failing on purpose on try 1; try 2 will succeed")
        return f"succeeded on try {try_number}"

    @task
    def long_running() -> int:
        """Works for tens of seconds, printing progress."""
        seconds = int(get_current_context()["params"]["long_running_seconds"])
        for second in range(1, seconds + 1):
            time.sleep(1)
            print(f"working: {second}/{seconds} s", flush=True)
        return seconds

    @task(executor="BatchExecutor")
    def batch_sum(values: Any) -> int:
        """Runs as an AWS Batch job rather than an ECS task."""
        result = sum(values)
        print(f"sum of items (on Batch): {result}")
        return result

    @task(executor="BatchExecutor")
    def report(result: Any, items_sum: Any, flaky_result: Any, seconds: Any) -> None:
        """The end of the run, as a Batch job (arguments are the upstream tasks' XComs)."""
        print(f"sum of squares {result}; sum of items {items_sum}; flaky {flaky_result}; long task ran {seconds} s")

    items = make_items()
    waited = WaitInTriggerer(task_id="wait_in_triggerer", seconds=DEFERRED_SECONDS)
    waited >> report(total(square.expand(x=items)), batch_sum(items), flaky(), long_running())


aws_reconciler_example()
