"""The task store: tables, migrations, the task record and the lease (the only shared state)."""

from .database import create_store_engine, database_now
from .lease import LeaseState, LeaseStore
from .migrate import SchemaNotReadyError, check_schema, migrate
from .notify import Waker
from .records import NewTask, Report, TaskRecord
from .tasks import TaskStore

__all__ = [
    "LeaseState",
    "LeaseStore",
    "NewTask",
    "Report",
    "SchemaNotReadyError",
    "TaskRecord",
    "TaskStore",
    "Waker",
    "check_schema",
    "create_store_engine",
    "database_now",
    "migrate",
]
