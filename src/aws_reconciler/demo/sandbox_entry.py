"""``python -m aws_reconciler.demo.sandbox_entry``: the sandbox with its task runners, tuned for the stack.

What ``aws-reconciler sandbox`` does (serve, ``bootstrap``, write the ``export`` lines, run
until SIGTERM, stop every task process), plus the task runner's knobs the stack needs and the
CLI does not offer: ``--provisioning-delay`` (how long every ECS task stays PROVISIONING, as
when a cluster has no capacity: the stuck-in-queued test) and ``--task-env NAME=VALUE`` (put
into the task definition's and the Batch job definition's ``environment``, where an operator
puts Airflow's settings on AWS). Both ECS and AWS Batch are bootstrapped (cluster, task
definition, job queue, job definition) and both runners run (``run_tasks=True`` starts the
ECS task runner and the Batch job runner), so the stack can use both executors at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _write_atomically(path: Path, text: str) -> None:
    # The stack polls for the file: it must never see it half-written.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the settings are written to ``--env-file`` once serving."""
    parser = argparse.ArgumentParser(prog="python -m aws_reconciler.demo.sandbox_entry", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--env-file", required=True)
    parser.add_argument("--provisioning-delay", type=float, default=None)
    parser.add_argument("--task-env", type=_pair, action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from ..sandbox.bootstrap import bootstrap
    from ..sandbox.cli import export_lines
    from ..sandbox.runner import RunnerOptions
    from ..sandbox.server import SandboxServer

    options = RunnerOptions()
    if args.provisioning_delay is not None:
        options = dataclasses.replace(options, provisioning_delay=args.provisioning_delay)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before starting: a signal during the start still ends in a clean stop of the task runner.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    server = SandboxServer(host=args.host, port=args.port, region=args.region, run_tasks=True, runner=options)
    try:
        server.start()
        settings = bootstrap(
            endpoint_url=server.endpoint_url, region=args.region, environment=dict(args.task_env), batch=True
        )
        _write_atomically(Path(args.env_file), "\n".join(export_lines(settings)) + "\n")
        print(f"sandbox ready on {server.endpoint_url}", flush=True)
        while not stop.is_set():
            if server.wait(0.5):
                print("sandbox: the server stopped by itself", file=sys.stderr, flush=True)
                return 1
    finally:
        server.stop()  # the task runner first: every task process is gone when this returns
    return 0


if __name__ == "__main__":
    sys.exit(main())
