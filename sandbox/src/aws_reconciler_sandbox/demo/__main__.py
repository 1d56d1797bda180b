"""``python -m aws_reconciler_sandbox.demo`` (``make demo``): the whole system on this machine, no AWS account.

Starts the sandbox (a fake ECS and Batch that run each task as a local process), a database, the
reconciler and Airflow (api-server, scheduler, dag-processor) with both the ``EcsExecutor`` (the
default) and the ``BatchExecutor``; triggers
the example DAG and the invalid-config DAG, prints progress while they run and a summary at the
end. Exit status 0 only when every task instance ended as expected. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .airflow_api import FINISHED_RUN_STATES
from .stack import (
    EXAMPLE_DAG_ID,
    INVALID_CONFIG_DAG_ID,
    DemoStack,
    StackError,
    StackOptions,
    sigterm_as_keyboard_interrupt,
)
from .summary import EXAMPLE_EXPECTED, INVALID_CONFIG_EXPECTED, Expectation, format_table, outcomes, progress_line

PROGRESS_EVERY = 3.0


def _say(message: str = "") -> None:
    print(message, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aws_reconciler_sandbox.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) after a good run")
    parser.add_argument("--work-dir", type=Path, help="directory for logs and AIRFLOW_HOME (default: a temp dir)")
    parser.add_argument(
        "--database", choices=("auto", "postgres", "sqlite"), default="auto", help="default: PostgreSQL if reachable"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the DAG runs")
    return parser.parse_args(argv)


def run_demo(stack: DemoStack, *, timeout: float) -> bool:
    """Trigger both DAGs, follow them, print the summary; True when every TI is as expected."""
    started = time.monotonic()
    runs = {
        EXAMPLE_DAG_ID: stack.api.trigger(EXAMPLE_DAG_ID),
        INVALID_CONFIG_DAG_ID: stack.api.trigger(INVALID_CONFIG_DAG_ID),
    }
    _say(f"triggered {EXAMPLE_DAG_ID} ({runs[EXAMPLE_DAG_ID]}) and {INVALID_CONFIG_DAG_ID}")
    _say(f"watch it in the Airflow UI: {stack.api.base_url}/dags/{EXAMPLE_DAG_ID}")
    while True:
        stack.check_processes()
        tis = stack.api.task_instances(EXAMPLE_DAG_ID, runs[EXAMPLE_DAG_ID])
        rows = stack.store_rows(dag_id=EXAMPLE_DAG_ID, run_id=runs[EXAMPLE_DAG_ID])
        _say(progress_line(time.monotonic() - started, tis, rows))
        states = {dag_id: stack.api.dag_run(dag_id, run_id)["state"] for dag_id, run_id in runs.items()}
        if all(state in FINISHED_RUN_STATES for state in states.values()):
            break
        if time.monotonic() - started > timeout:
            _say(f"gave up after {timeout:.0f} s: runs are {states}")
            break
        time.sleep(PROGRESS_EVERY)
    wall = time.monotonic() - started

    ok = True
    for dag_id, expected in ((EXAMPLE_DAG_ID, EXAMPLE_EXPECTED), (INVALID_CONFIG_DAG_ID, INVALID_CONFIG_EXPECTED)):
        ok = _summarise(stack, dag_id, runs[dag_id], expected) and ok
    _say()
    _say(f"DAG runs finished {wall:.0f} s after the trigger ({stack.elapsed():.0f} s including start-up)")
    return ok


def _summarise(stack: DemoStack, dag_id: str, run_id: str, expected: Mapping[str, Expectation]) -> bool:
    """Print one run's table; True when every task instance is as expected."""
    run = stack.api.dag_run(dag_id, run_id)
    results = outcomes(
        stack.api.task_instances(dag_id, run_id), stack.store_rows(dag_id=dag_id, run_id=run_id), expected
    )
    _say()
    _say(f"== {dag_id} run {run_id}: {run['state']} ==")
    _say(format_table(results))
    if dag_id == INVALID_CONFIG_DAG_ID:
        for event in stack.api.event_logs(dag_id=dag_id, event="state mismatch"):
            extra = str(event.get("extra") or "")
            if "Extra info:" in extra:
                _say(f"Airflow event log ({event['task_id']}): {extra.split('Extra info:', 1)[1].strip()}")
    good = all(r.ok for r in results) and bool(results)
    _say(f"{sum(r.ok for r in results)}/{len(results)} task instances as expected")
    return good


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    args = _parse(argv)
    options = StackOptions(
        work_dir=args.work_dir,
        cleanup_work_dir=not args.keep and args.work_dir is None,
        database=args.database,
        wait_for_dags=(EXAMPLE_DAG_ID, INVALID_CONFIG_DAG_ID),
    )
    _say("starting the sandbox, the database, the reconciler and Airflow (takes about a minute) ...")
    try:
        with sigterm_as_keyboard_interrupt(), DemoStack(options) as stack:
            ok = run_demo(stack, timeout=args.timeout)
            if not ok:
                stack.log(stack.describe_logs())
                options.cleanup_work_dir = False
    except KeyboardInterrupt:
        _say("\ninterrupted: every process of the demo has been stopped")
        return 130
    except StackError as exc:
        _say(f"the demo failed: {exc}")
        return 1
    _say("OK: every task instance ended as expected" if ok else "FAILED: see the table above and the logs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
