"""EventBridge in the sandbox: ECS and Batch state changes as AWS emits them, delivered into SQS.

AWS puts an "ECS Task State Change" event on the account's default event bus for every change
of a task, and a "Batch Job State Change" event for every status change of a job; a rule whose
pattern matches sends each to its targets, and an SQS target receives the event's envelope, as
JSON, as the message body. The shims call ``EventBridge.emit`` where a task or job changes
(one place per service); ``EventBridge`` matches the event against the rules moto holds (users
create them with boto3, or with ``provision_event_queue``, which makes what
``deploy/events/cloudformation.yaml`` makes) and delivers it to their SQS queues from a thread of
its own, so that the task runner never waits for a delivery.

Why not moto's own ``PutEvents``: moto 5.2.5 matches patterns (also on ``detail`` fields) and
sends to SQS targets, but it delivers to DISABLED rules too, leaves ``account`` out of the body,
never checks the queue's policy, and delivers at once, exactly once, in order. The rule table
and moto's ``EventPattern`` matching are reused; the delivery is done here.

The realism policy decides each event's fate (``Realism.event_fate``): a delay, a duplicate (the
same event id twice), a reordering (held back until the next event of the same task or job has
overtaken it) or a loss. Delays keep the order of one task's events; only ``event_reorder``
changes it. Times run on the sandbox's clock, so tests drive them by hand.

Deliveries obey the queue's access policy as SQS does for EventBridge: a queue whose policy does
not let ``events.amazonaws.com`` ``sqs:SendMessage`` for the rule (a queue without a policy, a
condition naming another rule) receives nothing; the event goes to the target's dead-letter queue
if it has one, and the refusal is counted and logged once: on AWS that is how events get lost.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .motoenv import MOTO_LOCK
from .realism import Realism

__all__ = [
    "BATCH_DETAIL_TYPE",
    "BATCH_SOURCE",
    "DEAD_LETTER_MAX_RECEIVES",
    "DEAD_LETTER_RETENTION",
    "ECS_DETAIL_TYPE",
    "ECS_SOURCE",
    "QUEUE_RETENTION",
    "REORDER_HOLD",
    "EventBridge",
    "EventResourceNames",
    "batch_event_pattern",
    "ecs_event_pattern",
    "event_time",
    "iso_millis",
    "provision_event_queue",
    "queue_policy_allows",
]

log = logging.getLogger(__name__)

ECS_SOURCE = "aws.ecs"
ECS_DETAIL_TYPE = "ECS Task State Change"
BATCH_SOURCE = "aws.batch"
BATCH_DETAIL_TYPE = "Batch Job State Change"
_SERVICE_OF = {ECS_SOURCE: "ecs", BATCH_SOURCE: "batch"}
#: Longest a reordered event waits for a later one of its task or job (seconds of the sandbox's clock).
REORDER_HOLD = 1.0
#: Receives of a message before SQS moves it to the dead-letter queue (``provision_event_queue``).
DEAD_LETTER_MAX_RECEIVES = 5
#: How long the events queue keeps a message (a day: after a longer outage a resync repairs the rows).
QUEUE_RETENTION = 86400
#: How long the dead-letter queue keeps one (the longest SQS allows).
DEAD_LETTER_RETENTION = 1209600
_EVENTS_PRINCIPAL = "events.amazonaws.com"
# Without pending events the thread sleeps until told; with some, it looks at the clock at least
# this often, so that a clock driven by hand (tests) is noticed.
_MAX_WAIT = 0.05
# As deploy/events/cloudformation.yaml allows: "<deployment>-batch-events-dlq" fits SQS's 80 characters.
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,35}$")


def iso_millis(value: datetime) -> str:
    """A timestamp as EventBridge renders it inside ``detail``: ``2026-12-01T18:00:00.123Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_time(value: datetime) -> str:
    """The envelope's ``time``: whole seconds, ``2026-12-01T18:00:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ecs_event_pattern(cluster_arns: Sequence[str]) -> dict[str, Any]:
    """The pattern of a rule for the task state changes of these clusters."""
    return {"source": [ECS_SOURCE], "detail-type": [ECS_DETAIL_TYPE], "detail": {"clusterArn": list(cluster_arns)}}


def batch_event_pattern(job_queue_arns: Sequence[str]) -> dict[str, Any]:
    """The pattern of a rule for the job state changes of these job queues."""
    return {"source": [BATCH_SOURCE], "detail-type": [BATCH_DETAIL_TYPE], "detail": {"jobQueue": list(job_queue_arns)}}


# ---------------------------------------------------------------------- queue policies


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _names_events(principal: Any) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, Mapping):
        named = _listed(principal.get("Service")) + _listed(principal.get("AWS"))
        return any(p in ("*", _EVENTS_PRINCIPAL) for p in named)
    return False


def _like(patterns: Any, value: str, *, ignore_case: bool = False) -> bool:
    if ignore_case:
        value = value.lower()
    return any(
        isinstance(p, str) and fnmatch.fnmatchcase(value, p.lower() if ignore_case else p) for p in _listed(patterns)
    )


def _condition_holds(operator: str, wanted: Any, actual: str) -> bool | None:
    """One condition of an IAM policy on a value of the request; None for an operator not read here."""
    negated = "Not" in operator
    base = operator.replace("IfExists", "").replace("Not", "")
    if base in ("StringEquals", "ArnEquals", "Bool"):
        held = actual in [str(w).lower() if base == "Bool" else str(w) for w in _listed(wanted)]
    elif base == "StringEqualsIgnoreCase":
        held = actual.lower() in [str(w).lower() for w in _listed(wanted)]
    elif base in ("StringLike", "ArnLike"):
        held = _like(wanted, actual)
    else:
        return None
    return held != negated


def _conditions_hold(condition: Any, context: Mapping[str, str], *, unknown: bool) -> bool:
    """Whether every condition holds for EventBridge's request; one on a key or with an operator
    not read here counts as ``unknown`` (True for an Allow, False for a Deny: the lenient side)."""
    if not isinstance(condition, Mapping):
        return True
    for operator, entries in condition.items():
        if not isinstance(entries, Mapping):
            return unknown
        for key, wanted in entries.items():
            actual = context.get(str(key).lower())
            held = _condition_holds(str(operator), wanted, actual) if actual is not None else None
            if not (unknown if held is None else held):
                return False
    return True


def queue_policy_allows(policy: str | Mapping[str, Any] | None, *, queue_arn: str, rule_arn: str) -> bool:
    """Whether a queue's access ``policy`` lets EventBridge send it the events of ``rule_arn``.

    As SQS decides it for the ``events.amazonaws.com`` principal: an Allow statement naming the
    principal (or ``*``), ``sqs:SendMessage`` (wildcards too) and the queue (or ``*``) whose
    conditions hold, and no Deny statement that does the same. The conditions read are
    ``aws:SourceArn`` (the rule), ``aws:SourceAccount`` (the rule's account) and
    ``aws:SecureTransport`` (true: EventBridge sends over TLS); others hold for an Allow and not
    for a Deny. No policy: only the queue's own account may send, so EventBridge may not.
    """
    if not policy:
        return False
    try:
        document = json.loads(policy) if isinstance(policy, str) else policy
    except ValueError:
        return False
    statements = document.get("Statement") if isinstance(document, Mapping) else None
    context = {
        "aws:sourcearn": rule_arn,
        "aws:sourceaccount": rule_arn.split(":")[4] if rule_arn.count(":") >= 5 else "",
        "aws:securetransport": "true",
    }
    allowed = False
    for statement in _listed(statements or []):
        if not isinstance(statement, Mapping):
            continue
        effect = statement.get("Effect")
        applies = (
            _names_events(statement.get("Principal"))
            and _like(statement.get("Action"), "sqs:sendmessage", ignore_case=True)
            and _like(statement.get("Resource", "*"), queue_arn)
            and _conditions_hold(statement.get("Condition"), context, unknown=effect == "Allow")
        )
        if applies and effect == "Deny":
            return False
        allowed = allowed or (applies and effect == "Allow")
    return allowed


# ---------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class _Target:
    queue_arn: str
    rule_arn: str
    group_id: str | None  # SqsParameters.MessageGroupId, for FIFO queues
    dead_letter_arn: str | None  # DeadLetterConfig.Arn: where an undeliverable event goes

    @classmethod
    def of(cls, rule: Any, target: Mapping[str, Any]) -> _Target:
        return cls(
            queue_arn=str(target["Arn"]),
            rule_arn=str(rule.arn),
            group_id=(target.get("SqsParameters") or {}).get("MessageGroupId"),
            dead_letter_arn=(target.get("DeadLetterConfig") or {}).get("Arn"),
        )


@dataclass(frozen=True)
class _Refusal:
    """Why a queue did not take an event: EventBridge's error code for its dead-letter queue, and words."""

    code: str
    message: str


@dataclass(eq=False)
class _Pending:
    """One event on its way to the queues its rules matched."""

    due: float
    key: str  # the task ARN or job id: delays keep the order of its events
    body: str
    targets: tuple[_Target, ...]
    copies: int
    reorder: bool
    release_at: float | None = None  # while held back for a later event to overtake it


@dataclass
class _Counts:
    matched: int = 0
    lost: int = 0
    sent: int = 0
    refused: int = 0
    dead_lettered: int = 0
    refusals: set[tuple[str, str]] = field(default_factory=set)  # (queue, rule) already logged


class EventBridge:
    """The default event bus of every account and region, as far as ECS and Batch events go.

    ``emit`` is called by the shims under ``MOTO_LOCK``, where a task or job changes: it matches
    the event at once (AWS matches when it ingests an event), draws its fate and queues it;
    ``start`` runs the delivery thread, which takes ``MOTO_LOCK`` only to put messages into the
    queues. Without rules on the bus nothing is built at all.
    """

    def __init__(self, realism: Realism) -> None:
        self._realism = realism
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Pending]] = []
        self._held: dict[str, _Pending] = {}
        self._last_due: dict[str, float] = {}
        self._pending_of: dict[str, int] = {}
        self._in_flight = 0
        self._generation = 0
        self._order = itertools.count()
        self._counts = _Counts()
        self._thread: threading.Thread | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the delivery thread."""
        with self._cond:
            if self._thread is not None:
                return
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="aws-reconciler-sandbox-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the delivery thread; events not yet delivered are dropped (the sandbox is stopping)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._closing = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout=10)
        self.reset()

    def reset(self) -> None:
        """Forget every event not yet delivered and the counts (sandbox or moto reset)."""
        with self._cond:
            self._heap.clear()
            self._held.clear()
            self._last_due.clear()
            self._pending_of.clear()
            self._generation += 1
            self._counts = _Counts()
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        """``matched``: events some enabled rule matched; ``lost``: of those, lost (``event_loss``);
        ``pending``: not delivered yet (``held`` of them held back for reordering); ``sent``:
        messages put into queues (duplicates count twice); ``refused``: deliveries a queue's policy
        refused or whose queue is gone; ``dead_lettered``: of those, sent to the target's
        dead-letter queue instead."""
        with self._cond:
            counts = self._counts
            return {
                "matched": counts.matched,
                "lost": counts.lost,
                "pending": len(self._heap) + len(self._held) + self._in_flight,
                "held": len(self._held),
                "sent": counts.sent,
                "refused": counts.refused,
                "dead_lettered": counts.dead_lettered,
            }

    # ------------------------------------------------------------------ emitting (under MOTO_LOCK)

    def emit(
        self,
        *,
        source: str,
        detail_type: str,
        account_id: str,
        region: str,
        resource: str,
        key: str,
        time: datetime,
        detail: Callable[[], dict[str, Any]],
    ) -> None:
        """One event of ``resource`` (``key``: its task ARN or job id). ``detail`` builds the
        detail; it is called only when the bus has rules. The caller holds ``MOTO_LOCK``."""
        rules = self._rules(account_id, region)
        if not rules:
            return
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": source,
            "account": account_id,
            "time": event_time(time),
            "region": region,
            "resources": [resource],
            "detail": detail(),
        }
        targets = tuple(
            _Target.of(rule, target)
            for rule in rules
            if rule.event_pattern.matches_event(event)
            for target in rule.targets
            if str(target.get("Arn", "")).startswith("arn:") and str(target["Arn"]).split(":")[2] == "sqs"
        )
        if not targets:
            return
        fate = self._realism.event_fate(_SERVICE_OF.get(source, source))
        now = self._realism.now()
        with self._cond:
            self._counts.matched += 1
            if fate.lost:
                self._counts.lost += 1
                return
            # Never before an earlier event of the same task: only reordering changes the order.
            due = max(now + fate.delay, self._last_due.get(key, now))
            self._last_due[key] = due
            self._pending_of[key] = self._pending_of.get(key, 0) + 1
            item = _Pending(
                due=due,
                key=key,
                body=json.dumps(event, separators=(",", ":")),
                targets=targets,
                copies=2 if fate.duplicate else 1,
                reorder=fate.reorder,
            )
            heapq.heappush(self._heap, (due, next(self._order), item))
            self._cond.notify_all()

    @staticmethod
    def _rules(account_id: str, region: str) -> list[Any]:
        """The enabled rules of the default bus, without creating moto's backend."""
        from moto.backends import get_backend

        per_account = dict.get(get_backend("events"), account_id)
        backend = dict.get(per_account, region) if per_account is not None else None
        bus = backend.event_buses.get("default") if backend is not None else None
        if bus is None:
            return []
        return [rule for rule in bus.rules.values() if rule.state == "ENABLED" and rule.targets]

    # ------------------------------------------------------------------ delivery thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    ready = self._take_ready(self._realism.now())
                    if ready:
                        break
                    self._cond.wait(self._wait_time())
                self._in_flight += len(ready)
                generation = self._generation
            try:
                with MOTO_LOCK:
                    for item in ready:
                        self._deliver(item, generation)
            except Exception:  # the bus must outlive anything one delivery meets
                log.exception("sandbox: event delivery failed")
            finally:
                with self._cond:
                    self._in_flight -= len(ready)
                    self._cond.notify_all()

    def _wait_time(self) -> float | None:
        if not self._heap and not self._held:
            return None
        return _MAX_WAIT

    def _take_ready(self, now: float) -> list[_Pending]:
        """The events to deliver now, in order (under ``_cond``)."""
        ready: list[_Pending] = []
        while self._heap and self._heap[0][0] <= now:
            item = heapq.heappop(self._heap)[2]
            self._done_with(item.key)
            held = self._held.pop(item.key, None)
            if held is not None:
                ready += [item, held]  # the later event overtakes the one held back for it
            elif item.reorder:
                item.release_at = now + REORDER_HOLD
                self._held[item.key] = item
            else:
                ready.append(item)
        for key, held in list(self._held.items()):
            if held.release_at is not None and held.release_at <= now:
                ready.append(self._held.pop(key))  # nothing came to overtake it
        return ready

    def _done_with(self, key: str) -> None:
        left = self._pending_of.get(key, 0) - 1
        if left > 0:
            self._pending_of[key] = left
        else:
            self._pending_of.pop(key, None)
            self._last_due.pop(key, None)

    def _deliver(self, item: _Pending, generation: int) -> None:
        """Put the event into each target queue (under ``MOTO_LOCK``); an event a queue refuses goes
        to the target's dead-letter queue, if it has one, as EventBridge does with errors it does
        not retry (a missing queue, no permission)."""
        with self._cond:
            if generation != self._generation:
                return  # reset meanwhile: the event belonged to state that is gone
        sent = refused = dead_lettered = 0
        for target in item.targets:
            copies, refusal = _send(target.queue_arn, target.rule_arn, item.body, item.copies, target.group_id)
            sent += copies
            if refusal is None:
                continue
            refused += 1
            self._warn_once(target, refusal)
            if target.dead_letter_arn:
                attributes = {
                    "RULE_ARN": target.rule_arn,
                    "TARGET_ARN": target.queue_arn,
                    "ERROR_CODE": refusal.code,
                    "ERROR_MESSAGE": refusal.message,
                }
                _copies, lost = _send(target.dead_letter_arn, target.rule_arn, item.body, 1, None, attributes)
                dead_lettered += lost is None
        with self._cond:
            self._counts.sent += sent
            self._counts.refused += refused
            self._counts.dead_lettered += dead_lettered

    def _warn_once(self, target: _Target, refusal: _Refusal) -> None:
        with self._cond:
            first = (target.queue_arn, target.rule_arn) not in self._counts.refusals
            self._counts.refusals.add((target.queue_arn, target.rule_arn))
        if first:
            log.warning(
                "sandbox: EventBridge cannot deliver rule %s's events to %s: %s",
                target.rule_arn,
                target.queue_arn,
                refusal.message,
            )


def _send(
    queue_arn: str,
    rule_arn: str,
    body: str,
    copies: int,
    group_id: str | None,
    attributes: Mapping[str, str] | None = None,
) -> tuple[int, _Refusal | None]:
    """Put ``copies`` of the message into the queue as EventBridge would (under ``MOTO_LOCK``):
    how many went in, and why not (all of) them."""
    from moto.sqs.models import sqs_backends

    _, _, _, region, account, name = (queue_arn.split(":", 5) + [""] * 6)[:6]
    per_account = dict.get(sqs_backends, account)
    backend = dict.get(per_account, region) if per_account is not None else None
    queue = backend.queues.get(name) if backend is not None else None
    if backend is None or queue is None:
        return 0, _Refusal("RESOURCE_NOT_FOUND", f"the queue {queue_arn} does not exist")
    if not queue_policy_allows(queue.policy, queue_arn=queue_arn, rule_arn=rule_arn):
        return 0, _Refusal(
            "NO_PERMISSIONS", f"the policy of {queue_arn} does not let {_EVENTS_PRINCIPAL} sqs:SendMessage for the rule"
        )
    message_attributes = {k: {"DataType": "String", "StringValue": v} for k, v in (attributes or {}).items()}
    sent = 0
    try:
        for _ in range(copies):
            backend.send_message(
                queue_name=name, message_body=body, message_attributes=message_attributes or None, group_id=group_id
            )
            sent += 1
    except Exception as exc:  # e.g. a FIFO queue without a message group: refused, as on AWS
        return sent, _Refusal("SDK_CLIENT_ERROR", f"{type(exc).__name__}: {exc}")
    return sent, None


# ---------------------------------------------------------------------- provisioning


@dataclass(frozen=True)
class EventResourceNames:
    """What ``provision_event_queue``, like ``deploy/events/cloudformation.yaml``, names one
    service's event resources of a deployment."""

    queue: str
    dead_letter_queue: str
    rule: str
    target_id: str = "events-queue"

    @classmethod
    def of(cls, deployment: str, service: str) -> EventResourceNames:
        """``<deployment>-<service>-events`` (the queue and the rule) and ``...-events-dlq``, for
        ``service`` ``"ecs"`` or ``"batch"``; ``ValueError`` for a deployment name SQS cannot carry."""
        if service not in ("ecs", "batch"):
            raise ValueError(f"service must be 'ecs' or 'batch', not {service!r}")
        if not _DEPLOYMENT.match(deployment):
            raise ValueError(
                f"deployment {deployment!r}: 1-36 letters, digits, '-' and '_', starting with a letter or digit "
                "(it names SQS queues)"
            )
        base = f"{deployment}-{service}-events"
        return cls(queue=base, dead_letter_queue=f"{base}-dlq", rule=base)


def _arn_of(ref: str, *, partition: str, service: str, region: str, account: str, kind: str) -> str:
    return ref if ref.startswith("arn:") else f"arn:{partition}:{service}:{region}:{account}:{kind}/{ref}"


def provision_event_queue(
    *,
    endpoint_url: str,
    region: str,
    deployment: str,
    clusters: Iterable[str] = (),
    job_queues: Iterable[str] = (),
    access_key_id: str = "testing",
    secret_access_key: str = "testing",
) -> str:
    """Create, the AWS way, what carries one backend's state-change events of a deployment to its
    queue, as ``deploy/events/cloudformation.yaml`` does; return the queue's URL (what
    ``events_queue_url`` is set to).

    Give ``clusters`` (names or ARNs) for the ECS queue or ``job_queues`` (names or ARNs) for the
    Batch queue; call it twice for both. For ``<deployment>-ecs-events`` (``-batch-events``):

    - SQS queue ``<deployment>-ecs-events`` (retention 1 day, long polling 20 s) with the
      dead-letter queue ``<deployment>-ecs-events-dlq`` (retention 14 days) in its
      ``RedrivePolicy``, ``maxReceiveCount`` 5;
    - EventBridge rule ``<deployment>-ecs-events`` on the default bus, pattern
      ``ecs_event_pattern(cluster ARNs)`` (``batch_event_pattern(job queue ARNs)``), its target
      ``events-queue`` the queue, with the dead-letter queue for events it cannot deliver;
    - on both queues the policy letting ``events.amazonaws.com`` ``sqs:SendMessage`` for that rule
      only, and refusing unencrypted transport.

    Idempotent: a second call updates the pattern. ``ValueError`` for neither or both of
    ``clusters`` and ``job_queues``, or a deployment name that cannot name the queues.
    """
    from .resources import _client

    clusters, job_queues = list(clusters), list(job_queues)
    if bool(clusters) == bool(job_queues):
        raise ValueError(
            "provision_event_queue: give clusters (the ECS queue) or job_queues (the Batch queue), one of them"
        )
    names = EventResourceNames.of(deployment, "ecs" if clusters else "batch")
    sqs = _client("sqs", endpoint_url, region, access_key_id, secret_access_key)
    events = _client("events", endpoint_url, region, access_key_id, secret_access_key)
    identity = _client("sts", endpoint_url, region, access_key_id, secret_access_key).get_caller_identity()
    account, partition = str(identity["Account"]), str(identity["Arn"]).split(":")[1]
    if clusters:
        pattern = ecs_event_pattern(
            [
                _arn_of(c, partition=partition, service="ecs", region=region, account=account, kind="cluster")
                for c in clusters
            ]
        )
        what = "ECS Task State Change of its clusters"
    else:
        pattern = batch_event_pattern(
            [
                _arn_of(q, partition=partition, service="batch", region=region, account=account, kind="job-queue")
                for q in job_queues
            ]
        )
        what = "Batch Job State Change of its job queues"

    def queue_arn(url: str) -> str:
        return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])

    dlq_url = str(sqs.create_queue(QueueName=names.dead_letter_queue)["QueueUrl"])
    dlq_arn = queue_arn(dlq_url)
    url = str(sqs.create_queue(QueueName=names.queue)["QueueUrl"])
    arn = queue_arn(url)
    rule_arn = str(
        events.put_rule(
            Name=names.rule,
            EventPattern=json.dumps(pattern),
            State="ENABLED",
            Description=f"{what} (aws-reconciler {deployment}), to its SQS queue",
        )["RuleArn"]
    )
    events.put_targets(
        Rule=names.rule,
        Targets=[
            {
                "Id": names.target_id,
                "Arn": arn,
                "RetryPolicy": {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 185},
                "DeadLetterConfig": {"Arn": dlq_arn},
            }
        ],
    )
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "EventBridgeSendsThisRulesEvents",
                    "Effect": "Allow",
                    "Principal": {"Service": _EVENTS_PRINCIPAL},
                    "Action": "sqs:SendMessage",
                    "Resource": [arn, dlq_arn],
                    "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                },
                {
                    "Sid": "DenyUnencryptedTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "sqs:*",
                    "Resource": [arn, dlq_arn],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
            ],
        }
    )
    # Set after creation, so that a second call (the queues exist) changes them too.
    sqs.set_queue_attributes(
        QueueUrl=dlq_url, Attributes={"Policy": policy, "MessageRetentionPeriod": str(DEAD_LETTER_RETENTION)}
    )
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "Policy": policy,
            "MessageRetentionPeriod": str(QUEUE_RETENTION),
            "ReceiveMessageWaitTimeSeconds": "20",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(DEAD_LETTER_MAX_RECEIVES)}
            ),
        },
    )
    return url
