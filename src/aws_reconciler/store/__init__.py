"""The task store: tables, migrations, the task record and the lease (the only shared state)."""

from .engine import create_store_engine, is_postgres
from .lease import LeaseState, LeaseStore
from .migrate import SchemaNotReadyError, check_schema, migrate
from .notify import Waker
from .records import Backend, Desired, NewTask, Phase, TaskRecord, TiKey
from .tasks import TaskStore, utcnow

__all__ = [
    "Backend",
    "Desired",
    "LeaseState",
    "LeaseStore",
    "NewTask",
    "Phase",
    "SchemaNotReadyError",
    "TaskRecord",
    "TaskStore",
    "TiKey",
    "Waker",
    "check_schema",
    "create_store_engine",
    "is_postgres",
    "migrate",
    "utcnow",
]
