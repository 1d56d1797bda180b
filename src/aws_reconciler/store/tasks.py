"""Reads and writes of task records: the only state the executor and the reconciler share.

Writers touch only the columns they own (the executor: ``owner``, ``desired``, ``reported_at``;
the reconciler: the lifecycle columns), and the reconciler's writes are compare-and-set on the
phase and attempt, so concurrent writers never lose each other's updates.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine, RowMapping

from ..model import Backend, Clock, Desired, Phase, TiKey, WorkloadKind, utcnow
from .database import database_now
from .lease import Fence
from .notify import notify
from .records import Change, NewTask, Report, TaskRecord
from .sealing import LaunchRequest
from .tables import MYSQL_DIALECTS, TERMINAL_PHASES, UNREPORTED_PREDICATE, task

# Everything but the request and its token: rows are read often, those two only to launch.
_LIGHT_COLUMNS = [c for c in task.c if c.name not in ("spec", "workload_token")]
# Phases in which a row may still be launched (again: a task that stops before its container
# starts is relaunched as a new attempt) and so needs its workload token. A write that moves a
# row to any other phase clears the token: its container started, or its work is over.
_TOKEN_NEEDED = frozenset({Phase.PENDING.value, Phase.LAUNCHING.value, Phase.PROVISIONING.value})
# Stay well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _shared(value: str | None) -> str | None:
    """One string object for the values many rows repeat (the driver makes a new one per row):
    at 10,000 open rows, the owners, queues, clusters and DAG, task and run ids would otherwise
    be 10,000 copies each."""
    return None if value is None else sys.intern(value)


def _record(row: RowMapping) -> TaskRecord:
    return TaskRecord(
        id=row["id"],
        backend=Backend(row["backend"]),
        owner=_shared(row["owner"]),
        key=TiKey(
            sys.intern(row["dag_id"]),
            sys.intern(row["task_id"]),
            sys.intern(row["run_id"]),
            row["map_index"],
            row["try_number"],
        ),
        queue=_shared(row["queue"]),
        target=_shared(row["target"]),
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
        token_expires_at=row["token_expires_at"],
        superseded_at=row["superseded_at"],
        ti_state=row["ti_state"],
        kind=WorkloadKind(row["kind"]),
        team=_shared(row["team"]),
        log_path=row["log_path"],
        spec=row.get("spec"),
    )


_KEY_NAMES = ("dag_id", "task_id", "run_id", "map_index", "try_number")


def _among(column: sa.ColumnElement[str], ids: Sequence[str], dialect: str) -> sa.ColumnElement[bool]:
    """``column IN ids``, with the list as ONE bound value where the database takes one: an
    array on PostgreSQL, a JSON array on SQLite.

    The statement's text then stays the same whatever the batch, so SQLAlchemy's compiled cache,
    the driver's parsed-query cache and PostgreSQL's prepared statements serve every call; a
    list of placeholders would be rendered, parsed and planned again each time (and chunked
    under the databases' parameter limits). PyMySQL interpolates every value on the client
    anyway: there, a plain ``IN`` list.
    """
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(ids), type_=postgresql.ARRAY(sa.String)))
    if dialect == "sqlite":
        return column.in_(_json_values(ids))
    return column.in_(list(ids))


def _not_among(column: sa.ColumnElement[str], ids: Sequence[str], dialect: str) -> sa.ColumnElement[bool]:
    """``column NOT IN ids``, bound as :func:`_among` binds it."""
    if dialect == "postgresql":
        return column != sa.all_(sa.bindparam(None, list(ids), type_=postgresql.ARRAY(sa.String)))
    if dialect == "sqlite":
        return column.not_in(_json_values(ids))
    return column.not_in(list(ids))


def _json_values(ids: Sequence[str]) -> sa.Select[Any]:
    values = sa.func.json_each(sa.bindparam(None, json.dumps(list(ids)), type_=sa.String)).table_valued("value")
    return sa.select(values.c.value)


def _insert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (all with the same columns): PostgreSQL's COPY through psycopg, else one
    executemany.

    An executemany sends one INSERT per row; COPY streams the rows, at about half the client's
    CPU for a scheduler call's rows. Each value goes through its column's bind processing as in
    SQLAlchemy's INSERT, in the same transaction, and a driver error is raised as SQLAlchemy's,
    so that callers see no difference.
    """
    dialect = conn.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        conn.execute(task.insert(), rows)
        return
    import psycopg

    names = list(rows[0])
    processors = [task.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
    quote = dialect.identifier_preparer
    columns = ", ".join(quote.quote(name) for name in names)
    statement = f"COPY {quote.format_table(task)} ({columns}) FROM STDIN"
    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[n] if p is None else p(row[n]) for n, p in zip(names, processors, strict=True)])
    except psycopg.Error as exc:
        # As SQLAlchemy raises it for an engine of the store: the rows (workload tokens) hidden.
        raise sa.exc.DBAPIError.instance(
            statement, rows, exc, psycopg.Error, hide_parameters=True, dialect=dialect, ismulti=True
        ) from exc


def _key_columns() -> sa.Tuple:
    return sa.tuple_(task.c.dag_id, task.c.task_id, task.c.run_id, task.c.map_index, task.c.try_number)


def team_clause(team: str | None) -> sa.ColumnElement[bool]:
    """Rows of ``team`` only (``None``: the rows of the deployment-wide executors)."""
    return task.c.team.is_(None) if team is None else task.c.team == team


class TaskStore:
    """Typed operations on ``aws_reconciler_task``; one short transaction each.

    ``team`` scopes every read and write to one Airflow team's rows (multi-team deployments): a
    team's executor and reconciler never see, stop or delete another team's. ``None`` is the
    deployment-wide executors' scope (rows without a team).
    """

    def __init__(self, engine: Engine, *, clock: Clock = utcnow, team: str | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.team = team

    @property
    def _scope(self) -> sa.ColumnElement[bool]:
        return team_clause(self.team)

    # ---- executor side -------------------------------------------------------------------

    def add(self, tasks: Sequence[NewTask]) -> list[str]:
        """Insert one scheduler call's rows in ONE transaction and wake the reconciler.

        Idempotent: a row whose id is already stored for the same TI key (a retry after a commit
        whose answer was lost) counts as recorded. Returns the ids that are stored for ANOTHER
        task instance; those rows are not written, and the caller fails their workloads.

        Older rows of the same TI key (a reschedule or a resumed deferral queued the try again)
        are superseded: no longer wanted (``desired = stopped``, so the reconciler stops them) and
        never reported as this queueing's outcome. Their own scheduler, when it is another one,
        sees ``superseded_at`` on its next heartbeat and frees the slot.
        """
        if not tasks:
            return []
        now = self.clock()
        ids = [t.id for t in tasks]
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            stored: dict[str, tuple[str, TiKey, str | None]] = {}
            for row in conn.execute(
                sa.select(
                    task.c.id,
                    task.c.backend,
                    task.c.dag_id,
                    task.c.task_id,
                    task.c.run_id,
                    task.c.map_index,
                    task.c.try_number,
                    task.c.team,
                ).where(_among(task.c.id, ids, dialect))
            ).mappings():
                key = TiKey(row["dag_id"], row["task_id"], row["run_id"], row["map_index"], row["try_number"])
                stored[row["id"]] = (row["backend"], key, row["team"])
            conflicts = [t.id for t in tasks if t.id in stored and stored[t.id] != (t.backend.value, t.key, self.team)]
            new = [t for t in tasks if t.id not in stored]
            if new:
                _insert(conn, [self._insert_values(t, now) for t in new])
            new_ids_by_owner: dict[str | None, list[str]] = defaultdict(list)
            for t in new:
                new_ids_by_owner[t.owner].append(t.id)
            for owner, new_ids in new_ids_by_owner.items():
                self._supersede(conn, owner=owner, new_ids=new_ids, batch_ids=ids, now=now)
            notify(conn, team=self.team)
        return conflicts

    def _supersede(
        self, conn: Connection, *, owner: str | None, new_ids: Sequence[str], batch_ids: Sequence[str], now: datetime
    ) -> None:
        """Supersede the older rows of the keys of ``new_ids``, rows this transaction inserted.

        Joined against those rows, the statements carry ids, not keys, and each list of ids as
        one bound value where the database takes one (:func:`_among`).
        """
        dialect = conn.dialect.name
        queued = task.alias("queued")
        if dialect == "sqlite":
            # One expression that no index serves: SQLite would otherwise walk the reported_at
            # index (every open row) rather than the TI key's. PostgreSQL plans the two terms
            # better (its estimate of the expression makes it scan the whole table).
            unreported = [sa.func.coalesce(task.c.reported_at, task.c.superseded_at).is_(None)]
        else:
            unreported = [task.c.reported_at.is_(None), task.c.superseded_at.is_(None)]
        still_wanted = [_not_among(task.c.id, batch_ids, dialect), *unreported, self._scope]
        values = {
            "desired": Desired.STOPPED.value,
            "superseded_at": now,
            # The same scheduler tracks the key for the new queueing already: nothing to tell
            # it. Another one must see the flag to free its slot.
            "reported_at": sa.case((task.c.owner == owner, now), else_=None),
            "updated_at": now,
        }
        if dialect in MYSQL_DIALECTS:
            # MySQL refuses a subquery of the table an UPDATE writes, and a multiple-table UPDATE
            # locks each row it reads of the table it writes: on a small table the optimizer
            # reads them all, other schedulers' uncommitted rows too, and two schedulers
            # deadlock. So the older rows are read first, without locks, then updated by id.
            # Like PostgreSQL's UPDATE, that misses an older row not committed yet.
            same_key = sa.and_(*(task.c[name] == queued.c[name] for name in _KEY_NAMES))
            older = sa.select(task.c.id).select_from(task.join(queued, same_key))
            older_ids = list(conn.execute(older.where(_among(queued.c.id, new_ids, dialect), *still_wanted)).scalars())
            if older_ids:
                conn.execute(task.update().where(task.c.id.in_(older_ids), *still_wanted).values(**values))
            return
        keys = sa.select(*(queued.c[name] for name in _KEY_NAMES)).where(_among(queued.c.id, new_ids, dialect))
        conn.execute(task.update().where(_key_columns().in_(keys), *still_wanted).values(**values))

    def _insert_values(self, t: NewTask, now: datetime) -> dict[str, Any]:
        return {
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
            "token_expires_at": t.token_expires_at,
            "kind": t.kind.value,
            "team": self.team,
            "log_path": t.log_path,
            "workload_token": t.workload_token if not t.phase.terminal else None,
        }

    def finished_unreported(self, *, owner: str, backend: Backend) -> list[TaskRecord]:
        """Rows this owner must deal with: finished or superseded, not yet reported.

        One query on the partial index whose predicate it repeats; no spec.
        """
        query = sa.select(*_LIGHT_COLUMNS).where(
            task.c.owner == owner,
            task.c.backend == backend.value,
            sa.text(UNREPORTED_PREDICATE),
            self._scope,
        )
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).mappings()]

    def mark_reported(self, reports: Sequence[Report], *, owner: str) -> set[str]:
        """Record that Airflow has been told (or need not be); returns the ids this call marked.

        Only rows this owner still owns and nobody marked meanwhile are marked: a row adopted by
        another scheduler, or revoked, since it was read is left alone, so its report is neither
        lost (the new owner sends it) nor sent to a TI the scheduler has moved on. Call it BEFORE
        buffering the events, and buffer only the returned ids.
        """
        if not reports:
            return set()
        now = self.clock()
        groups: dict[tuple[str | None, Phase | None, str | None], list[str]] = defaultdict(list)
        for report in reports:
            groups[(report.ti_state, report.phase, report.status_reason)].append(report.id)
        with self.engine.begin() as conn:
            for (ti_state, phase, reason), ids in groups.items():
                values: dict[str, Any] = {"reported_at": now, "updated_at": now, "ti_state": ti_state}
                conditions = [task.c.owner == owner, task.c.reported_at.is_(None), self._scope]
                if phase is not None:
                    # Only a finished row's outcome is corrected; the reconciler owns open rows.
                    values.update(phase=phase.value, status_reason=reason)
                    conditions.append(task.c.finished_at.is_not(None))
                for chunk in _chunks(ids):
                    conn.execute(task.update().where(task.c.id.in_(chunk), *conditions).values(**values))
            marked: set[str] = set()
            # Read back in the same transaction (the rows stay locked until it commits): the
            # time written is this call's own marker. Portable where UPDATE ... RETURNING is not.
            for chunk in _chunks([r.id for r in reports]):
                marked.update(
                    conn.execute(
                        sa.select(task.c.id).where(
                            task.c.id.in_(chunk), task.c.owner == owner, task.c.reported_at == now
                        )
                    ).scalars()
                )
        return marked

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
                    sa.select(*_LIGHT_COLUMNS).where(task.c.id.in_(chunk), task.c.backend == backend.value, self._scope)
                ).mappings():
                    found[row["id"]] = _record(row)
            by_key: dict[TiKey, TaskRecord] = {}
            for chunk in _chunks([k.as_tuple() for k in keys]):
                for row in conn.execute(
                    sa.select(*_LIGHT_COLUMNS).where(
                        _key_columns().in_(chunk), task.c.backend == backend.value, self._scope
                    )
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
                .where(
                    sa.or_(*conditions),
                    sa.or_(task.c.finished_at.is_(None), task.c.reported_at.is_(None)),
                    self._scope,
                )
                .values(desired=Desired.STOPPED.value, reported_at=now, updated_at=now)
            )
            notify(conn, team=self.team)
            return result.rowcount or 0

    # ---- reconciler side -----------------------------------------------------------------

    def open_tasks(self, *, backend: Backend) -> list[TaskRecord]:
        """Every row the reconciler still has work for, without specs."""
        query = sa.select(*_LIGHT_COLUMNS).where(
            task.c.backend == backend.value, task.c.finished_at.is_(None), self._scope
        )
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).mappings()]

    def due_tasks(
        self, *, backend: Backend, external_ids: Collection[str] = (), starting: bool = False
    ) -> list[TaskRecord]:
        """The open rows with something to do whatever AWS says (waiting for a launch, being
        stopped, no longer wanted), those whose task is still starting (``starting``: polling
        looks at those every cycle), and those following one of ``external_ids``: what a cycle
        needs between resyncs, without specs. A running task nobody asked about costs nothing
        here."""
        phases = [Phase.PENDING, Phase.LAUNCHING, Phase.STOPPING]
        if starting:
            phases.append(Phase.PROVISIONING)
        needing = [
            task.c.phase.in_([p.value for p in phases]),
            task.c.desired != Desired.RUNNING.value,
            task.c.superseded_at.is_not(None),
        ]
        open_rows = sa.and_(task.c.backend == backend.value, task.c.finished_at.is_(None), self._scope)
        found: dict[str, TaskRecord] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(*_LIGHT_COLUMNS).where(open_rows, sa.or_(*needing))).mappings():
                found[row["id"]] = _record(row)
            for chunk in _chunks(sorted(external_ids)):
                query = sa.select(*_LIGHT_COLUMNS).where(open_rows, task.c.external_id.in_(chunk))
                for row in conn.execute(query).mappings():
                    found.setdefault(row["id"], _record(row))
        return list(found.values())

    def open_counts(self, *, backend: Backend) -> dict[Phase, int]:
        """Open rows by phase, counted by the database (the gauges of a cycle that read few rows)."""
        query = (
            sa.select(task.c.phase, sa.func.count())
            .where(task.c.backend == backend.value, task.c.finished_at.is_(None), self._scope)
            .group_by(task.c.phase)
        )
        with self.engine.connect() as conn:
            return {Phase(phase): int(n) for phase, n in conn.execute(query)}

    def specs(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The launch requests of the given rows, as stored (the workload token is not in them)."""
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                for row in conn.execute(sa.select(task.c.id, task.c.spec).where(task.c.id.in_(chunk))):
                    found[row.id] = row.spec
        return found

    def launch_requests(self, ids: Sequence[str]) -> dict[str, LaunchRequest]:
        """The stored requests of the given rows with their sealed workload tokens (the launch path only)."""
        found: dict[str, LaunchRequest] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                query = sa.select(task.c.id, task.c.spec, task.c.workload_token).where(task.c.id.in_(chunk))
                for row in conn.execute(query):
                    found[row.id] = LaunchRequest(spec=row.spec, workload_token=row.workload_token)
        return found

    def claim_for_launch(
        self, ids: Sequence[str], *, token_margin: float | None = None, fence: Fence | None = None
    ) -> dict[str, int]:
        """Write-ahead for a batch of launches: pending rows still wanted move to ``launching``
        with the next attempt number. Returns id -> the attempt to launch.

        ``token_margin``: also skip rows whose workload token expires within that many seconds
        of the DATABASE's time (a container that starts after expiry dies at ``/run``); rows
        whose token has no readable ``exp`` are claimed. ``fence``: claim only while that lease
        tenure lasts (see :class:`~aws_reconciler.store.lease.Fence`).

        From here on each claimed attempt may exist on AWS, so it is only ever relaunched with
        the same client token. On databases without UPDATE ... RETURNING (MySQL, MariaDB) the
        rows are locked first (SELECT ... FOR UPDATE SKIP LOCKED), then updated.
        """
        now = self.clock()
        claimed: dict[str, int] = {}
        with self.engine.begin() as conn:
            conditions = [task.c.phase == Phase.PENDING.value, task.c.desired == Desired.RUNNING.value, self._scope]
            if fence is not None:
                conditions.append(fence.clause())
            if token_margin is not None:
                cutoff = database_now(conn) + timedelta(seconds=token_margin)
                conditions.append(sa.or_(task.c.token_expires_at.is_(None), task.c.token_expires_at > cutoff))
            values = {
                "phase": Phase.LAUNCHING.value,
                "attempt": task.c.attempt + 1,
                "next_attempt_at": now,
                "updated_at": now,
            }
            for chunk in _chunks(ids):
                if conn.dialect.update_returning:
                    statement = (
                        task.update()
                        .where(task.c.id.in_(chunk), *conditions)
                        .values(**values)
                        .returning(task.c.id, task.c.attempt)
                    )
                    claimed.update({row.id: row.attempt for row in conn.execute(statement)})
                    continue
                locked = {
                    row.id: row.attempt
                    for row in conn.execute(
                        sa.select(task.c.id, task.c.attempt)
                        .where(task.c.id.in_(chunk), *conditions)
                        .with_for_update(skip_locked=True)
                    )
                }
                if locked:
                    conn.execute(task.update().where(task.c.id.in_(list(locked)), *conditions).values(**values))
                    claimed.update({record_id: attempt + 1 for record_id, attempt in locked.items()})
        return claimed

    def transaction(self) -> AbstractContextManager[Connection]:
        """One transaction for several writes (``transition(..., conn=...)``): committed at the end
        of the ``with`` block, rolled back when it raises."""
        return self.engine.begin()

    def database_now(self) -> datetime:
        """The database's current time: compare token and lease deadlines with this."""
        with self.engine.connect() as conn:
            return database_now(conn)

    def get(self, record_id: str) -> TaskRecord | None:
        """One full row (with spec), or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(task).where(task.c.id == record_id)).mappings().first()
        return _record(row) if row else None

    def transitions(
        self,
        changes: Sequence[Change],
        *,
        conn: Connection,
        fence: Fence | None = None,
    ) -> bool | None:
        """Many compare-and-sets in ``conn``'s transaction, one statement per shape of change
        (the same columns, expected phases and attempt check), sent as one batch: a burst of
        1,000 tasks ending is a few statements, not 1,000 built and compiled one by one.

        True when every change applied; False when one or more lost (which ones a batch cannot
        tell: the caller rolls back and writes them one by one); None when the database's driver
        cannot count a batch's rows, so nothing was written."""
        if not conn.dialect.supports_sane_multi_rowcount:
            return None
        now = self.clock()
        groups: dict[tuple[tuple[str, ...], tuple[str, ...], bool], list[dict[str, Any]]] = {}
        for change in changes:
            values = self._transition_values(change.values, now)
            phases = tuple(sorted(p.value for p in change.expect_phases))
            shape = (tuple(sorted(values)), phases, change.expect_attempt is not None)
            bound = {f"v_{k}": v for k, v in values.items()} | {"b_id": change.record_id}
            if change.expect_attempt is not None:
                bound["b_attempt"] = change.expect_attempt
            groups.setdefault(shape, []).append(bound)
        for (columns, phases, attempt), params in groups.items():
            # Phases as plain bound values: an expanding IN cannot be sent as a batch.
            expected = task.c.phase.in_([sa.literal(p) for p in phases])
            statement = task.update().where(task.c.id == sa.bindparam("b_id"), expected)
            if attempt:
                statement = statement.where(task.c.attempt == sa.bindparam("b_attempt"))
            if fence is not None:
                statement = statement.where(fence.clause())
            statement = statement.values({c: sa.bindparam(f"v_{c}") for c in columns})
            if conn.execute(statement, params).rowcount != len(params):
                return False
        return True

    def _transition_values(self, values: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """What a transition writes: its changes, the update time, the end time of a row that
        ends, and no workload token once the row can never be launched again."""
        values = {k: (v.value if isinstance(v, Phase | Desired) else v) for k, v in values.items()}
        values["updated_at"] = now
        phase = values.get("phase")
        if phase in TERMINAL_PHASES and "finished_at" not in values:
            values["finished_at"] = values["updated_at"]
        if phase is not None and phase not in _TOKEN_NEEDED:
            values["workload_token"] = None
        return values

    def transition(
        self,
        record_id: str,
        *,
        expect_phases: Collection[Phase],
        expect_attempt: int | None = None,
        conn: Connection | None = None,
        fence: Fence | None = None,
        **values: Any,
    ) -> bool:
        """Compare-and-set: update the row only if it is still in one of ``expect_phases``
        (and, with ``fence``, only while that lease tenure lasts).

        Returns False when another writer (a revoke, a second reconciler during failover, an
        older observation) got there first; the caller then simply re-reads next cycle.

        Moving the row to a phase in which it can never be launched again (its container runs,
        it is being stopped, it ended) also clears its workload token.
        """
        values = self._transition_values(values, self.clock())
        statement = task.update().where(task.c.id == record_id, task.c.phase.in_([p.value for p in expect_phases]))
        if expect_attempt is not None:
            statement = statement.where(task.c.attempt == expect_attempt)
        if fence is not None:
            statement = statement.where(fence.clause())
        statement = statement.values(**values)
        if conn is not None:
            return bool(conn.execute(statement).rowcount)
        with self.engine.begin() as own:
            return bool(own.execute(statement).rowcount)

    def delete_reported_before(self, cutoff: datetime) -> int:
        """Retention: drop this team's finished rows reported before ``cutoff``, and finished rows
        nobody reported by then (their scheduler died and Airflow never asked anyone to adopt them)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                task.delete().where(
                    self._scope,
                    task.c.finished_at.is_not(None),
                    sa.or_(
                        task.c.reported_at < cutoff,
                        sa.and_(task.c.reported_at.is_(None), task.c.finished_at < cutoff),
                    ),
                )
            )
            return result.rowcount or 0
