"""``aws-reconciler``: run the reconciler, migrate the store, show the settings and the status, check AWS.

Commands of other distributions join through the ``aws_reconciler.commands`` entry point (the
sandbox's ``aws-reconciler sandbox``); the product itself never imports them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from . import __version__
from .config import ConfigError, describe_settings, load_settings, redact_url

log = logging.getLogger("aws_reconciler")


def _cmd_run(args: argparse.Namespace) -> int:
    from .metrics.definitions import Metrics
    from .metrics.server import MetricsServer
    from .reconciler.factory import build_runner

    settings = load_settings()
    metrics = Metrics()
    runner = build_runner(settings, metrics=metrics)
    runner.install_signal_handlers()
    server = None
    if settings.core.metrics_address and not args.once:
        host, _, port = settings.core.metrics_address.rpartition(":")
        server = MetricsServer(
            registry=metrics.registry,
            liveness=runner.liveness,
            readiness=runner.readiness,
            host=host or "0.0.0.0",
            port=int(port),
        )
        server.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", host or "0.0.0.0", server.port)
    try:
        return runner.run(once=args.once)
    finally:
        if server is not None:
            server.stop()


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from .store.engine import create_store_engine
    from .store.migrate import migrate

    settings = load_settings()
    before, after = migrate(create_store_engine(settings.store_url))
    print(f"task store {redact_url(settings.store_url)}: {before or 'empty'} -> {after}")
    return 0


def _cmd_db_check(args: argparse.Namespace) -> int:
    from .store.engine import create_store_engine
    from .store.migrate import check_schema

    settings = load_settings()
    check_schema(create_store_engine(settings.store_url))
    print(f"task store {redact_url(settings.store_url)}: schema is current")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import print_status
    from .store.engine import create_store_engine
    from .store.migrate import check_schema
    from .store.queries import TaskQueries

    settings = load_settings()
    engine = create_store_engine(settings.store_url)
    check_schema(engine)
    print_status(
        TaskQueries(engine), store_label=redact_url(settings.store_url), failures=args.failures, out=sys.stdout
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .backends.client import make_client
    from .checks import check_backends, render

    settings = load_settings()
    settings.require_backend()
    results = check_backends(
        settings, lambda d: make_client(d.service, region_name=d.settings_of(settings).region_name)
    )
    print(render(results))
    missing = [r for r in results if not r.ok]
    if missing:
        print(f"{len(missing)} permission(s) missing", file=sys.stderr)
        return 1
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    rows = describe_settings(load_settings())
    width = max(len(f"[{s}] {o}") for s, o, _, _ in rows)
    for section, option, value, origin in rows:
        print(f"{f'[{section}] {option}':<{width}}  = {value:<40}  ({origin})")
    return 0


# Commands other distributions add, and where a user gets them when they are not installed.
PLUGIN_COMMANDS = {
    "sandbox": (
        "serve a local fake AWS (ECS, Batch, CloudWatch Logs...) that runs tasks as local processes",
        "aws-reconciler-sandbox (from a checkout: pip install ./sandbox)",
    ),
}
PLUGIN_GROUP = "aws_reconciler.commands"


def _add_plugin_commands(commands: Any) -> None:
    # Entry points are read, not imported, until one is registered: the sandbox's module imports
    # moto, so a command that is not invoked still pays its import (argparse needs the arguments).
    # The product installs and runs without it; a missing plugin gets a stub naming what to install.
    found = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    for name in sorted(set(PLUGIN_COMMANDS) | set(found)):
        if name in found:
            add: Callable[[Any], None] = found[name].load()
            add(commands)
            continue
        help_text, install = PLUGIN_COMMANDS[name]
        stub = commands.add_parser(name, help=f"{help_text} (needs {install.split(' ')[0]})", add_help=False)
        # Whatever options follow are the plugin's: the stub takes them all and says what is missing.
        stub.set_defaults(func=_missing_plugin(name, install), takes_any_arguments=True)


def _missing_plugin(name: str, install: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"aws-reconciler {name}: not installed; install {install}", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="aws-reconciler", description="Reconcile Airflow task instances with AWS ECS tasks and Batch jobs."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="reconcile the task store with AWS until stopped")
    run.add_argument("--once", action="store_true", help="run a single cycle and exit")
    run.set_defaults(func=_cmd_run)

    db = commands.add_parser("db", help="task store schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("migrate", help="create or upgrade the store's tables").set_defaults(func=_cmd_db_migrate)
    db.add_parser("check", help="fail unless the schema is current").set_defaults(func=_cmd_db_check)

    _add_plugin_commands(commands)

    status = commands.add_parser("status", help="tasks by backend and phase, oldest pending, recent failures")
    status.add_argument(
        "--failures", type=int, default=10, metavar="N", help="how many recent failures to list (default 10)"
    )
    status.set_defaults(func=_cmd_status)

    check = commands.add_parser("check", help="probe every AWS permission the reconciler needs, changing nothing")
    check.set_defaults(func=_cmd_check)

    config = commands.add_parser("config", help="settings").add_subparsers(dest="config_command", required=True)
    config.add_parser("show", help="effective settings and their origin, secrets redacted").set_defaults(
        func=_cmd_config_show
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aws-reconciler`` command."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Alembic announces every plugin at INFO; only its warnings matter to operators.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # At DEBUG, botocore logs request and response bodies: RunTask's carries the workload token.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"aws-reconciler: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .store.migrate import SchemaNotReadyError

        if isinstance(exc, SchemaNotReadyError):
            print(f"aws-reconciler: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
