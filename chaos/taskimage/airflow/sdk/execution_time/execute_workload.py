"""Stand-in for Airflow's task runner in the chaos suite's tasks (``python -m
airflow.sdk.execution_time.execute_workload --json-string ...``, the command the executors send).

The sandbox runs a container's command as a local process; with ``PYTHONPATH`` pointing at
``chaos/taskimage`` (the suite passes it with ``aws-reconciler sandbox --task-env``), this module
answers that command instead of Airflow's, the way a container image decides what its command
runs. It ignores the workload, sleeps ``CHAOS_SECONDS`` and exits with ``CHAOS_EXIT``; both come
from the task's ``executor_config`` (a container environment override). SIGTERM (StopTask,
TerminateJob) ends it at once, as Python's default handler does: exit status 143.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    """Sleep as told, then exit as told."""
    time.sleep(float(os.environ.get("CHAOS_SECONDS", "0")))
    return int(os.environ.get("CHAOS_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
