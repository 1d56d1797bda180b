"""Scenario 4: what queueing N workloads costs the scheduler, in CPU seconds (``time.process_time``).

Ours: one ``_process_workloads`` call of the real executor, reached the way the scheduler reaches
it (``queue_workload`` for each, then ``trigger_tasks``), split into the store write
(``TaskStore.add``: one transaction) and the rest (resolving, validating and sealing each
request). Measured on each store database given. The peer: the same call of ``AwsEcsExecutor``,
whose ``execute_async`` only serialises the workload into a command and appends it to a queue
(its RunTask requests are built later, at launch, inside its heartbeat).

Neither side makes an AWS call here, so no sandbox is needed. Run on its own with either
virtualenv (the peer only where the amazon provider is installed, i.e. ``.venv-bench``)::

    .venv/bin/python -m bench.queueing                       # PostgreSQL and SQLite
    .venv/bin/python -m bench.queueing --mariadb-url mysql+pymysql://root@127.0.0.1:3306/test

``python -m bench.run`` runs it too, as scenario 4 of the table.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import airflow_env

DEFAULT_PG = os.environ.get("AWS_RECONCILER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_MARIADB = os.environ.get("AWS_RECONCILER_TEST_MARIADB_URL")
_ECS = "AIRFLOW__AWS_RECONCILER_ECS__"
#: The settings of a sandbox world (see ``bench/sandbox.py``) for runs without one: nothing here
#: reaches AWS, only the request's shape and the settings' validation matter.
STATIC_WORLD = {
    f"{_ECS}CLUSTER": "bench-cluster",
    f"{_ECS}TASK_DEFINITION": "bench-task:1",
    f"{_ECS}CONTAINER_NAME": "airflow",
    f"{_ECS}SUBNETS": "subnet-0123456789abcdef0",
    f"{_ECS}SECURITY_GROUPS": "sg-0123456789abcdef0",
    f"{_ECS}REGION_NAME": "us-east-1",
}

#: How the workloads' ``executor_config`` varies, by name: none (the common case), one config
#: shared by all (a DAG-wide default), and a different one for each task (the worst case).
CONFIGS: dict[str, Callable[[int], dict[str, Any] | None]] = {
    "none": lambda i: None,
    "one shared": lambda i: _config("shared"),
    "one per task": lambda i: _config(f"task-{i}"),
}


def _config(value: str) -> dict[str, Any]:
    return {
        "overrides": {
            "containerOverrides": [{"name": "airflow", "environment": [{"name": "BENCH_CONFIG", "value": value}]}],
            "cpu": "512",
        },
        "tags": [{"key": "team", "value": "bench"}],
    }


@dataclass
class QueueCost:
    """One side on one database with one kind of ``executor_config``, over its repetitions."""

    side: str  # "ours" or "peer"
    database: str  # "postgresql", "sqlite", "mariadb"; "-" for the peer (it has no store)
    config: str  # a key of CONFIGS
    n: int
    cpu_s: list[float] = field(default_factory=list)  # the whole _process_workloads call
    store_cpu_s: list[float] = field(default_factory=list)  # of which TaskStore.add (ours)
    wall_s: list[float] = field(default_factory=list)

    @property
    def build_cpu_s(self) -> list[float]:
        """What is not the store write: building, validating and sealing the requests."""
        return [total - store for total, store in zip(self.cpu_s, self.store_cpu_s, strict=True)]


# ---- store databases --------------------------------------------------------------------------


class Store:
    """An empty task store on one database, created for the run and dropped by :meth:`drop`."""

    name: str
    url: str

    def truncate(self) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


class PostgresStore(Store):
    """A schema of its own (``bench.ours.StoreDb``)."""

    def __init__(self, base_url: str) -> None:
        from .ours import StoreDb

        self.name = "postgresql"
        self._db = StoreDb(base_url)
        self.url = self._db.url

    def truncate(self) -> None:
        self._db.truncate()

    def drop(self) -> None:
        self._db.drop()


class SqliteStore(Store):
    """A file in a temporary directory (WAL, as a scheduler's would be)."""

    def __init__(self) -> None:
        from aws_reconciler.store import create_store_engine, migrate

        self.name = "sqlite"
        self._dir = tempfile.TemporaryDirectory(prefix="aws-reconciler-bench-")
        self.url = f"sqlite:///{Path(self._dir.name) / 'store.db'}"
        engine = create_store_engine(self.url)
        migrate(engine)
        engine.dispose()

    def truncate(self) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM aws_reconciler_task"))
            conn.execute(sa.text("DELETE FROM aws_reconciler_lease"))
        engine.dispose()

    def drop(self) -> None:
        self._dir.cleanup()


class MariadbStore(Store):
    """A database of its own on the server, dropped at the end."""

    def __init__(self, base_url: str) -> None:
        import sqlalchemy as sa

        from aws_reconciler.store import create_store_engine, migrate

        self.name = "mariadb"
        self._database = f"bench_{uuid.uuid4().hex[:12]}"
        self._admin = sa.create_engine(base_url)
        with self._admin.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {self._database}"))
        self.url = sa.engine.make_url(base_url).set(database=self._database).render_as_string(hide_password=False)
        engine = create_store_engine(self.url)
        migrate(engine)
        engine.dispose()

    def truncate(self) -> None:
        import sqlalchemy as sa

        with self._admin.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {self._database}.aws_reconciler_task"))
            conn.execute(sa.text(f"DELETE FROM {self._database}.aws_reconciler_lease"))

    def drop(self) -> None:
        import sqlalchemy as sa

        with self._admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE {self._database}"))
        self._admin.dispose()


# ---- measuring --------------------------------------------------------------------------------


@contextmanager
def _cpu_of(owner: Any, method: str, into: list[float]) -> Iterator[None]:
    """Add the CPU seconds of every call of ``owner.method`` to ``into`` (an instance attribute
    shadows the method while the block runs)."""
    original = getattr(owner, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.process_time() - start)

    setattr(owner, method, timed)
    try:
        yield
    finally:
        delattr(owner, method)


def queue_once(executor: Any, workloads: Sequence[Any], *, store: Any | None) -> tuple[float, float, float]:
    """``(cpu_s, store_cpu_s, wall_s)`` of the one ``_process_workloads`` call that takes ``workloads``.

    ``store``: the executor's ``TaskStore`` (ours), whose ``add`` is timed apart; ``None`` (the peer).
    """
    from .workloads import queue_all

    calls: list[float] = []
    adds: list[float] = []
    queue_all(executor, workloads)
    # Every call starts from the same collector state: a full collection that the previous
    # call's garbage made due would otherwise land (~150 ms here) on whichever call came next.
    gc.collect()
    with _cpu_of(executor, "_process_workloads", calls):
        if store is not None:
            with _cpu_of(store, "add", adds):
                start = time.perf_counter()
                executor.trigger_tasks(open_slots=len(workloads))
        else:
            start = time.perf_counter()
            executor.trigger_tasks(open_slots=len(workloads))
        wall = time.perf_counter() - start
    if len(calls) != 1 or (store is not None and len(adds) != 1):
        raise RuntimeError(f"expected one _process_workloads and one store write, got {len(calls)} and {len(adds)}")
    if len(executor.running) < len(workloads):
        raise RuntimeError(f"only {len(executor.running)} of {len(workloads)} workloads were taken")
    return calls[0], sum(adds), wall


def _workloads(n: int, config: str, run: str) -> list[Any]:
    from .workloads import make_workloads

    return make_workloads(n, run=run, executor_config=CONFIGS[config])


def measure_ours(
    store: Store, world: Mapping[str, str], *, n: int, configs: Sequence[str], reps: int, log: Callable[[str], None]
) -> list[QueueCost]:
    """Our executor on ``store``: a warm-up call of the same size, then ``reps`` timed calls per config."""
    from . import ours

    results = [QueueCost("ours", store.name, config, n) for config in configs]
    executor = ours.new_executor(world, store.url, job_id=1, parallelism=10 * n)
    try:
        for rep in range(-1, reps):
            for result in results:
                store.truncate()
                executor.running.clear()
                cpu, store_cpu, wall = queue_once(
                    executor, _workloads(n, result.config, f"q{rep}-{uuid.uuid4().hex[:8]}"), store=executor.store
                )
                if rep < 0:
                    continue  # warm-up: botocore's model, compiled statements, the driver's caches
                result.cpu_s.append(cpu)
                result.store_cpu_s.append(store_cpu)
                result.wall_s.append(wall)
                log(
                    f"  [queueing N={n} {store.name}, executor_config {result.config}, rep {rep + 1}/{reps}] "
                    f"{cpu * 1000:.0f} ms CPU ({store_cpu * 1000:.0f} ms store write)"
                )
    finally:
        ours.dispose_executor(executor)
    return results


def measure_peer(
    world: Mapping[str, str], *, n: int, configs: Sequence[str], reps: int, log: Callable[[str], None]
) -> list[QueueCost]:
    """The peer's ``_process_workloads`` (``execute_async`` for each): never started, so no AWS call."""
    from airflow.providers.amazon.aws.executors.ecs.ecs_executor import AwsEcsExecutor

    from . import peer

    peer.configure(world)
    results = [QueueCost("peer", "-", config, n) for config in configs]
    for rep in range(-1, reps):
        for result in results:
            executor = AwsEcsExecutor(parallelism=10 * n)
            cpu, _, wall = queue_once(
                executor, _workloads(n, result.config, f"p{rep}-{uuid.uuid4().hex[:8]}"), store=None
            )
            if rep < 0:
                continue
            result.cpu_s.append(cpu)
            result.store_cpu_s.append(0.0)
            result.wall_s.append(wall)
            log(f"  [queueing N={n} peer, executor_config {result.config}, rep {rep + 1}/{reps}] {cpu * 1000:.0f} ms")
    return results


def peer_available() -> bool:
    """The amazon provider is installed (``.venv-bench``)."""
    try:
        import airflow.providers.amazon.aws.executors.ecs.ecs_executor  # noqa: F401
    except ImportError:
        return False
    return True


def run(
    *,
    world: Mapping[str, str],
    postgres_url: str | None,
    mariadb_url: str | None,
    n: int,
    reps: int,
    log: Callable[[str], None],
    peer: bool = True,
) -> list[QueueCost]:
    """Every measurement of scenario 4: ours on each database (every config on PostgreSQL, none
    elsewhere), then the peer, when it is installed."""
    results: list[QueueCost] = []
    makers: list[tuple[Callable[[], Store], Sequence[str]]] = []
    if postgres_url:
        makers.append((lambda: PostgresStore(postgres_url), list(CONFIGS)))
    makers.append((SqliteStore, ["none"]))
    if mariadb_url:
        makers.append((lambda: MariadbStore(mariadb_url), ["none"]))
    for make, configs in makers:
        store = make()
        try:
            results += measure_ours(store, world, n=n, configs=configs, reps=reps, log=log)
        finally:
            store.drop()
    if peer and peer_available():
        results += measure_peer(world, n=n, configs=list(CONFIGS), reps=reps, log=log)
    return results


def table(results: Sequence[QueueCost]) -> str:
    """A Markdown table of medians: ms of CPU per call, split for ours."""
    from .stats import median

    lines = [
        "| side | store | executor_config | N | CPU, whole call | building requests | store write | wall |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        build = f"{median(r.build_cpu_s) * 1000:.0f} ms" if r.side == "ours" else "-"
        store = f"{median(r.store_cpu_s) * 1000:.0f} ms" if r.side == "ours" else "-"
        lines.append(
            f"| {r.side} | {r.database} | {r.config} | {r.n} | {median(r.cpu_s) * 1000:.0f} ms | {build} | {store} "
            f"| {median(r.wall_s) * 1000:.0f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queueing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL for the task store ('' to skip)")
    parser.add_argument("--mariadb-url", default=DEFAULT_MARIADB, help="MariaDB/MySQL too (a database is created)")
    parser.add_argument("-n", type=int, default=1000, help="workloads per call")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="skip the peer even where it is installed")
    args = parser.parse_args(argv)
    airflow_env.prepare()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = run(
        world=STATIC_WORLD,
        postgres_url=args.database_url or None,
        mariadb_url=args.mariadb_url or None,
        n=args.n,
        reps=args.reps,
        log=log,
        peer=not args.no_peer,
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
