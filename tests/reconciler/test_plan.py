"""Every decision of the reconciler, as tables: rows + observations + discoveries + now -> Plan.

No sandbox, no database, no clock: ``plan`` and the launch-outcome functions are pure, so each
case is data in, data out.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aws_reconciler.backends.base import Observation, Stuck
from aws_reconciler.backends.errors import Outcome, RetriableError, TerminalError
from aws_reconciler.model import Backend, Desired, Phase, TiKey
from aws_reconciler.reconciler.backoff import grown_delay
from aws_reconciler.reconciler.effector import launch_result
from aws_reconciler.reconciler.plan import (
    ControllerSettings,
    Effect,
    Plan,
    Retry,
    Stop,
    StopWhy,
    Transition,
    launch_failed,
    launch_succeeded,
    launch_too_late,
    launch_without_token,
    plan,
    requeue_after,
    to_describe,
)
from aws_reconciler.store.records import TaskRecord

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = ControllerSettings(
    deployment="airflow",
    max_launch_attempts=3,
    task_queued_timeout=600,
    reconcile_interval=5,
    resync_interval=60,
    orphan_grace=120,
    retention=3600,
    backoff_base=2,
    backoff_max=300,
    launch_concurrency=16,
    missing_grace=120,
)
BATCH = replace(SETTINGS, relaunch_delay=15)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def row(record_id: str = "r1", **fields: Any) -> TaskRecord:
    """A row as the store returns it: pending, due, queued 10 s ago, unless told otherwise."""
    values: dict[str, Any] = {
        "id": record_id,
        "backend": Backend.ECS,
        "owner": "scheduler-1",
        "key": TiKey("dag", f"task-{record_id}", "run", -1, 1),
        "queue": "default",
        "target": "cluster",
        "desired": Desired.RUNNING,
        "phase": Phase.PENDING,
        "external_id": None,
        "attempt": 0,
        "next_attempt_at": ago(10),
        "last_error": None,
        "exit_code": None,
        "stop_code": None,
        "status_reason": None,
        "created_at": ago(10),
        "launched_at": None,
        "started_at": None,
        "finished_at": None,
        "reported_at": None,
        "updated_at": ago(10),
    }
    values.update(fields)
    return TaskRecord(**values)


def launched(
    record_id: str = "r1", *, phase: Phase = Phase.PROVISIONING, arn: str | None = "arn-1", **fields: Any
) -> TaskRecord:
    """A row whose attempt 1 was launched 30 s ago as ``arn``."""
    base = {"phase": phase, "external_id": arn, "attempt": 1, "launched_at": ago(30), "updated_at": ago(30)}
    return row(record_id, **{**base, **fields})


def obs(arn: str = "arn-1", phase: Phase = Phase.RUNNING, **fields: Any) -> Observation:
    return Observation(external_id=arn, target="cluster", phase=phase, **fields)


def found(arn: str, record_id: str | None, phase: Phase = Phase.RUNNING, **fields: Any) -> Observation:
    """A task of this deployment as discovery reports it (tags read)."""
    return obs(arn, phase, record_id=record_id, owned=True, **fields)


MISSING: dict[str, Any] = {"phase": Phase.FAILED, "missing": True, "reason": "the ECS task no longer exists (MISSING)"}


def decide(
    rows: list[TaskRecord],
    observations: dict[str, Observation] | None = None,
    *,
    settings: ControllerSettings = SETTINGS,
    **kwargs: Any,
) -> Plan:
    kwargs.setdefault("discovered", None)
    return plan(rows, observations or {}, now=NOW, settings=settings, rng=lambda: 1.0, **kwargs)


def only_transition(p: Plan) -> Transition:
    assert not p.stops and not p.launches, p
    [transition] = p.transitions
    return transition


def only_stop(p: Plan) -> Stop:
    assert not p.transitions and not p.launches, p
    [stop] = p.stops
    return stop


def nothing(p: Plan) -> bool:
    return not p.transitions and not p.stops and not p.launches


# ---- rows that want a launch ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "subject", "settings", "launch", "requeue"),
    [
        ("pending and due", row(), SETTINGS, True, 5),
        (
            "pending, due in 1.5 s: come back then",
            row(next_attempt_at=NOW + timedelta(seconds=1.5)),
            SETTINGS,
            False,
            1.5,
        ),
        ("pending, due in a minute", row(next_attempt_at=NOW + timedelta(seconds=60)), SETTINGS, False, 5),
        (
            "launching (outcome unknown) and due: same attempt again",
            launched(phase=Phase.LAUNCHING, arn=None, updated_at=ago(20)),
            SETTINGS,
            True,
            5,
        ),
        # Batch: the job name is looked up first, and ListJobs lags behind SubmitJob.
        (
            "launching, sent 20 s ago, Batch lookup delay 15 s",
            launched(phase=Phase.LAUNCHING, arn=None, updated_at=ago(20)),
            BATCH,
            True,
            5,
        ),
        (
            "launching, sent 10 s ago, Batch lookup delay 15 s",
            launched(phase=Phase.LAUNCHING, arn=None, updated_at=ago(10), next_attempt_at=ago(1)),
            BATCH,
            False,
            5,
        ),
        (
            "launching, sent 12 s ago, lookup allowed in 3 s",
            launched(phase=Phase.LAUNCHING, arn=None, updated_at=ago(12), next_attempt_at=ago(12)),
            BATCH,
            False,
            3,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_due_rows_are_launched_and_the_rest_requeue_at_the_soonest(
    case: str, subject: TaskRecord, settings: ControllerSettings, launch: bool, requeue: float
) -> None:
    p = decide([subject], settings=settings)
    assert p.launches == ((subject,) if launch else ()), case
    assert not p.transitions and not p.stops
    assert p.requeue_after == pytest.approx(requeue), case


def test_an_expired_workload_is_failed_not_launched() -> None:
    stale = row(created_at=ago(601), last_error="RESOURCE:MEMORY")
    t = only_transition(decide([stale]))
    assert (t.effect, t.changes["phase"], t.expect_phases) == (Effect.FAILED, Phase.FAILED, (Phase.PENDING,))
    assert "task_queued_timeout" in t.changes["status_reason"] and "RESOURCE:MEMORY" in t.changes["status_reason"]


def test_launches_are_capped_by_the_budget_oldest_first_and_the_cycle_comes_back_at_once() -> None:
    rows = [row(f"r{i}", created_at=ago(100 - i), next_attempt_at=ago(100 - i)) for i in range(10)]
    p = decide(list(reversed(rows)), launch_budget=3)
    assert [r.id for r in p.launches] == ["r0", "r1", "r2"]
    assert (p.deferred, p.requeue_after) == (7, 0)
    # Nothing may leave at all (the buckets are empty): no busy loop, the next interval.
    p = decide(rows, launch_budget=0)
    assert (p.launches, p.deferred, p.requeue_after) == ((), 10, 5)
    # Unbounded.
    assert len(decide(rows).launches) == 10


def test_after_throttling_the_next_cycle_waits_at_least_backoff_base() -> None:
    p = decide([row(next_attempt_at=NOW + timedelta(seconds=1))])
    assert p.requeue_after == 1
    assert requeue_after(p, throttled=True, settings=SETTINGS) == 2
    assert requeue_after(p, throttled=False, settings=SETTINGS) == 1


def test_a_row_with_a_call_in_flight_is_left_alone() -> None:
    assert nothing(decide([row()], busy={"r1"}))
    assert nothing(decide([launched()], {"arn-1": obs(phase=Phase.SUCCEEDED, exit_code=0)}, busy={"r1"}))


# ---- what AWS says about launched rows ---------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "subject", "observation", "effect", "changes"),
    [
        (
            "provisioning -> running",
            launched(),
            obs(started_at=ago(5)),
            Effect.PROGRESS,
            {"phase": Phase.RUNNING, "started_at": ago(5)},
        ),
        (
            "running, start time unknown: now",
            launched(),
            obs(),
            Effect.PROGRESS,
            {"phase": Phase.RUNNING, "started_at": NOW},
        ),
        (
            "start time learnt later",
            launched(phase=Phase.RUNNING, started_at=None),
            obs(started_at=ago(3)),
            Effect.PROGRESS,
            {"phase": Phase.RUNNING, "started_at": ago(3)},
        ),
        (
            "exit 0",
            launched(phase=Phase.RUNNING, started_at=ago(20)),
            obs(phase=Phase.SUCCEEDED, exit_code=0, reason="EssentialContainerExited; exit code 0", finished_at=ago(1)),
            Effect.SUCCEEDED,
            {"phase": Phase.SUCCEEDED, "exit_code": 0, "finished_at": ago(1), "started_at": ago(20)},
        ),
        (
            "exit 137",
            launched(phase=Phase.RUNNING),
            obs(phase=Phase.FAILED, exit_code=137, reason="exit code 137"),
            Effect.FAILED,
            {"phase": Phase.FAILED, "exit_code": 137, "status_reason": "exit code 137", "finished_at": NOW},
        ),
        (
            "stopped before its container started: next attempt after backoff",
            launched(),
            obs(phase=Phase.FAILED, never_started=True, reason="TaskFailedToStart"),
            Effect.RETRY,
            {"phase": Phase.PENDING, "external_id": None, "next_attempt_at": NOW + timedelta(seconds=2)},
        ),
        (
            "stopped before its container started, attempts spent",
            launched(attempt=3),
            obs(phase=Phase.FAILED, never_started=True, reason="TaskFailedToStart"),
            Effect.FAILED,
            {
                "phase": Phase.FAILED,
                "status_reason": (
                    "gave up after 3 launch attempts: task stopped before its container started: TaskFailedToStart"
                ),
            },
        ),
        # Eventual consistency: a task AWS does not know (yet) shortly after its launch is not gone.
        (
            "MISSING long after the launch",
            launched(launched_at=ago(121)),
            obs(**MISSING),
            Effect.FAILED,
            {"phase": Phase.FAILED, "status_reason": MISSING["reason"]},
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_observations_move_rows_along(
    case: str, subject: TaskRecord, observation: Observation, effect: Effect, changes: dict[str, Any]
) -> None:
    t = only_transition(decide([subject], {observation.external_id: observation}))
    assert t.effect is effect, case
    assert t.expect_phases == (subject.phase,) and t.row == subject
    assert {k: t.changes.get(k) for k in changes} == changes, case
    if effect is Effect.RETRY:
        assert t.retry is Retry.NEVER_STARTED and t.expect_attempt == subject.attempt


@pytest.mark.parametrize(
    ("case", "subject", "observations"),
    [
        ("MISSING right after the launch (ECS)", launched(launched_at=ago(8)), {"arn-1": obs(**MISSING)}),
        (
            "absent from DescribeJobs right after the submit (Batch)",
            launched(launched_at=ago(119)),
            {"arn-1": obs(**MISSING)},
        ),
        ("its describe batch failed: nothing known", launched(), {}),
        ("nothing changed", launched(phase=Phase.RUNNING, started_at=ago(9)), {"arn-1": obs(started_at=ago(9))}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_no_news_is_no_decision(case: str, subject: TaskRecord, observations: dict[str, Observation]) -> None:
    p = decide([subject], observations)
    assert nothing(p), case
    assert p.requeue_after == 5


def test_a_stuck_task_is_stopped_and_its_row_failed_once_the_stop_is_sent() -> None:
    stuck = Stuck(code="runnable_timeout", reason="the Batch job waited 601 s in RUNNABLE")
    stop = only_stop(decide([launched()], {"arn-1": obs(phase=Phase.PROVISIONING, stuck=stuck)}))
    assert (stop.external_id, stop.why, stop.record_id) == ("arn-1", "runnable_timeout", "r1")
    assert stop.reason == "aws-reconciler: the Batch job waited 601 s in RUNNABLE"
    assert stop.then is not None and stop.then.changes == {"phase": Phase.FAILED, "status_reason": stuck.reason}


# ---- rows Airflow no longer wants ----------------------------------------------------------------


REVOKED: dict[str, Any] = {"desired": Desired.STOPPED}


@pytest.mark.parametrize(
    ("case", "subject", "observations", "expect"),
    [
        ("revoked before launch", row(**REVOKED), {}, ("revoked", "revoked by Airflow before launch")),
        (
            "revoked while its launch outcome is unknown",
            launched(phase=Phase.LAUNCHING, arn=None, **REVOKED),
            {},
            ("revoked", "revoked by Airflow before launch"),
        ),
        (
            "revoked and running: stop it",
            launched(phase=Phase.RUNNING, **REVOKED),
            {"arn-1": obs()},
            ("stop", StopWhy.REVOKED),
        ),
        (
            "revoked, describe failed: stop it anyway",
            launched(phase=Phase.RUNNING, **REVOKED),
            {},
            ("stop", StopWhy.REVOKED),
        ),
        (
            "revoked, MISSING right after the launch: stop it",
            launched(launched_at=ago(5), **REVOKED),
            {"arn-1": obs(**MISSING)},
            ("stop", StopWhy.REVOKED),
        ),
        (
            "stop sent 10 s ago",
            launched(phase=Phase.STOPPING, updated_at=ago(10), **REVOKED),
            {"arn-1": obs()},
            ("nothing", None),
        ),
        (
            "stop sent a resync_interval ago and it still runs: again",
            launched(phase=Phase.STOPPING, updated_at=ago(60), **REVOKED),
            {"arn-1": obs()},
            ("stop", StopWhy.REVOKED),
        ),
        (
            "stopped",
            launched(phase=Phase.STOPPING, **REVOKED),
            {"arn-1": obs(phase=Phase.SUCCEEDED, exit_code=0, reason="UserInitiated")},
            ("revoked", "revoked by Airflow: UserInitiated"),
        ),
        (
            "gone long after the launch",
            launched(phase=Phase.STOPPING, launched_at=ago(300), **REVOKED),
            {"arn-1": obs(**MISSING)},
            ("revoked", f"revoked by Airflow: {MISSING['reason']}"),
        ),
        # A newer queueing of the same try exists: the old token is dead, the row is revoked.
        (
            "superseded before launch",
            row(superseded_at=ago(1)),
            {},
            ("revoked", "superseded by a newer queueing of the same task instance before launch"),
        ),
        (
            "superseded while running",
            launched(phase=Phase.RUNNING, superseded_at=ago(1)),
            {"arn-1": obs()},
            ("stop", StopWhy.SUPERSEDED),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_unwanted_rows_are_stopped_then_end_revoked(
    case: str, subject: TaskRecord, observations: dict[str, Observation], expect: tuple[str, Any]
) -> None:
    p = decide([subject], observations)
    kind, detail = expect
    if kind == "nothing":
        assert nothing(p), case
    elif kind == "stop":
        stop = only_stop(p)
        assert (stop.external_id, stop.why, stop.record_id) == ("arn-1", detail, "r1"), case
        assert stop.then is not None and stop.then.changes == {"phase": Phase.STOPPING}
        assert stop.then.expect_phases == (subject.phase,)
    else:
        t = only_transition(p)
        assert (t.effect, t.changes["phase"], t.changes["status_reason"]) == (Effect.REVOKED, Phase.REVOKED, detail), (
            case
        )


def test_of_two_open_rows_of_one_task_instance_only_the_newest_is_launched() -> None:
    key = TiKey("dag", "sensor", "run", -1, 1)
    older = row("old", key=key, created_at=ago(50), next_attempt_at=ago(50))
    newer = row("new", key=key, created_at=ago(5), next_attempt_at=ago(5))
    p = decide([older, newer])
    assert [r.id for r in p.launches] == ["new"]
    [t] = p.transitions
    assert (t.record_id, t.effect, t.changes["phase"]) == ("old", Effect.REVOKED, Phase.REVOKED)
    # Revoked by Airflow, then queued again: revoked, not superseded.
    revoked = row("old", key=key, created_at=ago(50), desired=Desired.STOPPED)
    [t] = decide([revoked, newer]).transitions
    assert t.changes["status_reason"] == "revoked by Airflow before launch"
    # Queued in the same instant: the row the store flagged superseded is the older, whatever its id.
    flagged = row("z", key=key, created_at=ago(5), superseded_at=ago(1))
    fresh = row("a", key=key, created_at=ago(5), next_attempt_at=ago(5))
    assert [r.id for r in decide([flagged, fresh]).launches] == ["a"]


# ---- what a launch comes to --------------------------------------------------------------------


CLAIMED = launched(phase=Phase.LAUNCHING, arn=None, launched_at=None, next_attempt_at=NOW, updated_at=NOW)


def test_a_successful_launch_records_the_task() -> None:
    t = launch_succeeded(CLAIMED, "arn-9", now=NOW)
    assert (t.effect, t.expect_phases, t.expect_attempt) == (Effect.LAUNCHED, (Phase.LAUNCHING,), 1)
    assert t.changes == {"phase": Phase.PROVISIONING, "external_id": "arn-9", "launched_at": NOW, "last_error": None}


@pytest.mark.parametrize(
    ("error", "effect", "changes", "retry"),
    [
        (
            TerminalError("ClientException: TaskDefinition is inactive"),
            Effect.FAILED,
            {"phase": Phase.FAILED, "status_reason": "launch failed: ClientException: TaskDefinition is inactive"},
            None,
        ),
        (
            RetriableError("ThrottlingException: Rate exceeded", outcome=Outcome.THROTTLED),
            Effect.RETRY,
            {"phase": Phase.PENDING, "attempt": 0, "next_attempt_at": NOW + timedelta(seconds=2)},
            Retry.THROTTLED,
        ),
        (
            RetriableError("ExpiredTokenException", outcome=Outcome.CREDENTIALS),
            Effect.RETRY,
            {"phase": Phase.PENDING, "attempt": 0},
            Retry.CREDENTIALS,
        ),
        (
            RetriableError("RESOURCE:MEMORY", outcome=Outcome.REJECTED),
            Effect.RETRY,
            {"phase": Phase.PENDING, "external_id": None, "last_error": "launch failed: RESOURCE:MEMORY"},
            Retry.CAPACITY,
        ),
        (
            RetriableError("ServerException: boom", outcome=Outcome.AMBIGUOUS),
            Effect.RETRY,
            {"next_attempt_at": NOW + timedelta(seconds=2), "last_error": "ServerException: boom"},
            Retry.AMBIGUOUS,
        ),
    ],
    ids=lambda v: v.outcome.value if isinstance(v, TerminalError | RetriableError) else "",
)
def test_launch_failures_by_outcome(error: Any, effect: Effect, changes: dict[str, Any], retry: Retry | None) -> None:
    t = launch_failed(CLAIMED, error, now=NOW, settings=SETTINGS, rng=lambda: 1.0)
    assert (t.effect, t.retry, t.expect_phases, t.expect_attempt) == (
        effect,
        retry,
        (Phase.LAUNCHING,),
        None if effect is Effect.FAILED else 1,
    )
    assert {k: t.changes.get(k) for k in changes} == changes
    if retry is Retry.AMBIGUOUS:
        assert "phase" not in t.changes and "attempt" not in t.changes, "same attempt, same client token"


def test_every_outcome_has_a_decision_and_a_metric_label() -> None:
    for outcome in Outcome:
        error: Any = TerminalError("x") if outcome is Outcome.TERMINAL else RetriableError("x", outcome=outcome)
        assert launch_failed(CLAIMED, error, now=NOW, settings=SETTINGS, rng=lambda: 0.5).row == CLAIMED
        assert launch_result(error) in ("terminal_error", "throttled", "retriable_error")
    with pytest.raises(ValueError, match="TerminalError"):
        RetriableError("x", outcome=Outcome.TERMINAL)


def test_capacity_failures_stop_at_the_attempt_budget() -> None:
    t = launch_failed(
        replace(CLAIMED, attempt=3),
        RetriableError("RESOURCE:CPU", outcome=Outcome.REJECTED),
        now=NOW,
        settings=SETTINGS,
        rng=lambda: 1.0,
    )
    assert t.changes == {
        "phase": Phase.FAILED,
        "status_reason": "gave up after 3 launch attempts: launch failed: RESOURCE:CPU",
    }


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_ambiguous_retries_back_off_more_each_time_though_the_attempt_stays(jitter: float) -> None:
    """A 5xx outage must not be retried every 1-2 s forever: each delay is at least twice the
    previous one, up to backoff_max, whatever the jitter draws."""
    error = RetriableError("ServerException: boom", outcome=Outcome.AMBIGUOUS)
    current, now, delays = CLAIMED, NOW, []
    for _ in range(12):
        t = launch_failed(current, error, now=now, settings=SETTINGS, rng=lambda: jitter)
        due = t.changes["next_attempt_at"]
        delays.append((due - now).total_seconds())
        # The store writes updated_at with the transition; the retry runs when it is due.
        current, now = replace(current, next_attempt_at=due, updated_at=now), due
        assert current.attempt == 1
    assert delays[0] <= 2
    for before, after in itertools.pairwise(delays):
        assert after >= min(300, 2 * before) - 1e-6
    assert delays[-1] == pytest.approx(300)


def test_an_ambiguous_submit_waits_out_the_lookup_delay() -> None:
    t = launch_failed(CLAIMED, RetriableError("5xx"), now=NOW, settings=BATCH, rng=lambda: 1.0)
    assert t.changes["next_attempt_at"] == NOW + timedelta(seconds=15)


def test_grown_delay_table() -> None:
    assert grown_delay(previous=0, base=2, cap=300, rng=lambda: 0.0) == 1
    assert grown_delay(previous=0, base=2, cap=300, rng=lambda: 1.0) == 2
    assert grown_delay(previous=3, base=2, cap=300, rng=lambda: 0.0) == 6
    assert grown_delay(previous=3, base=2, cap=300, rng=lambda: 1.0) == 12
    assert grown_delay(previous=200, base=2, cap=300, rng=lambda: 0.5) == 300


# ---- discovery: lost launches, duplicates, orphans ------------------------------------------------


def discover(
    rows: list[TaskRecord],
    discovered: list[Observation],
    observations: dict[str, Observation] | None = None,
    **kwargs: Any,
) -> Plan:
    return decide(rows, observations, discovered=discovered, **kwargs)


def test_a_lost_launch_is_adopted_and_followed_in_the_same_cycle() -> None:
    lost = launched(phase=Phase.LAUNCHING, arn=None, launched_at=None)
    p = discover([lost], [found("arn-7", "r1", started_at=ago(2))])
    adopt, progress = p.transitions
    assert (adopt.effect, adopt.expect_phases, adopt.expect_attempt) == (Effect.ADOPTED, (Phase.LAUNCHING,), 1)
    assert adopt.changes == {"phase": Phase.PROVISIONING, "external_id": "arn-7", "launched_at": NOW}
    assert (progress.effect, progress.expect_phases, progress.changes["phase"]) == (
        Effect.PROGRESS,
        (Phase.PROVISIONING,),
        Phase.RUNNING,
    )
    assert not p.launches and not p.stops and p.orphans == {}


def test_the_task_of_a_pending_row_is_not_an_orphan() -> None:
    """An ambiguous launch whose retry was throttled gave its attempt back: its next launch
    (same client token / job name) takes the task."""
    p = discover([row(attempt=0)], [found("arn-7", "r1")])
    assert p.launches and not p.stops and p.orphans == {}


@pytest.mark.parametrize(
    ("case", "task", "first_seen", "stopped"),
    [
        ("no row: first seen now", found("arn-x", "gone"), {}, False),
        ("no row, seen 119 s ago", found("arn-x", "gone"), {"arn-x": ago(119)}, False),
        ("no row, seen 120 s ago", found("arn-x", "gone"), {"arn-x": ago(120)}, True),
        # After a restart nothing is remembered: AWS's createdAt still bounds the grace.
        (
            "no row, created 121 s ago, never seen by this process",
            found("arn-x", "gone", created_at=ago(121)),
            {},
            True,
        ),
        ("no row, created 10 s ago", found("arn-x", "gone", created_at=ago(10)), {}, False),
        (
            "created in the future (skew) does not extend the grace",
            found("arn-x", "gone", created_at=NOW + timedelta(hours=1)),
            {"arn-x": ago(130)},
            True,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_orphans_are_stopped_once_their_grace_has_passed(
    case: str, task: Observation, first_seen: dict[str, datetime], stopped: bool
) -> None:
    p = discover([], [task], orphans_seen=first_seen)
    assert p.orphans is not None and "arn-x" in p.orphans, case
    assert p.new_orphans == (0 if first_seen else 1)
    if stopped:
        stop = only_stop(p)
        assert (stop.external_id, stop.why, stop.record_id) == ("arn-x", StopWhy.ORPHAN, None)
        assert "orphan of deployment airflow" in stop.reason
    else:
        assert nothing(p), case


@pytest.mark.parametrize(
    ("case", "task"),
    [
        ("another deployment's", obs("arn-x", record_id="gone", owned=False)),
        ("already stopped", found("arn-x", "gone", phase=Phase.FAILED)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_tasks_that_are_not_orphans_of_ours(case: str, task: Observation) -> None:
    p = discover([], [task], orphans_seen={"arn-x": ago(500)})
    assert nothing(p) and p.orphans == {}, case


def test_a_discovery_forgets_orphans_that_went_away_and_no_discovery_keeps_them() -> None:
    assert discover([], [], orphans_seen={"arn-x": ago(10)}).orphans == {}
    assert decide([], orphans_seen={"arn-x": ago(10)}).orphans is None


def test_the_task_of_a_revoked_row_without_its_arn_is_an_orphan() -> None:
    lost = launched(phase=Phase.LAUNCHING, arn=None, desired=Desired.STOPPED)
    p = discover([lost], [found("arn-7", "r1")], orphans_seen={"arn-7": ago(200)})
    [revoked] = p.transitions
    assert revoked.effect is Effect.REVOKED
    [stop] = p.stops
    assert (stop.external_id, stop.why) == ("arn-7", StopWhy.ORPHAN)


def test_two_tasks_of_one_row_the_row_follows_the_most_advanced_and_the_other_is_stopped() -> None:
    """Batch, after an ambiguous submit: the row points at a job still RUNNABLE while a second
    job of the same attempt already runs the task. Keep the running one."""
    current = obs("job-a", Phase.PROVISIONING, record_id="r1", owned=True, created_at=ago(40))
    other = found("job-b", "r1", started_at=ago(5), created_at=ago(38))
    p = discover([launched(arn="job-a")], [current, other], {"job-a": current}, orphans_seen={"job-a": ago(120)})
    repoint, progress = p.transitions
    assert (repoint.effect, repoint.changes["external_id"], repoint.expect_phases) == (
        Effect.REPOINTED,
        "job-b",
        (Phase.PROVISIONING,),
    )
    assert (progress.effect, progress.changes["phase"]) == (Effect.PROGRESS, Phase.RUNNING)
    [stop] = p.stops
    assert (stop.external_id, stop.why, stop.record_id) == ("job-a", StopWhy.DUPLICATE, None)
    assert "duplicate of task record r1" in stop.reason


@pytest.mark.parametrize(
    ("case", "current", "other", "keep"),
    [
        (
            "both waiting: the row's own stays",
            obs("job-a", Phase.PROVISIONING),
            found("job-b", "r1", Phase.PROVISIONING),
            "job-a",
        ),
        (
            "both running: the row's own stays",
            obs("job-a", started_at=ago(9)),
            found("job-b", "r1", started_at=ago(9)),
            "job-a",
        ),
        ("the row's own runs", obs("job-a", started_at=ago(9)), found("job-b", "r1", Phase.PROVISIONING), "job-a"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_duplicate_is_stopped_only_after_the_orphan_grace(
    case: str, current: Observation, other: Observation, keep: str
) -> None:
    subject = launched(phase=current.phase, arn="job-a")
    p = discover([subject], [other], {"job-a": current})
    assert not [t for t in p.transitions if t.effect is Effect.REPOINTED], case
    assert not p.stops and p.orphans == {"job-b": NOW}
    p = discover([subject], [other], {"job-a": current}, orphans_seen={"job-b": ago(120)})
    [stop] = p.stops
    assert (stop.external_id, stop.why) == ("job-b", StopWhy.DUPLICATE), case


def test_two_tasks_for_a_lost_launch_adopt_the_most_advanced() -> None:
    lost = launched(phase=Phase.LAUNCHING, arn=None, launched_at=None)
    waiting = found("job-a", "r1", Phase.PROVISIONING, created_at=ago(20))
    running = found("job-b", "r1", started_at=ago(3), created_at=ago(19))
    p = discover([lost], [waiting, running], orphans_seen={"job-a": ago(120)})
    adopt = p.transitions[0]
    assert (adopt.effect, adopt.changes["external_id"]) == (Effect.ADOPTED, "job-b")
    [stop] = p.stops
    assert (stop.external_id, stop.why) == ("job-a", StopWhy.DUPLICATE)


def test_when_the_rows_task_ended_another_of_its_tasks_is_a_duplicate_not_a_new_home() -> None:
    ended = obs("job-a", Phase.FAILED, exit_code=1, reason="exit code 1")
    p = discover([launched(phase=Phase.RUNNING, arn="job-a")], [found("job-b", "r1")], {"job-a": ended})
    [t] = p.transitions
    assert (t.effect, t.changes.get("external_id")) == (Effect.FAILED, None)
    assert p.orphans == {"job-b": NOW}


def test_nothing_is_decided_about_a_rows_other_tasks_while_its_own_is_unknown() -> None:
    p = discover([launched(arn="job-a")], [found("job-b", "r1")], {})
    assert nothing(p) and p.orphans == {}


def test_a_task_being_stopped_is_not_stopped_again() -> None:
    p = discover([], [found("arn-x", "gone")], orphans_seen={"arn-x": ago(500)}, busy={"arn-x"})
    assert nothing(p)


def test_the_rows_own_task_from_discovery_stands_in_for_a_failed_describe() -> None:
    p = discover([launched()], [found("arn-1", "r1", started_at=ago(4))], {})
    t = only_transition(p)
    assert (t.effect, t.changes["phase"]) == (Effect.PROGRESS, Phase.RUNNING)


# ---- the workload token's deadline ------------------------------------------------------------------

#: Seconds from NOW (the database's time unless a case says otherwise).
MARGIN = SETTINGS.token_margin


def tokened(record_id: str = "r1", *, expires_in: float, **fields: Any) -> TaskRecord:
    """A row whose workload token expires ``expires_in`` seconds after NOW."""
    return row(record_id, token_expires_at=NOW + timedelta(seconds=expires_in), **fields)


LAUNCHING_SENT = {"phase": Phase.LAUNCHING, "attempt": 1, "next_attempt_at": ago(200), "updated_at": ago(200)}


@pytest.mark.parametrize(
    ("case", "subject", "database_now", "discovered", "decision", "requeue"),
    [
        ("ten minutes left: launched", tokened(expires_in=600), NOW, False, "launch", 5),
        ("just over the margin: launched", tokened(expires_in=MARGIN + 1), NOW, False, "launch", 5),
        ("within the margin: waits for the expiry", tokened(expires_in=3), NOW, False, "wait", 3),
        ("at the margin: not launched", tokened(expires_in=MARGIN), NOW, False, "wait", 5),
        ("expired: fails, never launched", tokened(expires_in=-1), NOW, False, "expire", 5),
        (
            "queued long ago, its token still valid: the token decides, not created_at",
            tokened(expires_in=300, created_at=ago(3600), next_attempt_at=ago(1)),
            NOW,
            False,
            "launch",
            5,
        ),
        # This replica's clock (NOW) is 50 s behind the database's: the database's decides.
        (
            "valid by the local clock, within the margin by the database's",
            tokened(expires_in=60),
            ago(-50),
            False,
            "wait",
            5,
        ),
        # And 50 s ahead of it.
        ("expired by the local clock, valid by the database's", tokened(expires_in=-10), ago(60), False, "launch", 5),
        (
            "launching, within the margin: not relaunched, discovery may find its task",
            tokened(expires_in=10, **LAUNCHING_SENT),
            NOW,
            False,
            "wait",
            5,
        ),
        (
            "launching, expired, no discovery this cycle: waits for one",
            tokened(expires_in=-1, **LAUNCHING_SENT),
            NOW,
            False,
            "nothing",
            5,
        ),
        (
            "launching, expired, a discovery after missing_grace found nothing: fails",
            tokened(expires_in=-1, **LAUNCHING_SENT),
            NOW,
            True,
            "expire",
            5,
        ),
        (
            "launching, expired, sent too recently for a discovery to be sure",
            tokened(expires_in=-1, **{**LAUNCHING_SENT, "updated_at": ago(60)}),
            NOW,
            True,
            "nothing",
            5,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_launch_decisions_by_the_tokens_own_expiry_on_the_databases_clock(
    case: str, subject: TaskRecord, database_now: datetime, discovered: bool, decision: str, requeue: float
) -> None:
    p = decide([subject], database_now=database_now, discovered=[] if discovered else None)
    assert p.requeue_after == pytest.approx(requeue), case
    if decision == "launch":
        assert p.launches == (subject,) and not p.transitions, case
    elif decision == "expire":
        t = only_transition(p)
        assert (t.effect, t.changes["phase"], t.expect_phases) == (Effect.FAILED, Phase.FAILED, (subject.phase,))
        reason = t.changes["status_reason"]
        assert reason.startswith("not launched: its Airflow workload token expired at 2030-01-01T1"), reason
        assert "requeues" in reason
    else:
        assert nothing(p), case


def test_a_row_without_a_readable_expiry_keeps_the_queueing_time_rule() -> None:
    """Chaos-tested behaviour of rows whose token has no ``exp``: ``task_queued_timeout`` after
    ``created_at``, on this replica's clock, whatever the database's says."""
    assert decide([row(created_at=ago(599))], database_now=ago(-3600)).launches
    t = only_transition(decide([row(created_at=ago(601))], database_now=ago(3600)))
    assert "task_queued_timeout" in t.changes["status_reason"]


def test_the_expiry_keeps_the_last_launch_error() -> None:
    t = only_transition(decide([tokened(expires_in=-1, last_error="launch failed: RESOURCE:MEMORY")]))
    assert t.changes["status_reason"].endswith("; last error: launch failed: RESOURCE:MEMORY")


CAPACITY = RetriableError("RESOURCE:MEMORY", outcome=Outcome.REJECTED)


@pytest.mark.parametrize(
    ("case", "subject", "retried", "latest"),
    [
        # Without a known deadline the attempt budget (3) decides, as before.
        ("no expiry known, attempts spent", replace(CLAIMED, attempt=3), False, None),
        ("no expiry known, attempts left", replace(CLAIMED, attempt=1), True, 2.0),
        # With one, capacity is retried until the deadline, at most half-way to it each time.
        (
            "attempts spent, 5 min left",
            replace(CLAIMED, attempt=3, token_expires_at=NOW + timedelta(minutes=5)),
            True,
            8.0,
        ),
        (
            "attempt 40, 5 min left",
            replace(CLAIMED, attempt=40, token_expires_at=NOW + timedelta(minutes=5)),
            True,
            135.0,
        ),
        (
            "attempt 40, 40 s left",
            replace(CLAIMED, attempt=40, token_expires_at=NOW + timedelta(seconds=40)),
            True,
            5.0,
        ),
        (
            "past the deadline: due at once, then left to expire",
            replace(CLAIMED, attempt=9, token_expires_at=NOW + timedelta(seconds=10)),
            True,
            0.0,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_capacity_shortages_are_retried_until_the_tokens_deadline(
    case: str, subject: TaskRecord, retried: bool, latest: float | None
) -> None:
    t = launch_failed(subject, CAPACITY, now=NOW, settings=SETTINGS, rng=lambda: 1.0, token_now=NOW)
    if not retried:
        assert t.effect is Effect.FAILED and "gave up after 3 launch attempts" in t.changes["status_reason"], case
        return
    assert (t.effect, t.retry, t.changes["phase"]) == (Effect.RETRY, Retry.CAPACITY, Phase.PENDING), case
    assert latest is not None
    assert (t.changes["next_attempt_at"] - NOW).total_seconds() == pytest.approx(latest), case


def test_a_container_that_never_starts_still_has_an_attempt_budget() -> None:
    """An image that cannot be pulled will not be pulled by trying until the deadline."""
    stopped = obs(phase=Phase.FAILED, never_started=True, reason="CannotPullContainerError")
    subject = launched(attempt=3, token_expires_at=NOW + timedelta(minutes=5))
    t = only_transition(decide([subject], {"arn-1": stopped}))
    assert t.effect is Effect.FAILED and "gave up after 3 launch attempts" in t.changes["status_reason"]


@pytest.mark.parametrize("claimed", [True, False], ids=["claimed this cycle", "a relaunch"])
def test_a_launch_stopped_right_before_the_call_gives_back_only_a_fresh_attempt(claimed: bool) -> None:
    t = launch_too_late(CLAIMED, now=NOW, claimed=claimed)
    if not claimed:
        assert t is None, "a relaunch's attempt may have reached AWS: it stays launching"
        return
    assert t is not None
    assert (t.effect, t.expect_phases, t.expect_attempt) == (Effect.TOO_LATE, (Phase.LAUNCHING,), 1)
    assert (t.changes["phase"], t.changes["attempt"], t.changes["next_attempt_at"]) == (Phase.PENDING, 0, NOW)
    assert "token_margin" in t.changes["last_error"]
    # The planner then leaves it alone until the expiry, and fails it then.
    waiting = replace(CLAIMED, phase=Phase.PENDING, attempt=0, token_expires_at=NOW + timedelta(seconds=20))
    assert nothing(decide([waiting]))


@pytest.mark.parametrize(
    ("lost", "effect", "phase"),
    [(True, Effect.FAILED, Phase.FAILED), (False, Effect.RETRY, Phase.PENDING)],
    ids=["token discarded", "this reconciler cannot open it"],
)
def test_a_token_that_cannot_be_put_back(lost: bool, effect: Effect, phase: Phase) -> None:
    t = launch_without_token(CLAIMED, "why", lost=lost, now=NOW, settings=SETTINGS, rng=lambda: 1.0)
    assert (t.effect, t.changes["phase"]) == (effect, phase)
    if not lost:
        assert (t.retry, t.changes["attempt"]) == (Retry.CREDENTIALS, 0), "the key, not the task, is at fault"


# ---- which tasks a polling cycle describes ------------------------------------------------------

RUNNING_ROW = launched("r1", phase=Phase.RUNNING, arn="arn-1")


@pytest.mark.parametrize(
    ("row_", "between_rounds"),
    [
        pytest.param(RUNNING_ROW, False, id="running as wanted: only in a round"),
        pytest.param(launched("r1", arn="arn-1"), True, id="starting: every cycle"),
        pytest.param(launched("r1", phase=Phase.STOPPING, arn="arn-1"), True, id="being stopped: every cycle"),
        pytest.param(replace(RUNNING_ROW, desired=Desired.STOPPED), True, id="revoked: every cycle"),
        pytest.param(replace(RUNNING_ROW, superseded_at=ago(1)), True, id="superseded: every cycle"),
        pytest.param(row("r1"), False, id="no task yet: never"),
    ],
)
def test_to_describe(row_: TaskRecord, between_rounds: bool) -> None:
    assert bool(to_describe([row_], steady=False)) is between_rounds
    # A round of looks (and a resync) describes every task there is.
    assert bool(to_describe([row_], steady=True)) is bool(row_.external_id)
    # A task whose last describe failed is described again at the next cycle.
    assert bool(to_describe([row_], steady=False, again={"arn-1"})) is bool(row_.external_id)
