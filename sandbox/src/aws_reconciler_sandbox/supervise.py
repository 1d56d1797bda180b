"""What the ECS task runner (``runner.py``) and the Batch job runner (``batchrunner.py``) share.

Process supervision around :class:`~.procs.ContainerProcess`: the host environment a container
starts from, spawning with Docker's wording for a failure, pumping output into CloudWatch Logs,
and SIGTERM-then-SIGKILL at shutdown. The runners keep their own state machines and locking; the
log functions here run under ``MOTO_LOCK``, the others without it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .procs import ContainerProcess
from .taskspec import LogTarget

__all__ = [
    "HOST_AWS_IDENTITY",
    "LogPump",
    "host_environment",
    "kill_all",
    "logs_backend",
    "raise_fd_limit",
    "spawn_container",
    "terminate_processes",
]

log = logging.getLogger(__name__)

MAX_EVENTS_PER_PUT = 10_000  # PutLogEvents' limit
_WANTED_FDS = 4096
HOST_AWS_IDENTITY = frozenset({"AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"})


def raise_fd_limit() -> None:
    """Let a few hundred tasks have an output pipe each, where the hard limit allows it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = _WANTED_FDS if hard == resource.RLIM_INFINITY else min(_WANTED_FDS, hard)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):  # not fatal: fewer concurrent tasks, that is all
        pass


def host_environment(python: str) -> dict[str, str]:
    """The environment a container process starts from, below the agent's and the task's variables."""
    # Never hand the host's own AWS identity to a task.
    base = {k: v for k, v in os.environ.items() if k not in HOST_AWS_IDENTITY}
    # Output reaches CloudWatch as it is printed, not when a 4 KiB block buffer fills.
    base.setdefault("PYTHONUNBUFFERED", "1")
    # So that an "airflow" command finds the console scripts beside the interpreter.
    bindir = os.path.dirname(python)
    if bindir and bindir not in base.get("PATH", "").split(os.pathsep):
        base["PATH"] = os.pathsep.join(p for p in (bindir, base.get("PATH", "")) if p)
    return base


def spawn_container(
    argv: Sequence[str], env: Mapping[str, str], log_target: LogTarget | None
) -> tuple[ContainerProcess | None, str | None]:
    """Start the process (outside the lock); returns it or the reason it could not start."""
    try:
        return ContainerProcess.spawn(argv, env, log_target=log_target), None
    except OSError as exc:
        # Docker's wording, so that the reconciler sees a container that never started.
        return None, (
            "CannotStartContainerError: failed to create the container process: "
            f"exec: {argv[0]!r}: {exc.strerror or exc}"
        )


def logs_backend(target: LogTarget) -> Any:
    """moto's CloudWatch Logs backend of the target's account and region (under ``MOTO_LOCK``)."""
    from moto.backends import get_backend

    return get_backend("logs")[target.account_id][target.region]


class LogPump:
    """Moves the processes' output lines into their CloudWatch Logs streams (under ``MOTO_LOCK``)."""

    def __init__(self) -> None:
        self._errors: set[tuple[str, str]] = set()

    def flush(self, procs: Iterable[ContainerProcess]) -> None:
        """Write every line read so far; a stream that cannot be written is warned about once."""
        for proc in procs:
            lines = proc.take_lines()
            target = proc.log_target
            if not lines or target is None:
                continue
            events = [{"timestamp": ts, "message": text} for ts, text in lines]
            try:
                logs = logs_backend(target)
                for start in range(0, len(events), MAX_EVENTS_PER_PUT):
                    logs.put_log_events(target.group, target.stream, events[start : start + MAX_EVENTS_PER_PUT])
            except Exception as exc:  # e.g. the group was deleted: the lines are lost, as on AWS
                if (target.group, target.stream) not in self._errors:
                    self._errors.add((target.group, target.stream))
                    log.warning("sandbox: cannot write to %s %s: %s", target.group, target.stream, exc)


def terminate_processes(
    procs: Iterable[ContainerProcess],
    grace: float,
    *,
    before_finish: Callable[[ContainerProcess], None] | None = None,
) -> None:
    """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds, reap all.

    Waits without the lock; the caller must own the processes (the supervisor has exited).
    """
    procs = list(procs)
    for proc in procs:
        proc.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        for proc in procs:
            proc.read_available()  # a process blocked on a full pipe could not exit
        if all(proc.has_exited() for proc in procs) or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for proc in procs:
        if before_finish is not None:
            before_finish(proc)
        proc.finish()  # SIGKILLs the group if it is still there, then reaps


def kill_all(procs: Iterable[ContainerProcess]) -> None:
    """At interpreter exit without ``stop()``: SIGKILL every process group."""
    for proc in list(procs):
        proc.signal_group(signal.SIGKILL)
