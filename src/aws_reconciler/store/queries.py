"""Read-only queries of the task store for people: ``aws-reconciler status`` and task logs in the UI.

Kept apart from :mod:`.tasks` (the executor's and the reconciler's read-write path) because these
run from other processes (an operator's shell, Airflow's API server) and must never write. None
of them reads the ``spec`` column: it carries the workload's Airflow token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..model import WAITING_FOR_LAUNCH, Backend, Phase, TiKey
from .records import TaskRecord
from .tables import task
from .tasks import _LIGHT_COLUMNS, _record, team_clause

#: Phases of a row that is waiting for AWS to accept a launch (what "oldest pending" measures).


class _AllTeams:
    """The scope of :class:`TaskQueries` that spans every row, whatever its team."""


ALL_TEAMS = _AllTeams()
Select = TypeVar("Select", bound=sa.Select[Any])


class TaskQueries:
    """Read-only views of ``aws_reconciler_task``; one short read per call.

    ``team`` scopes every read to one Airflow team's rows (``None``: the rows of the
    deployment-wide executors, as :class:`~.tasks.TaskStore` scopes them); by default every row.
    """

    def __init__(self, engine: Engine, *, team: str | _AllTeams | None = ALL_TEAMS) -> None:
        self.engine = engine
        self.team = team

    def _scoped(self, query: Select) -> Select:
        return query if isinstance(self.team, _AllTeams) else query.where(team_clause(self.team))

    def record(self, record_id: str) -> TaskRecord | None:
        """The row with this id (Airflow's ``external_executor_id``), without its spec."""
        query = self._scoped(sa.select(*_LIGHT_COLUMNS).where(task.c.id == record_id))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _record(row) if row else None

    def newest_for_key(self, key: TiKey, *, backend: Backend | None = None) -> TaskRecord | None:
        """The latest queueing of a TI key (a try can be queued more than once), or ``None``.

        Uses the TI-key index; ties on ``created_at`` (one transaction) are broken by id so the
        answer is stable.
        """
        query = sa.select(*_LIGHT_COLUMNS).where(
            task.c.dag_id == key.dag_id,
            task.c.task_id == key.task_id,
            task.c.run_id == key.run_id,
            task.c.map_index == key.map_index,
            task.c.try_number == key.try_number,
        )
        if backend is not None:
            query = query.where(task.c.backend == backend.value)
        query = self._scoped(query).order_by(task.c.created_at.desc(), task.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _record(row) if row else None

    def request_field(self, record_id: str, name: str) -> str | None:
        """One top-level field of a row's launch request (``taskDefinition``), never the spec whole:
        the spec carries the workload token, which a log view has no use for."""
        query = self._scoped(sa.select(task.c.spec[name].as_string()).where(task.c.id == record_id))
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        return str(value) if value else None

    def counts(self) -> dict[tuple[str, str], int]:
        """(backend, phase) -> rows, open ones and finished ones still within ``retention``."""
        query = self._scoped(sa.select(task.c.backend, task.c.phase, sa.func.count()))
        query = query.group_by(task.c.backend, task.c.phase)
        with self.engine.connect() as conn:
            return {(str(b), str(p)): int(n) for b, p, n in conn.execute(query)}

    def oldest_waiting(self) -> dict[str, TaskRecord]:
        """Per backend, the open row that has waited longest for a launch (pending or launching).

        One query per backend through the open-rows index, not a scan of the finished history.
        """
        found: dict[str, TaskRecord] = {}
        with self.engine.connect() as conn:
            for backend in (b.value for b in Backend):
                row = (
                    conn.execute(
                        self._scoped(
                            sa.select(*_LIGHT_COLUMNS).where(
                                task.c.backend == backend,
                                task.c.finished_at.is_(None),
                                task.c.phase.in_([p.value for p in WAITING_FOR_LAUNCH]),
                            )
                        )
                        .order_by(task.c.created_at.asc(), task.c.id.asc())
                        .limit(1)
                    )
                    .mappings()
                    .first()
                )
                if row is not None:
                    found[backend] = _record(row)
        return found

    def recent_failures(self, limit: int = 10, *, backends: Sequence[Backend] | None = None) -> list[TaskRecord]:
        """The ``limit`` most recently finished failed rows, newest first."""
        if limit <= 0:
            return []
        query = sa.select(*_LIGHT_COLUMNS).where(task.c.phase == Phase.FAILED.value)
        if backends:
            query = query.where(task.c.backend.in_([b.value for b in backends]))
        query = self._scoped(query)
        # NULLS LAST spelled portably (MySQL has no NULLS LAST).
        query = query.order_by(task.c.finished_at.is_(None), task.c.finished_at.desc(), task.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).mappings()]
