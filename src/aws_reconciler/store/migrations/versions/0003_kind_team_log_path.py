"""Workload kind, team and task log path on the task record.

- ``kind``: what the key columns mean (``task``, ``callback``, ``connection_test``); every row
  written before this revision is a task instance's.
- ``team``: Airflow's team of the executor that wrote the row (multi-team deployments), NULL for
  the deployment-wide executors; each team's executor and reconciler only ever see their own.
- ``log_path``: Airflow's relative task log path of the try, where the executor writes why a try
  never ran.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "aws_reconciler_task"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("kind", sa.String(16), nullable=False, server_default="task"))
    op.add_column(TABLE, sa.Column("team", sa.String(64), nullable=True))
    op.add_column(TABLE, sa.Column("log_path", sa.String(1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("log_path")
        batch.drop_column("team")
        batch.drop_column("kind")
