"""The sandbox as its own process, started the one way users start it: ``aws-reconciler sandbox``."""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .waiting import wait_for


@dataclass(frozen=True)
class ServedSandbox:
    """A running ``aws-reconciler sandbox`` and the settings it printed (``export`` lines)."""

    process: subprocess.Popen[bytes]
    settings: dict[str, str]
    stderr: Path

    @property
    def endpoint_url(self) -> str:
        return self.settings["AWS_ENDPOINT_URL"]


def read_exports(path: Path) -> dict[str, str]:
    """``export NAME=VALUE`` lines as a dict (values shell-quoted)."""
    pairs = (shlex.split(line)[1].split("=", 1) for line in path.read_text().splitlines() if line.strip())
    return {name: value for name, value in pairs}


@contextlib.contextmanager
def serve_sandbox(work_dir: Path, *args: str, timeout: float = 60) -> Iterator[ServedSandbox]:
    """Serve the sandbox from this venv on a free port until the block ends (then SIGTERM, SIGKILL)."""
    env_file = work_dir / "sandbox.env"
    stdout, stderr = work_dir / "sandbox.out", work_dir / "sandbox.err"
    argv: Sequence[str] = [
        sys.executable, "-m", "aws_reconciler.cli", "sandbox", "--port", "0", "--env-file", str(env_file), *args
    ]  # fmt: skip
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the sandbox exited with {proc.returncode}: {stderr.read_text()}")
            return env_file.exists()

        wait_for(ready, what="the sandbox's env file", timeout=timeout)
        yield ServedSandbox(process=proc, settings=read_exports(env_file), stderr=stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
