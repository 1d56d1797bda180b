"""Why a try never ran, written where Airflow's task log view reads it.

Airflow's API server asks the executor for logs (``get_task_log``) only while a task instance is
RUNNING. A try that never ran (an invalid ``executor_config``, a workload token that expired
before a launch, launches given up for lack of capacity, an AWS error) goes from QUEUED straight
to FAILED: the log view finds no file, asks the worker's log server and shows "Could not read
served logs: Hostname not available for worker". So the executor writes the reason as the try's
log itself, the way Airflow's own components write task logs: JSON lines at the try's relative
log path (the workload's ``log_path``) under ``[logging] base_log_folder``, then, when remote
logging is configured, handed to Airflow's remote log handler (S3, CloudWatch, ...), which is
where the API server of a multi-host deployment reads finished tries' logs.

Writing never stops reporting: any trouble is logged and the try's failure is reported anyway.
The upload runs on a thread of its own, so the scheduler's heartbeat never waits for storage.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...model import Clock, utcnow
from ...store.records import TaskRecord

log = logging.getLogger(__name__)

#: The ``logger`` field of the lines, so a reader can tell them from the task's own.
LOGGER = "aws_reconciler.executor"


def never_ran_lines(record: TaskRecord, reason: str) -> list[str]:
    """What the log view shows for a try that never ran: the reason first, then the record."""
    key = record.key
    lines = [f"This try never ran: {reason}"]
    if record.started_at is not None:
        launched = "its container started but ended before the task ran"
    elif record.launched:
        launched = f"launched {record.attempt} time(s), its container never started"
    else:
        launched = "never launched"
    lines.append(
        f"aws-reconciler task record {record.id} ({record.backend.value}, {launched}); "
        f"{key.dag_id}.{key.task_id} run {key.run_id} try {key.try_number}"
    )
    if record.last_error and record.last_error not in reason:
        lines.append(f"last launch error: {record.last_error}")
    return lines


def render(lines: Sequence[str], *, now: Clock = utcnow) -> str:
    """``lines`` as Airflow 3 task log lines (JSON, one per line, as the task runner writes them)."""
    stamp = now().isoformat().replace("+00:00", "Z")
    return "".join(
        json.dumps({"timestamp": stamp, "level": "error", "event": line, "logger": LOGGER}) + "\n" for line in lines
    )


def inside(base: Path, relative: str) -> Path | None:
    """``base / relative``, or ``None`` when ``relative`` would leave ``base`` (absolute, ``..``)."""
    if not relative or Path(relative).is_absolute():
        return None
    path = (base / relative).resolve()
    root = base.resolve()
    return path if path == root or root in path.parents else None


class NeverRanLog:
    """Writes the reason a try never ran into Airflow's log of that try.

    ``base_log_folder``: Airflow's ``[logging] base_log_folder``; ``remote()``: Airflow's remote
    log handler when remote logging is configured (looked up on first use), else ``None``.
    """

    def __init__(
        self,
        *,
        base_log_folder: Path,
        remote: Callable[[], Any | None] = lambda: None,
        clock: Clock = utcnow,
    ) -> None:
        self.base_log_folder = base_log_folder
        self._remote = remote
        self._clock = clock
        self._uploads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def write(self, log_path: str, lines: Sequence[str]) -> Path | None:
        """Append ``lines`` to the try's log and start its upload; the local file, or ``None``."""
        path = inside(self.base_log_folder, log_path)
        if path is None:
            log.warning("not writing the reason to task log path %r: outside [logging] base_log_folder", log_path)
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Appended: whatever a container wrote before it died stays in front.
            with path.open("a", encoding="utf-8") as file:
                file.write(render(lines, now=self._clock))
        except OSError as exc:
            log.warning("could not write the reason to the task log %s: %s", path, exc)
            return None
        self._upload(log_path)
        return path

    def _upload(self, log_path: str) -> None:
        try:
            remote = self._remote()
        except Exception:
            log.warning("remote task logging could not be loaded; the reason stays in the local log", exc_info=True)
            return
        if remote is None:
            return
        with self._lock:
            if self._uploads is None:
                self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aws-reconciler-log-upload")
            uploads = self._uploads
        uploads.submit(self._upload_now, remote, log_path)

    @staticmethod
    def _upload_now(remote: Any, log_path: str) -> None:
        try:
            remote.upload(log_path, None)
        except Exception:
            log.warning("could not upload the task log %s to remote logging", log_path, exc_info=True)

    def close(self, *, wait: bool = False) -> None:
        """Stop the upload thread (``wait``: after the uploads queued so far)."""
        with self._lock:
            uploads, self._uploads = self._uploads, None
        if uploads is not None:
            uploads.shutdown(wait=wait)
