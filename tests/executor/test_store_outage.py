"""A store outage never crashes the scheduler: the store is a real PostgreSQL (or MariaDB) reached
through a TCP proxy that the test closes and opens again."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
import structlog
from airflow.utils.state import TaskInstanceState

from aws_reconciler.executor import EcsExecutor
from aws_reconciler.model import Phase
from aws_reconciler.store import TaskStore, create_store_engine, migrate
from support.tcpproxy import TcpProxy
from support.workloads import TOKEN, make_workload, rid

if TYPE_CHECKING:
    from conftest import SettingsFactory

pytestmark = pytest.mark.airflow


def _rendered(entry: Mapping[str, Any]) -> str:
    """A captured log event as its message with the %-style arguments applied."""
    message = str(entry["event"])
    args = entry.get("positional_args")
    return message % tuple(args) if isinstance(args, tuple) and args else message


@pytest.fixture(params=["postgres", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh store database on a real server."""
    return str(request.getfixturevalue({"postgres": "pg_schema_url", "mariadb": "mariadb_url"}[request.param]))


@pytest.fixture
def proxied_url(server_url: str) -> Iterator[tuple[str, TcpProxy]]:
    url = sa.engine.make_url(server_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or (5432 if url.get_backend_name() == "postgresql" else 3306)))
    try:
        yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        proxy.close()


def test_a_store_outage_keeps_workloads_queued_and_reports_for_later(
    server_url: str,
    proxied_url: tuple[str, TcpProxy],
    make_settings: SettingsFactory,
) -> None:
    url, proxy = proxied_url
    direct_engine = create_store_engine(server_url)
    migrate(direct_engine)
    direct = TaskStore(direct_engine)  # the reconciler's side, not behind the proxy
    # Captured from the executor's first log call on (Airflow logs through structlog).
    with structlog.testing.capture_logs() as logs:
        executor = EcsExecutor(parallelism=32)
        executor.job_id = 1
        executor._settings = make_settings(url)
        try:
            executor.start()
            first = make_workload("first")
            executor.queue_workload(first, session=None)  # type: ignore[arg-type]
            executor.heartbeat()
            assert direct.get(rid(first)) is not None
            assert direct.transition(rid(first), expect_phases=[Phase.PENDING], phase=Phase.SUCCEEDED)

            proxy.cut()
            later = [make_workload("a"), make_workload("b")]
            for workload in later:
                executor.queue_workload(workload, session=None)  # type: ignore[arg-type]
            logs.clear()
            executor.heartbeat()  # must not raise: the scheduler would exit
            executor.heartbeat()

            # One line per failed step and heartbeat, no traceback, never the token.
            lines = [_rendered(entry) for entry in logs if entry["log_level"] in ("error", "critical", "exception")]
            assert len(lines) == 4, lines
            assert sum("task store unavailable, 2 task(s) stay queued for the next heartbeat" in x for x in lines) == 2
            assert sum("could not report finished tasks, retrying next heartbeat" in x for x in lines) == 2
            assert not any("\n" in x or TOKEN in x for x in lines), lines
            assert not any(entry.get("exc_info") for entry in logs)
            assert set(executor.queued_tasks) == {w.ti.key for w in later}
            assert executor.running == {first.ti.key}
            assert dict(executor.get_event_buffer()) == {}
            assert direct.get(rid(later[0])) is None

            proxy.restore()
            executor.heartbeat()
            assert executor.queued_tasks == {}
            assert executor.running == {w.ti.key for w in later}
            assert dict(executor.get_event_buffer()) == {first.ti.key: (TaskInstanceState.SUCCESS, "succeeded")}
            assert {r.id for r in direct.open_tasks(backend=executor.backend)} == {rid(w) for w in later}
        finally:
            if executor._store is not None:
                executor._store.engine.dispose()
            direct_engine.dispose()
