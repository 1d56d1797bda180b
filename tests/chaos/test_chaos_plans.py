"""The chaos suite's plans and figures: a seed replays a run's plan; the table says what happened."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from chaos.invariants import Verdict
from chaos.monkey import Takeover
from chaos.report import BEGIN, END, ScenarioResult, calls_by_backend, faults_by_backend, render, write_section
from chaos.scenarios import LONG, SHORT, Timing, plan_run, variant

from aws_reconciler.config import load_settings


def test_a_seed_replays_the_plan_and_another_seed_changes_it() -> None:
    scenario = SHORT[0]
    assert plan_run(scenario, 7) == plan_run(scenario, 7)
    assert plan_run(scenario, 7).arrivals != plan_run(scenario, 8).arrivals
    # Scenarios draw from streams of their own: the same seed does not give two the same plan.
    assert plan_run(SHORT[0], 7).sandbox_seed != plan_run(SHORT[1], 7).sandbox_seed


def test_a_plan_has_the_scenarios_load_and_trouble() -> None:
    for scenario in (*SHORT, *LONG):
        plan = plan_run(scenario, 1)
        per_backend = Counter(a.backend for a in plan.arrivals)
        assert dict(per_backend) == {b: n for b, n in scenario.tasks.items() if n}
        assert (
            Counter(k.signal for k in plan.reconciler_kills)
            == Counter({"SIGKILL": scenario.sigkills, "SIGTERM": scenario.sigterms}) - Counter()
        )
        assert len(plan.executor_kills) == scenario.executor_kills
        assert all(0 <= a.at <= plan.load_seconds for a in plan.arrivals)
        assert [a.at for a in plan.arrivals] == sorted(a.at for a in plan.arrivals)
        assert all(scenario.uptime[0] <= k.uptime <= scenario.uptime[1] for k in plan.reconciler_kills)
        for arrival in plan.arrivals:
            # Only long tasks are revoked, and a revoked one is queued again as a short one.
            if arrival.revoke_after is not None:
                assert arrival.behaviour.seconds >= 15 and arrival.requeued is not None
                assert arrival.requeued.seconds <= 3


def test_the_long_variant_meets_the_issues_goals() -> None:
    kills, faults, ha, events = variant(long=True)
    assert kills.tasks["ecs"] >= 500 and kills.sigkills >= 50 and kills.replicas == 1
    assert faults.faults and all("throttle=5,5xx=5,phantom=4,timeout=2,reset=4" in rule for rule in faults.faults)
    assert ha.replicas == 2 and ha.sigkills >= 10 and ha.sigterms > 0
    # Observation by events with 5% of events lost and 10% duplicated / reordered (issue 13).
    assert events.observation == "events" and events.sigkills > 0
    args = dict(zip(events.sandbox_args[::2], events.sandbox_args[1::2], strict=True))
    assert args == {"--event-loss": "5", "--event-duplicate": "10", "--event-reorder": "10"}
    assert all(s.tasks["batch"] > 0 for s in LONG)
    assert variant(long=False) == SHORT


def test_the_suites_timing_is_valid_for_the_reconciler(tmp_path: Path) -> None:
    """The compressed timing passes the product's own checks (renew_deadline + aws_call_timeout <
    lease_duration...) and reaches it under the names it reads."""
    timing = Timing()
    settings = load_settings(
        environ={
            **timing.reconciler_env(),
            "AIRFLOW__AWS_RECONCILER__STORE_URL": "sqlite://",
            "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "q",
            "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "d",
        },
        cfg_path=tmp_path / "absent.cfg",
    )
    core = settings.core
    assert (core.lease_duration, core.renew_deadline, core.retry_period) == (5.0, 3.0, 0.5)
    assert core.call_timeout == timing.aws_call_timeout
    assert settings.batch.lookup_delay == timing.lookup_delay
    assert timing.takeover_bound == 5.5


def _result(name: str, *, lost: int = 0) -> ScenarioResult:
    return ScenarioResult(
        scenario=name,
        seeds=[3],
        verdicts={"ecs": Verdict("ecs", tasks=10, lost=lost), "batch": Verdict("batch", tasks=5)},
        sigkills=2,
        sigterms=1,
        executor_kills=1,
        takeovers=[Takeover("SIGKILL", 5.0), Takeover("SIGKILL", 4.0), Takeover("SIGTERM", 0.5, exit_seconds=2.0)],
        faults=faults_by_backend(
            {"phantom ecs:RunTask": 2, "phantom ecs:StopTask": 1, "lag batch": 4, "5xx logs:X": 9}
        ),
        calls=calls_by_backend({"ecs:RunTask": 20, "ecs:StopTask": 10, "batch:SubmitJob": 8, "logs:GetLogEvents": 5}),
        seconds=60,
    )


def test_the_table() -> None:
    text = render([_result("ha", lost=1)], SHORT, variant="short", seed=3)
    assert "replay: `python -m chaos.run --seed 3`" in text
    assert "| ha | ecs | 1 | 10 | 2 SIGKILL + 1 SIGTERM | 1 | 0 | 1 | 0 | 0 | 0 | 0 |" in text
    # Faults by kind per backend; calls of other services are not the reconciler's.
    # A lag strikes a job, not a call: it does not count as a faulted call.
    assert "| ha | ecs | 30 | 10.0% | 0 | 0 | 0 | 3 | 0 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "| ha | batch | 8 | 0.0% | 0 | 0 | 0 | 0 | 0 | 0 | 4 | 0 | 0 | 0 |" in text
    assert "| ha | 2 | 2 | 5.0 / 4.5 | 1 | 0.5 / 0.5 | 2.0 / 2.0 | 5.5 |" in text


def test_runs_of_a_scenario_add_up() -> None:
    total = _result("kills")
    total.add(_result("kills", lost=2))
    assert total.runs == 2 and total.violations == 2 and total.sigkills == 4
    assert total.faults["ecs"]["phantom"] == 6 and len(total.takeovers) == 6 and total.calls["ecs"] == 60


def test_the_document_keeps_its_prose(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Reliability\n\nProse.\n\n{BEGIN}\nold table\n{END}\n\nMore prose.\n")
    write_section(doc, "new table\n")
    write_section(doc, "newer table\n")
    text = doc.read_text()
    assert text == f"# Reliability\n\nProse.\n\n{BEGIN}\nnewer table\n{END}\n\nMore prose.\n"
    fresh = tmp_path / "fresh.md"
    write_section(fresh, "t\n")
    assert fresh.read_text() == f"{BEGIN}\nt\n{END}\n"
