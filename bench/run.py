"""Run every benchmark, print the results table and write ``bench/results.json``.

    .venv-bench/bin/python -m bench.run                  # full run (~20 min on 2 cores)
    .venv-bench/bin/python -m bench.run --quick          # small N, few repetitions (~2 min)
    .venv-bench/bin/python -m bench.run --scenarios 5,6  # some scenarios only

Needs PostgreSQL (``--database-url``, default ``postgresql://postgres@127.0.0.1:5432/test``):
the bench creates a schema there and drops it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from . import airflow_env

HERE = Path(__file__).resolve().parent
DEFAULT_DB = os.environ.get("AWS_RECONCILER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
PACKAGES = (
    "airflow-aws-reconciler",
    "apache-airflow",
    "apache-airflow-providers-amazon",
    "boto3",
    "botocore",
    "moto",
    "SQLAlchemy",
    "psycopg",
)


#: Every scenario ``--scenarios`` can choose (3 runs on scenario 1's tasks, so with it).
SCENARIOS = (1, 2, 3, 4, 5, 6)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB, help="PostgreSQL for the task store")
    parser.add_argument("--sandbox", choices=("process", "thread"), default="process", help="where the sandbox runs")
    parser.add_argument("--steady-n", type=_ints, default=[100, 1000], help="running TIs for scenarios 1 and 3")
    parser.add_argument("--adopt-n", type=_ints, default=[1000], help="which steady N also measure adoption")
    parser.add_argument("--launch-n", type=_ints, default=[200, 1000], help="burst sizes for scenario 2")
    parser.add_argument("--latency-n", type=_ints, default=[200], help="burst sizes with simulated latency")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulated latency per AWS call")
    parser.add_argument("--heartbeat-reps", type=int, default=15)
    parser.add_argument("--adopt-reps", type=int, default=5)
    parser.add_argument("--launch-reps", type=int, default=3)
    parser.add_argument("--queue-n", type=_ints, default=[1000], help="workloads per _process_workloads, scenario 4")
    parser.add_argument("--queue-reps", type=int, default=7, help="calls per store and executor_config, scenario 4")
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get("AWS_RECONCILER_TEST_MARIADB_URL"),
        help="scenario 4 on MariaDB/MySQL too (a database is created there and dropped)",
    )
    parser.add_argument(
        "--observe-n", type=_ints, default=[1000, 5000, 10000], help="running tasks for scenario 5 (poll vs events)"
    )
    parser.add_argument(
        "--observe-reps",
        type=int,
        default=2,
        help="simulated resync periods per mode (3x as many heartbeats), scenario 5",
    )
    parser.add_argument("--burst-n", type=_ints, default=[1000], help="tasks ending at once, scenario 6")
    parser.add_argument("--burst-reps", type=int, default=2)
    parser.add_argument(
        "--burst-poll",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scenario 6 by polling too (each waits up to running_describe_interval, 30 s)",
    )
    parser.add_argument(
        "--scenarios", type=_ints, default=list(SCENARIOS), help="which to run (1 and 3 run together), e.g. 5,6"
    )
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    parser.add_argument("--quick", action="store_true", help="N 100/200, 3 repetitions: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steady_n, args.adopt_n, args.launch_n, args.latency_n = [100], [100], [200], [100]
        args.heartbeat_reps, args.adopt_reps, args.launch_reps = 5, 3, 1
        args.queue_n, args.queue_reps = [200], 2
        args.observe_n, args.observe_reps, args.burst_n, args.burst_reps = [200], 1, [200], 1
        args.burst_poll = False
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"--scenarios: no scenario {sorted(unknown)} (there are {', '.join(map(str, SCENARIOS))})")
    return args


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    airflow_env.prepare()
    # Airflow (and everything importing it) only after the environment is in place.
    from . import observation, queueing, report, scenarios
    from .ours import StoreDb
    from .sandbox import Sandbox

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    host = machine()
    info: dict[str, Any] = {
        "machine": host,
        "versions": versions(),
        "git": git_revision(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    log(f"bench: {host['cores']} cores, load {host['load_average_start']}, sandbox {args.sandbox}")

    steady: list[scenarios.SteadyState] = []
    launches: list[dict[str, scenarios.LaunchRun]] = []
    observed: list[observation.Observation] = []
    idle: dict[str, observation.Memory] = {}
    bursts: list[observation.Burst] = []
    drains: list[observation.Drain] = []
    queued: list[queueing.QueueCost] = []
    chosen = set(args.scenarios)
    db = StoreDb(args.database_url)
    try:
        info["postgresql"] = db.server_version()
        with Sandbox(args.sandbox) as sandbox:
            ctx = scenarios.Context(sandbox=sandbox, db=db, log=log)
            scenarios.warm_up(ctx)
            if chosen & {1, 3}:
                log("scenario 1 (+3): heartbeat with N running task instances; adoption after a restart")
                for n in args.steady_n:
                    adopt_reps = args.adopt_reps if n in args.adopt_n and 3 in chosen else 0
                    steady.append(
                        scenarios.steady_state(ctx, n, heartbeat_reps=args.heartbeat_reps, adopt_reps=adopt_reps)
                    )
            if 2 in chosen:
                log("scenario 2: queue N workloads -> all launched")
                for n in args.launch_n:
                    launches.append(scenarios.launch_burst(ctx, n, reps=args.launch_reps))
                for n in args.latency_n:
                    latency_s = args.latency_ms / 1000
                    launches.append(scenarios.launch_burst(ctx, n, reps=args.launch_reps, latency_s=latency_s))
            if 4 in chosen:
                log("scenario 4: the scheduler's CPU for queueing N workloads (request building, store write)")
                for n in args.queue_n:
                    queued += queueing.run(
                        world=ctx.fresh_world(),
                        postgres_url=args.database_url,
                        mariadb_url=args.mariadb_url,
                        n=n,
                        reps=args.queue_reps,
                        log=log,
                    )
            if 5 in chosen:
                log("scenario 5: observing N running tasks: poll, events, the peer's heartbeat")
                idle = observation.idle_memory(ctx)
                for n in args.observe_n:
                    observed.append(observation.observe(ctx, n, reps=args.observe_reps))
            if 6 in chosen:
                log("scenario 6: a burst of N tasks ending at once")
                for n in args.burst_n:
                    for _ in range(args.burst_reps):
                        bursts.append(observation.burst(ctx, n, mode="events", at_once=True))
                        bursts.append(observation.burst(ctx, n, mode="events"))
                        if args.burst_poll:
                            bursts.append(observation.burst(ctx, n, mode="poll"))
                    drains.append(observation.sqs_drain(ctx, n))
    finally:
        db.drop()

    rows = (
        report.steady_rows(steady)
        + report.launch_rows(launches)
        + report.queueing_rows(queued)
        + report.observation_rows(observed, idle)
        + report.burst_rows(bursts, drains)
    )
    table = report.markdown(rows)
    host["load_average_end"] = os.getloadavg()
    info["duration_s"] = round(time.monotonic() - started, 1)
    info["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    payload = {
        **info,
        "table": [asdict(r) for r in rows],
        "spread_min_max_s": report.spreads(steady, launches),
        "raw": {
            "steady": [asdict(s) for s in steady],
            "launch": [[asdict(r) for r in runs.values()] for runs in launches],
            "observation": [asdict(o) for o in observed],
            "observation_idle_memory": {mode: asdict(m) for mode, m in idle.items()},
            "burst": [asdict(b) for b in bursts],
            "sqs_drain": [asdict(d) for d in drains],
            "queueing": [asdict(q) for q in queued],
        },
    }
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(table)
    print(
        f"\n{host['cores']} cores ({host['cpu']}), load average "
        f"{host['load_average_start'][0]:.2f} -> {host['load_average_end'][0]:.2f}; "
        f"sandbox in a {args.sandbox}; {info['duration_s']:.0f} s; results in {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
