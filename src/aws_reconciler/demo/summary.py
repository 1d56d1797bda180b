"""What happened in a DAG run, task instance by task instance: Airflow's view joined with the
task store's (which ECS task ran each try), checked against what the DAG is expected to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .stack import StoreRow


@dataclass(frozen=True)
class Expectation:
    """The final state and try number a task instance should end with."""

    state: str = "success"
    try_number: int = 1


#: The example DAG: everything succeeds on its first try except ``flaky`` (second try).
EXAMPLE_EXPECTED: Mapping[str, Expectation] = {"flaky": Expectation("success", 2)}
#: The invalid-config DAG: the bad task fails without running, its neighbour succeeds.
INVALID_CONFIG_EXPECTED: Mapping[str, Expectation] = {"bad_config": Expectation("failed", 1)}


@dataclass(frozen=True)
class TiOutcome:
    """One task instance at the end of the run."""

    task_id: str
    map_index: int
    state: str
    try_number: int
    duration: float | None
    ecs_task_arn: str | None
    launch_attempts: int
    reason: str | None
    expected: Expectation

    @property
    def ok(self) -> bool:
        """Reached the expected state on the expected try."""
        return self.state == self.expected.state and self.try_number == self.expected.try_number

    @property
    def label(self) -> str:
        """``task`` or ``task[map_index]``."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"


def outcomes(
    tis: Sequence[Mapping[str, Any]], rows: Sequence[StoreRow], expected: Mapping[str, Expectation]
) -> list[TiOutcome]:
    """Join the run's task instances (REST API) with their task-store rows (by TI key and try).

    A try queued more than once (requeued after being stuck in queued) has several rows; the
    newest is the one that ran.
    """
    newest: dict[tuple[str, int, int], StoreRow] = {}
    for row in rows:  # oldest first
        newest[(row.task_id, row.map_index, row.try_number)] = row
    found = []
    for ti in sorted(tis, key=lambda t: (str(t["task_id"]), int(t["map_index"]))):
        key = (str(ti["task_id"]), int(ti["map_index"]), int(ti.get("try_number") or 0))
        match = newest.get(key)
        found.append(
            TiOutcome(
                task_id=key[0],
                map_index=key[1],
                state=str(ti.get("state") or "none"),
                try_number=key[2],
                duration=ti.get("duration"),
                ecs_task_arn=match.external_id if match else None,
                launch_attempts=match.attempt if match else 0,
                reason=match.status_reason if match and match.phase == "failed" else None,
                expected=expected.get(key[0], Expectation()),
            )
        )
    return found


def format_table(results: Sequence[TiOutcome]) -> str:
    """A fixed-width table, one line per task instance."""
    header = ("TASK INSTANCE", "STATE", "TRIES", "LAUNCHES", "DURATION", "ECS TASK ARN", "")
    lines = [header]
    for r in results:
        duration = f"{r.duration:.1f} s" if r.duration is not None else "-"
        verdict = "ok" if r.ok else f"EXPECTED {r.expected.state} on try {r.expected.try_number}"
        arn = r.ecs_task_arn or (f"(none: {r.reason})" if r.reason else "-")
        lines.append((r.label, r.state, str(r.try_number), str(r.launch_attempts), duration, arn, verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 2)]
    out = []
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        out.append("  ".join([*cells, line[-2], line[-1]]).rstrip())
    return "\n".join(out)


def counts(values: Sequence[str]) -> str:
    """``a 2, b 1`` in a stable order."""
    tally: dict[str, int] = {}
    for value in values:
        tally[value] = tally.get(value, 0) + 1
    return ", ".join(f"{name} {n}" for name, n in sorted(tally.items())) or "-"


def progress_line(elapsed: float, tis: Sequence[Mapping[str, Any]], rows: Sequence[StoreRow]) -> str:
    """Airflow's task-instance states and the store's phases (what ECS is doing), in one line."""
    airflow = counts([str(t.get("state") or "none") for t in tis])
    ecs = counts([r.phase for r in rows])
    return f"{elapsed:6.0f} s  task instances: {airflow}  |  ECS tasks: {ecs}"
