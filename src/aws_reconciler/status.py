"""``aws-reconciler status``: what the task store says, for an operator at a terminal.

Read from the store only (no AWS call, no lease), the rows the reconciler with the same settings
runs (``--team``: that team's): tasks by backend and phase, the row waiting longest for a launch,
and the latest failures with their reasons. The store URL is shown without its password and
nothing from the ``spec`` column (the workload token) is ever read; reasons are scrubbed of
anything shaped like a token all the same, since AWS error messages are free text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .model import Phase, redact_tokens, utcnow
from .store.queries import ALL_TEAMS, TaskQueries
from .store.records import TaskRecord

DEFAULT_FAILURES = 10
_REASON_WIDTH = 160


def scrub(text: str) -> str:
    """``text`` on one line with anything shaped like a JWT replaced by ``***``."""
    return " ".join(redact_tokens(text).split())


def format_age(seconds: float) -> str:
    """A short human duration: ``42s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
    """Columns padded to the widest cell; ``right``: indexes of right-aligned (numeric) columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(cell).rjust(width) if index in right else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _task_name(record: TaskRecord) -> str:
    key = record.key
    mapped = f"[{key.map_index}]" if key.map_index >= 0 else ""
    return f"{key.dag_id}.{key.task_id}{mapped} {key.run_id} try {key.try_number}"


def render_counts(counts: Mapping[tuple[str, str], int]) -> list[str]:
    """Tasks by backend (rows) and phase (columns, in lifecycle order), with totals."""
    phases = [p.value for p in Phase]
    backends = sorted({b for b, _ in counts})
    if not backends:
        return ["no task records"]
    rows = []
    for backend in backends:
        values = [counts.get((backend, phase), 0) for phase in phases]
        # Phases this release does not know (a newer writer) still count in the total.
        total = sum(n for (b, _), n in counts.items() if b == backend)
        rows.append([backend, *(str(v) for v in values), str(total)])
    header = ["BACKEND", *(p.upper() for p in phases), "TOTAL"]
    return _table(header, rows, right=range(1, len(header)))


def render_oldest(oldest: Mapping[str, TaskRecord], now: datetime) -> list[str]:
    """Per backend, the row waiting longest for a launch, or that nothing waits."""
    if not oldest:
        return ["nothing is waiting for a launch"]
    lines = []
    for backend, record in sorted(oldest.items()):
        age = format_age((now - record.created_at).total_seconds())
        detail = f"{record.phase.value}, attempt {record.attempt}"
        if record.next_attempt_at is not None and record.next_attempt_at > now:
            detail += f", next attempt in {format_age((record.next_attempt_at - now).total_seconds())}"
        if record.last_error:
            detail += f", last error: {scrub(record.last_error)[:_REASON_WIDTH]}"
        lines.append(f"{backend}: waiting {age}  {_task_name(record)}  ({detail})  record {record.id}")
    return lines


def render_failures(failures: Sequence[TaskRecord], now: datetime) -> list[str]:
    """Latest failed rows, newest first, with their reasons."""
    if not failures:
        return ["no failed tasks"]
    rows = []
    for record in failures:
        finished = record.finished_at or record.updated_at
        reason = scrub(record.status_reason or record.last_error or "(no reason recorded)")
        if record.stop_code:
            reason = f"[{record.stop_code}] {reason}"
        rows.append(
            [
                finished.strftime("%Y-%m-%d %H:%M:%S"),
                f"{format_age((now - finished).total_seconds())} ago",
                record.backend.value,
                _task_name(record),
                "" if record.exit_code is None else str(record.exit_code),
                reason[:_REASON_WIDTH] + ("..." if len(reason) > _REASON_WIDTH else ""),
            ]
        )
    return _table(["FINISHED (UTC)", "AGE", "BACKEND", "TASK", "EXIT", "REASON"], rows)


def render_status(
    queries: TaskQueries, *, store_label: str, failures: int = DEFAULT_FAILURES, clock: Callable[[], datetime] = utcnow
) -> str:
    """The whole report as text."""
    now = clock()
    scope = f", rows of team {queries.team}" if isinstance(queries.team, str) else ""
    sections = [
        [f"task store: {store_label}{scope}"],
        ["", "Tasks by backend and phase (open rows, and finished rows kept for [aws_reconciler] retention):"],
        render_counts(queries.counts()),
        ["", "Oldest task waiting for a launch (pending or launching):"],
        render_oldest(queries.oldest_waiting(), now),
        ["", f"Recent failures (latest {failures}):"],
        render_failures(queries.recent_failures(failures), now),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def _record_document(record: TaskRecord, now: datetime) -> dict[str, Any]:
    key = record.key
    return {
        "id": record.id,
        "backend": record.backend.value,
        "phase": record.phase.value,
        "dag_id": key.dag_id,
        "task_id": key.task_id,
        "run_id": key.run_id,
        "map_index": key.map_index,
        "try_number": key.try_number,
        "attempt": record.attempt,
        "external_id": record.external_id,
        "created_at": record.created_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "age_seconds": round((now - record.created_at).total_seconds(), 1),
        "exit_code": record.exit_code,
        "stop_code": record.stop_code,
        "reason": scrub(record.status_reason or record.last_error or "") or None,
    }


def status_document(
    queries: TaskQueries, *, store_label: str, failures: int = DEFAULT_FAILURES, clock: Callable[[], datetime] = utcnow
) -> dict[str, Any]:
    """The same report as a JSON-ready document (``status --json``), for scripts and alerts."""
    now = clock()
    counts: dict[str, dict[str, int]] = {}
    for (backend, phase), n in sorted(queries.counts().items()):
        counts.setdefault(backend, {})[phase] = n
    scope = {} if queries.team is ALL_TEAMS else {"team": queries.team}
    return {
        "store": store_label,
        **scope,
        "generated_at": now.isoformat(),
        "counts": counts,
        "oldest_waiting": {b: _record_document(r, now) for b, r in sorted(queries.oldest_waiting().items())},
        "recent_failures": [_record_document(r, now) for r in queries.recent_failures(failures)],
    }
