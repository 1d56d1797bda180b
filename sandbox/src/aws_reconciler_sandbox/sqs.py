"""SQS fidelity shims: long polling that does not stop the sandbox, and queues whose cost does not
grow with their depth.

moto 5.2.5 serves a ReceiveMessage with ``WaitTimeSeconds`` (or a queue's
``ReceiveMessageWaitTimeSeconds``) by waiting inside its backend for up to 20 s. The sandbox
serves every request under ``MOTO_LOCK``, so one long poll would stop every other call, the task
runner's transitions and the event deliveries that could end the poll. Here a long poll is a
series of short ReceiveMessage calls, each under the lock, with the waits between them outside
it; it answers as soon as a message is there, or empty when the wait is over, as SQS does.

moto's queue also looks through every message it holds, several times, on every call: a
ReceiveMessage checks each message it returns against the retention period by computing all the
queue's attributes (``ApproximateNumberOfMessages`` and the other counts walk the whole queue,
reading the clock through ``datetime`` once per message), a DeleteMessage walks the queue twice
per receipt handle, and a SendMessage computes the attributes once. At 1,000 messages a receive
took over 100 ms, so draining a burst of events grew with the square of its size.
``SandboxSqsBackend`` (installed by ``motoenv.configure_moto`` as the backend moto serves)
keeps moto's semantics (visibility timeouts, receipt handles, redrive to the dead-letter queue
after ``maxReceiveCount`` receives, FIFO message groups, message attributes, the approximate
counts) with ``IndexedQueue``: a receive reads the clock once and stops at the messages it
returns, receipt handles are a dictionary, and the counts are kept as the messages change. What
a call costs then depends on the messages it touches (and, for a receive, the ones still in
flight ahead of them), not on how many the queue holds. One difference from moto: a message
older than the queue's retention period is deleted when a receive meets it, as SQS deletes it
(moto kept it, and stopped the receive there).
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from copy import deepcopy
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from moto.core.utils import camelcase_to_underscores, unix_time, unix_time_millis
from moto.sqs.exceptions import InvalidAttributeName, InvalidParameterValue, QueueAlreadyExists, ReceiptHandleIsInvalid
from moto.sqs.models import Message, Queue, SQSBackend, _filter_message_attributes

from .awsproto import AwsRequest, RawResponse
from .motoenv import MOTO_LOCK

__all__ = ["IndexedQueue", "SandboxSqsBackend", "SqsShim"]

#: How often a long poll looks again (deliveries usually come from another thread of the sandbox).
POLL_INTERVAL = 0.05
_MAX_WAIT = 20

#: Sends the current request to moto under ``MOTO_LOCK``, optionally with a rewritten body.
LockedForward = Callable[[bytes | None], RawResponse]


class SqsShim:
    """Serves ReceiveMessage's long polling outside ``MOTO_LOCK``; everything else goes to moto.

    ``handle`` is called without the lock held (unlike the other shims): ``forward`` takes it.
    """

    def handle(self, request: AwsRequest, forward: LockedForward, closing: threading.Event) -> RawResponse:
        """Answer one SQS request; ``closing`` ends a long poll early (the sandbox is stopping)."""
        if request.operation != "ReceiveMessage":
            return forward(None)
        form = not request.body.lstrip().startswith(b"{")
        try:
            params = _form(request.body) if form else request.json()
        except ValueError:
            return forward(None)  # moto reports the malformed request its own way
        wait = self._wait_seconds(request, params)
        if wait <= 0 or wait > _MAX_WAIT:
            return forward(None)  # no wait, or one moto refuses
        once = {**params, "WaitTimeSeconds": 0}
        body = urlencode(once).encode() if form else json.dumps(once).encode()
        deadline = time.monotonic() + wait
        while True:
            response = forward(body)
            left = deadline - time.monotonic()
            if response.status != 200 or _has_messages(response, form=form) or left <= 0 or closing.is_set():
                return response
            closing.wait(min(POLL_INTERVAL, left))

    @staticmethod
    def _wait_seconds(request: AwsRequest, params: dict[str, Any]) -> float:
        """The request's ``WaitTimeSeconds``, else the queue's ``ReceiveMessageWaitTimeSeconds``."""
        given = params.get("WaitTimeSeconds")
        if given is not None:
            try:
                return float(given)
            except (TypeError, ValueError):
                return 0.0
        from moto.sqs.models import sqs_backends

        name = urlparse(str(params.get("QueueUrl") or "")).path.rstrip("/").rsplit("/", 1)[-1]
        with MOTO_LOCK:
            queue = sqs_backends[request.account_id][request.region].queues.get(name)
            try:
                return float(getattr(queue, "receive_message_wait_time_seconds", 0) or 0)
            except (TypeError, ValueError):
                return 0.0


def _form(body: bytes) -> dict[str, Any]:
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _has_messages(response: RawResponse, *, form: bool) -> bool:
    if form:
        return b"<Message>" in response.body
    try:
        return bool(json.loads(response.body or b"{}").get("Messages"))
    except ValueError:
        return True  # not ours to judge: hand it over


# ---------------------------------------------------------------------- the queues moto serves

#: The attribute names and the fields holding them (moto converts the names on every call).
_FIELDS = {
    name: camelcase_to_underscores(name)
    for name in (*Queue.BASE_ATTRIBUTES, *Queue.FIFO_ATTRIBUTES, *Queue.KMS_ATTRIBUTES)
}
#: The longest a message may stay invisible, counted from when it was sent (SQS's 12 hours).
_MAX_TOTAL_VISIBILITY_MS = 43200 * 1000


class IndexedQueue(Queue):
    """moto's queue with the indexes its hot paths lack (see the module docstring).

    ``_messages`` stays moto's list in sending order (a message whose visibility timeout ends is
    received again before later ones, as moto does), beside it: every receipt handle a message
    in the queue was given, the messages received whose visibility timeout is not over, and the
    messages still delayed, each set with a heap of when its members change. Times are moto's
    (epoch milliseconds; a message is visible once the clock is past its ``visible_at``). Every
    change goes through the sandbox's backend, under ``MOTO_LOCK``.
    """

    def __init__(self, name: str, region: str, account_id: str, **kwargs: Any) -> None:
        self._by_handle: dict[str, Message] = {}
        self._hidden: set[Message] = set()
        self._hidden_until: list[tuple[float, int, Message]] = []
        self._delayed_until: list[tuple[float, int, Message]] = []
        self._order = itertools.count()
        super().__init__(name, region, account_id, **kwargs)

    # ------------------------------------------------------------------ bookkeeping

    def _prune(self, now: float) -> None:
        """Forget the hidden messages that are visible again and the delays that are over."""
        hidden_until = self._hidden_until
        while hidden_until and hidden_until[0][0] < now:
            until, _order, message = heapq.heappop(hidden_until)
            if message.visible_at == until:  # else its visibility changed since: a later entry stands
                self._hidden.discard(message)
        delayed_until = self._delayed_until
        while delayed_until and delayed_until[0][0] <= now:
            heapq.heappop(delayed_until)

    def hide(self, message: Message) -> None:
        """``message``'s ``visible_at`` has just been set (a receive, ChangeMessageVisibility)."""
        if message.visible_at >= unix_time_millis():
            self._hidden.add(message)
            heapq.heappush(self._hidden_until, (message.visible_at, next(self._order), message))
        else:
            self._hidden.discard(message)

    def index(self, message: Message) -> None:
        """Find ``message`` by every receipt handle it has had."""
        for handle in message.all_receipt_handles:
            if handle is not None:
                self._by_handle[handle] = message

    def with_handle(self, receipt_handle: str) -> Message | None:
        """The message in the queue that was given ``receipt_handle`` (any of its receives)."""
        return self._by_handle.get(receipt_handle)

    def forget(self, message: Message) -> None:
        """Take ``message`` out of the queue (deleted, expired, or moved to the dead-letter queue)."""
        with suppress(ValueError):  # gone already
            self._messages.remove(message)  # by identity, from the front: the oldest go first
        self.pending_messages.discard(message)
        self._hidden.discard(message)
        for handle in message.all_receipt_handles:
            if handle is not None and self._by_handle.get(handle) is message:
                del self._by_handle[handle]

    def forget_all(self) -> None:
        """The queue was purged."""
        self._by_handle.clear()
        self._hidden.clear()
        self._hidden_until.clear()
        self._delayed_until.clear()

    # ------------------------------------------------------------------ moto's queue

    def add_message(self, message: Message) -> None:
        held = len(self._messages)
        super().add_message(message)
        if len(self._messages) <= held:
            return  # a FIFO duplicate, dropped (or taken at once by a Lambda mapping)
        self.index(message)  # a message moved here from its source queue keeps its handles
        if message.delayed_until > unix_time_millis():
            heapq.heappush(self._delayed_until, (message.delayed_until, next(self._order), message))

    def delete_message(self, receipt_handle: str) -> None:
        if receipt_handle in self.deleted_messages:
            return  # deleted already: SQS accepts the handle again
        message = self.with_handle(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid()
        self.forget(message)
        self.deleted_messages.update(h for h in message.all_receipt_handles if h is not None)

    @property
    def messages(self) -> list[Message]:
        """The messages a receive could return now (moto's long poll waits for some)."""
        now = unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and now >= m.delayed_until]

    @property
    def approximate_number_of_messages_delayed(self) -> int:
        self._prune(unix_time_millis())
        return len(self._delayed_until)

    @property
    def approximate_number_of_messages_not_visible(self) -> int:
        self._prune(unix_time_millis())
        return len(self._hidden)

    @property
    def approximate_number_of_messages(self) -> int:
        self._prune(unix_time_millis())
        # A delayed message has never been received, so it is never hidden: the sets are apart.
        return max(0, len(self._messages) - len(self._hidden) - len(self._delayed_until))

    @property
    def attributes(self) -> dict[str, Any]:
        """moto's, without converting every name on every call (SendMessage reads them too)."""
        names = [*self.BASE_ATTRIBUTES]
        if self.fifo_queue:
            names += self.FIFO_ATTRIBUTES
        if self.kms_master_key_id:  # type: ignore[attr-defined]
            names += self.KMS_ATTRIBUTES
        result: dict[str, Any] = {name: getattr(self, _FIELDS[name]) for name in names}
        if self.redrive_policy:
            result["RedrivePolicy"] = json.dumps(self.redrive_policy)
        return {k: str(v).lower() if isinstance(v, bool) else v for k, v in result.items()}


class SandboxSqsBackend(SQSBackend):
    """moto's SQS backend with ``IndexedQueue`` queues (see the module docstring)."""

    @property
    def _url_module(self) -> Any:
        # moto finds a backend's routes next to its class: ours are moto's.
        import moto.sqs.urls

        return moto.sqs.urls

    def create_queue(self, name: str, tags: dict[str, str] | None = None, **kwargs: Any) -> Queue:
        """moto's, making an ``IndexedQueue``."""
        kwargs.pop("region", None)
        queue = self.queues.get(name)
        if queue is not None:
            # Creating an existing queue again succeeds if the attributes given are the same.
            wanted, held = self._new_queue(name, kwargs).attributes, queue.attributes
            if any(held.get(key) != wanted.get(key) for key in kwargs):
                raise QueueAlreadyExists("The specified queue already exists.")
        else:
            queue = self.queues[name] = self._new_queue(name, kwargs)
        if tags:
            queue.tags = tags
        return queue

    def _new_queue(self, name: str, attributes: dict[str, Any]) -> IndexedQueue:
        # moto's models leave CloudFormation's is_created abstract, and moto makes them all the same.
        return IndexedQueue(name, region=self.region_name, account_id=self.account_id, **attributes)  # type: ignore[abstract]

    def get_queue_attributes(self, queue_name: str, attribute_names: list[str]) -> dict[str, Any]:
        """moto's, computing the queue's attributes once rather than twice per name."""
        queue = self.get_queue(queue_name)
        if not attribute_names:
            return {}
        valid = {"All", *queue.BASE_ATTRIBUTES, *queue.FIFO_ATTRIBUTES, *queue.KMS_ATTRIBUTES}
        invalid = next((name for name in attribute_names if name not in valid), None)
        if invalid is not None:
            raise InvalidAttributeName(invalid)
        attributes = queue.attributes
        if "All" in attribute_names:
            return attributes
        return {name: attributes[name] for name in attribute_names if attributes.get(name) is not None}

    def receive_message(
        self,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> list[Message]:
        """moto's receive: up to ``count`` visible messages in sending order, each marked received
        (a new receipt handle, the receive count up, hidden for ``visibility_timeout`` seconds); one
        received ``maxReceiveCount`` times already goes to the dead-letter queue instead; in a FIFO
        queue, none of a message group with messages in flight. With ``wait_seconds_timeout``,
        waits for messages (the sandbox's long polls never get here with one: ``SqsShim``)."""
        queue = self.get_queue(queue_name)
        if not isinstance(queue, IndexedQueue):
            return super().receive_message(
                queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names
            )
        deadline = unix_time() + wait_seconds_timeout
        while True:
            result = self._receive_once(queue, count, visibility_timeout, message_attribute_names or [])
            if result or not wait_seconds_timeout or unix_time() > deadline:
                return result
            queue.wait_for_messages(1)

    @staticmethod
    def _receive_once(queue: IndexedQueue, count: int, visibility_timeout: int, names: list[str]) -> list[Message]:
        now = unix_time_millis()
        retention_ms = int(queue.message_retention_period) * 1000  # type: ignore[attr-defined]
        redrive = queue.redrive_policy if queue.dead_letter_queue is not None else None
        max_receives = int(redrive["maxReceiveCount"]) if redrive else None
        busy_groups = queue.pending_message_groups if queue.fifo_queue else set()
        result: list[Message] = []
        expired: list[Message] = []
        to_dead_letters: list[Message] = []
        for message in queue._messages:
            if not now > message.visible_at or now < message.delayed_until:
                continue  # in flight, or not sent yet
            if message in queue.pending_messages:
                # Visible again: its consumer let the visibility timeout pass.
                queue.pending_messages.remove(message)
                if queue.fifo_queue:
                    busy_groups = queue.pending_message_groups
            if queue.fifo_queue and message.group_id and message.group_id in busy_groups:
                continue  # a message of its group is in flight: the group waits
            if (message.sent_timestamp or 0) + retention_ms <= now:
                expired.append(message)
                continue
            if max_receives is not None and message.approximate_receive_count >= max_receives:
                to_dead_letters.append(message)
                continue
            queue.pending_messages.add(message)
            message.mark_received(visibility_timeout=visibility_timeout)
            queue.index(message)
            queue.hide(message)
            # A copy, so that filtering the attributes for this answer leaves the message whole.
            answered = deepcopy(message)
            _filter_message_attributes(answered, names)
            result.append(answered)
            if len(result) >= count:
                break
        for message in expired:
            queue.forget(message)
        for message in to_dead_letters:
            queue.forget(message)
            queue.dead_letter_queue.add_message(message)  # type: ignore[union-attr]
        return result

    def change_message_visibility(self, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
        """moto's, finding the message by its handle."""
        queue = self.get_queue(queue_name)
        if not isinstance(queue, IndexedQueue):
            super().change_message_visibility(queue_name, receipt_handle, visibility_timeout)
            return
        message = queue.with_handle(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid
        if (
            unix_time_millis() + int(visibility_timeout) * 1000 - (message.sent_timestamp or 0)
            > _MAX_TOTAL_VISIBILITY_MS
        ):
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                "VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        message.change_visibility(visibility_timeout)
        queue.hide(message)
        if message.visible and message in queue.pending_messages:
            queue.pending_messages.remove(message)

    def purge_queue(self, queue_name: str) -> None:
        """moto's, forgetting the indexes with the messages."""
        super().purge_queue(queue_name)
        queue = self.get_queue(queue_name)
        if isinstance(queue, IndexedQueue):
            queue.forget_all()
