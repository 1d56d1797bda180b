"""The project's embedded fake AWS (``SandboxServer``), in its own process or in this one.

``process`` (the default) runs ``python -m aws_reconciler_sandbox --no-run-tasks``: the server's
Python work then does not compete with the measured client for this process's GIL, closer to a
remote AWS. ``thread`` runs ``SandboxServer`` in a thread of this process. Either way requests go
over real HTTP, every request is served under the sandbox's global lock, and tasks stay
PROVISIONING (no task runner), so every launched task counts as running for both executors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from aws_reconciler_sandbox import SandboxControlClient, SandboxServer, bootstrap, provision_event_queue

REGION = "us-east-1"
SandboxMode = Literal["process", "thread"]


class _Control(Protocol):
    def calls(self) -> dict[str, int]: ...

    def reset(self) -> None: ...

    def tasks(self, *, cluster: str | None = None) -> list[dict[str, Any]]: ...

    def set_task_states(
        self, *, task_arns: list[str], last_status: str, exit_code: int | None = None
    ) -> list[dict[str, Any]]: ...

    def event_stats(self) -> dict[str, int]: ...


class Sandbox:
    """One sandbox for the whole run; :meth:`fresh_world` empties it between measurements."""

    def __init__(self, mode: SandboxMode) -> None:
        self.mode = mode
        self._proc: subprocess.Popen[bytes] | None = None
        self._server: SandboxServer | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="aws-reconciler-bench-sandbox-"))
        self.control: _Control
        if mode == "process":
            self.endpoint_url = self._start_process()
            self.control = SandboxControlClient(self.endpoint_url)
        else:
            self._server = SandboxServer(region=REGION).start()
            self.endpoint_url = self._server.endpoint_url
            self.control = self._server
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url

    def _start_process(self) -> str:
        out = self._log_dir / "stdout"
        err = self._log_dir / "stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aws_reconciler.cli",
                    "sandbox",
                    "--port",
                    "0",
                    "--no-run-tasks",
                    "--region",
                    REGION,
                ],
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in out.read_text().splitlines():
                if line.startswith("sandbox ready on "):
                    return line.rsplit(" ", 1)[-1]
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"the sandbox did not start; see {err}")

    def fresh_world(self) -> dict[str, str]:
        """Forget every task and resource, create cluster/task definition/network again.

        Returns the settings ``bootstrap`` reports (``AIRFLOW__AWS_RECONCILER_ECS__*``...): the
        subnet and security group ids change with every reset.
        """
        self.control.reset()
        return bootstrap(endpoint_url=self.endpoint_url, region=REGION)

    def cpu_seconds(self) -> float | None:
        """CPU seconds the sandbox process used so far; ``None`` when it runs in this process."""
        if self._proc is None:
            return None
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def calls(self) -> Counter[str]:
        """Requests served so far, by ``service:Operation``."""
        return Counter(self.control.calls())

    def task_arns(self) -> list[str]:
        """Every ECS task the sandbox holds (the sandbox's own view, never lagging)."""
        return [str(task["arn"]) for task in self.control.tasks()]

    def set_task_states(self, task_arns: Sequence[str], last_status: str, *, exit_code: int | None = None) -> None:
        """Move tasks as their containers would (no process runs): RUNNING, or STOPPED with
        ``exit_code``. One control call, one hold of the sandbox's lock: the tasks change in the
        same instant, and each change is an "ECS Task State Change" event to the queues of
        matching rules, all queued together."""
        self.control.set_task_states(task_arns=list(task_arns), last_status=last_status, exit_code=exit_code)

    def events_pending(self) -> int:
        """Events the sandbox has emitted and not yet delivered into their queues."""
        return int(self.control.event_stats()["pending"])

    def provision_event_queue(self, cluster: str, *, deployment: str) -> str:
        """The EventBridge rule, SQS queue and DLQ ``deploy/events/cloudformation.yaml`` makes for
        ``cluster``'s task events; returns the queue URL (``events_queue_url``)."""
        return provision_event_queue(
            endpoint_url=self.endpoint_url, region=REGION, deployment=deployment, clusters=[cluster]
        )

    def close(self) -> None:
        """Stop the server (the process sandbox gets SIGTERM, which it handles cleanly)."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def diff(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    """Calls made between two snapshots (operations with zero calls left out)."""
    delta = after - before
    return dict(sorted(delta.items()))
