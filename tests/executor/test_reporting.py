"""What the executor tells Airflow about a finished row, given the TI's current state: table-driven."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from aws_reconciler.executor.reporting import (
    Action,
    Outcome,
    TryState,
    decide,
    decide_by_exit,
    may_hold,
    never_ran,
    token_expired,
)
from aws_reconciler.model import Backend, Desired, Phase, TiKey
from aws_reconciler.store.records import Report, TaskRecord

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TIMEOUT = 600.0


def record(
    phase: Phase = Phase.SUCCEEDED,
    *,
    launched: bool = True,
    reason: str | None = None,
    superseded: bool = False,
    token_expires_at: datetime | None = None,
    created_at: datetime = NOW - timedelta(seconds=60),
) -> TaskRecord:
    return TaskRecord(
        id="r1",
        backend=Backend.ECS,
        owner="1",
        key=TiKey("dag", "task", "run", -1, 2),
        queue="default",
        target="airflow",
        desired=Desired.RUNNING,
        phase=phase,
        external_id="arn:task/1" if launched else None,
        attempt=1,
        next_attempt_at=None,
        last_error=None,
        exit_code=0 if phase is Phase.SUCCEEDED else None,
        stop_code=None,
        status_reason=reason,
        created_at=created_at,
        launched_at=created_at if launched else None,
        started_at=None,
        finished_at=NOW,
        reported_at=None,
        updated_at=NOW,
        token_expires_at=token_expires_at,
        superseded_at=NOW if superseded else None,
    )


def same_try(state: str | None) -> TryState:
    return TryState(try_number=2, state=state)


EXPIRED = NOW - timedelta(seconds=1)
VALID = NOW + timedelta(seconds=300)

CASES = [
    # (name, row, current, action, outcome, recorded phase (None: unchanged), event info)
    ("plain success", record(), same_try("success"), Action.SUCCESS, Outcome.SUCCEEDED, None, "succeeded"),
    ("TI not found", record(), None, Action.SUCCESS, Outcome.SUCCEEDED, None, "succeeded"),
    ("try moved on", record(), TryState(3, "scheduled"), Action.SUCCESS, Outcome.SUCCEEDED, None, "succeeded"),
    (
        "container failed",
        record(Phase.FAILED, reason="OOM"),
        same_try("running"),
        Action.FAILED,
        Outcome.FAILED,
        None,
        "OOM",
    ),
    ("poke done, next poke waits", record(), same_try("up_for_reschedule"), Action.DROP, Outcome.STALE, None, None),
    ("next poke scheduled", record(), same_try("scheduled"), Action.DROP, Outcome.STALE, None, None),
    ("deferred", record(), same_try("deferred"), Action.DROP, Outcome.STALE, None, None),
    (
        "failed container, rescheduled",
        record(Phase.FAILED),
        same_try("scheduled"),
        Action.DROP,
        Outcome.STALE,
        None,
        None,
    ),
    ("superseded", record(superseded=True), same_try("queued"), Action.DROP, Outcome.SUPERSEDED, None, None),
    (
        "cleared while running",
        record(),
        same_try("restarting"),
        Action.SUCCESS,
        Outcome.REVOKED,
        Phase.REVOKED,
        "succeeded",
    ),
    (
        "cleared, container killed",
        record(Phase.FAILED, reason="exit 143"),
        same_try("restarting"),
        Action.FAILED,
        Outcome.REVOKED,
        Phase.REVOKED,
        "exit 143",
    ),
    (
        "exit 0, Airflow failed the try",
        record(),
        same_try("failed"),
        Action.SUCCESS,
        Outcome.FAILED,
        Phase.FAILED,
        "succeeded",
    ),
    (
        "exit 0, try up for retry",
        record(),
        same_try("up_for_retry"),
        Action.SUCCESS,
        Outcome.FAILED,
        Phase.FAILED,
        "succeeded",
    ),
    (
        "never launched, token expired, TI queued",
        record(Phase.FAILED, launched=False, reason="token expired", token_expires_at=EXPIRED),
        same_try("queued"),
        Action.HOLD,
        Outcome.HELD,
        None,
        None,
    ),
    (
        "never launched, token expired by created_at, TI queued",
        record(Phase.FAILED, launched=False, created_at=NOW - timedelta(seconds=TIMEOUT + 1)),
        same_try("queued"),
        Action.HOLD,
        Outcome.HELD,
        None,
        None,
    ),
    (
        "never launched, revoked for expiry, TI queued",
        record(Phase.REVOKED, launched=False, token_expires_at=EXPIRED),
        same_try("queued"),
        Action.HOLD,
        Outcome.HELD,
        None,
        None,
    ),
    (
        "never launched, token still valid",
        record(Phase.FAILED, launched=False, reason="bad task definition", token_expires_at=VALID),
        same_try("queued"),
        Action.FAILED,
        Outcome.FAILED,
        None,
        "bad task definition",
    ),
    (
        "launched, token expired since",
        record(Phase.FAILED, reason="exit 1", token_expires_at=EXPIRED),
        same_try("queued"),
        Action.FAILED,
        Outcome.FAILED,
        None,
        "exit 1",
    ),
    (
        "never launched, token expired, TI no longer queued",
        record(Phase.FAILED, launched=False, reason="token expired", token_expires_at=EXPIRED),
        same_try("failed"),
        Action.FAILED,
        Outcome.FAILED,
        None,
        "token expired",
    ),
]


@pytest.mark.parametrize(
    ("row", "current", "action", "outcome", "phase", "info"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(
    row: TaskRecord,
    current: TryState | None,
    action: Action,
    outcome: Outcome,
    phase: Phase | None,
    info: str | None,
) -> None:
    now = NOW if may_hold(row, current) else None
    decision = decide(row, current, now=now, task_queued_timeout=TIMEOUT)
    assert (decision.action, decision.outcome, decision.info) == (action, outcome, info)
    if action is Action.HOLD:
        assert decision.report is None, "a held row stays unreported"
        return
    assert decision.report is not None and decision.report.id == row.id
    assert decision.report.phase is phase
    expected_state = (
        current.state if current is not None and current.try_number == 2 and not row.superseded_at else None
    )
    assert decision.report.ti_state == expected_state


def test_decide_needs_database_time_only_to_hold() -> None:
    row = record(Phase.FAILED, launched=False, token_expires_at=EXPIRED)
    with pytest.raises(ValueError, match="database time"):
        decide(row, same_try("queued"), now=None, task_queued_timeout=TIMEOUT)
    assert decide(record(), same_try("success"), now=None, task_queued_timeout=TIMEOUT).report == Report(
        "r1", ti_state="success"
    )


@pytest.mark.parametrize(
    ("token_expires_at", "created_at", "expired"),
    [
        (NOW, NOW - timedelta(seconds=10), True),  # the token's own exp wins over the lifetime guess
        (NOW + timedelta(seconds=1), NOW - timedelta(seconds=TIMEOUT * 2), False),
        (None, NOW - timedelta(seconds=TIMEOUT), True),
        (None, NOW - timedelta(seconds=TIMEOUT - 1), False),
    ],
)
def test_token_expired(token_expires_at: datetime | None, created_at: datetime, expired: bool) -> None:
    row = replace(record(), token_expires_at=token_expires_at, created_at=created_at)
    assert token_expired(row, now=NOW, task_queued_timeout=TIMEOUT) is expired


def _jwt(payload: bytes) -> str:
    import base64

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = part(b'{"alg": "HS512"}')
    return f"{header}.{part(payload)}.c2ln"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (_jwt(b'{"exp": 1780000000, "scope": "workload"}'), datetime.fromtimestamp(1780000000, UTC)),
        (_jwt(b'{"exp": 1780000000.5}'), datetime.fromtimestamp(1780000000.5, UTC)),
        (_jwt(b'{"scope": "workload"}'), None),  # no exp
        (_jwt(b'{"exp": "tomorrow"}'), None),
        (_jwt(b'{"exp": true}'), None),
        (_jwt(b'{"exp": 1e300}'), None),
        (_jwt(b"[1, 2]"), None),
        (_jwt(b"\xff\xfe"), None),
        ("eyJ.secret.token", None),
        ("not-a-jwt", None),
        ("", None),
        (None, None),
    ],
)
def test_token_expiry_reads_exp_without_verifying(token: str | None, expected: datetime | None) -> None:
    from aws_reconciler.executor.workload import token_expiry

    assert token_expiry(token) == expected


EXIT_CASES = [
    # (name, row, action, outcome, info)
    ("callback succeeded", record(), Action.SUCCESS, Outcome.SUCCEEDED, "succeeded"),
    ("callback raised", record(Phase.FAILED, reason="exit code 1"), Action.FAILED, Outcome.FAILED, "exit code 1"),
    (
        "never launched",
        record(Phase.FAILED, launched=False, reason="token expired"),
        Action.FAILED,
        Outcome.FAILED,
        "token expired",
    ),
    ("stopped", record(Phase.REVOKED, reason="stopped"), Action.FAILED, Outcome.REVOKED, "stopped"),
    ("superseded", record(superseded=True), Action.DROP, Outcome.SUPERSEDED, None),
]


@pytest.mark.parametrize(("name", "row", "action", "outcome", "info"), EXIT_CASES, ids=[c[0] for c in EXIT_CASES])
def test_decide_by_exit(name: str, row: TaskRecord, action: Action, outcome: Outcome, info: str | None) -> None:
    """Callbacks and connection tests: the container's end is the outcome, whatever Airflow's TI tables say."""
    decision = decide_by_exit(row)
    assert (decision.action, decision.outcome, decision.info) == (action, outcome, info)
    assert decision.report == Report(row.id)


NEVER_RAN_CASES = [
    # (name, row, current, never ran)
    ("failed while Airflow has it queued", record(Phase.FAILED, launched=False), same_try("queued"), True),
    ("launched, never started, still queued", record(Phase.FAILED), same_try("queued"), True),
    ("failed after the task ran", record(Phase.FAILED), same_try("running"), False),
    ("succeeded", record(), same_try("queued"), False),
    ("an older try", record(Phase.FAILED), TryState(3, "queued"), False),
    ("TI not found", record(Phase.FAILED), None, False),
]


@pytest.mark.parametrize(("name", "row", "current", "expected"), NEVER_RAN_CASES, ids=[c[0] for c in NEVER_RAN_CASES])
def test_never_ran(name: str, row: TaskRecord, current: TryState | None, expected: bool) -> None:
    decision = decide(row, current, now=NOW, task_queued_timeout=TIMEOUT)
    assert never_ran(row, current, decision) is expected
