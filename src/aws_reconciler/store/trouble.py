"""Telling a store that is misconfigured from one that is down, for one clear line either way.

A URL that cannot be parsed or names a driver that is not installed will never work: that is a
configuration error (exit 2, fix the setting). A store that refuses connections, times out or
is restarting may work in a minute: the reconciler backs off and retries, readiness fails.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

STORE_OPTION = "[aws_reconciler] store_url"


class StoreMisconfigured(ValueError):
    """The store URL cannot work as written; the message names the problem, never the password."""


class StoreUnreachable(ConnectionError):
    """The store is configured but does not answer now; retrying may help."""


def classify_store_error(exc: BaseException, *, label: str) -> StoreMisconfigured | StoreUnreachable | None:
    """The kind of ``exc`` raised while connecting to the store at ``label`` (a redacted URL), or
    ``None`` when it is not about reaching the store at all (a bug, a schema problem)."""
    # NoSuchModuleError is an ArgumentError: the more precise message first.
    if isinstance(exc, sa_exc.NoSuchModuleError):
        return StoreMisconfigured(
            f"{STORE_OPTION} = {label!r} names an unknown database dialect or driver; "
            "expected e.g. postgresql+psycopg://user@host/db, mysql+pymysql://user@host/db or sqlite:////path/store.db"
        )
    if isinstance(exc, sa_exc.ArgumentError):
        return StoreMisconfigured(f"{STORE_OPTION} = {label!r} is not a database URL ({_first_line(exc)})")
    if isinstance(exc, ModuleNotFoundError):
        return StoreMisconfigured(
            f"{STORE_OPTION} = {label!r} needs the Python module {exc.name!r}, which is not installed "
            "(PostgreSQL: install the [postgres] extra)"
        )
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError):
        return StoreUnreachable(f"the task store {label} ({STORE_OPTION}) cannot be reached: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends the statement and a link on further lines; the driver's reason comes first.
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0].strip()
