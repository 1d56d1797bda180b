"""The figures: the tables the suite prints and writes into docs/reliability.md.

Pure: results in, Markdown out. ``write_section`` replaces only what lies between the
``chaos:begin``/``chaos:end`` markers of the document, so its prose stays hand-written.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .invariants import Verdict
from .monkey import Takeover
from .scenarios import BACKENDS, Scenario

__all__ = ["BEGIN", "END", "ScenarioResult", "calls_by_backend", "faults_by_backend", "render", "write_section"]

BEGIN = "<!-- chaos:begin (written by python -m chaos.run --long; do not edit by hand) -->"
END = "<!-- chaos:end -->"

#: The kinds that strike one call (the others strike a task or job: lag, capacity, start, hold).
PER_CALL = frozenset({"throttled", "throttle", "5xx", "phantom", "timeout", "reset"})
#: Fault kinds as the sandbox counts them, in the order (and words) the table shows them.
FAULT_KINDS = (
    ("throttled", "throttled (quota)"),
    ("throttle", "throttled (injected)"),
    ("5xx", "5xx"),
    ("phantom", "phantom"),
    ("timeout", "timeout"),
    ("reset", "reset"),
    ("lag", "lag"),
    ("capacity", "capacity"),
    ("start", "start failure"),
    ("runnable-hold", "held RUNNABLE"),
    ("event-loss", "events lost"),
    ("event-duplicate", "events twice"),
    ("event-reorder", "events reordered"),
)


@dataclass
class ScenarioResult:
    """What one scenario's runs came to (runs of one scenario add up)."""

    scenario: str
    seeds: list[int]
    verdicts: dict[str, Verdict]
    sigkills: int = 0
    sigterms: int = 0
    executor_kills: int = 0
    takeovers: list[Takeover] = field(default_factory=list)
    faults: dict[str, Counter[str]] = field(default_factory=dict)
    #: Requests the sandbox received per backend (every client: the reconcilers, the suite).
    calls: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def runs(self) -> int:
        """How many runs are summed up here."""
        return len(self.seeds)

    @property
    def violations(self) -> int:
        """Findings over every backend."""
        return sum(v.violations for v in self.verdicts.values())

    def add(self, other: ScenarioResult) -> None:
        """Sum up another run of the same scenario."""
        self.seeds += other.seeds
        for backend, verdict in other.verdicts.items():
            self.verdicts.setdefault(backend, Verdict(backend)).add(verdict)
        self.sigkills += other.sigkills
        self.sigterms += other.sigterms
        self.executor_kills += other.executor_kills
        self.takeovers += other.takeovers
        for backend, counts in other.faults.items():
            self.faults.setdefault(backend, Counter()).update(counts)
        self.calls.update(other.calls)
        self.seconds += other.seconds


def calls_by_backend(calls: dict[str, int]) -> Counter[str]:
    """The sandbox's ``"service:Operation"`` request counts summed by backend."""
    return Counter({backend: sum(n for k, n in calls.items() if k.split(":", 1)[0] == backend) for backend in BACKENDS})


def faults_by_backend(injected: dict[str, int]) -> dict[str, Counter[str]]:
    """The sandbox's ``"<kind> <service:Operation>"`` counts summed by backend and kind."""
    counts: dict[str, Counter[str]] = {backend: Counter() for backend in BACKENDS}
    for name, n in injected.items():
        kind, _, where = name.partition(" ")
        service = where.split(":", 1)[0]
        if service in counts:
            counts[service][kind] += n
    return counts


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _seconds(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{max(values):.1f} / {statistics.median(values):.1f}"


def render(results: Sequence[ScenarioResult], scenarios: Sequence[Scenario], *, variant: str, seed: int) -> str:
    """The three tables (guarantees, faults injected, takeover) and how to replay them."""
    summaries = {s.name: s for s in scenarios}
    lines = [
        f"Variant `{variant}`, seed `{seed}` (replay: `python -m chaos.run"
        f"{' --long' if variant == 'long' else ''} --seed {seed}`).",
        "",
    ]
    rows = []
    for result in results:
        for backend in BACKENDS:
            v = result.verdicts.get(backend)
            if v is None:
                continue
            rows.append(
                [
                    result.scenario,
                    backend,
                    result.runs,
                    v.tasks,
                    f"{result.sigkills} SIGKILL" + (f" + {result.sigterms} SIGTERM" if result.sigterms else ""),
                    result.executor_kills,
                    v.duplicates,
                    v.lost,
                    v.wrong_states,
                    v.reported_twice,
                    v.orphans_left,
                    v.foreign_touched,
                ]
            )
    lines += _table(
        [
            "scenario", "backend", "runs", "tasks", "reconciler kills", "executor kills", "duplicates", "lost",
            "wrong states", "reported twice", "orphans left", "foreign touched",
        ],
        rows,
    )  # fmt: skip
    lines += [
        "",
        "Faults the sandbox injected, by kind; *faulted* is the share of calls that met a per-call fault "
        "(throttle, 5xx, phantom, timeout, reset):",
        "",
    ]
    fault_rows = []
    for result in results:
        for backend in BACKENDS:
            counts = result.faults.get(backend, Counter())
            calls = result.calls.get(backend, 0)
            struck = sum(n for kind, n in counts.items() if kind in PER_CALL)
            share = f"{100 * struck / calls:.1f}%" if calls else "-"
            fault_rows.append(
                [result.scenario, backend, calls, share, *(counts.get(kind, 0) for kind, _ in FAULT_KINDS)]
            )
    lines += _table(["scenario", "backend", "calls", "faulted", *(label for _, label in FAULT_KINDS)], fault_rows)
    lines += ["", "Leader takeover, seconds from the kill until another process held the lease (max / median):", ""]
    takeover_rows = []
    for result in results:
        scenario = summaries.get(result.scenario)
        bound = f"{scenario.timing.takeover_bound:g}" if scenario is not None else "-"
        after_kill = [t.seconds for t in result.takeovers if t.signal == "SIGKILL"]
        after_term = [t.seconds for t in result.takeovers if t.signal == "SIGTERM"]
        exits = [t.exit_seconds for t in result.takeovers if t.exit_seconds is not None]
        replicas = scenario.replicas if scenario is not None else "-"
        takeover_rows.append(
            [
                result.scenario, replicas, len(after_kill), _seconds(after_kill), len(after_term),
                _seconds(after_term), _seconds(exits), bound,
            ]
        )  # fmt: skip
    lines += _table(
        [
            "scenario", "replicas", "SIGKILLs", "after SIGKILL", "SIGTERMs", "after SIGTERM",
            "SIGTERM to exit", "lease_duration + retry_period",
        ],
        takeover_rows,
    )  # fmt: skip
    lines += ["", f"Wall time: {sum(r.seconds for r in results) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Put ``text`` between the markers of ``path`` (appended with markers when they are missing)."""
    body = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(body):
        body = pattern.sub(lambda _: block, body)
    else:
        body = body.rstrip("\n") + ("\n\n" if body else "") + block + "\n"
    path.write_text(body)
