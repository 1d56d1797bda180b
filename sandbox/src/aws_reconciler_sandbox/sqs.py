"""SQS fidelity shim: long polling that does not stop the sandbox.

moto 5.2.5 serves a ReceiveMessage with ``WaitTimeSeconds`` (or a queue's
``ReceiveMessageWaitTimeSeconds``) by waiting inside its backend for up to 20 s. The sandbox
serves every request under ``MOTO_LOCK``, so one long poll would stop every other call, the task
runner's transitions and the event deliveries that could end the poll. Here a long poll is a
series of short ReceiveMessage calls, each under the lock, with the waits between them outside
it; it answers as soon as a message is there, or empty when the wait is over, as SQS does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from .awsproto import AwsRequest, RawResponse
from .motoenv import MOTO_LOCK

__all__ = ["SqsShim"]

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
