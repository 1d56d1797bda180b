"""Task logs in the Airflow UI: the CloudWatch Logs lines of a task instance's container.

Airflow's API server calls ``executor.get_task_log(ti, try_number)`` for a RUNNING task instance
every time its log view refreshes, so this path is kept cheap:

- one indexed read of the task store (by record id, else by TI key); of the launch request only
  single fields are ever read (the task definition), never the workload token beside them;
- where the logs are is resolved by the backend's locator (its descriptor's ``locate_logs``)
  and cached (a revision's ``awslogs`` options never change; a bare family is re-resolved every
  few minutes);
- then ``logs:GetLogEvents`` from the head of the stream, paginated and bounded.

What Airflow does with the answer shapes it: the second element (lines) is merged with the other
log sources and Airflow remembers how many lines it has shown (``log_pos``), skipping that many on
the next refresh. So lines are only ever real log lines, a stable prefix of the stream; every
explanation ("not launched yet", "logs not configured", "truncated") goes into the first element,
which Airflow shows in the "Log message source details" group.

A locator returns a :class:`LogLocation` once the task's stream is known, ``None`` while the task
has no log stream *yet* (a Batch job not RUNNING), or raises :class:`LogsUnavailable` with a
message for the user when the logs cannot exist there; any other exception is shown as a read
failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from ...backends.descriptor import LogLocation, LogsUnavailable
from ...config import ConfigError
from ...model import Backend, TiKey
from ...store.queries import TaskQueries
from ...store.records import TaskRecord
from .cloudwatch import TaskLogs

log = logging.getLogger(__name__)

Locate = Callable[[TaskRecord], LogLocation | tuple[str, str] | None]


# ---- finding the try's record ----------------------------------------------------------------


def find_record(queries: TaskQueries, ti: Any, try_number: int, *, backend: Backend) -> TaskRecord | None:
    """The record of try ``try_number`` of ``ti``.

    By ``ti.external_executor_id`` (our record id) when it names a row of that try; else the
    newest queueing of the TI key with ``try_number`` (Airflow < 3.3 without pre-assigned ids,
    an earlier try viewed while a later one runs, a sensor queued several times).
    """
    record_id = getattr(ti, "external_executor_id", None)
    if record_id:
        record = queries.record(str(record_id))
        if record is not None and record.key.try_number == try_number and record.backend is backend:
            return record
    map_index = getattr(ti, "map_index", -1)
    key = TiKey(
        dag_id=str(ti.dag_id),
        task_id=str(ti.task_id),
        run_id=str(ti.run_id),
        map_index=int(map_index if map_index is not None else -1),
        try_number=int(try_number),
    )
    return queries.newest_for_key(key, backend=backend)


# ---- the executor's get_task_log ---------------------------------------------------------------

_SOURCE = "aws-reconciler"


def _describe(record: TaskRecord) -> str:
    return f"task record {record.id} ({record.backend.value}, phase {record.phase.value}, attempt {record.attempt})"


def read_task_log(
    queries: TaskQueries, ti: Any, try_number: int, *, backend: Backend, locate: Locate, reader: Callable[[], TaskLogs]
) -> tuple[list[str], list[str]]:
    """``(sources, lines)`` for Airflow: where the lines come from (and why there are none), and
    the container's output. Never raises: the log view must render whatever happens here.

    ``locate(record)`` is the backend's locator for that record; ``reader()`` the executor's
    :class:`TaskLogs` (created on first use, so a view that finds no record makes no client).
    """
    try:
        return _read_task_log(queries, ti, try_number, backend=backend, locate=locate, reader=reader)
    except LogsUnavailable as exc:
        return [f"{_SOURCE}: {exc}"], []
    except ConfigError as exc:
        # Names the option and where it was set, never a secret's value.
        return [f"{_SOURCE}: configuration error: {exc}"], []
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Error"), error.get("Message", "")
        log.warning("reading the logs of %s try %s failed: %s: %s", getattr(ti, "key", ti), try_number, code, message)
        return [f"{_SOURCE}: could not read the task's logs: {code}: {message}"], []
    except Exception as exc:
        # Only the type: messages of database and connection errors may name hosts or users.
        log.warning("reading the logs of %s try %s failed", getattr(ti, "key", ti), try_number, exc_info=True)
        return [f"{_SOURCE}: could not read the task's logs: {type(exc).__name__}"], []


def _read_task_log(
    queries: TaskQueries, ti: Any, try_number: int, *, backend: Backend, locate: Locate, reader: Callable[[], TaskLogs]
) -> tuple[list[str], list[str]]:
    record = find_record(queries, ti, try_number, backend=backend)
    if record is None:
        return [f"{_SOURCE}: no task record for try {try_number} of this task instance yet"], []
    if record.external_id is None:
        waiting = f"; last error: {record.last_error}" if record.last_error else ""
        return [
            f"{_SOURCE}: {_describe(record)}: not launched yet, so there are no logs yet; they appear here "
            f"once the container runs{waiting}"
        ], []
    found = locate(record)
    if found is None:
        return [f"{_SOURCE}: {_describe(record)}: the task has no log stream yet (it has not started)"], []
    location = found if isinstance(found, LogLocation) else LogLocation(*found)
    where = f"CloudWatch Logs group {location.group}, stream {location.stream}"
    try:
        page = reader().read(location)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        return [
            f"{_SOURCE}: {where} does not exist yet: the container has not started or written any output "
            f"({_describe(record)}; AWS: {exc.response['Error'].get('Message', '')})"
        ], []
    sources = [where]
    if page.truncated:
        sources.append(f"{_SOURCE}: showing the first {len(page.lines)} lines; the rest is in {where}")
    elif not page.lines:
        sources.append(f"{_SOURCE}: no output in {where} yet")
    return sources, page.lines
