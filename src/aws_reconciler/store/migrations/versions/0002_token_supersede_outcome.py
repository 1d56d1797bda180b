"""Token expiry, supersede flag and Airflow's verdict on the task record; MySQL/MariaDB support.

- ``token_expires_at``: the workload token's ``exp``, read at queue time.
- ``superseded_at``: a newer queueing of the same TI key exists; the row's scheduler frees its slot.
- ``ti_state``: Airflow's state of the try when the row was reported.
- The executor's partial index also covers superseded rows.
- MySQL/MariaDB: microsecond DATETIME(6) columns (0001 created whole seconds there), and plain
  indexes that serve the hot queries, since MySQL has no partial indexes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from aws_reconciler.store.tables import MYSQL_DIALECTS, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "aws_reconciler_task"
# Frozen copy of the predicate (a later release may change tables.py, never this revision).
UNREPORTED = "reported_at IS NULL AND (finished_at IS NOT NULL OR superseded_at IS NOT NULL)"
_OLD_UNREPORTED = "finished_at IS NOT NULL AND reported_at IS NULL"
_TASK_TIMES = ("next_attempt_at", "created_at", "launched_at", "started_at", "finished_at", "reported_at", "updated_at")
_LEASE_TIMES = ("acquired_at", "renewed_at", "expires_at")
_NOT_NULL = {"created_at", "updated_at", "acquired_at", "renewed_at", "expires_at"}


def _is_mysql() -> bool:
    return op.get_bind().dialect.name in MYSQL_DIALECTS


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("token_expires_at", UtcDateTime, nullable=True))
    op.add_column(TABLE, sa.Column("superseded_at", UtcDateTime, nullable=True))
    op.add_column(TABLE, sa.Column("ti_state", sa.String(32), nullable=True))
    op.drop_index("ix_aws_reconciler_task_unreported", table_name=TABLE)
    if _is_mysql():
        for table, columns in ((TABLE, _TASK_TIMES), ("aws_reconciler_lease", _LEASE_TIMES)):
            for column in columns:
                op.alter_column(
                    table,
                    column,
                    type_=mysql.DATETIME(fsp=6),
                    existing_type=mysql.DATETIME(),
                    existing_nullable=column not in _NOT_NULL,
                )
        # Without partial indexes, lead with the columns the hot queries test for NULL, so the
        # finished and reported history kept for `retention` is never scanned.
        op.create_index("ix_aws_reconciler_task_unreported", TABLE, ["owner", "backend", "reported_at"])
        op.drop_index("ix_aws_reconciler_task_open", table_name=TABLE)
        op.create_index("ix_aws_reconciler_task_open", TABLE, ["backend", "finished_at", "phase"])
    else:
        op.create_index(
            "ix_aws_reconciler_task_unreported",
            TABLE,
            ["owner", "backend"],
            postgresql_where=sa.text(UNREPORTED),
            sqlite_where=sa.text(UNREPORTED),
        )


def downgrade() -> None:
    op.drop_index("ix_aws_reconciler_task_unreported", table_name=TABLE)
    if _is_mysql():
        op.drop_index("ix_aws_reconciler_task_open", table_name=TABLE)
        op.create_index("ix_aws_reconciler_task_open", TABLE, ["backend", "phase"])
        op.create_index("ix_aws_reconciler_task_unreported", TABLE, ["owner", "backend"])
    else:
        op.create_index(
            "ix_aws_reconciler_task_unreported",
            TABLE,
            ["owner", "backend"],
            postgresql_where=sa.text(_OLD_UNREPORTED),
            sqlite_where=sa.text(_OLD_UNREPORTED),
        )
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("ti_state")
        batch.drop_column("superseded_at")
        batch.drop_column("token_expires_at")
