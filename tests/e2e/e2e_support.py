"""Helpers of the end-to-end tests: start a stack for a module, read ECS tasks by record, check outcomes.

Every wait polls a real interface (Airflow's REST API, the task store, the sandbox control API)
until a condition holds or a deadline passes; nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler_sandbox.demo.stack import (
    ADMIN_URL_ENV,
    DEFAULT_ADMIN_URL,
    DEPLOYMENT,
    RECONCILER,
    SCHEDULER,
    DemoStack,
    StackOptions,
    StoreRow,
    postgres_problem,
    utc_now,
)
from aws_reconciler_sandbox.demo.summary import Expectation, TiOutcome, outcomes
from support.processes import read_exports

E2E_DAGS = Path(__file__).resolve().parent / "dags"
#: Deadline of one DAG run of the example on a loaded two-core machine.
RUN_TIMEOUT = 300.0


def require_postgres() -> None:
    """The end-to-end stack runs several Airflow processes: SQLite's single writer is not enough."""
    problem = postgres_problem(os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL))
    if problem is None:
        return
    if os.environ.get("AWS_RECONCILER_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{problem} and AWS_RECONCILER_REQUIRE_POSTGRES=1")
    pytest.skip(problem)


@contextmanager
def running_stack(work_dir: Path, **options: Any) -> Iterator[DemoStack]:
    """A started stack on a fresh PostgreSQL database; everything stopped and dropped afterwards."""
    require_postgres()
    with DemoStack(StackOptions(work_dir=work_dir, database="postgres", **options)) as stack:
        yield stack


def ecs_tasks_by_record(stack: DemoStack) -> dict[str, list[dict[str, Any]]]:
    """The sandbox's ECS tasks of this deployment grouped by their ``aws-reconciler:id`` tag."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in stack.ecs_tasks():
        tags = task.get("tags") or {}
        if task.get("startedBy") == DEPLOYMENT and ID_TAG in tags:
            grouped[tags[ID_TAG]].append(task)
    return dict(grouped)


def batch_jobs_by_record(stack: DemoStack) -> dict[str, list[dict[str, Any]]]:
    """The sandbox's Batch jobs of this deployment grouped by their ``aws-reconciler:id`` tag."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in stack.batch_jobs():
        tags = job.get("tags") or {}
        if tags.get(DEPLOYMENT_TAG) == DEPLOYMENT and ID_TAG in tags:
            grouped[tags[ID_TAG]].append(job)
    return dict(grouped)


def assert_one_batch_job_per_record(stack: DemoStack, rows: Sequence[StoreRow]) -> None:
    """Each Batch row ran as exactly one SUCCEEDED Batch job, the one its ``external_id`` names."""
    by_record = batch_jobs_by_record(stack)
    problems = []
    for row in rows:
        if row.backend != "batch":
            continue
        jobs = by_record.get(row.id, [])
        ran = [j["jobId"] for j in jobs if j.get("startedAt") is not None]
        if len(ran) != 1:
            problems.append(f"{row.id} ({row.task_id}[{row.map_index}]): {len(ran)} Batch jobs ran: {ran}")
        if row.external_id not in {j["jobId"] for j in jobs}:
            problems.append(f"{row.id}: its Batch job {row.external_id} is unknown or lacks its id tag")
        if row.phase == "succeeded" and not any(
            j["jobId"] == row.external_id and j.get("status") == "SUCCEEDED" for j in jobs
        ):
            problems.append(f"{row.id}: succeeded but its Batch job {row.external_id} did not")
    assert not problems, "\n".join(problems)


def never_started(task: Mapping[str, Any]) -> bool:
    """Stopped before its container ran (nothing of the Airflow task happened)."""
    return task.get("lastStatus") == "STOPPED" and (
        task.get("startedAt") is None or task.get("stopCode") == "TaskFailedToStart"
    )


def run_outcomes(stack: DemoStack, dag_id: str, run_id: str, expected: Mapping[str, Expectation]) -> list[TiOutcome]:
    """Every task instance of the run with its store row and the expectation it is checked against."""
    return outcomes(stack.api.task_instances(dag_id, run_id), stack.store_rows(dag_id=dag_id, run_id=run_id), expected)


def assert_as_expected(results: Sequence[TiOutcome], *, count: int) -> None:
    """All ``count`` task instances ended in their expected state on their expected try."""
    wrong = [f"{r.label}: {r.state} on try {r.try_number}, expected {r.expected}" for r in results if not r.ok]
    assert not wrong, "task instances not as expected:\n" + "\n".join(wrong)
    assert len(results) == count, f"expected {count} task instances, got {[r.label for r in results]}"


def assert_one_ecs_task_per_record(stack: DemoStack, rows: Sequence[StoreRow]) -> None:
    """Each ECS queueing that was launched ran as exactly one ECS task carrying its record id.

    Several tasks per id would be legitimate only for launch attempts stopped before their
    container started (a retried launch); each attempt has its own client token. Rows of
    the Batch backend are checked by :func:`assert_one_batch_job_per_record`.
    """
    by_record = ecs_tasks_by_record(stack)
    problems = []
    for row in rows:
        if row.backend != "ecs":
            continue
        tasks = by_record.get(row.id, [])
        tokens = [t.get("clientToken") for t in tasks]
        if len(set(tokens)) != len(tokens):
            problems.append(f"{row.id}: one client token launched several tasks: {tokens}")
        ran = [t["arn"] for t in tasks if not never_started(t)]
        if len(ran) > 1:
            problems.append(
                f"{row.id} ({row.task_id}[{row.map_index}] try {row.try_number}): {len(ran)} tasks ran: {ran}"
            )
        if row.phase == "succeeded" and len(ran) != 1:
            problems.append(f"{row.id} ({row.task_id}[{row.map_index}]) succeeded but {len(ran)} ECS tasks ran")
        if row.external_id is not None and row.external_id not in {t["arn"] for t in tasks}:
            problems.append(f"{row.id}: its ECS task {row.external_id} does not carry its id tag")
    assert not problems, "\n".join(problems)


def wait_no_ecs_task_running(stack: DemoStack, timeout: float = 60.0) -> None:
    """Until every ECS task of the deployment is STOPPED (orphans are stopped after the grace)."""

    def all_stopped() -> bool:
        return all(t.get("lastStatus") == "STOPPED" for tasks in ecs_tasks_by_record(stack).values() for t in tasks)

    stack.wait(all_stopped, "every ECS task to be STOPPED (no orphan left running)", timeout)


def wait_rows_reported(stack: DemoStack, dag_id: str, run_id: str, timeout: float = 60.0) -> list[StoreRow]:
    """Until every row of the run is finished and reported to Airflow; returns the rows.

    A DAG run can succeed before its last ECS task is seen STOPPED: the task instance reports
    success through the Execution API, then its process exits, then the reconciler observes it
    and the executor reports it. Nothing may stay unreported.
    """

    def settled() -> list[StoreRow] | None:
        rows = stack.store_rows(dag_id=dag_id, run_id=run_id)
        return rows if all(r.finished_at is not None and r.reported_at is not None for r in rows) else None

    def unsettled() -> str:
        rows = stack.store_rows(dag_id=dag_id, run_id=run_id)
        return "unsettled rows: " + "; ".join(
            f"{r.task_id}[{r.map_index}] try {r.try_number} {r.phase} owner {r.owner} reported {r.reported_at}"
            for r in rows
            if r.finished_at is None or r.reported_at is None
        )

    return stack.wait(
        settled, f"every task record of {dag_id}/{run_id} to be finished and reported", timeout, on_timeout=unsettled
    )


def ti_map(tis: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
    """Task instances keyed by (task_id, map_index)."""
    return {(str(t["task_id"]), int(t["map_index"])): t for t in tis}


#: The sandbox's settings of ours under the amazon provider's names (its AwsEcsExecutor's and
#: AwsBatchExecutor's options, spelled here, not derived from the migration's table it tests).
PROVIDER_NAMES = {
    **{
        f"AIRFLOW__AWS_RECONCILER_ECS__{option}": f"AIRFLOW__AWS_ECS_EXECUTOR__{option}"
        for option in (
            "CLUSTER",
            "TASK_DEFINITION",
            "CONTAINER_NAME",
            "SUBNETS",
            "SECURITY_GROUPS",
            "REGION_NAME",
            "LAUNCH_TYPE",
        )
    },
    **{
        f"AIRFLOW__AWS_RECONCILER_BATCH__{option}": f"AIRFLOW__AWS_BATCH_EXECUTOR__{option}"
        for option in ("JOB_QUEUE", "JOB_DEFINITION", "REGION_NAME")
    },
}
#: A tag the provider's request options put on every ECS task and Batch job: seen on AWS, it
#: proves the migrated settings, not leftovers of ours, launched them.
MIGRATED_TAGS = {"migrated-from": "amazon-provider"}
#: What a provider deployment sets beyond what the sandbox needs.
PROVIDER_EXTRAS = {
    "AIRFLOW__AWS_ECS_EXECUTOR__CONN_ID": "aws_default",
    "AIRFLOW__AWS_ECS_EXECUTOR__MAX_RUN_TASK_ATTEMPTS": "3",
    "AIRFLOW__AWS_ECS_EXECUTOR__CHECK_HEALTH_ON_STARTUP": "True",
    "AIRFLOW__AWS_ECS_EXECUTOR__RUN_TASK_KWARGS": json.dumps(
        {"tags": [{"key": k, "value": v} for k, v in MIGRATED_TAGS.items()]}
    ),
    "AIRFLOW__AWS_BATCH_EXECUTOR__CONN_ID": "aws_default",
    "AIRFLOW__AWS_BATCH_EXECUTOR__MAX_SUBMIT_JOB_ATTEMPTS": "3",
    "AIRFLOW__AWS_BATCH_EXECUTOR__CHECK_HEALTH_ON_STARTUP": "True",
    "AIRFLOW__AWS_BATCH_EXECUTOR__SUBMIT_JOB_KWARGS": json.dumps({"tags": MIGRATED_TAGS}),
    # No equivalent: `config migrate` notes it and leaves it out.
    "AIRFLOW__AWS_BATCH_EXECUTOR__JOB_NAME": "airflow",
}
_OURS = ("AIRFLOW__AWS_RECONCILER_ECS__", "AIRFLOW__AWS_RECONCILER_BATCH__")


def restart_scheduler_and_reconciler(stack: DemoStack) -> None:
    """``kill -9`` both and start them again with the stack's current settings; until both run."""
    stack.kill(SCHEDULER)
    stack.kill(RECONCILER)
    started = utc_now()
    stack.start_reconciler()
    stack.start_scheduler()
    stack.wait_scheduler_running(started_after=started)
    stack.wait_reconciler_leading()


@contextmanager
def migrated_configuration(stack: DemoStack) -> Iterator[dict[str, str]]:
    """The stack's scheduler and reconciler configured as a deployment moving from the amazon
    provider's executors: the sandbox's settings under the provider's names, and ours only as
    ``aws-reconciler config migrate --format env`` prints them. Yields the migrated settings;
    the stack's own settings are back afterwards.

    The api-server, dag-processor and triggerer keep the stack's own settings: none of them
    launches or watches a task.
    """
    original = dict(stack.sandbox_env)
    ours = {name: value for name, value in original.items() if name.startswith(_OURS)}
    unnamed = sorted(set(ours) - set(PROVIDER_NAMES))
    assert not unnamed, f"sandbox settings without their provider name in PROVIDER_NAMES: {unnamed}"
    provider = {PROVIDER_NAMES[name]: value for name, value in ours.items()} | PROVIDER_EXTRAS
    stack.sandbox_env = {name: value for name, value in original.items() if name not in ours} | provider
    try:
        printed = subprocess.run(
            [sys.executable, "-m", "aws_reconciler.cli", "config", "migrate", "--format", "env"],
            env=stack.reconciler_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert printed.returncode == 0, printed.stderr
        assert "note: [aws_batch_executor] job_name (from env AIRFLOW__AWS_BATCH_EXECUTOR__JOB_NAME)" in printed.stderr
        # Saved as an operator would, and applied from the file.
        saved = stack.work_dir / "migrated.env"
        saved.write_text(printed.stdout)
        migrated = read_exports(saved)
        assert set(ours) <= set(migrated), f"not migrated: {sorted(set(ours) - set(migrated))}"
        stack.sandbox_env |= migrated
        restart_scheduler_and_reconciler(stack)
        yield migrated
    finally:
        stack.sandbox_env = original
        restart_scheduler_and_reconciler(stack)


def counter(url: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples (``<name>_total``) whose labels include ``labels``."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_total" and all(sample.labels.get(k) == v for k, v in labels.items())
    )
