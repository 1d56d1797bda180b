"""``aws-reconciler``: run the reconciler, migrate the store, show the settings and the status, check AWS.

Commands of other distributions join through the ``aws_reconciler.commands`` entry point (the
sandbox's ``aws-reconciler sandbox``); the product itself never imports them. Every failure an
operator can fix ends in one line on stderr and an exit code from :class:`ExitCode`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import ConfigError, Settings, describe_settings, load_settings, redact_url
from .model import redact_tokens
from .store.trouble import StoreMisconfigured, StoreUnreachable, classify_store_error

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .metrics.server import HealthStatus
    from .reconciler.manager import Manager

log = logging.getLogger("aws_reconciler")


class ExitCode(IntEnum):
    """What ``aws-reconciler`` exits with (README, "Exit codes")."""

    OK = 0
    #: The command ran and found a problem: a permission missing, a cycle failed, the lease held elsewhere.
    FAILED = 1
    #: A setting or a command-line argument is invalid: fix it, retrying cannot help.
    CONFIG = 2
    #: The store's schema is missing or older than this release: run ``aws-reconciler db migrate``.
    SCHEMA = 3
    #: AWS cannot be reached or no credentials were found (``check``).
    AWS_UNAVAILABLE = 4
    #: The task store does not answer (one-shot commands; ``run`` waits for it instead).
    STORE_UNAVAILABLE = 5


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _store_engine(settings: Settings) -> Engine:
    """The store's engine; a URL that cannot work is a configuration error naming ``store_url``."""
    from .store.database import create_store_engine

    try:
        return create_store_engine(settings.store_url)
    except Exception as exc:
        trouble = classify_store_error(exc, label=redact_url(settings.store_url))
        if isinstance(trouble, StoreMisconfigured):
            raise trouble from None
        raise


# ---- run ------------------------------------------------------------------------------------


class _Startup:
    """Health of a reconciler whose manager is not built yet (the store does not answer)."""

    def __init__(self) -> None:
        self.manager: Manager | None = None
        self.waiting_for: str | None = "start-up"

    def liveness(self) -> HealthStatus:
        from .metrics.server import HealthStatus

        # Waiting for the store is progress: a restart would only wait again.
        return self.manager.liveness() if self.manager else HealthStatus(True, {"status": "starting"})

    def readiness(self) -> HealthStatus:
        from .metrics.server import HealthStatus

        if self.manager is not None:
            return self.manager.readiness()
        return HealthStatus(False, {"status": f"waiting for {self.waiting_for}"})


def _build_manager_when_store_answers(
    settings: Settings, *, metrics: Any, startup: _Startup, stop: threading.Event, once: bool
) -> Manager | None:
    """``build_manager``, retried with backoff while the store is unreachable; ``None`` if stopped first."""
    from .reconciler.backoff import backoff_delay
    from .reconciler.factory import build_manager

    label = redact_url(settings.store_url)
    attempt = 0
    while True:
        try:
            return build_manager(settings, metrics=metrics)
        except Exception as exc:
            trouble = classify_store_error(exc, label=label)
            if trouble is None:
                raise
            if isinstance(trouble, StoreMisconfigured) or once:
                raise trouble from None
            attempt += 1
            delay = backoff_delay(attempt=attempt, base=settings.core.backoff_base, cap=settings.core.backoff_max)
            startup.waiting_for = "the task store"
            log.warning("%s; retrying in %.0f s", trouble, delay)
            if stop.wait(delay):
                return None


def _cmd_run(args: argparse.Namespace) -> int:
    from .metrics.definitions import Metrics
    from .metrics.server import MetricsServer
    from .reconciler.factory import token_sealer
    from .store.sealing import CLEAR_WARNING

    settings = load_settings()
    # Before require_backend: a deployment still configured the provider's way fails it, and the
    # warning names the command that converts its settings.
    for warning in settings.warnings:
        log.warning("%s", warning)
    settings.require_backend()
    # A bad token_key stops start-up here, before any wait for the store.
    encrypting = token_sealer(settings).encrypting
    metrics = Metrics()
    startup = _Startup()
    stop = threading.Event()
    # Until the manager takes over the signals: SIGTERM while waiting for the store ends cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set())
    server = None
    if settings.core.metrics_address and not args.once:
        # Serving first: /readyz says "waiting for the task store" while the store is down.
        host, _, port = settings.core.metrics_address.rpartition(":")
        server = MetricsServer(
            registry=metrics.registry,
            liveness=startup.liveness,
            readiness=startup.readiness,
            host=host or "0.0.0.0",
            port=int(port),
        )
        server.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", host or "0.0.0.0", server.port)
    elif not args.once:
        log.info("no /metrics, /healthz or /readyz: [aws_reconciler] metrics_address is empty")
    try:
        manager = _build_manager_when_store_answers(
            settings, metrics=metrics, startup=startup, stop=stop, once=args.once
        )
        if manager is None:
            log.info("stopped before the task store answered")
            return ExitCode.OK
        if not encrypting:
            log.warning("%s", CLEAR_WARNING)
        manager.install_signal_handlers()
        if stop.is_set():
            manager.request_stop()
        startup.manager = manager
        return manager.run(once=args.once)
    finally:
        if server is not None:
            server.stop()


# ---- db, status ----------------------------------------------------------------------------


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from .store.migrate import migrate

    settings = load_settings()
    before, after = migrate(_store_engine(settings))
    print(f"task store {redact_url(settings.store_url)}: {before or 'empty'} -> {after}")
    return ExitCode.OK


def _cmd_db_check(args: argparse.Namespace) -> int:
    from .store.migrate import check_schema

    settings = load_settings()
    check_schema(_store_engine(settings))
    print(f"task store {redact_url(settings.store_url)}: schema is current")
    return ExitCode.OK


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import render_status, status_document
    from .store.migrate import check_schema
    from .store.queries import TaskQueries

    settings = load_settings()
    engine = _store_engine(settings)
    check_schema(engine)
    # The rows of the settings' team (--team), as the reconciler of that team sees them.
    queries = TaskQueries(engine, team=settings.team)
    label = redact_url(settings.store_url)
    if args.json:
        print(json.dumps(status_document(queries, store_label=label, failures=args.failures), indent=2))
    else:
        sys.stdout.write(render_status(queries, store_label=label, failures=args.failures))
    return ExitCode.OK


# ---- check ---------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    from .backends.client import make_client
    from .preflight import caller_identity, check_backends, check_store, render

    settings = load_settings()
    settings.require_backend()
    identity = caller_identity(settings, make_client)
    if not identity.ok:
        # One line, not a MISSING for every permission: nothing was checked.
        if args.json:
            print(json.dumps({"identity": identity.as_dict(), "results": []}, indent=2))
        print(f"aws-reconciler check: {identity.detail}", file=sys.stderr)
        return ExitCode.AWS_UNAVAILABLE
    results = check_backends(
        settings,
        lambda d, service=None: make_client(
            service or d.service,
            region_name=d.settings_of(settings).region_name,
            role_arn=d.settings_of(settings).role_arn,
        ),
    )
    store = check_store(settings) if args.store else None
    if args.json:
        document: dict[str, Any] = {"identity": identity.as_dict(), "results": [r.as_dict() for r in results]}
        if store is not None:
            document["store"] = store.as_dict()
        print(json.dumps(document, indent=2))
    else:
        print(f"identity {identity.arn} (account {identity.account}), region {identity.region or 'default'}")
        print(render(results))
        if store is not None:
            print(f"{store.status.upper():<8} task store  {store.detail}")
    missing = [r for r in results if r.status == "missing"]
    unreachable = [r for r in results if r.status == "error"]
    if store is not None and store.status != "ok":
        print(f"aws-reconciler check: {store.detail}", file=sys.stderr)
        return ExitCode.STORE_UNAVAILABLE if store.status == "error" else ExitCode.SCHEMA
    if unreachable:
        print(
            f"aws-reconciler check: {len(unreachable)} call(s) could not be made: {unreachable[0].detail}",
            file=sys.stderr,
        )
        return ExitCode.AWS_UNAVAILABLE
    if missing:
        print(f"aws-reconciler check: {len(missing)} permission(s) missing", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


# ---- config --------------------------------------------------------------------------------


def _backend_summary(settings: Settings) -> list[dict[str, Any]]:
    from .backends.registry import DESCRIPTORS

    rows = []
    for descriptor in DESCRIPTORS:
        section = descriptor.settings_of(settings)
        rows.append(
            {
                "backend": descriptor.kind.value,
                "executor": f"aws_reconciler.executor.{descriptor.executor_name}",
                "enabled": section.enabled,
                "targets": section.targets,
                "option": f"[{section.section}] {section.target_field}",
            }
        )
    return rows


def _cmd_config_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    rows = describe_settings(settings)
    backends = _backend_summary(settings)
    if args.json:
        options = [{"section": s, "option": o, "value": v, "origin": origin} for s, o, v, origin in rows]
        print(json.dumps({"options": options, "backends": backends}, indent=2))
    else:
        width = max(len(f"[{s}] {o}") for s, o, _, _ in rows)
        for section, option, value, origin in rows:
            print(f"{f'[{section}] {option}':<{width}}  = {value:<40}  ({origin})")
        print()
        for backend in backends:
            if backend["enabled"]:
                state = f"on: {', '.join(backend['targets'])}"
            else:
                state = f"off ({backend['option']} is not set; its executor refuses to start)"
            print(f"backend {backend['backend']:<6} {state}")
    warnings = list(settings.warnings)
    if not any(b["enabled"] for b in backends):
        try:
            settings.require_backend()
        except ConfigError as exc:
            warnings.append(str(exc))
    for warning in warnings:
        print(f"aws-reconciler config show: warning: {warning}", file=sys.stderr)
    return ExitCode.OK


def _cmd_config_migrate(args: argparse.Namespace) -> int:
    from .config.loader import TEAM_ENV
    from .config.migration import plan_migration, render_cfg, render_env
    from .config.sources import RawConfig

    plan = plan_migration(RawConfig().scoped(os.environ.get(TEAM_ENV) or None))
    if plan.empty:
        print(
            "aws-reconciler config migrate: no [aws_ecs_executor] or [aws_batch_executor] settings found "
            "(airflow.cfg and AIRFLOW__* variables)",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    sys.stdout.write(render_env(plan) if args.format == "env" else render_cfg(plan))
    for where, why in plan.dropped:
        print(f"note: {where} has no equivalent: {why}", file=sys.stderr)
    for where in plan.unknown:
        print(f"note: {where} is not a provider option this release knows; not migrated", file=sys.stderr)
    for conflict in plan.conflicts:
        print(f"warning: {conflict}", file=sys.stderr)
    return ExitCode.OK


# ---- the parser ----------------------------------------------------------------------------

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
        return ExitCode.CONFIG

    return run


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level; expected one of {', '.join(LOG_LEVELS)}")
    return level


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; expected 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="aws-reconciler", description="Reconcile Airflow task instances with AWS ECS tasks and Batch jobs."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", type=_log_level, default="INFO", help=f"{', '.join(LOG_LEVELS)} (default INFO)")
    parser.add_argument(
        "-v", "--verbose", action="store_const", const="DEBUG", dest="log_level", help="the same as --log-level DEBUG"
    )
    parser.add_argument(
        "--team",
        metavar="NAME",
        help=(
            "an Airflow team's own settings and rows (multi-team deployments: one reconciler per team); "
            "the same as AWS_RECONCILER_TEAM=NAME"
        ),
    )
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
        "--failures", type=_count, default=10, metavar="N", help="how many recent failures to list (default 10)"
    )
    status.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    status.set_defaults(func=_cmd_status)

    check = commands.add_parser("check", help="probe every AWS permission the reconciler needs, changing nothing")
    check.add_argument("--store", action="store_true", help="also check that the task store answers and is current")
    check.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    check.set_defaults(func=_cmd_check)

    config = commands.add_parser("config", help="settings").add_subparsers(dest="config_command", required=True)
    show = config.add_parser("show", help="effective settings and their origin, secrets redacted")
    show.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    show.set_defaults(func=_cmd_config_show)
    migrate = config.add_parser(
        "migrate",
        help="print our settings equivalent to the amazon provider's [aws_ecs_executor] / [aws_batch_executor]",
    )
    migrate.add_argument(
        "--format", choices=("cfg", "env"), default="cfg", help="airflow.cfg sections (default) or export lines"
    )
    migrate.set_defaults(func=_cmd_config_migrate)
    return parser


class RedactingFormatter(logging.Formatter):
    """Masks anything shaped like a workload token in every line it formats, tracebacks included.

    The last line of defence: a database may quote a failing row in its error message, a library
    may log a request at DEBUG.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as the base class formats it, token-shaped text masked."""
        return redact_tokens(super().format(record))


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` through a :class:`RedactingFormatter`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aws-reconciler`` command."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(args.log_level)
    # Alembic announces every plugin at INFO; only its warnings matter to operators.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # At DEBUG, botocore logs request and response bodies: RunTask's carries the workload token.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        if args.team is not None:
            from .config.loader import TEAM_ENV, check_team_name

            os.environ[TEAM_ENV] = check_team_name(args.team)
        return int(args.func(args) or 0)
    except (ConfigError, StoreMisconfigured) as exc:
        print(f"aws-reconciler: configuration error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except StoreUnreachable as exc:
        print(f"aws-reconciler: {exc}", file=sys.stderr)
        return ExitCode.STORE_UNAVAILABLE
    except Exception as exc:
        from .store.migrate import SchemaNotReadyError

        if isinstance(exc, SchemaNotReadyError):
            print(f"aws-reconciler: {exc}", file=sys.stderr)
            return ExitCode.SCHEMA
        trouble = classify_store_error(exc, label=_store_label())
        if isinstance(trouble, StoreUnreachable):
            print(f"aws-reconciler: {trouble}", file=sys.stderr)
            return ExitCode.STORE_UNAVAILABLE
        if isinstance(trouble, StoreMisconfigured):
            print(f"aws-reconciler: configuration error: {trouble}", file=sys.stderr)
            return ExitCode.CONFIG
        raise


def _store_label() -> str:
    try:
        return redact_url(load_settings().store_url)
    except Exception:
        return "(unknown)"


if __name__ == "__main__":
    sys.exit(main())
