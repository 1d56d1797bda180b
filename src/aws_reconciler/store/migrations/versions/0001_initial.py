"""The task record and the leadership lease.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aws_reconciler.store.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aws_reconciler_task",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("task_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("queue", sa.String(256), nullable=True),
        sa.Column("target", sa.String(2048), nullable=True),
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
    )
    op.create_index(
        "ix_aws_reconciler_task_ti",
        "aws_reconciler_task",
        ["dag_id", "task_id", "run_id", "map_index", "try_number"],
    )
    op.create_index(
        "ix_aws_reconciler_task_open",
        "aws_reconciler_task",
        ["backend", "phase"],
        postgresql_where=sa.text("finished_at IS NULL"),
        sqlite_where=sa.text("finished_at IS NULL"),
    )
    op.create_index(
        "ix_aws_reconciler_task_unreported",
        "aws_reconciler_task",
        ["owner", "backend"],
        postgresql_where=sa.text("finished_at IS NOT NULL AND reported_at IS NULL"),
        sqlite_where=sa.text("finished_at IS NOT NULL AND reported_at IS NULL"),
    )
    # MySQL indexes at most 3072 bytes of a key (MariaDB shortens it silently, MySQL refuses).
    op.create_index("ix_aws_reconciler_task_external_id", "aws_reconciler_task", ["external_id"], mysql_length=255)
    op.create_index("ix_aws_reconciler_task_reported_at", "aws_reconciler_task", ["reported_at"])
    op.create_table(
        "aws_reconciler_lease",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("acquired_at", UtcDateTime, nullable=False),
        sa.Column("renewed_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("transitions", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("aws_reconciler_lease")
    op.drop_table("aws_reconciler_task")
