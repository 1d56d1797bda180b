"""``aws-reconciler`` with its store transactions counted: ``python -m bench.reconciler_process run``.

The command itself (``aws_reconciler.cli.main``) in this process, plus one SQLAlchemy listener
on every engine: each ``commit`` and ``rollback`` (a read-only transaction ends in one) is
counted by the name of the thread that ran it (``MainThread``: the cycles; ``lease``: the
leader election), and the counts are written as JSON to ``$BENCH_TRANSACTIONS_FILE`` after each
one, so the bench can read them while the reconciler runs. Nothing of Airflow is imported: the
process's memory is the reconciler's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from aws_reconciler.cli import main

FILE_ENV = "BENCH_TRANSACTIONS_FILE"


def count_transactions(path: Path) -> None:
    """Count every engine's commits and rollbacks by thread into ``path`` (JSON, replaced atomically)."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    scratch = path.with_name(path.name + ".tmp")

    def listener(kind: str) -> Callable[[Any], None]:
        def record(_conn: Any) -> None:
            with lock:
                counts[f"{kind} {threading.current_thread().name}"] += 1
                scratch.write_text(json.dumps(counts))
                os.replace(scratch, path)

        return record

    sa.event.listen(sa.engine.Engine, "commit", listener("commit"))
    sa.event.listen(sa.engine.Engine, "rollback", listener("rollback"))


def read_counts(path: Path) -> Counter[str]:
    """The counts written so far (none before the first transaction)."""
    try:
        return Counter(json.loads(path.read_text()))
    except FileNotFoundError:
        return Counter()


if __name__ == "__main__":
    count_transactions(Path(os.environ[FILE_ENV]))
    sys.exit(main(sys.argv[1:]))
