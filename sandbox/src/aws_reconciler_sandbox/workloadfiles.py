"""Keep the Airflow workload (and its token) out of a task process's command line.

On AWS the container command is seen by whoever may describe the task, not by the other users
of a machine. Here every local user can read any process's arguments (``ps``, ``/proc/<pid>/
cmdline``), so the runner hands the workload over the way Airflow's entry point also accepts it:
``--json-string <json>`` becomes ``--json-path <file>``, the file readable by this user alone
(mode 600 in a directory of mode 700) and removed when the workload ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence

__all__ = ["JSON_PATH", "JSON_STRING", "WorkloadFiles", "json_string_of"]

#: Airflow's ``execute_workload`` arguments: the workload inline, or the file that holds it.
JSON_STRING = "--json-string"
JSON_PATH = "--json-path"


def json_string_of(argv: Sequence[str]) -> tuple[int, int, str] | None:
    """Where ``argv`` passes a workload inline: (first index, index after, the JSON), or None.

    Both spellings argparse accepts: ``--json-string JSON`` and ``--json-string=JSON``.
    """
    for index, arg in enumerate(argv):
        if arg == JSON_STRING and index + 1 < len(argv):
            return index, index + 2, argv[index + 1]
        if arg.startswith(JSON_STRING + "="):
            return index, index + 1, arg[len(JSON_STRING) + 1 :]
    return None


class WorkloadFiles:
    """The runner's private directory of workload files, one per task or job: created on first
    use, emptied by ``close``. Used from the runner's threads under its lock."""

    def __init__(self) -> None:
        self._dir: str | None = None
        self._files: dict[str, str] = {}

    def keep_out_of_argv(self, key: str, argv: Sequence[str]) -> list[str]:
        """``argv`` with an inline workload moved into the private file of ``key`` (a task ARN or
        job id); ``argv`` as it is when it passes none."""
        found = json_string_of(argv)
        if found is None:
            return list(argv)
        start, end, workload = found
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="aws-reconciler-sandbox-workloads-")  # mode 700
        self.release(key)
        path = os.path.join(self._dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(workload)
        self._files[key] = path
        return [*argv[:start], JSON_PATH, path, *argv[end:]]

    def release(self, key: str) -> None:
        """Delete the workload file of ``key``: its process has ended, or will never start."""
        path = self._files.pop(key, None)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        """Remove the directory and whatever is left in it."""
        self._files.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
