"""Deadline alert callbacks of the demo: imported and called by the executor's container.

A missed deadline's ``SyncCallback`` names a function by its import path; the container that runs
it adds the DAG folder to the import path, so a plain module beside the DAG files is enough.
(This module defines no DAG, so the DAG processor does not parse it.)
"""

from __future__ import annotations

from typing import Any


def notify(context: dict[str, Any], channel: str = "ops") -> None:
    """Tell someone the run is late (here: the container's output, in its CloudWatch log)."""
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    print(f"[{channel}] run {run.get('dag_run_id')} missed its deadline {deadline.get('deadline_time')}", flush=True)


def fail_loudly(context: dict[str, Any], **kwargs: Any) -> None:
    """A callback that raises: its container exits non-zero and the callback is recorded as failed."""
    raise RuntimeError("the pager is down")
