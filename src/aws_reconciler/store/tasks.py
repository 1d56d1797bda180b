"""Reads and writes of task records: the only state the executor and the reconciler share.

Writers touch only the columns they own (the executor: ``owner``, ``desired``, ``reported_at``;
the reconciler: the lifecycle columns), and the reconciler's writes are compare-and-set on the
phase and attempt, so concurrent writers never lose each other's updates.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from ..model import Backend, Clock, Desired, Phase, TiKey, utcnow
from .notify import notify
from .records import NewTask, TaskRecord
from .tables import TERMINAL_PHASES, task

# Everything but the spec: rows are read often, specs only to launch.
_LIGHT_COLUMNS = [c for c in task.c if c.name != "spec"]
# Stay well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record(row: RowMapping) -> TaskRecord:
    return TaskRecord(
        id=row["id"],
        backend=Backend(row["backend"]),
        owner=row["owner"],
        key=TiKey(row["dag_id"], row["task_id"], row["run_id"], row["map_index"], row["try_number"]),
        queue=row["queue"],
        target=row["target"],
        desired=Desired(row["desired"]),
        phase=Phase(row["phase"]),
        external_id=row["external_id"],
        attempt=row["attempt"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        exit_code=row["exit_code"],
        stop_code=row["stop_code"],
        status_reason=row["status_reason"],
        created_at=row["created_at"],
        launched_at=row["launched_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        reported_at=row["reported_at"],
        updated_at=row["updated_at"],
        spec=row.get("spec"),
    )


def _key_columns() -> sa.Tuple:
    return sa.tuple_(task.c.dag_id, task.c.task_id, task.c.run_id, task.c.map_index, task.c.try_number)


class TaskStore:
    """Typed operations on ``aws_reconciler_task``; one short transaction each."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    # ---- executor side -------------------------------------------------------------------

    def add(self, tasks: Sequence[NewTask]) -> None:
        """Insert one scheduler call's rows in ONE transaction and wake the reconciler.

        An older open row of the same TI key (a reschedule that came back before its previous
        container was observed to stop) is marked reported, so its late event can never be
        mistaken for the outcome of the new queueing.
        """
        if not tasks:
            return
        now = self.clock()
        rows = [
            {
                "id": t.id,
                "backend": t.backend.value,
                "owner": t.owner,
                "dag_id": t.key.dag_id,
                "task_id": t.key.task_id,
                "run_id": t.key.run_id,
                "map_index": t.key.map_index,
                "try_number": t.key.try_number,
                "queue": t.queue,
                "target": t.target,
                "spec": t.spec,
                "desired": Desired.RUNNING.value,
                "phase": t.phase.value,
                "attempt": 0,
                "next_attempt_at": now,
                "status_reason": t.status_reason,
                "created_at": now,
                "updated_at": now,
                "finished_at": now if t.phase.terminal else None,
            }
            for t in tasks
        ]
        keys = [t.key.as_tuple() for t in tasks]
        ids = [t.id for t in tasks]
        with self.engine.begin() as conn:
            for chunk in _chunks(keys):
                conn.execute(
                    task.update()
                    .where(_key_columns().in_(chunk), task.c.id.not_in(ids), task.c.reported_at.is_(None))
                    .values(reported_at=now, updated_at=now)
                )
            conn.execute(task.insert(), rows)
            notify(conn)

    def finished_unreported(self, *, owner: str, backend: Backend) -> list[TaskRecord]:
        """Rows this owner must report: one indexed query, no spec."""
        query = sa.select(*_LIGHT_COLUMNS).where(
            task.c.owner == owner,
            task.c.backend == backend.value,
            task.c.finished_at.is_not(None),
            task.c.reported_at.is_(None),
        )
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).mappings()]

    def mark_reported(self, ids: Sequence[str]) -> None:
        """Remember that Airflow has been told; called after the events are buffered."""
        now = self.clock()
        with self.engine.begin() as conn:
            for chunk in _chunks(ids):
                conn.execute(task.update().where(task.c.id.in_(chunk)).values(reported_at=now, updated_at=now))

    def adopt(self, *, owner: str, backend: Backend, ids: Collection[str], keys: Collection[TiKey]) -> list[TaskRecord]:
        """Take ownership of rows by id, or (for TIs without one) by newest row of their TI key.

        A finished row is made reportable again: the adopted TI is still queued or running in
        Airflow, so the previous owner's report never reached the scheduler's database.
        """
        now = self.clock()
        found: dict[str, TaskRecord] = {}
        with self.engine.begin() as conn:
            for chunk in _chunks(list(ids)):
                for row in conn.execute(
                    sa.select(*_LIGHT_COLUMNS).where(task.c.id.in_(chunk), task.c.backend == backend.value)
                ).mappings():
                    found[row["id"]] = _record(row)
            by_key: dict[TiKey, TaskRecord] = {}
            for chunk in _chunks([k.as_tuple() for k in keys]):
                for row in conn.execute(
                    sa.select(*_LIGHT_COLUMNS).where(_key_columns().in_(chunk), task.c.backend == backend.value)
                ).mappings():
                    record = _record(row)
                    best = by_key.get(record.key)
                    if best is None or record.created_at > best.created_at:
                        by_key[record.key] = record
            for record in by_key.values():
                found.setdefault(record.id, record)
            adopted = [r for r in found.values() if r.desired is Desired.RUNNING]
            for chunk in _chunks([r.id for r in adopted]):
                conn.execute(
                    task.update()
                    .where(task.c.id.in_(chunk))
                    .values(
                        owner=owner,
                        reported_at=sa.case((task.c.finished_at.is_not(None), None), else_=task.c.reported_at),
                        updated_at=now,
                    )
                )
        return adopted

    def revoke(self, *, ids: Collection[str] = (), keys: Collection[TiKey] = ()) -> int:
        """Ask for the rows to be stopped; their outcome will not be reported to Airflow.

        The scheduler decides the TI's fate itself after a revoke, and may queue the same try
        again; a late event from the revoked row would otherwise fail that new queueing.
        """
        now = self.clock()
        conditions = []
        if ids:
            conditions.append(task.c.id.in_(list(ids)))
        if keys:
            conditions.append(_key_columns().in_([k.as_tuple() for k in keys]))
        if not conditions:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(
                task.update()
                # Also rows that finished but are not reported yet: their event would reach a TI
                # the scheduler has already put back to SCHEDULED and fail it.
                .where(sa.or_(*conditions), sa.or_(task.c.finished_at.is_(None), task.c.reported_at.is_(None)))
                .values(desired=Desired.STOPPED.value, reported_at=now, updated_at=now)
            )
            notify(conn)
            return result.rowcount or 0

    # ---- reconciler side -----------------------------------------------------------------

    def open_tasks(self, *, backend: Backend) -> list[TaskRecord]:
        """Every row the reconciler still has work for, without specs."""
        query = sa.select(*_LIGHT_COLUMNS).where(task.c.backend == backend.value, task.c.finished_at.is_(None))
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).mappings()]

    def specs(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The launch requests of the given rows."""
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                for row in conn.execute(sa.select(task.c.id, task.c.spec).where(task.c.id.in_(chunk))):
                    found[row.id] = row.spec
        return found

    def claim_for_launch(self, ids: Sequence[str]) -> dict[str, int]:
        """Write-ahead for a batch of launches: pending rows still wanted move to ``launching``
        with the next attempt number, in one statement. Returns id -> the attempt to launch.

        From here on each claimed attempt may exist on AWS, so it is only ever relaunched with
        the same client token.
        """
        now = self.clock()
        claimed: dict[str, int] = {}
        with self.engine.begin() as conn:
            for chunk in _chunks(ids):
                statement = (
                    task.update()
                    .where(
                        task.c.id.in_(chunk),
                        task.c.phase == Phase.PENDING.value,
                        task.c.desired == Desired.RUNNING.value,
                    )
                    .values(
                        phase=Phase.LAUNCHING.value, attempt=task.c.attempt + 1, next_attempt_at=now, updated_at=now
                    )
                    .returning(task.c.id, task.c.attempt)
                )
                claimed.update({row.id: row.attempt for row in conn.execute(statement)})
        return claimed

    def get(self, record_id: str) -> TaskRecord | None:
        """One full row (with spec), or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(task).where(task.c.id == record_id)).mappings().first()
        return _record(row) if row else None

    def ids_exist(self, ids: Collection[str]) -> set[str]:
        """Which of these ids have a row at all (open or not)."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                found.update(conn.execute(sa.select(task.c.id).where(task.c.id.in_(chunk))).scalars())
        return found

    def transition(
        self,
        record_id: str,
        *,
        expect_phases: Collection[Phase],
        expect_attempt: int | None = None,
        conn: Connection | None = None,
        **values: Any,
    ) -> bool:
        """Compare-and-set: update the row only if it is still in one of ``expect_phases``.

        Returns False when another writer (a revoke, a second reconciler during failover, an
        older observation) got there first; the caller then simply re-reads next cycle.
        """
        values = {k: (v.value if isinstance(v, Phase | Desired) else v) for k, v in values.items()}
        values["updated_at"] = self.clock()
        phase = values.get("phase")
        if phase in TERMINAL_PHASES and "finished_at" not in values:
            values["finished_at"] = values["updated_at"]
        statement = task.update().where(task.c.id == record_id, task.c.phase.in_([p.value for p in expect_phases]))
        if expect_attempt is not None:
            statement = statement.where(task.c.attempt == expect_attempt)
        statement = statement.values(**values)
        if conn is not None:
            return bool(conn.execute(statement).rowcount)
        with self.engine.begin() as own:
            return bool(own.execute(statement).rowcount)

    def delete_reported_before(self, cutoff: datetime) -> int:
        """Retention: drop finished rows reported before ``cutoff``, and finished rows nobody
        reported by then (their scheduler died and Airflow never asked anyone to adopt them)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                task.delete().where(
                    task.c.finished_at.is_not(None),
                    sa.or_(
                        task.c.reported_at < cutoff,
                        sa.and_(task.c.reported_at.is_(None), task.c.finished_at < cutoff),
                    ),
                )
            )
            return result.rowcount or 0

    def count_by_phase(self) -> dict[tuple[str, str], int]:
        """(backend, phase) -> number of rows, for status and metrics."""
        query = sa.select(task.c.backend, task.c.phase, sa.func.count()).group_by(task.c.backend, task.c.phase)
        with self.engine.connect() as conn:
            return {(b, p): n for b, p, n in conn.execute(query)}
