"""The events queue against the sandbox's SQS: batched deletes, several batches at once."""

from __future__ import annotations

from aws_reconciler.backends.events import EventQueue
from aws_reconciler_sandbox import SandboxServer


def test_a_burst_of_deletes_removes_every_message_and_counts_those_the_queue_refused(sandbox: SandboxServer) -> None:
    sqs = sandbox.client("sqs")
    url = sqs.create_queue(QueueName="event-queue-deletes")["QueueUrl"]
    for start in range(0, 35, 10):
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "{}"} for i in range(min(10, 35 - start))]
        )
    receipts: list[str] = []
    while len(receipts) < 35:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300).get("Messages")
        assert messages, f"the queue ran dry at {len(receipts)} of 35"
        receipts += [m["ReceiptHandle"] for m in messages]
    queue = EventQueue(client=sqs, queue_url=url, visibility_timeout=300)
    assert queue.delete([*receipts, "not-a-receipt-handle"]) == 1
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "0",
    )
