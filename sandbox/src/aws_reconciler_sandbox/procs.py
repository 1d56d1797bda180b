"""One container as a local process: its own process group, its output split into log lines.

The task runner owns every ``ContainerProcess`` from a single thread, so nothing here locks.
Output is read without blocking (the runner multiplexes all pipes with one selector), and the
exit is detected with ``waitid(WNOWAIT)``: the process stays a zombie, which keeps its process
group id reserved, until the rest of its group has been killed, so that signal can never reach
an unrelated group that reused the id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from .taskspec import LogTarget

__all__ = ["MAX_LINE_BYTES", "ContainerProcess", "exit_code_of"]

#: Docker's log drivers cut lines longer than 16 KiB into several messages; so does the runner.
MAX_LINE_BYTES = 16 * 1024
_READ_SIZE = 64 * 1024


def exit_code_of(returncode: int) -> int:
    """A container's exit code from ``Popen.returncode``: 128 + N for death by signal N, as Docker."""
    return 128 - returncode if returncode < 0 else returncode


class ContainerProcess:
    """A started container command (see ``spawn``)."""

    def __init__(self, popen: subprocess.Popen[bytes], log_target: LogTarget | None = None) -> None:
        self.popen = popen
        self.log_target = log_target
        self.pid = popen.pid
        # start_new_session: the child leads a new session and process group whose id is its pid.
        self.pgid = popen.pid
        self._fd: int | None = None
        if popen.stdout is not None:
            self._fd = popen.stdout.fileno()
            os.set_blocking(self._fd, False)
        self._partial = bytearray()
        self._lines: list[tuple[int, str]] = []
        self._last_ms = 0
        self._exited = False
        self.returncode: int | None = None

    @classmethod
    def spawn(cls, argv: Sequence[str], env: Mapping[str, str], *, log_target: LogTarget | None) -> ContainerProcess:
        """Start ``argv`` in a new session (so its own process group) with ``env``.

        With a ``log_target``, stdout and stderr go, merged as a container's do, to a pipe read
        with ``read_available``; without one they are discarded (a container without awslogs).
        Raises ``OSError`` when the command cannot be executed.
        """
        output = subprocess.PIPE if log_target is not None else subprocess.DEVNULL
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the sandbox's terminal does not reach the tasks
            # directly (the sandbox stops them itself), and the whole group can be signalled.
            start_new_session=True,
            close_fds=True,
        )
        return cls(popen, log_target)

    @property
    def fd(self) -> int | None:
        """The output pipe to watch for reading, if output is captured and not yet closed."""
        return self._fd

    # ------------------------------------------------------------------ output

    def read_available(self) -> bool:
        """Read what the pipe holds now, without blocking. False once the pipe is at its end."""
        if self._fd is None:
            return False
        while True:
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            self._split(chunk)

    def _split(self, chunk: bytes) -> None:
        self._partial += chunk
        while True:
            end = self._partial.find(b"\n")
            if end < 0 or end > MAX_LINE_BYTES:
                if len(self._partial) < MAX_LINE_BYTES:
                    return
                end = MAX_LINE_BYTES
                line, self._partial = bytes(self._partial[:end]), self._partial[end:]
            else:
                line, self._partial = bytes(self._partial[:end]), self._partial[end + 1 :]
            self._add(line)

    def _add(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text:
            return  # CloudWatch Logs rejects empty messages
        # CloudWatch wants the events of one stream in order; the wall clock may step back.
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        self._lines.append((self._last_ms, text))

    def take_lines(self) -> list[tuple[int, str]]:
        """The complete lines read so far, as ``(epoch milliseconds, text)``; they are handed over once."""
        lines, self._lines = self._lines, []
        return lines

    # ------------------------------------------------------------------ lifecycle

    def has_exited(self) -> bool:
        """Whether the process has ended; it is not reaped yet (see ``finish``)."""
        if self._exited:
            return True
        try:
            self._exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped already: only if someone else waited for our child
            self._exited = True
        return self._exited

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the container. Unreaped, the pgid cannot be reused."""
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def finish(self) -> int:
        """After the exit: kill what is left of the group, take the last output, reap, close.

        Kills the rest of the group because a container's processes all end with it, so a
        background child of the command must not outlive the task. Returns the container's
        exit code.
        """
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)
            # Whatever the process wrote before it ended is in the pipe now.
            self.read_available()
            if self._partial:
                line, self._partial = bytes(self._partial), bytearray()
                self._add(line)
            self.returncode = self.popen.wait()
        self.close()
        return exit_code_of(self.returncode)

    def close(self) -> None:
        """Close the output pipe (the runner unregisters it from its selector first)."""
        if self._fd is not None and self.popen.stdout is not None:
            self.popen.stdout.close()
        self._fd = None
