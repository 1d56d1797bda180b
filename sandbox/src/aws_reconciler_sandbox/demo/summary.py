"""What happened in a DAG run, task instance by task instance: Airflow's view joined with the
task store's (which ECS task or Batch job ran each try), checked against what the DAG is expected to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .stack import StoreRow


@dataclass(frozen=True)
class Expectation:
    """The final state, try number and backend (executor) a task instance should end with."""

    state: str = "success"
    try_number: int = 1
    #: The store's ``backend`` of its row: ``ecs`` (EcsExecutor, the default) or ``batch``.
    backend: str = "ecs"


#: The example DAG: everything succeeds on its first try except ``flaky`` (second try); ``batch_sum``
#: and ``report`` run as Batch jobs (``executor="BatchExecutor"``), the rest as ECS tasks.
EXAMPLE_EXPECTED: Mapping[str, Expectation] = {
    "flaky": Expectation("success", 2),
    "batch_sum": Expectation("success", 1, "batch"),
    "report": Expectation("success", 1, "batch"),
}
#: The example DAG's tasks that run on AWS Batch.
EXAMPLE_BATCH_TASKS = frozenset(k for k, v in EXAMPLE_EXPECTED.items() if v.backend == "batch")
#: The example DAG's deferrable tasks: each try is queued twice (before deferring and after its
#: trigger fired). The first queueing's row is ``revoked`` when the second arrives before the
#: first container's end was seen (no longer wanted), else ``succeeded``.
EXAMPLE_DEFERRED_TASKS = frozenset({"wait_in_triggerer"})
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
    #: ``ecs`` or ``batch`` (None: no store row).
    backend: str | None
    #: The ECS task ARN or the Batch job id (the store's ``external_id``).
    external_id: str | None
    launch_attempts: int
    reason: str | None
    expected: Expectation

    @property
    def ok(self) -> bool:
        """Reached the expected state on the expected try, through the expected backend."""
        return (
            self.state == self.expected.state
            and self.try_number == self.expected.try_number
            and self.backend in (None, self.expected.backend)
        )

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
                backend=match.backend if match else None,
                external_id=match.external_id if match else None,
                launch_attempts=match.attempt if match else 0,
                reason=match.status_reason if match and match.phase == "failed" else None,
                expected=expected.get(key[0], Expectation()),
            )
        )
    return found


def format_table(results: Sequence[TiOutcome]) -> str:
    """A fixed-width table, one line per task instance."""
    header = ("TASK INSTANCE", "STATE", "TRIES", "LAUNCHES", "DURATION", "BACKEND", "ECS TASK ARN / BATCH JOB ID", "")
    lines = [header]
    for r in results:
        duration = f"{r.duration:.1f} s" if r.duration is not None else "-"
        verdict = "ok" if r.ok else f"EXPECTED {r.expected.state} on try {r.expected.try_number} ({r.expected.backend})"
        arn = r.external_id or (f"(none: {r.reason})" if r.reason else "-")
        backend = r.backend or "-"
        lines.append((r.label, r.state, str(r.try_number), str(r.launch_attempts), duration, backend, arn, verdict))
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
    """Airflow's task-instance states and the store's phases (what ECS and Batch are doing), in one line."""
    airflow = counts([str(t.get("state") or "none") for t in tis])
    ecs = counts([r.phase for r in rows if r.backend == "ecs"])
    batch = counts([r.phase for r in rows if r.backend == "batch"])
    return f"{elapsed:6.0f} s  task instances: {airflow}  |  ECS tasks: {ecs}  |  Batch jobs: {batch}"
