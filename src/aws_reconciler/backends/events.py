"""AWS's state-change events as an SQS queue holds them (an EventBridge rule targets the queue).

EventBridge delivers each event at least once, possibly late and out of order; the queue keeps a
message until it is deleted, and hands one that was received but not deleted out again after its
visibility timeout (after ``maxReceiveCount`` receives, the queue's redrive policy moves it to the
dead-letter queue). So a message is deleted only once what it said is in the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from .descriptor import Probe
from .errors import classify

# SQS's own limits: 10 messages per receive and per delete batch, waits of at most 20 s.
RECEIVE_BATCH = 10
DELETE_BATCH = 10
MAX_WAIT = 20
#: Delete batches in flight at once: a burst's hundred deletes would otherwise take a hundred
#: round trips one after another before the next cycle can start.
DELETE_CONCURRENCY = 4


@dataclass(frozen=True)
class QueuedEvent:
    """One EventBridge event as a message of the queue."""

    message_id: str
    receipt: str
    source: str
    detail_type: str
    detail: Mapping[str, Any]
    # When AWS emitted the event (the envelope's ``time``): event lag is measured from here.
    time: datetime | None = None


@dataclass(frozen=True)
class Malformed:
    """A message that is not an EventBridge event: never deleted, so it ends in the dead-letter queue."""

    message_id: str
    reason: str


@dataclass(frozen=True)
class Received:
    """What one receive returned."""

    events: list[QueuedEvent] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)


def parse_message(message: Mapping[str, Any]) -> QueuedEvent | Malformed:
    """An SQS message whose body is an EventBridge event (JSON with ``source``, ``detail-type``,
    ``detail`` and ``time``), as the rule's SQS target delivers it."""
    message_id = str(message.get("MessageId", ""))
    try:
        body = json.loads(message.get("Body") or "")
    except json.JSONDecodeError as exc:
        return Malformed(message_id, f"body is not JSON ({exc.msg})")
    if not isinstance(body, dict) or not isinstance(body.get("detail"), dict):
        return Malformed(message_id, "body is not an EventBridge event (no detail object)")
    time: datetime | None = None
    if isinstance(body.get("time"), str):
        try:
            time = datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
        except ValueError:
            return Malformed(message_id, f"time {body['time']!r} is not ISO-8601")
    return QueuedEvent(
        message_id=message_id,
        receipt=str(message.get("ReceiptHandle", "")),
        source=str(body.get("source", "")),
        detail_type=str(body.get("detail-type", "")),
        detail=body["detail"],
        time=time,
    )


class EventQueue:
    """One SQS queue of events: long-polled receives and batched deletes; errors classified as
    every AWS call's are (:func:`~.errors.classify`)."""

    def __init__(self, *, client: Any, queue_url: str, visibility_timeout: int, wait_seconds: int = MAX_WAIT) -> None:
        self.client = client
        self.queue_url = queue_url
        # Longer than a received message may be held before it is deleted: otherwise the queue
        # hands it out again while it is still being worked on (harmless, but counted twice).
        self.visibility_timeout = visibility_timeout
        self.wait_seconds = min(MAX_WAIT, max(0, wait_seconds))

    def receive(self, *, wait_seconds: int | None = None) -> Received:
        """Up to 10 messages, waiting up to ``wait_seconds`` (the queue's long poll) for the first."""
        wait = self.wait_seconds if wait_seconds is None else min(MAX_WAIT, max(0, wait_seconds))
        try:
            response = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=RECEIVE_BATCH,
                WaitTimeSeconds=wait,
                VisibilityTimeout=self.visibility_timeout,
            )
        except Exception as exc:
            raise classify(exc) from exc
        received = Received()
        for message in response.get("Messages") or []:
            parsed = parse_message(message)
            if isinstance(parsed, QueuedEvent):
                received.events.append(parsed)
            else:
                received.malformed.append(parsed)
        return received

    def delete(self, receipts: Sequence[str]) -> int:
        """Delete the messages (10 a call, up to ``DELETE_CONCURRENCY`` calls at once); returns
        how many the queue did not delete (they come back after their visibility timeout, and
        are then recognised as duplicates). The first failed call raises, once all have ended."""
        chunks = [receipts[start : start + DELETE_BATCH] for start in range(0, len(receipts), DELETE_BATCH)]
        if len(chunks) <= 1:
            return sum(map(self._delete_batch, chunks))
        with ThreadPoolExecutor(min(DELETE_CONCURRENCY, len(chunks)), thread_name_prefix="events-delete") as pool:
            return sum(pool.map(self._delete_batch, chunks))

    def _delete_batch(self, receipts: Sequence[str]) -> int:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        try:
            response = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except Exception as exc:
            raise classify(exc) from exc
        return len(response.get("Failed") or [])

    def attributes(self) -> dict[str, str]:
        """The queue's attributes (``aws-reconciler check`` proves sqs:GetQueueAttributes with it)."""
        try:
            response = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        except Exception as exc:
            raise classify(exc) from exc
        return dict(response.get("Attributes") or {})


def queue_probes(queue_url: str, client: Any) -> list[Probe]:
    """The queue permissions ``check`` can prove without touching a message: reading the queue's
    attributes, and deleting with a receipt handle SQS rejects only after authorising the call.
    (A probing receive would count against every message's receive limit, so ReceiveMessage is
    proven by the running reconciler: its failures count in aws_reconciler_event_receive_errors_total.)"""
    return [
        Probe(
            f"sqs:GetQueueAttributes {queue_url}",
            partial(client.get_queue_attributes, QueueUrl=queue_url, AttributeNames=["QueueArn"]),
        ),
        Probe(
            f"sqs:DeleteMessage {queue_url}",
            partial(client.delete_message, QueueUrl=queue_url, ReceiptHandle="aws-reconciler-check"),
        ),
    ]
