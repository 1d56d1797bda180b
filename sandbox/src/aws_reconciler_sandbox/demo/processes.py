"""Child processes of the local stack: own process groups, logs in files, reliable teardown.

Every process is started as the leader of a new session (so its own process group): Ctrl-C in
the terminal reaches only the orchestrator, which then stops the children in order, and a
signal sent to a group reaches the workers a process forked (uvicorn workers, task runners).
Three further nets make sure nothing the stack started outlives it:

- stopping a process also stops its descendants that left its group (the sandbox starts each
  ECS task in a session of its own), found from ``/proc`` before the group is signalled;
- every process inherits a marker variable naming the stack, and a final sweep of ``/proc``
  stops whatever still carries it;
- each child asks the kernel for a signal when the orchestrator dies (``PR_SET_PDEATHSIG``), so
  even ``kill -9`` of the demo leaves nothing running (only, then, its database behind).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable every process of one stack inherits: ``<name>=<stack id>``.
STACK_MARKER = "AWS_RECONCILER_STACK_ID"
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; reuse races are unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent(sig: int) -> None:
    """In the child, before exec: receive ``sig`` when the orchestrator dies, even by SIGKILL.

    Best effort and Linux-only. (PDEATHSIG fires when the forking *thread* exits, which is the
    main thread here.) Nothing else can clean up after an orchestrator killed with -9.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


@dataclass
class ManagedProcess:
    """One long-running child: how to start it, where it logs, and its current ``Popen``."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_dir: Path
    cwd: Path | None = None
    #: Seconds between SIGTERM to the group and SIGKILL when stopping.
    stop_timeout: float = 15.0
    #: What the process gets if the orchestrator dies without stopping it. SIGKILL by default:
    #: no one would be left to escalate a SIGTERM that is not obeyed. The sandbox gets SIGTERM,
    #: because only its own shutdown stops the task processes it started in sessions of their own.
    parent_death_signal: int = signal.SIGKILL
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0
    log_path: Path | None = None
    #: Every log file this process wrote (one per start).
    log_paths: list[Path] = field(default_factory=list)

    def start(self) -> ManagedProcess:
        """Start (or start again, after it exited or was killed) with a new log file."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        suffix = "" if self.starts == 1 else f".{self.starts}"
        self.log_path = self.log_dir / f"{self.name}{suffix}.log"
        self.log_paths.append(self.log_path)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(self.argv),
                env=dict(self.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, self.parent_death_signal),
            )
        return self

    @property
    def pid(self) -> int | None:
        """The leader's pid (also the process group id), or None before the first start."""
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        """True while the group leader has not exited."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The leader's exit status once it exited."""
        return self.popen.poll() if self.popen is not None else None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group; a group that is gone is fine."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # a reused pgid of someone else: never touch it
            if exc.errno != errno.EPERM:
                raise

    def kill(self) -> None:
        """``kill -9`` the group at once, as a crash or an OOM kill would: no cleanup runs.

        Descendants that live in sessions of their own (ECS task processes of the sandbox) are
        left alone, as they would be on a real host: the test decides what happens to them.
        """
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM to the group, SIGKILL after ``timeout``; returns the leader's exit status.

        Descendants outside the group (a process that started its own session) get the same
        deadline to exit after their parent's clean shutdown, then SIGKILL.
        """
        if self.popen is None:
            return None
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        tree = process_tree(self.popen.pid) if self.popen.poll() is None else {}
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            while self.popen.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        # Also when the leader exited by itself: its workers may still be around.
        self.signal_group(signal.SIGKILL)
        for pid in alive(tree):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        # SIGKILL is asynchronous: return only once the whole tree is really gone.
        deadline = time.monotonic() + 10
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        """The end of the current log file, for failure reports."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state, ppid, pgrp, session, ... field 22 of stat is the start time.
    return int(fields[1]), int(fields[19]), fields[0]


def process_tree(root: int) -> dict[int, int]:
    """``root`` and all its live descendants, as pid -> start time (to detect pid reuse later)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        info = _stat(int(entry.name))
        if info is None or info[2] == "Z":
            continue
        children.setdefault(info[0], []).append(int(entry.name))
        starts[int(entry.name)] = info[1]
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in tree:
            tree[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return tree


def alive(tree: Mapping[int, int]) -> list[int]:
    """The pids of ``tree`` still running as the same process (same start time, not a zombie)."""
    living = []
    for pid, started in tree.items():
        info = _stat(pid)
        if info is not None and info[1] == started and info[2] != "Z":
            living.append(pid)
    return living


def marked_pids(stack_id: str) -> list[int]:
    """Pids of live processes carrying ``STACK_MARKER=<stack_id>`` in their environment."""
    needle = f"{STACK_MARKER}={stack_id}".encode()
    own = os.getpid()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        info = _stat(int(entry.name))
        if info is not None and info[2] != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(stack_id: str, *, timeout: float = 10.0, log: Callable[[str], None] | None = None) -> list[int]:
    """SIGTERM, then SIGKILL, every process still marked with ``stack_id``; returns their pids."""
    pids = marked_pids(stack_id)
    if not pids:
        return []
    if log is not None:
        log(f"stopping {len(pids)} leftover process(es) of the stack: {pids}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and marked_pids(stack_id):
            time.sleep(0.2)
        pids = marked_pids(stack_id)
        if not pids:
            break
    return pids
