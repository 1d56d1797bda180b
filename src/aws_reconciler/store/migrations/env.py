"""Alembic environment: always run with a connection handed over by ``store.migrate``."""

from __future__ import annotations

from alembic import context

from aws_reconciler.store.migrate import VERSION_TABLE
from aws_reconciler.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # Airflow's tables share the database: compare only ours.
    include_name=lambda name, type_, parent: type_ != "table" or bool(name and name.startswith("aws_reconciler_")),
)
with context.begin_transaction():
    context.run_migrations()
