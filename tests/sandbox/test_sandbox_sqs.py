"""The sandbox's SQS on a deep queue: what a receive and a delete cost no longer depends on the
queue's depth (``sqs.IndexedQueue``), and the semantics the reconciler relies on still hold:
visibility timeouts, receipt handles, batch delete results, message attributes, the approximate
counts, redrive to the dead-letter queue after ``maxReceiveCount`` receives, FIFO groups.

Nothing here is timed: a visibility timeout either outlasts the test (300 s) or is 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from aws_reconciler_sandbox import SandboxServer
from aws_reconciler_sandbox.sqs import IndexedQueue
from support.waiting import wait_for

REGION = "us-east-1"
DEPTH = 1000
HIDDEN = 300  # seconds: longer than any test here


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(region=REGION) as server:
        yield server


@pytest.fixture
def sqs(sandbox: SandboxServer) -> Iterator[Any]:
    sandbox.reset()
    yield sandbox.client("sqs")


def fill(sqs: Any, url: str, n: int, **extra: Any) -> list[str]:
    """Send ``n`` messages (bodies ``"0"``, ``"1"``...); their ids, in sending order."""
    ids: list[str] = []
    for start in range(0, n, 10):
        entries = [{"Id": str(i), "MessageBody": str(i), **extra} for i in range(start, min(start + 10, n))]
        sent = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        ids += [m["MessageId"] for m in sorted(sent["Successful"], key=lambda m: int(m["Id"]))]
    return ids


def receive(sqs: Any, url: str, *, visibility: int = HIDDEN, n: int = 10, **extra: Any) -> list[dict[str, Any]]:
    return list(
        sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=n,
            VisibilityTimeout=visibility,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            **extra,
        ).get("Messages", [])
    )


def counts(sqs: Any, url: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed)."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    visible, hidden, delayed = (int(attributes[name]) for name in names)
    return visible, hidden, delayed


def delete(sqs: Any, url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    return dict(sqs.delete_message_batch(QueueUrl=url, Entries=entries))


def ids_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["MessageId"] for m in messages]


def test_the_sandbox_serves_indexed_queues(sandbox: SandboxServer, sqs: Any) -> None:
    from moto.sqs.models import sqs_backends

    sqs.create_queue(QueueName="deep")
    assert isinstance(sqs_backends["123456789012"][REGION].queues["deep"], IndexedQueue)


def test_a_deep_queue_keeps_visibility_receipts_and_counts(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="deep")["QueueUrl"]
    ids = fill(sqs, url, DEPTH)
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=900)
    assert counts(sqs, url) == (DEPTH, 0, 1)

    first, second = receive(sqs, url), receive(sqs, url)
    assert len(set(ids_of(first + second))) == 20 and set(ids_of(first + second)) <= set(ids)
    assert counts(sqs, url) == (DEPTH - 20, 20, 1)

    # Deleting: every handle of the batch succeeds; one never given fails, alone.
    result = delete(sqs, url, first)
    assert sorted(int(s["Id"]) for s in result["Successful"]) == list(range(10)) and not result.get("Failed")
    bogus = sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": "x", "ReceiptHandle": "not-a-handle"}])
    assert [(f["Id"], f["Code"]) for f in bogus["Failed"]] == [("x", "ReceiptHandleIsInvalid")]
    with pytest.raises(ClientError) as invalid:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle="not-a-handle", VisibilityTimeout=0)
    assert invalid.value.response["Error"]["Code"] == "ReceiptHandleIsInvalid"
    assert counts(sqs, url) == (DEPTH - 20, 10, 1)

    # The second batch's visibility ends early: received again (a second time), with new handles.
    for message in second:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    wait_for(lambda: counts(sqs, url)[1] == 0, what="the second batch to be visible again")
    received: dict[str, dict[str, Any]] = {}
    while batch := receive(sqs, url):
        assert not set(ids_of(batch)) & set(received), "a message in flight was received again"
        received.update((m["MessageId"], m) for m in batch)
        delete(sqs, url, batch)
    assert set(received) == set(ids) - set(ids_of(first))
    assert {received[m]["Attributes"]["ApproximateReceiveCount"] for m in ids_of(second)} == {"2"}
    assert {m["ReceiptHandle"] for m in second}.isdisjoint(received[m]["ReceiptHandle"] for m in ids_of(second))
    assert counts(sqs, url) == (0, 0, 1)


def test_message_attributes_on_a_deep_queue(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="attributes")["QueueUrl"]
    attributes = {"ERROR_CODE": {"DataType": "String", "StringValue": "NO_PERMISSIONS"}}
    fill(sqs, url, DEPTH, MessageAttributes=attributes)

    bare = receive(sqs, url, visibility=0, n=1)  # boto3 checks the MD5s of body and attributes
    named = receive(sqs, url, visibility=0, n=1, MessageAttributeNames=["All"])

    assert "MessageAttributes" not in bare[0]
    assert named[0]["MessageId"] == bare[0]["MessageId"] and named[0]["MessageAttributes"] == attributes


def test_redrive_to_the_dead_letter_queue_after_max_receives(sqs: Any) -> None:
    dlq_url = sqs.create_queue(QueueName="deep-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName="deep",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})},
    )["QueueUrl"]
    fill(sqs, url, DEPTH)

    # Visibility 0: a message received and not deleted is there again at once.
    once, twice = receive(sqs, url, visibility=0), receive(sqs, url, visibility=0)
    assert ids_of(once) == ids_of(twice)
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in twice} == {"2"}

    # A third receive finds them received twice already: to the dead-letter queue, and others instead.
    third = receive(sqs, url)
    assert set(ids_of(third)).isdisjoint(ids_of(once))
    assert counts(sqs, url) == (DEPTH - 20, 10, 0)
    assert counts(sqs, dlq_url) == (10, 0, 0)
    dead = receive(sqs, dlq_url)
    assert sorted(ids_of(dead)) == sorted(ids_of(once))
    assert not delete(sqs, dlq_url, dead).get("Failed")
    assert counts(sqs, dlq_url) == (0, 0, 0)
    # The handles the source queue gave are no longer the source queue's.
    with pytest.raises(ClientError):
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=twice[0]["ReceiptHandle"], VisibilityTimeout=0)


def test_a_fifo_group_waits_while_one_of_its_messages_is_in_flight(sqs: Any) -> None:
    url = sqs.create_queue(
        QueueName="deep.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )["QueueUrl"]
    fill(sqs, url, DEPTH, MessageGroupId="a")
    sqs.send_message(QueueUrl=url, MessageBody="b", MessageGroupId="b")

    [first] = receive(sqs, url, n=1)
    others = receive(sqs, url)

    assert first["Body"] == "0"
    assert [m["Body"] for m in others] == ["b"]  # group a waits while "0" is in flight
    delete(sqs, url, [first])
    assert [m["Body"] for m in receive(sqs, url, n=2)] == ["1", "2"]


def test_purging_a_deep_queue_forgets_its_messages_and_handles(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="deep")["QueueUrl"]
    fill(sqs, url, DEPTH)
    in_flight = receive(sqs, url)

    sqs.purge_queue(QueueUrl=url)

    assert counts(sqs, url) == (0, 0, 0)
    assert receive(sqs, url) == []
    assert [f["Code"] for f in delete(sqs, url, in_flight)["Failed"]] == ["ReceiptHandleIsInvalid"] * 10
