"""``aws-reconciler sandbox``: serve the fake AWS in the foreground until SIGINT/SIGTERM.

``add_sandbox_parser`` adds the subcommand to the ``aws-reconciler`` parser (the product's CLI
finds it through the ``aws_reconciler.commands`` entry point of this distribution, so the
product never imports the sandbox); ``run_sandbox`` is its body. This is the only way the
sandbox process is started: by operators, by the demo stack and by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from .realism import PROFILES, FaultRule, RealismSettings

__all__ = ["add_sandbox_parser", "export_lines", "realism_from_args", "run_sandbox"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 5555

_Handler = Callable[[int, FrameType | None], Any] | int | None


def export_lines(settings: Mapping[str, str]) -> list[str]:
    """``export NAME=VALUE`` lines, values shell-quoted, for ``eval`` or ``source``."""
    return [f"export {name}={shlex.quote(value)}" for name, value in settings.items()]


def _write_atomically(path: str, text: str) -> None:
    # Readers poll for the file: they must never see it half-written.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sandbox-env-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run_sandbox(
    *,
    host: str,
    port: int,
    region: str,
    run_tasks: bool,
    env_file: str | None,
    provisioning_delay: float | None = None,
    task_env: Mapping[str, str] | None = None,
    realism: RealismSettings | None = None,
) -> int:
    """Serve the sandbox until SIGINT or SIGTERM; returns the exit status (0 after a clean stop).

    Starts the server (``port`` 0 picks a free one), creates the default resources with
    ``bootstrap``, prints the settings as ``export`` lines (and writes them to ``env_file``),
    prints ``sandbox ready on <url>``, then waits. On a signal it stops the task runner, whose
    processes are all gone when this returns, and the server. Signal handlers are installed only
    when called from the main thread (elsewhere, stop the process another way).

    ``provisioning_delay`` keeps every ECS task PROVISIONING that long (a cluster without
    capacity); ``task_env`` goes into the task definition's and job definition's
    ``environment``, where an operator puts Airflow's settings on AWS. ``realism`` (default: the
    ``kind`` profile) is put in force once the default resources exist, so that creating them
    never meets a fault.
    """
    stop = threading.Event()
    previous: dict[signal.Signals, _Handler] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("sandbox: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        # Installed before starting, so that a signal during the start still ends in a clean stop.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    # Here, not at the top: the product's CLI imports this module to build its parser, and moto
    # (behind the server) takes a second to import.
    from .resources import bootstrap
    from .runner import RunnerOptions
    from .server import SandboxServer

    options = RunnerOptions()
    if provisioning_delay is not None:
        options = dataclasses.replace(options, provisioning_delay=provisioning_delay)
    server = SandboxServer(host=host, port=port, region=region, run_tasks=run_tasks, runner=options)
    try:
        server.start()
        settings = bootstrap(
            endpoint_url=server.endpoint_url, region=region, environment=dict(task_env or {}), batch=True
        )
        if realism is not None:
            server.realism.configure(realism)
            log.info("sandbox: realism %s", _describe(realism))
        text = "\n".join(export_lines(settings)) + "\n"
        print(text, end="")
        if env_file:
            _write_atomically(env_file, text)
        log.info("sandbox: %s", "tasks run as local processes" if run_tasks else "task runner off")
        # Exactly this line: scripts wait for it and take the URL from its end.
        print(f"sandbox ready on {server.endpoint_url}", flush=True)
        while not stop.is_set():
            # A timeout, so that signal handlers run promptly and a dead server is noticed.
            if server.wait(0.5):
                log.error("sandbox: the server stopped by itself")
                return 1
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _describe(settings: RealismSettings) -> str:
    named = next((name for name, profile in PROFILES.items() if profile == settings), None)
    return f"profile {named}" if named else f"seed {settings.seed}, settings {settings.to_dict()}"


def _add_realism_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "realism", "how unkind the fake AWS is; each flag overrides the profile's value (see docs/sandbox.md)"
    )
    group.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="kind",
        help="named mix: kind (default: never unkind unless a test plans it), realistic (a sensible mix of all)",
    )
    for setting in dataclasses.fields(RealismSettings):
        flag, text, metavar = setting.metadata["flag"], setting.metadata["help"], setting.metadata["metavar"]
        dest = f"realism_{setting.name}"
        if setting.name == "faults":
            group.add_argument(flag, dest=dest, type=_fault_rule, action="append", metavar=metavar, help=text)
        elif setting.type in ("bool", bool):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = int if setting.type in ("int", int) else float
            group.add_argument(flag, dest=dest, type=kind, default=None, metavar=metavar, help=text)


def _fault_rule(text: str) -> FaultRule:
    try:
        return FaultRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def realism_from_args(args: argparse.Namespace) -> RealismSettings:
    """The profile named by ``--profile`` with every realism flag given on top of it."""
    changes = {
        setting.name: getattr(args, f"realism_{setting.name}")
        for setting in dataclasses.fields(RealismSettings)
        if getattr(args, f"realism_{setting.name}", None) is not None
    }
    try:
        return PROFILES[args.profile].changed(**changes)
    except ValueError as exc:
        raise SystemExit(f"aws-reconciler sandbox: {exc}") from None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument("--region", default="us-east-1", help="region of the default resources (default us-east-1)")
    parser.add_argument(
        "--no-run-tasks",
        dest="run_tasks",
        action="store_false",
        help="do not run tasks as local processes: they stay PROVISIONING until moved by the control API",
    )
    parser.add_argument("--env-file", default=None, help="also write the export lines to this file")
    parser.add_argument(
        "--provisioning-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep every ECS task PROVISIONING this long, as a cluster without capacity does",
    )
    parser.add_argument(
        "--task-env",
        type=_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="put NAME=VALUE into the task and job definitions' environment (repeatable)",
    )
    _add_realism_arguments(parser)


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _cmd_sandbox(args: argparse.Namespace) -> int:
    return run_sandbox(
        host=args.host,
        port=args.port,
        region=args.region,
        run_tasks=args.run_tasks,
        env_file=args.env_file,
        provisioning_delay=args.provisioning_delay,
        task_env=dict(args.task_env),
        realism=realism_from_args(args),
    )


USER_DESCRIPTION = (
    "Serve a local fake AWS (ECS, Batch, CloudWatch Logs, STS, EC2 default VPC) on this machine, create a "
    "cluster, task definition, security group, Batch job queue and job definition, print the settings to "
    "export, and run each ECS task's and Batch job's container command as a local process. No AWS account "
    "is used. With --profile realistic (or the realism flags) it is as unkind as AWS: eventual consistency, "
    "throttling, faults, latency, capacity failures. Stop with Ctrl-C."
)


def add_sandbox_parser(subparsers: Any) -> None:
    """Add the ``sandbox`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    The parsed ``Namespace`` carries ``func``, which takes it and returns the exit status.
    """
    parser = subparsers.add_parser(
        "sandbox",
        help="serve a local fake AWS (ECS, Batch, CloudWatch Logs...) that runs tasks as local processes",
        description=USER_DESCRIPTION,
    )
    _add_arguments(parser)
    parser.set_defaults(func=_cmd_sandbox)
