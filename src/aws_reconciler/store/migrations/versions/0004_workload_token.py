"""The workload token leaves the stored request for a column of its own.

- ``workload_token``: the Airflow workload token of the row, ``fernet:<ciphertext>`` (encrypted
  with ``[aws_reconciler] token_key``) or ``plain:<token>``; cleared once the row can never be
  launched again. ``spec`` holds a placeholder where the command carried the token.
- Rows stored before: the token is taken out of their ``spec``; rows that may still be launched
  keep it in the column (in clear: a migration has no key), the others lose it.

Downgrade puts clear tokens back into the requests; an encrypted one cannot be (the row then
cannot be launched by the older release).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "aws_reconciler_task"
# Frozen copies (a later release may change sealing.py and tasks.py, never this revision).
PLACEHOLDER = "<aws-reconciler:workload-token>"
PLAIN = "plain:"
TOKEN_NEEDED = ("pending", "launching", "provisioning")
_CHUNK = 500

_rows = sa.table(
    TABLE,
    sa.column("id", sa.String),
    sa.column("phase", sa.String),
    sa.column("spec", sa.JSON),
    sa.column("workload_token", sa.Text),
)


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("workload_token", sa.Text, nullable=True))
    for record_id, phase, spec in _stored_requests():
        token = _token_in(spec)
        if token is None:
            continue
        op.get_bind().execute(
            _rows.update()
            .where(_rows.c.id == record_id)
            .values(
                spec=_replace(spec, _as_in_json(token), PLACEHOLDER),
                workload_token=PLAIN + token if phase in TOKEN_NEEDED else None,
            )
        )


def downgrade() -> None:
    bind = op.get_bind()
    query = sa.select(_rows.c.id, _rows.c.spec, _rows.c.workload_token).where(_rows.c.workload_token.like(f"{PLAIN}%"))
    for record_id, spec, sealed in bind.execute(query).all():
        restored = _replace(spec, PLACEHOLDER, _as_in_json(sealed[len(PLAIN) :]))
        bind.execute(_rows.update().where(_rows.c.id == record_id).values(spec=restored))
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("workload_token")


def _stored_requests() -> Any:
    """(id, phase, spec) of every row with a request, a chunk at a time in id order."""
    bind = op.get_bind()
    last = ""
    while True:
        chunk = bind.execute(
            sa.select(_rows.c.id, _rows.c.phase, _rows.c.spec)
            .where(_rows.c.id > last, _rows.c.spec.is_not(None))
            .order_by(_rows.c.id)
            .limit(_CHUNK)
        ).all()
        if not chunk:
            return
        yield from chunk
        last = chunk[-1][0]


def _token_in(value: Any) -> str | None:
    """The token of the Airflow workload (JSON text with a "token") somewhere in the request."""
    if isinstance(value, str):
        if not value.startswith("{"):
            return None
        try:
            workload = json.loads(value)
        except ValueError:
            return None
        token = workload.get("token") if isinstance(workload, dict) else None
        return token if isinstance(token, str) and token and token != PLACEHOLDER else None
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        found = _token_in(child)
        if found is not None:
            return found
    return None


def _as_in_json(token: str) -> str:
    return json.dumps(token, ensure_ascii=False)[1:-1]


def _replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    return value
