"""The chaos suite's judge: every guarantee, one table row per way it holds or breaks."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from chaos.facts import Launched, from_batch_job, from_ecs_task
from chaos.invariants import FAILED, SUCCESS, Event, Fate, Queueing, Verdict, check

D = "chaos"
KEY = "ecs:t.try1"


def task(
    record: str | None = "r1",
    *,
    attempt: int | None = 1,
    ran: bool = True,
    exit_code: int | None = 0,
    created: float = 0.0,
    stopped: float | None = 10.0,
    requested: bool = False,
    role: str | None = None,
    deployment: str | None = D,
    started_by: str | None = D,
    backend: str = "ecs",
) -> Launched:
    return Launched(
        backend=backend,
        external_id=f"arn:aws:ecs:us-east-1:1:task/airflow/{record}-{attempt}-{created}",
        record_id=record,
        deployment=deployment,
        started_by=started_by,
        attempt=attempt,
        role=role,
        created=created,
        stopped=stopped,
        ran=ran,
        exit_code=exit_code if stopped is not None else None,
        stopped_on_request=requested,
        reason="aws-reconciler: stopped" if requested else None,
    )


def wanted(record: str = "r1", key: str = KEY) -> Queueing:
    return Queueing(record, "ecs", key, Fate.WANTED)


def heard(state: str, key: str = KEY, *, awaited: bool = True) -> Event:
    return Event(key, state, awaited)


@dataclass
class Case:
    launched: list[Launched]
    events: list[Event]
    queueings: list[Queueing] = field(default_factory=lambda: [wanted()])
    found: dict[str, int] = field(default_factory=dict)  # Verdict counter -> expected value


CASES = {
    "ran, exit 0, success": Case([task()], [heard(SUCCESS)]),
    "ran, exit 1, failed": Case([task(exit_code=1)], [heard(FAILED)]),
    "ran, exit 0, reported failed": Case([task()], [heard(FAILED)], found={"wrong_states": 1}),
    "ran, exit 1, reported success": Case([task(exit_code=1)], [heard(SUCCESS)], found={"wrong_states": 1}),
    "no event": Case([task()], [], found={"lost": 1}),
    "nothing launched, no event": Case([], [], found={"lost": 1}),
    "two events": Case([task()], [heard(SUCCESS), heard(SUCCESS, awaited=False)], found={"reported_twice": 1}),
    "one attempt launched twice": Case(
        [task(created=0, stopped=1, ran=False), task(created=2)], [heard(SUCCESS)], found={"duplicates": 1}
    ),
    "never started, then the next attempt ran": Case(
        [task(attempt=1, created=0, stopped=1, ran=False, exit_code=None), task(attempt=2, created=2)],
        [heard(SUCCESS)],
    ),
    "two attempts alive at once": Case(
        [task(attempt=1, created=0, stopped=5, ran=False), task(attempt=2, created=2)],
        [heard(SUCCESS)],
        found={"duplicates": 1},
    ),
    "two attempts ran one after the other": Case(
        [task(attempt=1, created=0, stopped=1), task(attempt=2, created=2)],
        [heard(SUCCESS)],
        found={"duplicates": 1},
    ),
    "every attempt spent, failed": Case([task(ran=False, exit_code=None)], [heard(FAILED)]),
    "nothing ran, reported success": Case(
        [task(ran=False, exit_code=None)], [heard(SUCCESS)], found={"wrong_states": 1}
    ),
    "gave up before any launch": Case([], [heard(FAILED)]),
    "stopped by the reconciler while wanted": Case(
        [task(exit_code=143, requested=True)], [heard(FAILED)], found={"wrong_states": 1}
    ),
    "a job stopped before it ran (RUNNABLE too long)": Case(
        [task(ran=False, exit_code=None, requested=True)], [heard(FAILED)]
    ),
    "revoked, queued again, the new queueing ran": Case(
        [task("r1", exit_code=143, requested=True, created=0, stopped=5), task("r2", created=6)],
        [heard(SUCCESS)],
        queueings=[Queueing("r1", "ecs", KEY, Fate.REVOKED), wanted("r2")],
    ),
    "revoked queueing's task still alive": Case(
        [task("r1", stopped=None, exit_code=None), task("r2", created=6)],
        [heard(SUCCESS)],
        queueings=[Queueing("r1", "ecs", KEY, Fate.REVOKED), wanted("r2")],
        found={"orphans_left": 1},
    ),
    "an event while the try waited for none": Case(
        [task("r1", requested=True, exit_code=143), task("r2", created=20)],
        [heard(FAILED, awaited=False), heard(SUCCESS)],
        queueings=[Queueing("r1", "ecs", KEY, Fate.REVOKED), wanted("r2")],
        found={"wrong_states": 1, "reported_twice": 1},
    ),
    "never recorded, yet launched": Case(
        [task("r1"), task("r2", created=20)],
        [heard(SUCCESS, "ecs:t.try2")],
        queueings=[Queueing("r1", "ecs", KEY, Fate.RESET), wanted("r2", "ecs:t.try2")],
        found={"wrong_states": 1},
    ),
    "a reset try reported": Case(
        [task("r2", created=20)],
        [heard(FAILED), heard(SUCCESS, "ecs:t.try2")],
        queueings=[Queueing("r1", "ecs", KEY, Fate.RESET), wanted("r2", "ecs:t.try2")],
        found={"wrong_states": 1},
    ),
    "still running at the end": Case([task(stopped=None, exit_code=None)], [], found={"lost": 1, "orphans_left": 1}),
    "a planted orphan stopped": Case([task("x", role="orphan", requested=True), task()], [heard(SUCCESS)]),
    "a planted orphan left alive": Case(
        [task("x", role="orphan", stopped=None), task()], [heard(SUCCESS)], found={"orphans_left": 1}
    ),
    "a foreign task stopped by someone": Case(
        [task("x", role="foreign", deployment="other", started_by="other", requested=True), task()],
        [heard(SUCCESS)],
        found={"foreign_touched": 1},
    ),
    "foreign tasks alive or failed to start": Case(
        [
            task("x", role="foreign", deployment="other", started_by="other", stopped=None),
            task("y", role="foreign", deployment="other", started_by=D, ran=False, exit_code=None),
            task("z", role="foreign", deployment=D, started_by="other", stopped=None),
            task(),
        ],
        [heard(SUCCESS)],
    ),
    "another backend's items do not count": Case(
        [task(), task("r1", backend="batch", started_by=None, created=1, stopped=None)], [heard(SUCCESS)]
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_check(case: Case) -> None:
    verdict = check(backend="ecs", deployment=D, queueings=case.queueings, events=case.events, launched=case.launched)
    counts = {
        name: getattr(verdict, name)
        for name in ("duplicates", "lost", "wrong_states", "reported_twice", "orphans_left", "foreign_touched")
    }
    assert counts == {name: case.found.get(name, 0) for name in counts}, verdict.details
    # Every finding is explained in one line, and only findings are.
    assert len(verdict.details) == verdict.violations


def test_verdicts_of_several_runs_add_up() -> None:
    total = Verdict("ecs", tasks=3, lost=1, details=["lost: a"])
    total.add(Verdict("ecs", tasks=2, duplicates=1, details=["duplicate: b"]))
    assert (total.tasks, total.lost, total.duplicates, total.violations) == (5, 1, 1, 2)
    assert total.details == ["lost: a", "duplicate: b"]


# ---- reading the sandbox's snapshots ----------------------------------------------------------


def test_an_ecs_task_snapshot() -> None:
    item = from_ecs_task(
        {
            "arn": "arn:aws:ecs:us-east-1:123:task/airflow/abc",
            "startedBy": D,
            "tags": {"aws-reconciler:deployment": D, "aws-reconciler:id": "rec-1", "chaos:role": "orphan"},
            "clientToken": "rec-1-2",
            "lastStatus": "STOPPED",
            "stopCode": "UserInitiated",
            "stoppedReason": "aws-reconciler: orphan",
            "createdAt": "2026-01-01T00:00:00+00:00",
            "startedAt": "2026-01-01T00:00:01+00:00",
            "stoppedAt": "2026-01-01T00:00:05+00:00",
            "containers": [{"name": "base", "exitCode": 143}],
        }
    )
    assert (item.record_id, item.attempt, item.role, item.ran, item.exit_code) == ("rec-1", 2, "orphan", True, 143)
    assert item.stopped_on_request and not item.live and item.owned_by(D)
    assert item.stopped is not None and item.stopped - item.created == 5.0


def test_an_ecs_task_that_never_started_and_one_still_alive() -> None:
    base = {"arn": "a", "startedBy": D, "tags": {}, "createdAt": "2026-01-01T00:00:00+00:00", "containers": []}
    never = from_ecs_task({**base, "lastStatus": "STOPPED", "stopCode": "TaskFailedToStart"})
    assert (never.ran, never.live, never.stopped_on_request, never.record_id) == (False, False, False, None)
    alive = from_ecs_task({**base, "lastStatus": "RUNNING", "containers": [{"exitCode": None}]})
    assert alive.live and not alive.owned_by(D)  # no identity tags: nobody's


def test_a_batch_job_snapshot() -> None:
    job = {
        "jobId": "j-1",
        "jobName": "af-rec-1-3",
        "status": "FAILED",
        "tags": {"aws-reconciler:deployment": D, "aws-reconciler:id": "rec-1"},
        "createdAt": 1_700_000_000_000,
        "startedAt": 1_700_000_001_000,
        "stoppedAt": 1_700_000_004_000,
        "container": {"exitCode": 1},
        "isTerminated": True,
        "statusReason": "aws-reconciler: revoked",
    }
    item = from_batch_job(job)
    assert (item.attempt, item.ran, item.exit_code, item.stopped_on_request) == (3, True, 1, True)
    assert item.owned_by(D) and item.stopped == 1_700_000_004.0
    held = from_batch_job({**job, "status": "RUNNABLE", "jobName": "chaos-plant-1"})
    assert held.live and held.attempt is None and held.exit_code is None
