"""Task logs in the Airflow UI: the view (:mod:`.view`) over a CloudWatch reader (:mod:`.cloudwatch`);
where each backend's logs are is its descriptor's locator (``backends/<service>/descriptor.py``)."""

from ...backends.descriptor import LogLocation, LogsUnavailable
from .cloudwatch import TaskLogs
from .view import find_record, read_task_log

__all__ = ["LogLocation", "LogsUnavailable", "TaskLogs", "find_record", "read_task_log"]
