"""The parts of the local stack that need no stack: process teardown, the sandbox's export file, the
summary. Fast (no Airflow, no database), so they run with the unit tests."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aws_reconciler_sandbox.demo.processes import STACK_MARKER, ManagedProcess, alive, marked_pids, process_tree, sweep
from aws_reconciler_sandbox.demo.stack import StoreRow, _read_exports
from aws_reconciler_sandbox.demo.summary import EXAMPLE_EXPECTED, Expectation, format_table, outcomes

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="process tree inspection needs /proc (Linux)")

# A parent that ignores SIGTERM and starts a child in a session of its own that ignores it too,
# as a task runner does; prints the child's pid.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
        start_new_session=True,
    )
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


def _started(tmp_path: Path, code: str, *, stop_timeout: float = 1.0, marker: str = "test") -> ManagedProcess:
    env = {**os.environ, STACK_MARKER: marker}
    process = ManagedProcess(
        name="stubborn", argv=[sys.executable, "-c", code], env=env, log_dir=tmp_path, stop_timeout=stop_timeout
    )
    return process.start()


def _child_pid(process: ManagedProcess) -> int:
    assert process.log_path is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = process.log_path.read_text().strip()
        if text:
            return int(text.splitlines()[0])
        time.sleep(0.05)
    raise AssertionError(f"no child pid in {process.log_path}")


def test_stop_escalates_to_sigkill_and_reaches_escaped_descendants(tmp_path: Path) -> None:
    process = _started(tmp_path, STUBBORN)
    child = _child_pid(process)
    tree = process_tree(process.pid or 0)
    assert child in tree, "the child in its own session is still a descendant"

    process.stop()

    assert not process.running
    assert alive(tree) == [], "the parent and its escaped child must both be gone"


def test_kill_is_a_crash_of_the_group_only(tmp_path: Path) -> None:
    process = _started(tmp_path, STUBBORN)
    child = _child_pid(process)
    try:
        process.kill()
        assert process.returncode == -signal.SIGKILL
        # Like a real host: what runs in another session survives the crash of its parent...
        assert alive({child: process_tree(child)[child]}) == [child]
    finally:
        os.kill(child, signal.SIGKILL)


def test_sweep_stops_processes_by_stack_marker(tmp_path: Path) -> None:
    marker = f"sweep-{os.getpid()}"
    process = _started(tmp_path, STUBBORN, marker=marker)
    child = _child_pid(process)
    assert {process.pid, child} <= set(marked_pids(marker))

    left = sweep(marker, timeout=2)

    assert left == []
    assert marked_pids(marker) == []
    process.stop()


def test_exports_are_read_only_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.env"
    assert _read_exports(path) is None
    path.write_text("export AWS_DEFAULT_REGION=us-east-1\n")
    assert _read_exports(path) is None, "not complete before the endpoint is written"
    path.write_text("export AWS_ENDPOINT_URL=http://127.0.0.1:5555\nexport A_LIST='subnet-1,subnet-2'\n")
    assert _read_exports(path) == {"AWS_ENDPOINT_URL": "http://127.0.0.1:5555", "A_LIST": "subnet-1,subnet-2"}


def _row(task_id: str, map_index: int, try_number: int, arn: str | None, phase: str = "succeeded") -> StoreRow:
    now = datetime.now(UTC)
    return StoreRow(
        id=f"{task_id}-{map_index}-{try_number}-{arn}",
        backend="ecs",
        dag_id="d",
        task_id=task_id,
        run_id="r",
        map_index=map_index,
        try_number=try_number,
        owner="1",
        desired="running",
        phase=phase,
        external_id=arn,
        attempt=1 if arn else 0,
        status_reason=None if arn else "invalid executor_config key 'x'",
        last_error=None,
        exit_code=0,
        created_at=now,
        launched_at=now,
        started_at=now,
        finished_at=now,
        reported_at=now,
    )


def test_outcomes_join_each_try_with_its_ecs_task() -> None:
    tis = [
        {"task_id": "flaky", "map_index": -1, "state": "success", "try_number": 2, "duration": 1.5},
        {"task_id": "square", "map_index": 3, "state": "success", "try_number": 1, "duration": 2.0},
        {"task_id": "bad", "map_index": -1, "state": "failed", "try_number": 1, "duration": None},
    ]
    rows = [
        _row("flaky", -1, 1, "arn:try1"),
        _row("flaky", -1, 2, "arn:try2"),
        _row("square", 3, 1, "arn:sq"),
        _row("bad", -1, 1, None, phase="failed"),
    ]
    results = {r.label: r for r in outcomes(tis, rows, {**EXAMPLE_EXPECTED, "bad": Expectation("failed", 1)})}

    assert results["flaky"].external_id == "arn:try2" and results["flaky"].ok
    assert results["square[3]"].external_id == "arn:sq" and results["square[3]"].ok
    assert results["bad"].ok and results["bad"].reason == "invalid executor_config key 'x'"
    table = format_table(list(results.values()))
    assert "arn:try2" in table and "(none: invalid executor_config key 'x')" in table


def test_a_first_try_success_of_flaky_is_not_as_expected() -> None:
    tis = [{"task_id": "flaky", "map_index": -1, "state": "success", "try_number": 1, "duration": 1.0}]
    [result] = outcomes(tis, [_row("flaky", -1, 1, "arn:1")], EXAMPLE_EXPECTED)
    assert not result.ok
    assert "EXPECTED success on try 2" in format_table([result])
