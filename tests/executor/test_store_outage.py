"""A store outage never crashes the scheduler: the store is a real PostgreSQL (or MariaDB) reached
through a TCP proxy that the test closes and opens again."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
import structlog
from airflow.utils.state import TaskInstanceState

from aws_reconciler.executor import EcsExecutor
from aws_reconciler.model import Phase
from aws_reconciler.store import TaskStore, create_store_engine, migrate
from support.workloads import TOKEN, make_workload, rid

if TYPE_CHECKING:
    from conftest import SettingsFactory

pytestmark = pytest.mark.airflow


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the database; :meth:`cut` makes it unreachable (refused, and
    every open connection dropped), :meth:`restore` listens on the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._start(self._listener)

    def _start(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        # shutdown() first: close() alone leaves a thread blocked in accept() still accepting.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._start(self._listener)

    def close(self) -> None:
        self.cut()


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
