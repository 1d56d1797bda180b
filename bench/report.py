"""Turn the measurements into the results table (Markdown) and a JSON-ready summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .observation import DESCRIBE, IDLE, RESYNC, Burst, Cycles, Drain, Memory, Observation, of_kind, per_minute
from .queueing import QueueCost
from .scenarios import OURS_DEFAULT, OURS_RAISED, PEER, LaunchRun, SteadyState
from .stats import median, spread


@dataclass
class Row:
    scenario: str
    measurement: str
    n: int
    ours: str
    peer: str
    ratio: str  # ours / peer
    ours_value: float | None = None
    peer_value: float | None = None


def fmt_time(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_ratio(ours: float, peer: float) -> str:
    if peer <= 0:
        return "n/a"
    ratio = ours / peer
    if ratio < 1:
        return f"{ratio:.3g} ({1 / ratio:.3g}x less)"
    return f"{ratio:.3g} ({ratio:.3g}x more)"


def fmt_calls(samples: Sequence[dict[str, int]]) -> str:
    """Median calls per operation over the samples, e.g. ``11 DescribeTasks``; ``0`` for none."""
    ops = sorted({op for sample in samples for op in sample})
    if not ops:
        return "0"
    parts = []
    for op in ops:
        value = median([sample.get(op, 0) for sample in samples])
        parts.append(f"{value:g} {op.split(':', 1)[-1]}")
    return ", ".join(parts)


def total_calls(samples: Sequence[dict[str, int]]) -> float:
    return median([sum(sample.values()) for sample in samples])


def _time_row(scenario: str, what: str, n: int, ours: Sequence[float], peer: Sequence[float]) -> Row:
    o, p = median(ours), median(peer)
    return Row(scenario, what, n, fmt_time(o), fmt_time(p), fmt_ratio(o, p), o, p)


def steady_rows(results: Sequence[SteadyState]) -> list[Row]:
    rows = []
    for r in results:
        rows.append(_time_row("1", "scheduler heartbeat, wall time", r.n, r.ours_heartbeat_s, r.peer_heartbeat_s))
        rows.append(
            Row(
                "1",
                "AWS calls per heartbeat",
                r.n,
                fmt_calls(r.ours_heartbeat_calls),
                fmt_calls(r.peer_heartbeat_calls),
                "-",
                total_calls(r.ours_heartbeat_calls),
                total_calls(r.peer_heartbeat_calls),
            )
        )
    for r in results:
        if not r.ours_adopt_s:
            continue
        rows.append(_time_row("3", "restart: adopt running TIs, wall time", r.n, r.ours_adopt_s, r.peer_adopt_s))
        rows.append(
            Row(
                "3",
                f"restart: AWS calls (adopted {min(r.ours_adopted)} / {min(r.peer_adopted)})",
                r.n,
                fmt_calls(r.ours_adopt_calls),
                fmt_calls(r.peer_adopt_calls),
                "-",
                total_calls(r.ours_adopt_calls),
                total_calls(r.peer_adopt_calls),
            )
        )
    return rows


def launch_rows(results: Sequence[dict[str, LaunchRun]]) -> list[Row]:
    rows = []
    for runs in results:
        peer = runs[PEER]
        n = peer.n
        latency = f", +{peer.latency_s * 1000:.0f} ms/call" if peer.latency_s else ""
        for variant in (OURS_DEFAULT, OURS_RAISED):
            ours = runs[variant]
            rows.append(_time_row("2", f"queue -> all launched ({variant}{latency})", n, ours.total_s, peer.total_s))
        ours = runs[OURS_DEFAULT]
        row = _time_row("2", f"scheduler blocked in that window{latency}", n, ours.blocked_s, peer.blocked_s)
        row.ours += f" (1 heartbeat; reconciler {median(ours.reconcile_cycles):g} cycle)"
        row.peer += f" ({median(peer.heartbeats):g} heartbeat)"
        rows.append(row)
        cpu_ours = [c / n for c in ours.cpu_s]
        cpu_peer = [c / n for c in peer.cpu_s]
        what = f"CPU per launched task, scheduler + reconciler vs scheduler{latency}"
        rows.append(_time_row("2", what, n, cpu_ours, cpu_peer))
        if ours.sandbox_cpu_s and peer.sandbox_cpu_s:
            rows.append(
                _time_row(
                    "2",
                    f"CPU per launched task, fake AWS (same work expected){latency}",
                    n,
                    [c / n for c in ours.sandbox_cpu_s],
                    [c / n for c in peer.sandbox_cpu_s],
                )
            )
        rows.append(
            Row(
                "2",
                f"AWS calls in that window{latency}",
                n,
                fmt_calls(runs[OURS_DEFAULT].calls),
                fmt_calls(peer.calls),
                "-",
                total_calls(runs[OURS_DEFAULT].calls),
                total_calls(peer.calls),
            )
        )
    return rows


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| # | measurement (median) | N | ours | peer (AwsEcsExecutor) | ours / peer |",
        "|---|---|---:|---|---|---|",
    ]
    lines += [f"| {r.scenario} | {r.measurement} | {r.n} | {r.ours} | {r.peer} | {r.ratio} |" for r in rows]
    return "\n".join(lines)


def spreads(steady: Sequence[SteadyState], launches: Sequence[dict[str, LaunchRun]]) -> dict[str, Any]:
    """(min, max) of every timed series, for the JSON: how much the medians can be trusted."""
    out: dict[str, Any] = {}
    for r in steady:
        for name in ("ours_heartbeat_s", "peer_heartbeat_s", "ours_adopt_s", "peer_adopt_s"):
            values = getattr(r, name)
            if values:
                out[f"steady[{r.n}].{name}"] = spread(values)
    for runs in launches:
        for run in runs.values():
            out[f"launch[{run.n},{run.latency_s}].{run.variant}.total_s"] = spread(run.total_s)
    return out


# ---- 5 and 6: observation by polling and by events ----------------------------------------


def fmt_mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def _cpu(window: Cycles) -> float:
    return sum(window.cpu_s)


def _calls(window: Cycles) -> float:
    return float(sum(sum(c.values()) for c in window.calls))


def observation_rows(results: Sequence[Observation], idle: Mapping[str, Memory]) -> list[Row]:
    """Scenario 5: per N, the CPU, AWS calls and memory of both observation modes, against the
    peer's heartbeat (per minute: a simulated window of each mode scaled to a minute)."""
    rows = []
    for o in results:
        d = o.defaults
        n = o.n
        heartbeats = 60.0 / d["peer_heartbeat"]
        peer_cpu = o.peer_heartbeat.cpu_s
        peer_calls = total_calls(o.peer_heartbeat.calls)
        modes = (
            ("poll", o.poll_windows, d["resync_interval"], 0.0),
            ("events", o.events_windows, d["events_resync_interval"], 60.0 / d["long_poll_s"]),
        )
        kinds = {
            "poll": (
                (IDLE, "between describes"),
                (DESCRIBE, f"describing the running tasks, every {d['running_describe_interval']:g} s"),
                (RESYNC, f"resync, every {d['resync_interval']:g} s"),
            ),
            "events": ((IDLE, "no event"), (RESYNC, f"resync, every {d['events_resync_interval']:g} s")),
        }
        for mode, windows, _window_s, _polls in modes:
            for kind, what in kinds[mode]:
                cycles = of_kind(windows, kind)
                if cycles.cpu_s:
                    title = f"reconciler CPU per cycle, {mode}: {what} (peer: per heartbeat)"
                    rows.append(_time_row("5", title, n, cycles.cpu_s, peer_cpu))
        rows.append(
            _time_row("5", "scheduler heartbeat CPU (ours: the executor alone)", n, o.ours_heartbeat.cpu_s, peer_cpu)
        )
        ours_hb = median(o.ours_heartbeat.cpu_s) * heartbeats
        peer_min = median(peer_cpu) * heartbeats
        for mode, windows, window_s, _polls in modes:
            ours_min = per_minute(windows, window_s=window_s, value=_cpu) + ours_hb
            title = f"CPU per minute at the defaults, {mode}: reconciler + scheduler (peer: scheduler)"
            rows.append(
                Row(
                    "5",
                    title,
                    n,
                    fmt_time(ours_min),
                    fmt_time(peer_min),
                    fmt_ratio(ours_min, peer_min),
                    ours_min,
                    peer_min,
                )
            )
        for mode, windows, _window_s, _polls in modes:
            parts = []
            for kind, what in kinds[mode]:
                cycles = of_kind(windows, kind)
                if cycles.calls:
                    parts.append(f"{what.split(',')[0]}: {fmt_calls(cycles.calls)}")
            title = f"AWS calls per cycle, {mode} (peer: per heartbeat)"
            peer_text = fmt_calls(o.peer_heartbeat.calls)
            rows.append(Row("5", title, n, "; ".join(parts), peer_text, "-", None, peer_calls))
        cap = d["describe_rate"] * 60
        peer_per_min = peer_calls * heartbeats
        peer_text = f"{peer_per_min:.4g}" + (f" (over AWS's {cap:g}/min)" if peer_per_min > cap else "")
        for mode, windows, window_s, polls in modes:
            ours_per_min = per_minute(windows, window_s=window_s, value=_calls) + polls
            text = f"{ours_per_min:.4g}"
            if polls:
                text += f" (of which {polls:g} ReceiveMessage long polls)"
            if ours_per_min > cap:
                text += f" (over the {cap:g}/min DescribeTasks+ListTasks bucket)"
            title = (
                f"AWS read calls per minute at the defaults, {mode} (peer: a heartbeat every {d['peer_heartbeat']:g} s)"
            )
            rows.append(
                Row("5", title, n, text, peer_text, fmt_ratio(ours_per_min, peer_per_min), ours_per_min, peer_per_min)
            )
        for mode in ("poll", "events"):
            mem = o.memory.get(mode)
            if mem is None:
                continue
            text = f"{fmt_mib(mem.rss_kib)} (peak {fmt_mib(mem.peak_kib)}"
            if mode in idle:
                text += f"; no rows: {fmt_mib(idle[mode].rss_kib)}"
            title = f"aws-reconciler run, resident memory, {mode}"
            rows.append(Row("5", title, n, text + ")", "not measured (in the scheduler)", "-", mem.rss_kib, None))
    return rows


def burst_rows(bursts: Sequence[Burst], drains: Sequence[Drain] = ()) -> list[Row]:
    """Scenario 6: per N and mode (medians over the repetitions), and the sandbox's SQS alone."""
    groups: dict[tuple[int, str], list[Burst]] = {}
    for b in bursts:
        groups.setdefault((b.n, f"{b.mode}, all queued at once" if b.at_once else f"{b.mode}, live"), []).append(b)
    rows = []
    for (n, mode), runs in groups.items():
        emitted = median([r.emit_s for r in runs])
        rows.append(
            Row(
                "6",
                f"burst, {mode}: last event -> every row recorded ({n} changes emitted in {fmt_time(emitted)})",
                n,
                fmt_time(median([r.settle_s for r in runs])),
                "-",
                "-",
                median([r.settle_s for r in runs]),
            )
        )
        tx = {
            k: median([r.transactions.get(k, 0) for r in runs])
            for k in sorted({k for r in runs for k in r.transactions})
        }
        cycle_commits = tx.get("commit MainThread", 0)
        others = sum(v for k, v in tx.items() if k.startswith("commit ") and k != "commit MainThread")
        reads = sum(v for k, v in tx.items() if k.startswith("rollback "))
        cycles = median([r.cycles for r in runs])
        text = f"{cycle_commits:g} commits in {cycles:g} cycles, {others:g} lease; {reads:g} read-only"
        rows.append(
            Row(
                "6",
                f"burst, {mode}: store transactions, first change -> every row recorded",
                n,
                text,
                "-",
                "-",
                cycle_commits,
            )
        )
        rows.append(
            Row(
                "6",
                f"burst, {mode}: AWS calls in that window",
                n,
                fmt_calls([r.calls for r in runs]),
                "-",
                "-",
                total_calls([r.calls for r in runs]),
            )
        )
    for n in sorted({d.n for d in drains}):
        drained = [d for d in drains if d.n == n]
        calls = median([d.calls for d in drained])
        seconds = median([d.seconds for d in drained])
        what = "the sandbox's SQS alone (no reconciler): receive + delete that many queued messages"
        rows.append(Row("6", what, n, f"{fmt_time(seconds)} ({calls:g} calls)", "-", "-", seconds))
    return rows


def queueing_rows(results: Sequence[QueueCost]) -> list[Row]:
    """Scenario 4: the CPU of one ``_process_workloads`` of N workloads. Ours against the peer's
    (``execute_async`` for each) of the same executor_config, split into building the requests
    and the store write, which the peer has no counterpart for at queue time."""
    peers = {(r.config, r.n): r for r in results if r.side == "peer"}
    rows = []
    for r in results:
        if r.side != "ours":
            continue
        what = f"queueing: CPU of one _process_workloads, {r.database} store, executor_config {r.config}"
        peer = peers.get((r.config, r.n))
        if peer is not None:
            row = _time_row("4", what, r.n, r.cpu_s, peer.cpu_s)
            row.peer += " (execute_async)"
            rows.append(row)
        else:
            rows.append(Row("4", what, r.n, fmt_time(median(r.cpu_s)), "-", "-", median(r.cpu_s)))
        for part, values in (("building the requests", r.build_cpu_s), ("the store write", r.store_cpu_s)):
            rows.append(Row("4", f"  of which {part}", r.n, fmt_time(median(values)), "-", "-", median(values)))
    return rows
