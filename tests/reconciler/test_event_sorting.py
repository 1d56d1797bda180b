"""Observation by events, as tables: rows + events -> what each event means, and resync drift.

Pure functions only (``sort_events``, ``resync_drift``, ``freshest``), plus the parsing of an SQS
message and of an ECS event's task: no queue, no database.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from test_plan import NOW, ago, launched, obs, row

from aws_reconciler.backends.base import Observation
from aws_reconciler.backends.ecs.states import observe_task, task_from_event
from aws_reconciler.backends.events import Malformed, QueuedEvent, Received, parse_message
from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.model import Backend, Phase
from aws_reconciler.reconciler.events import EventFeed, Verdict, freshest, resync_drift, sort_events
from aws_reconciler.store.records import TaskRecord

PROVISIONING = launched("r1", phase=Phase.PROVISIONING, arn="arn-1")
RUNNING = launched("r1", phase=Phase.RUNNING, arn="arn-1", started_at=ago(20))
STOPPING = launched("r1", phase=Phase.STOPPING, arn="arn-1", started_at=ago(20))
ENDED = obs("arn-1", Phase.SUCCEEDED, exit_code=0, started_at=ago(20), finished_at=ago(1))


@pytest.mark.parametrize(
    ("rows", "events", "verdicts", "applied"),
    [
        pytest.param([PROVISIONING], [("m1", obs("arn-1", Phase.RUNNING))], {"m1": Verdict.APPLIED}, "m1", id="news"),
        pytest.param(
            [RUNNING],
            [("m1", obs("arn-1", Phase.PROVISIONING))],
            {"m1": Verdict.STALE},
            None,
            id="an older event arriving late is stale, never a step back",
        ),
        pytest.param(
            [RUNNING],
            [("m1", obs("arn-1", Phase.RUNNING, started_at=ago(20)))],
            {"m1": Verdict.DUPLICATE},
            None,
            id="what the row already says",
        ),
        pytest.param(
            [launched("r1", phase=Phase.RUNNING, arn="arn-1")],
            [("m1", obs("arn-1", Phase.RUNNING, started_at=ago(20)))],
            {"m1": Verdict.APPLIED},
            "m1",
            id="the same phase with the start time the row lacks is news",
        ),
        pytest.param(
            [PROVISIONING],
            [("m1", obs("arn-1", Phase.RUNNING, version=3)), ("m2", ENDED), ("m3", obs("arn-1", Phase.PROVISIONING))],
            {"m1": Verdict.STALE, "m2": Verdict.APPLIED, "m3": Verdict.DUPLICATE},
            "m2",
            id="of several events of one task the most advanced wins, whatever their order",
        ),
        pytest.param(
            [PROVISIONING],
            [("m1", ENDED), ("m2", obs("arn-1", Phase.RUNNING, version=3))],
            {"m1": Verdict.APPLIED, "m2": Verdict.STALE},
            "m1",
            id="reordered: the end arrives before the start",
        ),
        pytest.param(
            [PROVISIONING],
            [("m1", obs("arn-1", Phase.RUNNING, version=4)), ("m2", obs("arn-1", Phase.RUNNING, version=4))],
            {"m1": Verdict.APPLIED, "m2": Verdict.DUPLICATE},
            "m1",
            id="delivered twice",
        ),
        pytest.param(
            [PROVISIONING],
            [("m1", obs("arn-1", Phase.RUNNING, version=4)), ("m2", obs("arn-1", Phase.RUNNING, version=5))],
            {"m1": Verdict.STALE, "m2": Verdict.APPLIED},
            "m2",
            id="ECS version orders events of the same phase",
        ),
        pytest.param(
            [STOPPING],
            [("m1", obs("arn-1", Phase.RUNNING)), ("m2", obs("arn-1", Phase.FAILED, exit_code=143))],
            {"m1": Verdict.DUPLICATE, "m2": Verdict.APPLIED},
            "m2",
            id="a stopping row's task runs until it ends",
        ),
        pytest.param(
            [PROVISIONING],
            [("m1", obs("arn-9", Phase.RUNNING))],
            {"m1": Verdict.UNMATCHED},
            None,
            id="a task no row follows (its launch answer may not be recorded yet)",
        ),
        pytest.param(
            [row("r1")],
            [("m1", obs("arn-1", Phase.RUNNING))],
            {"m1": Verdict.UNMATCHED},
            None,
            id="a row waiting for its launch follows no task yet",
        ),
    ],
)
def test_sort_events(
    rows: list[TaskRecord], events: list[tuple[str, Observation]], verdicts: dict[str, Verdict], applied: str | None
) -> None:
    decided = sort_events(rows, events)
    assert decided.verdicts == verdicts
    expected = {o.external_id: o for m, o in events if m == applied}
    assert decided.observations == expected


def test_late_events_of_a_task_whose_row_ended_are_duplicates() -> None:
    decided = sort_events([], [("m1", ENDED), ("m2", obs("arn-2"))], ended={"arn-1"})
    assert decided.verdicts == {"m1": Verdict.DUPLICATE, "m2": Verdict.UNMATCHED}
    assert decided.observations == {}


MISSING = obs("arn-1", Phase.FAILED, missing=True)


@pytest.mark.parametrize(
    ("row_", "described", "from_events", "drift"),
    [
        pytest.param(PROVISIONING, obs("arn-1", Phase.RUNNING), {}, 1, id="an event never came"),
        pytest.param(PROVISIONING, ENDED, {"arn-1": ENDED}, 0, id="the event came this cycle"),
        pytest.param(PROVISIONING, ENDED, {"arn-1": obs("arn-1", Phase.RUNNING)}, 1, id="only an earlier event came"),
        pytest.param(RUNNING, obs("arn-1", Phase.RUNNING, started_at=ago(20)), {}, 0, id="nothing changed"),
        pytest.param(RUNNING, obs("arn-1", Phase.PROVISIONING), {}, 0, id="a lagging read is not drift"),
        pytest.param(
            launched("r1", phase=Phase.PROVISIONING, arn="arn-1", launched_at=ago(300)),
            MISSING,
            {},
            1,
            id="gone without an event",
        ),
        pytest.param(
            launched("r1", phase=Phase.PROVISIONING, arn="arn-1", launched_at=ago(5), updated_at=ago(5)),
            MISSING,
            {},
            0,
            id="not known yet right after its launch",
        ),
        pytest.param(row("r1"), obs("arn-1"), {}, 0, id="a row without a task"),
    ],
)
def test_resync_drift(
    row_: TaskRecord, described: Observation, from_events: dict[str, Observation], drift: int
) -> None:
    assert resync_drift([row_], {"arn-1": described}, from_events=from_events, now=NOW, missing_grace=120) == drift


@pytest.mark.parametrize(
    ("event", "described", "kept"),
    [
        pytest.param(obs("arn-1", Phase.RUNNING), ENDED, "described", id="the describe is further along"),
        pytest.param(ENDED, obs("arn-1", Phase.RUNNING), "event", id="the describe lags behind the event"),
        pytest.param(obs("arn-1", Phase.RUNNING), MISSING, "event", id="a task AWS does not list yet"),
        pytest.param(MISSING, ENDED, "described", id="an event never says missing; a describe knows better"),
    ],
)
def test_freshest(event: Observation, described: Observation, kept: str) -> None:
    merged = freshest({"arn-1": event}, {"arn-1": described})
    assert merged["arn-1"] is (event if kept == "event" else described)


def envelope(**fields: object) -> dict[str, object]:
    body = {
        "version": "0",
        "id": "e1",
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "time": "2026-12-01T18:00:00Z",
        "detail": {"taskArn": "arn-1", "lastStatus": "RUNNING"},
        **fields,
    }
    return {"MessageId": "m1", "ReceiptHandle": "h1", "Body": json.dumps(body)}


def test_an_sqs_message_is_read_as_the_eventbridge_event_it_carries() -> None:
    parsed = parse_message(envelope())
    assert parsed == QueuedEvent(
        message_id="m1",
        receipt="h1",
        source="aws.ecs",
        detail_type="ECS Task State Change",
        detail={"taskArn": "arn-1", "lastStatus": "RUNNING"},
        time=datetime(2026, 12, 1, 18, 0, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param({"MessageId": "m1", "Body": "not json"}, "not JSON", id="not json"),
        pytest.param({"MessageId": "m1", "Body": "[]"}, "no detail", id="not an event"),
        pytest.param(envelope(detail="x"), "no detail", id="detail not an object"),
        pytest.param(envelope(time="yesterday"), "not ISO-8601", id="bad time"),
    ],
)
def test_a_message_that_is_not_an_event_is_malformed(message: dict[str, object], reason: str) -> None:
    parsed = parse_message(message)
    assert isinstance(parsed, Malformed) and reason in parsed.reason


def test_an_ecs_event_reads_as_the_describe_of_the_same_task() -> None:
    described = {
        "taskArn": "arn-1",
        "clusterArn": "cluster",
        "lastStatus": "STOPPED",
        "startedBy": "airflow",
        "version": 5,
        "createdAt": datetime(2026, 12, 1, 17, 59, tzinfo=UTC),
        "startedAt": datetime(2026, 12, 1, 18, 0, 1, 500000, tzinfo=UTC),
        "stoppedAt": datetime(2026, 12, 1, 18, 0, 9, tzinfo=UTC),
        "stopCode": "EssentialContainerExited",
        "containers": [{"name": "base", "exitCode": 0}],
    }
    event = {
        **described,
        "createdAt": "2026-12-01T17:59:00Z",
        "startedAt": "2026-12-01T18:00:01.500Z",
        "stoppedAt": "2026-12-01T18:00:09Z",
    }
    assert task_from_event(event) == described
    seen = observe_task(task_from_event(event), container_name="base", deployment="airflow")
    assert seen == observe_task(described, container_name="base", deployment="airflow")
    assert seen.phase is Phase.SUCCEEDED and seen.version == 5
    with pytest.raises(ValueError, match="taskArn"):
        task_from_event({"lastStatus": "RUNNING"})


# ---- the feed: what is deleted when (a queue double: the feed's bookkeeping, not SQS) ----------


class FakeQueue:
    """Hands out what was put in; records deletes."""

    wait_seconds = 0

    def __init__(self) -> None:
        self.waiting: list[QueuedEvent | Malformed] = []
        self.deleted: list[str] = []

    def receive(self, *, wait_seconds: int | None = None) -> Received:
        got, self.waiting = self.waiting[:10], self.waiting[10:]
        return Received(
            events=[e for e in got if isinstance(e, QueuedEvent)],
            malformed=[m for m in got if isinstance(m, Malformed)],
        )

    def delete(self, receipts: Sequence[str]) -> int:
        self.deleted.extend(receipts)
        return 0


class FakeBackend:
    kind = Backend.ECS

    def observe_event(self, detail: Mapping[str, Any]) -> Observation:
        return obs(str(detail["taskArn"]), Phase(detail["phase"]))


def ecs_event(message_id: str, arn: str, phase: Phase, *, receipt: str | None = None) -> QueuedEvent:
    return QueuedEvent(
        message_id=message_id,
        receipt=receipt or f"r-{message_id}",
        source="aws.ecs",
        detail_type="ECS Task State Change",
        detail={"taskArn": arn, "phase": phase.value},
        time=ago(1),
    )


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed_of(queue: FakeQueue, ticks: Ticks) -> EventFeed:
    return EventFeed(
        queue=queue,  # type: ignore[arg-type]
        backend=FakeBackend(),  # type: ignore[arg-type]
        source="aws.ecs",
        detail_type="ECS Task State Change",
        metrics=Metrics(),
        hold_for=120,
        monotonic=ticks,
        clock=lambda: NOW,
    )


def cycle(feed: EventFeed, rows: list[TaskRecord]) -> dict[str, Verdict]:
    """What a controller's cycle does with the feed: drain, take, sort, settle."""
    feed.drain()
    pairs, verdicts = feed.take()
    verdicts.update(sort_events(rows, pairs, ended=feed.ended).verdicts)
    feed.settle(verdicts)
    return verdicts


def test_the_feed_deletes_what_a_cycle_used_and_leaves_the_malformed_to_the_dead_letter_queue() -> None:
    queue, ticks = FakeQueue(), Ticks()
    feed = feed_of(queue, ticks)
    foreign = dataclasses.replace(ecs_event("m3", "arn-1", Phase.RUNNING), source="aws.batch")
    queue.waiting = [ecs_event("m1", "arn-1", Phase.RUNNING), ecs_event("m2", "arn-1", Phase.RUNNING), foreign]
    queue.waiting.append(Malformed("m4", "body is not JSON"))
    verdicts = cycle(feed, [PROVISIONING])
    assert verdicts == {"m1": Verdict.APPLIED, "m2": Verdict.DUPLICATE, "m3": Verdict.MALFORMED}
    assert queue.deleted == ["r-m1", "r-m2"]
    samples = {
        name: feed.metrics.registry.get_sample_value(f"aws_reconciler_events_{name}_total", {"backend": "ecs"})
        for name in ("received", "applied", "duplicate", "malformed")
    }
    assert samples == {"received": 3, "applied": 1, "duplicate": 1, "malformed": 2}


def test_an_unmatched_event_is_held_until_its_row_follows_the_task() -> None:
    queue, ticks = FakeQueue(), Ticks()
    feed = feed_of(queue, ticks)
    queue.waiting = [ecs_event("m1", "arn-1", Phase.RUNNING)]
    assert cycle(feed, [row("r1", phase=Phase.LAUNCHING)]) == {"m1": Verdict.UNMATCHED}
    assert queue.deleted == []
    ticks.now = 10  # the launch's answer is recorded meanwhile
    assert cycle(feed, [PROVISIONING]) == {"m1": Verdict.APPLIED}
    assert queue.deleted == ["r-m1"]


def test_an_event_no_row_ever_follows_is_deleted_after_the_hold() -> None:
    queue, ticks = FakeQueue(), Ticks()
    feed = feed_of(queue, ticks)
    queue.waiting = [ecs_event("m1", "arn-9", Phase.RUNNING)]
    cycle(feed, [PROVISIONING])
    ticks.now = 119
    cycle(feed, [PROVISIONING])
    assert queue.deleted == []
    # Meanwhile SQS handed it out again (its visibility timeout ran out): only the new receipt deletes.
    queue.waiting = [ecs_event("m1", "arn-9", Phase.RUNNING, receipt="r-again")]
    ticks.now = 121
    cycle(feed, [PROVISIONING])
    assert queue.deleted == ["r-again"]
    assert feed.metrics.registry.get_sample_value("aws_reconciler_events_unmatched_total", {"backend": "ecs"}) == 1


def test_late_events_of_a_task_the_feed_was_told_ended_are_duplicates_deleted_at_once() -> None:
    queue, ticks = FakeQueue(), Ticks()
    feed = feed_of(queue, ticks)
    feed.forget(["arn-1"])
    queue.waiting = [ecs_event("m1", "arn-1", Phase.SUCCEEDED)]
    assert cycle(feed, []) == {"m1": Verdict.DUPLICATE}
    assert queue.deleted == ["r-m1"]
