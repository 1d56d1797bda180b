"""SQLAlchemy tables of the task store: the task record and the leadership lease.

Table names are prefixed because the default store is Airflow's own database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from ..model import Phase

metadata = sa.MetaData()

#: SQLAlchemy's names for MySQL and MariaDB (``mysql+pymysql://`` and ``mariadb+pymysql://``).
MYSQL_DIALECTS = ("mysql", "mariadb")


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone on its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        # MySQL's DATETIME drops the fraction unless asked: the lease, launch timing and the
        # report marker need microseconds.
        if dialect.name in MYSQL_DIALECTS:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} written to the task store; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        # MySQL's DATETIME has no zone (and MariaDB refuses an offset in the literal): store UTC.
        return value.replace(tzinfo=None) if dialect.name in MYSQL_DIALECTS else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite without type detection
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Phases in which the record's work is over; every other phase is "open".
TERMINAL_PHASES = tuple(p.value for p in Phase if p.terminal)

#: Rows an executor must look at: finished, or superseded by another scheduler's queueing, and not
#: reported yet. The predicate of the executor's partial index and of its heartbeat query.
UNREPORTED_PREDICATE = "reported_at IS NULL AND (finished_at IS NOT NULL OR superseded_at IS NOT NULL)"

task = sa.Table(
    "aws_reconciler_task",
    metadata,
    # The id Airflow pre-assigns (ti.external_executor_id): also clientToken/tag/job-name stem.
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("backend", sa.String(16), nullable=False),
    # Scheduler job id of the executor that reports this row; changed by adoption.
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("task_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("map_index", sa.Integer, nullable=False),
    sa.Column("try_number", sa.Integer, nullable=False),
    sa.Column("queue", sa.String(256), nullable=True),
    # ECS cluster or Batch job queue, so observation can group rows without reading `spec`.
    sa.Column("target", sa.String(2048), nullable=True),
    # The fully resolved request, with a placeholder where the command carries the workload token
    # (see sealing.py); requests stored before revision 0004 may still hold it. Never log it.
    sa.Column("spec", sa.JSON, nullable=True),
    sa.Column("desired", sa.String(16), nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("external_id", sa.String(2048), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("stop_code", sa.String(64), nullable=True),
    sa.Column("status_reason", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("launched_at", UtcDateTime, nullable=True),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("reported_at", UtcDateTime, nullable=True),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # The workload token's own `exp` (read unverified at queue time), so launch decisions use the
    # token's deadline, not a guess from created_at. NULL: the token carried no readable `exp`.
    sa.Column("token_expires_at", UtcDateTime, nullable=True),
    # Set when a newer queueing of the same TI key was recorded; the row's own scheduler sees it,
    # frees the slot and never reports the row's outcome.
    sa.Column("superseded_at", UtcDateTime, nullable=True),
    # Airflow's state of the try when the executor reported the row (what the try really ended as).
    sa.Column("ti_state", sa.String(32), nullable=True),
    # What the key columns mean (model.WorkloadKind): a task instance's key, or the key Airflow gave
    # a callback or connection test (task_id "callback:<id>": no task id can contain a colon).
    sa.Column("kind", sa.String(16), nullable=False, server_default="task"),
    # Airflow's team (multi-team deployments); NULL for the deployment-wide executors. Every query of
    # a team's executor and reconciler is scoped to its own team.
    sa.Column("team", sa.String(64), nullable=True),
    # Airflow's relative task log path of the try (the workload's log_path), where the executor
    # writes why a try never ran, so the task log view shows it.
    sa.Column("log_path", sa.String(1024), nullable=True),
    # The workload token, encrypted with [aws_reconciler] token_key ("fernet:...") or in clear
    # ("plain:...") when no key is configured; cleared once the row can never be launched again.
    sa.Column("workload_token", sa.Text, nullable=True),
    # The TI key is indexed but NOT unique: a try can be queued more than once.
    sa.Index("ix_aws_reconciler_task_ti", "dag_id", "task_id", "run_id", "map_index", "try_number"),
    # The reconciler's hot query: open rows of one backend. (MySQL has no partial indexes: there
    # the migrations index (backend, finished_at) instead; see migration 0002.)
    sa.Index(
        "ix_aws_reconciler_task_open",
        "backend",
        "phase",
        postgresql_where=sa.text("finished_at IS NULL"),
        sqlite_where=sa.text("finished_at IS NULL"),
    ),
    # The executor's heartbeat query: rows of one owner to report (MySQL: (owner, backend, reported_at)).
    sa.Index(
        "ix_aws_reconciler_task_unreported",
        "owner",
        "backend",
        postgresql_where=sa.text(UNREPORTED_PREDICATE),
        sqlite_where=sa.text(UNREPORTED_PREDICATE),
    ),
    # MySQL indexes at most 3072 bytes of a key: a prefix finds an ARN or job id just as well.
    sa.Index("ix_aws_reconciler_task_external_id", "external_id", mysql_length=255),
    sa.Index("ix_aws_reconciler_task_reported_at", "reported_at"),
)

lease = sa.Table(
    "aws_reconciler_lease",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("acquired_at", UtcDateTime, nullable=False),
    sa.Column("renewed_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("transitions", sa.Integer, nullable=False, server_default="0"),
)
