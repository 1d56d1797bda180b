"""Stand-in for Airflow's task runner in the security tests' tasks (``python -m
airflow.sdk.execution_time.execute_workload --json-path FILE | --json-string JSON``).

The sandbox runs a container's command as a local process; with ``PYTHONPATH`` pointing at
``tests/security/taskimage`` this module answers the executors' command, the way a container
image decides what its command runs. It reads the workload as Airflow's does, says where it read
it from (never the token), sleeps ``TASK_SECONDS`` and exits with ``TASK_EXIT``.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time


def main() -> int:
    """Read the workload, then sleep and exit as told."""
    parser = argparse.ArgumentParser()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json-path")
    source.add_argument("--json-string")
    args = parser.parse_args()
    if args.json_path:
        mode = stat.S_IMODE(os.stat(args.json_path).st_mode)
        with open(args.json_path, encoding="utf-8") as file:
            workload = json.load(file)
        where = f"a file of mode {mode:o}"
    else:
        workload = json.loads(args.json_string)
        where = "the command line"
    print(f"workload of task instance {workload['ti']['id']} read from {where}", flush=True)
    print(f"token of {len(workload['token'])} characters", flush=True)
    time.sleep(float(os.environ.get("TASK_SECONDS", "0")))
    return int(os.environ.get("TASK_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
