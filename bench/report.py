"""Turn the measurements into the results table (Markdown) and a JSON-ready summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
