"""How unkind the fake AWS is: one seeded, switchable policy that the HTTP layer and the shims apply.

AWS is eventually consistent, throttles, loses answers, is slow and runs out of capacity. The
sandbox is kind by default (the ``kind`` profile: none of that happens unless a test plans it in
``FaultPlan``); ``RealismSettings`` switches each behaviour on, ``PROFILES["realistic"]`` turns a
sensible mix on. ``Realism`` is the policy: given the settings, a seed and a clock, it answers
what happens to one call (``decide``), to one new task or job (``lag``, ``capacity_failures``,
``start_failure``, ``hold_runnable``) and to one ECS or Batch event on its way to SQS
(``event_fate``). It does no I/O and never sleeps, so it is tested with a
table of calls and a hand-driven clock; ``SandboxApp`` sleeps, resets connections and answers
errors as told, the shims hide tasks and jobs, the runners fail starts.

Every draw comes from random streams derived from the one ``seed``, a stream per behaviour: a
run replays exactly with the same seed and the same order of calls, and switching one behaviour
on does not change the draws of another. Token buckets run on the injected clock.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .faults import Decision, ErrorAnswer

__all__ = [
    "BUCKETS",
    "CAPACITY_REASONS",
    "IMMEDIATE",
    "PASS",
    "PROFILES",
    "START_FAILURES",
    "BucketShape",
    "Call",
    "Clock",
    "EventFate",
    "FaultRule",
    "Realism",
    "RealismSettings",
    "TokenBucket",
]

Clock = Callable[[], float]

PASS = Decision()

#: RunTask ``failures`` reasons AWS gives when there is no room: EC2 container instances without
#: enough CPU or memory, Fargate without capacity in the zone.
CAPACITY_REASONS = (
    "RESOURCE:MEMORY",
    "RESOURCE:CPU",
    "Capacity is unavailable at this time. Please try again later or in a different availability zone",
)
#: ``stoppedReason`` of tasks (``container.reason`` of jobs) that were placed and then never started.
START_FAILURES = (
    "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref: timeout",
    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: "
    "unable to retrieve ecr registry auth: service call has been retried 3 time(s): RequestError: send request "
    "failed caused by: Post https://api.ecr.us-east-1.amazonaws.com/: dial tcp: i/o timeout",
    "Timeout waiting for network interface provisioning to complete.",
)


@dataclass(frozen=True)
class BucketShape:
    """A token bucket as AWS documents it: ``burst`` tokens, refilled at ``rate`` per second."""

    name: str
    burst: float
    rate: float


#: AWS's request quotas (per account and region), from the service quotas pages. An operation
#: not named here is never throttled by a bucket.
BUCKETS: dict[str, BucketShape] = {
    shape.name: shape
    for shape in (
        BucketShape("ecs-run", 100, 40),  # RunTask, StartTask, StopTask
        BucketShape("ecs-describe", 100, 20),  # DescribeTasks, ListTasks, DescribeContainerInstances
        BucketShape("ecs-fargate-launch", 100, 20),  # Fargate tasks launched (one token per task)
        BucketShape("ecs-tag", 20, 10),
        BucketShape("ecs-list-tags", 50, 20),
        BucketShape("ecs-register", 20, 1),
        BucketShape("batch-submit", 50, 50),
    )
}
_BUCKET_OF: dict[tuple[str, str], str] = {
    ("ecs", "RunTask"): "ecs-run",
    ("ecs", "StartTask"): "ecs-run",
    ("ecs", "StopTask"): "ecs-run",
    ("ecs", "DescribeTasks"): "ecs-describe",
    ("ecs", "ListTasks"): "ecs-describe",
    ("ecs", "DescribeContainerInstances"): "ecs-describe",
    ("ecs", "TagResource"): "ecs-tag",
    ("ecs", "ListTagsForResource"): "ecs-list-tags",
    ("ecs", "RegisterTaskDefinition"): "ecs-register",
    ("batch", "SubmitJob"): "batch-submit",
}


class TokenBucket:
    """One bucket's state; refilled lazily from the clock reading passed in."""

    def __init__(self, shape: BucketShape, now: float) -> None:
        self.shape = shape
        self.tokens = float(shape.burst)
        self.last = now

    def take(self, now: float, tokens: int = 1) -> bool:
        """Take ``tokens`` if the bucket holds them; False (and nothing taken) otherwise."""
        elapsed = max(0.0, now - self.last)
        self.tokens = min(float(self.shape.burst), self.tokens + elapsed * self.shape.rate)
        self.last = now
        if self.tokens + 1e-9 < tokens:
            return False
        self.tokens -= tokens
        return True


# CLI and control spelling of a fault kind -> FaultRule field.
_FAULT_KINDS = {
    "throttle": "throttle",
    "5xx": "server_error",
    "phantom": "phantom",
    "timeout": "timeout",
    "reset": "reset",
}


@dataclass(frozen=True)
class FaultRule:
    """Percentages of the calls of ``operation`` that meet each fault.

    ``operation`` is ``"*"`` (every call), ``"RunTask"`` (any service) or ``"ecs:RunTask"``; the
    most specific rule for a call is the only one that applies. ``throttle``: answered with the
    service's throttling error; ``server_error``: a 5xx, not executed; ``phantom``: executed, then
    answered with a 5xx; ``timeout``: executed, the answer held past the client's read timeout;
    ``reset``: the connection closed without an answer, not executed.
    """

    operation: str
    throttle: float = 0.0
    server_error: float = 0.0
    phantom: float = 0.0
    timeout: float = 0.0
    reset: float = 0.0

    def __post_init__(self) -> None:
        if not self.operation or self.operation.count(":") > 1:
            raise ValueError(
                f"fault rule: operation {self.operation!r} must be '*', 'Operation' or 'service:Operation'"
            )
        for kind, name in _FAULT_KINDS.items():
            _check_percent(f"fault {self.operation} {kind}", getattr(self, name))
        if self.total() > 100:
            raise ValueError(f"fault rule {self.spec()}: the percentages add up to more than 100")

    def total(self) -> float:
        """The percentage of calls that meet any fault."""
        return self.throttle + self.server_error + self.phantom + self.timeout + self.reset

    def specificity(self, service: str, operation: str) -> int | None:
        """How closely the rule names ``service:operation`` (higher wins); None if it does not apply."""
        if self.operation == "*":
            return 0
        if ":" in self.operation:
            return 2 if self.operation == f"{service}:{operation}" else None
        return 1 if self.operation == operation else None

    def spec(self) -> str:
        """``OPERATION:KIND=PERCENT,...``, the form ``parse`` reads (zero rates left out)."""
        rates = ",".join(
            f"{kind}={getattr(self, name):g}" for kind, name in _FAULT_KINDS.items() if getattr(self, name)
        )
        return f"{self.operation}:{rates}"

    @classmethod
    def parse(cls, text: str) -> FaultRule:
        """Read ``OPERATION:KIND=PERCENT[,KIND=PERCENT...]``, e.g. ``ecs:RunTask:phantom=2,5xx=1``.

        Kinds: throttle, 5xx, phantom, timeout, reset.
        """
        operation, sep, rates = text.rpartition(":")
        if not sep or not operation:
            raise ValueError(f"fault {text!r}: expected OPERATION:KIND=PERCENT[,KIND=PERCENT...]")
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in rates.split(","))):
            kind, eq, number = item.partition("=")
            if not eq or kind not in _FAULT_KINDS:
                raise ValueError(
                    f"fault {text!r}: {item!r} is not KIND=PERCENT with KIND one of {', '.join(_FAULT_KINDS)}"
                )
            try:
                values[_FAULT_KINDS[kind]] = float(number)
            except ValueError:
                raise ValueError(f"fault {text!r}: {number!r} is not a number") from None
        return cls(operation, **values)

    @classmethod
    def of(cls, value: Any) -> FaultRule:
        """A rule from its ``spec`` string or a mapping of its fields (the control API's JSON)."""
        if isinstance(value, FaultRule):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"fault rule: unknown field(s) {', '.join(sorted(unknown))}")
            return cls(**value)
        raise ValueError(f"fault rule: {value!r} is neither OPERATION:KIND=PERCENT nor an object")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: object) -> str:
    return f"{value:g}" if _is_number(value) else repr(value)


def _check_percent(name: str, value: object) -> None:
    if not (_is_number(value) and 0 <= value <= 100):  # type: ignore[operator]
        raise ValueError(f"{name}: {_shown(value)} is not a percentage (0-100)")


def _setting(default: Any, *, flag: str, help: str, metavar: str | None = None) -> Any:
    # The CLI flags are built from these, so a setting and its flag are declared once.
    return field(default=default, metadata={"flag": flag, "help": help, "metavar": metavar})


@dataclass(frozen=True)
class RealismSettings:
    """Which unkind behaviours are on, and how strongly. The defaults are the ``kind`` profile.

    Percentages are 0-100, durations seconds (latency milliseconds).
    """

    seed: int = _setting(0, flag="--seed", metavar="N", help="seed of every random draw: a run replays with it")
    ecs_lag_rate: float = _setting(
        0.0,
        flag="--ecs-lag-rate",
        metavar="PERCENT",
        help="share of launched ECS tasks that DescribeTasks answers MISSING for and ListTasks omits, for a while",
    )
    ecs_lag: float = _setting(
        0.0, flag="--ecs-lag", metavar="SECONDS", help="longest such window after RunTask (each drawn from 0..this)"
    )
    batch_lag_rate: float = _setting(
        0.0,
        flag="--batch-lag-rate",
        metavar="PERCENT",
        help="share of submitted Batch jobs that ListJobs and DescribeJobs do not see, for a while",
    )
    batch_lag: float = _setting(
        0.0, flag="--batch-lag", metavar="SECONDS", help="longest such window after SubmitJob (each drawn from 0..this)"
    )
    throttling: bool = _setting(
        False, flag="--throttling", help="throttle with AWS's token buckets, per account, region and action group"
    )
    disguised_throttle: float = _setting(
        0.0,
        flag="--disguised-throttle",
        metavar="PERCENT",
        help="share of RunTask throttles answered as InvalidParameterException ... Rate exceeded",
    )
    faults: tuple[FaultRule, ...] = _setting(
        (),
        flag="--fault",
        metavar="OP:KIND=PERCENT,...",
        help="faults by percentage for an operation ('*', 'RunTask', 'ecs:RunTask'); kinds: throttle, 5xx, "
        "phantom, timeout, reset (repeatable; replaces the rule for the same operation)",
    )
    timeout_hold: float = _setting(
        65.0,
        flag="--timeout-hold",
        metavar="SECONDS",
        help="how long a 'timeout' fault holds the answer (longer than the client's read timeout)",
    )
    latency_ms: float = _setting(0.0, flag="--latency-ms", metavar="MS", help="median latency added to every call")
    latency_p99_ms: float = _setting(
        0.0,
        flag="--latency-p99-ms",
        metavar="MS",
        help="99th percentile of that latency (log-normal); at or below the median, every call waits the median",
    )
    capacity_failure_rate: float = _setting(
        0.0,
        flag="--capacity-failure-rate",
        metavar="PERCENT",
        help="share of tasks RunTask does not launch, reported in failures (RESOURCE:*, Capacity is unavailable)",
    )
    start_failure_rate: float = _setting(
        0.0,
        flag="--start-failure-rate",
        metavar="PERCENT",
        help="share of tasks and jobs that stop after provisioning without starting (TaskFailedToStart, no containers)",
    )
    runnable_hold_rate: float = _setting(
        0.0,
        flag="--runnable-hold-rate",
        metavar="PERCENT",
        help="share of Batch jobs held in RUNNABLE, as in a queue without capacity",
    )
    event_delay_ms: float = _setting(
        0.0,
        flag="--event-delay-ms",
        metavar="MS",
        help="median delay from a task's or job's change to its event in the SQS queues of matching rules",
    )
    event_delay_p99_ms: float = _setting(
        0.0,
        flag="--event-delay-p99-ms",
        metavar="MS",
        help="99th percentile of that delay (log-normal); at or below the median, every event waits the median",
    )
    event_duplicate: float = _setting(
        0.0, flag="--event-duplicate", metavar="PERCENT", help="share of events delivered twice (the same event id)"
    )
    event_reorder: float = _setting(
        0.0,
        flag="--event-reorder",
        metavar="PERCENT",
        help="share of events held back until the next event of the same task or job has overtaken them",
    )
    event_loss: float = _setting(
        0.0,
        flag="--event-loss",
        metavar="PERCENT",
        help="share of events never delivered (AWS loses none; a broken rule or a full queue does)",
    )

    def __post_init__(self) -> None:
        for name in _PERCENTAGES:
            _check_percent(name, getattr(self, name))
        for name in (
            "ecs_lag",
            "batch_lag",
            "timeout_hold",
            "latency_ms",
            "latency_p99_ms",
            "event_delay_ms",
            "event_delay_p99_ms",
        ):
            value = getattr(self, name)
            if not (_is_number(value) and value >= 0):
                raise ValueError(f"{name}: {_shown(value)} must be a number of at least 0")
        if not isinstance(self.throttling, bool):
            raise ValueError(f"throttling: {self.throttling!r} must be true or false")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed: {self.seed!r} must be a whole number")
        rules = tuple(FaultRule.of(rule) for rule in self.faults)
        operations = [rule.operation for rule in rules]
        if len(set(operations)) != len(operations):
            raise ValueError(f"faults: more than one rule for the same operation in {operations}")
        object.__setattr__(self, "faults", rules)

    @property
    def active(self) -> bool:
        """Whether any behaviour is on (off, the sandbox is exactly as kind as without this)."""
        return (
            self.throttling
            or self.latency_ms > 0
            or any(rule.total() > 0 for rule in self.faults)
            or (self.ecs_lag_rate > 0 and self.ecs_lag > 0)
            or (self.batch_lag_rate > 0 and self.batch_lag > 0)
            or self.capacity_failure_rate > 0
            or self.start_failure_rate > 0
            or self.runnable_hold_rate > 0
            or self.events_unkind
        )

    @property
    def events_unkind(self) -> bool:
        """Whether ECS and Batch events meet any delay, duplication, reordering or loss."""
        return self.event_delay_ms > 0 or self.event_duplicate > 0 or self.event_reorder > 0 or self.event_loss > 0

    def rule_for(self, service: str, operation: str) -> FaultRule | None:
        """The most specific fault rule for ``service:operation``."""
        best: tuple[int, FaultRule] | None = None
        for rule in self.faults:
            rank = rule.specificity(service, operation)
            if rank is not None and (best is None or rank > best[0]):
                best = (rank, rule)
        return best[1] if best is not None else None

    def changed(self, **changes: Any) -> RealismSettings:
        """A copy with ``changes``; ``faults`` rules replace the rules for the same operations.

        ``ValueError`` naming the setting for an unknown name or a bad value.
        """
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown realism setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "faults" in changes:
            merged = {rule.operation: rule for rule in self.faults}
            merged.update((rule.operation, rule) for rule in map(FaultRule.of, changes["faults"] or ()))
            changes["faults"] = tuple(merged.values())
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: fault rules as their ``spec`` strings."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["faults"] = [rule.spec() for rule in self.faults]
        return values


_PERCENTAGES = (
    "ecs_lag_rate",
    "batch_lag_rate",
    "disguised_throttle",
    "capacity_failure_rate",
    "start_failure_rate",
    "runnable_hold_rate",
    "event_duplicate",
    "event_reorder",
    "event_loss",
)

#: Named mixes. ``kind`` is the sandbox as it always was; ``realistic`` is what a user of AWS meets
#: on an ordinary day, a little compressed so that a demo shows each behaviour.
PROFILES: dict[str, RealismSettings] = {
    "kind": RealismSettings(),
    "realistic": RealismSettings(
        ecs_lag_rate=25.0,
        ecs_lag=3.0,
        batch_lag_rate=25.0,
        batch_lag=5.0,
        throttling=True,
        disguised_throttle=25.0,
        faults=(FaultRule("*", throttle=1.0, server_error=1.0, phantom=0.5, timeout=0.1, reset=0.4),),
        timeout_hold=65.0,
        latency_ms=40.0,
        latency_p99_ms=400.0,
        capacity_failure_rate=2.0,
        start_failure_rate=2.0,
        runnable_hold_rate=1.0,
        event_delay_ms=300.0,
        event_delay_p99_ms=2000.0,
        event_duplicate=2.0,
        event_reorder=2.0,
        event_loss=0.0,
    ),
}


@dataclass(frozen=True)
class EventFate:
    """What happens to one ECS or Batch event between the change and the SQS queues: it waits
    ``delay`` seconds, or is never delivered (``lost``); it arrives twice (``duplicate``, the same
    event id); it is held back until a later event of the same task or job has overtaken it
    (``reorder``)."""

    delay: float = 0.0
    lost: bool = False
    duplicate: bool = False
    reorder: bool = False


#: An event delivered at once, once, in order.
IMMEDIATE = EventFate()


@dataclass(frozen=True)
class Call:
    """One AWS call as the policy sees it."""

    service: str
    operation: str
    account_id: str = ""
    region: str = ""
    #: Fargate tasks a RunTask asks for (they draw on the launch bucket); 0 for anything else.
    fargate_launches: int = 0

    @property
    def key(self) -> str:
        """``service:Operation``."""
        return f"{self.service}:{self.operation or '?'}"

    @classmethod
    def of(cls, service: str, operation: str, account_id: str, region: str, params: Mapping[str, Any]) -> Call:
        """The call for a request with JSON ``params`` (only RunTask's are read)."""
        launches = 0
        if (service, operation) == ("ecs", "RunTask"):
            strategy = params.get("capacityProviderStrategy") or []
            fargate = params.get("launchType") == "FARGATE" or any(
                str((item or {}).get("capacityProvider", "")).startswith("FARGATE") for item in strategy
            )
            count = params.get("count", 1)
            launches = (count if isinstance(count, int) and 1 <= count <= 10 else 1) if fargate else 0
        return cls(service, operation, account_id, region, launches)


def throttle_answer(service: str, operation: str, *, disguised: bool) -> ErrorAnswer:
    """The error AWS throttles ``service:operation`` with."""
    if service == "batch":
        return ErrorAnswer("TooManyRequestsException", "Too Many Requests", 429)
    if disguised:
        # How RunTask reports throttling of the calls it makes on the caller's behalf.
        return ErrorAnswer(
            "InvalidParameterException", "Error retrieving subnet information for the task: Rate exceeded", 400
        )
    return ErrorAnswer("ThrottlingException", "Rate exceeded", 400)


def server_error(service: str) -> ErrorAnswer:
    """A 5xx in the service's words."""
    if service in ("ecs", "batch"):
        return ErrorAnswer("ServerException", "Service Unavailable. Please try again later.", 500)
    return ErrorAnswer("InternalFailure", "We encountered an internal error. Please try again.", 500)


class Realism:
    """The policy (see the module docstring). Thread-safe: request threads share it."""

    def __init__(self, settings: RealismSettings | None = None, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else time.monotonic
        self._lock = threading.Lock()
        self._settings = settings if settings is not None else PROFILES["kind"]
        self._streams: dict[str, random.Random] = {}
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self._injected: Counter[str] = Counter()

    @property
    def settings(self) -> RealismSettings:
        """The settings in force."""
        return self._settings

    def configure(self, settings: RealismSettings) -> None:
        """Put ``settings`` in force: the random streams restart from their seed, buckets are full."""
        with self._lock:
            self._settings = settings
            self._streams.clear()
            self._buckets.clear()

    def reset(self) -> None:
        """As after ``configure`` with the same settings, and the injected counts at zero."""
        with self._lock:
            self._streams.clear()
            self._buckets.clear()
            self._injected.clear()

    def now(self) -> float:
        """The injected clock's reading (seconds; monotonic unless a test drives it)."""
        return self._clock()

    def injected(self) -> dict[str, int]:
        """How often each behaviour struck, keyed ``"<kind> <where>"`` (e.g. ``"phantom ecs:RunTask"``)."""
        with self._lock:
            return dict(self._injected)

    def state(self) -> dict[str, Any]:
        """Settings and counts, for the control API."""
        return {"settings": self._settings.to_dict(), "injected": self.injected()}

    def _stream(self, name: str) -> random.Random:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = random.Random(f"{self._settings.seed}:{name}")
        return stream

    def _strike(self, kind: str, where: str) -> None:
        self._injected[f"{kind} {where}"] += 1

    # ------------------------------------------------------------------ per call

    def decide(self, call: Call) -> Decision:
        """What happens to one call: its latency, and a throttle or fault if one strikes."""
        settings = self._settings
        if not settings.active:
            return PASS
        with self._lock:
            delay = self._latency(settings)
            rule = settings.rule_for(call.service, call.operation)
            # Drawn whether or not a bucket throttles the call, so that the draws do not depend
            # on the clock: the same seed then gives the same faults to the same calls.
            roll = self._stream("faults").uniform(0, 100) if rule is not None and rule.total() > 0 else None
            disguised = (call.service, call.operation) == ("ecs", "RunTask") and (
                self._stream("disguise").uniform(0, 100) < settings.disguised_throttle
            )
            if settings.throttling and self._bucket_throttles(call):
                self._strike("throttled", call.key)
                return Decision(
                    delay=delay, error=throttle_answer(call.service, call.operation, disguised=disguised), execute=False
                )
            if roll is None or rule is None:
                return Decision(delay=delay)
            for kind, rate in (
                ("throttle", rule.throttle),
                ("5xx", rule.server_error),
                ("phantom", rule.phantom),
                ("timeout", rule.timeout),
                ("reset", rule.reset),
            ):
                if roll < rate:
                    self._strike(kind, call.key)
                    return self._fault(kind, call, delay, disguised, settings)
                roll -= rate
            return Decision(delay=delay)

    @staticmethod
    def _fault(kind: str, call: Call, delay: float, disguised: bool, settings: RealismSettings) -> Decision:
        if kind == "throttle":
            return Decision(
                delay=delay, error=throttle_answer(call.service, call.operation, disguised=disguised), execute=False
            )
        if kind == "5xx":
            return Decision(delay=delay, error=server_error(call.service), execute=False)
        if kind == "phantom":
            return Decision(delay=delay, error=server_error(call.service))
        if kind == "timeout":
            return Decision(delay=delay, hold=settings.timeout_hold)
        return Decision(delay=delay, execute=False, reset=True)

    def _latency(self, settings: RealismSettings) -> float:
        return self._log_normal("latency", settings.latency_ms, settings.latency_p99_ms)

    def _log_normal(self, stream_name: str, median_ms: float, p99_ms: float) -> float:
        """Seconds drawn from a log-normal with this median and 99th percentile (milliseconds)."""
        if median_ms <= 0:
            return 0.0
        stream = self._stream(stream_name)
        if p99_ms <= median_ms:
            return median_ms / 1000
        sigma = (math.log(p99_ms) - math.log(median_ms)) / 2.326  # z of the 99th percentile
        # Capped so that one draw from the far tail cannot stall a client for minutes.
        return min(stream.lognormvariate(math.log(median_ms), sigma), 5 * p99_ms) / 1000

    def _bucket_throttles(self, call: Call) -> bool:
        now = self._clock()
        name = _BUCKET_OF.get((call.service, call.operation))
        if name is not None and not self._bucket(call, name, now).take(now):
            return True
        if call.fargate_launches:
            return not self._bucket(call, "ecs-fargate-launch", now).take(now, call.fargate_launches)
        return False

    def _bucket(self, call: Call, name: str, now: float) -> TokenBucket:
        key = (call.account_id, call.region, name)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(BUCKETS[name], now)
        return bucket

    # ------------------------------------------------------------------ per task or job

    def lag(self, service: str) -> float:
        """Seconds a task (``"ecs"``) or job (``"batch"``) just created stays invisible to reads."""
        settings = self._settings
        rate, window = (
            (settings.ecs_lag_rate, settings.ecs_lag)
            if service == "ecs"
            else (settings.batch_lag_rate, settings.batch_lag)
        )
        if rate <= 0 or window <= 0:
            return 0.0
        with self._lock:
            stream = self._stream(f"lag:{service}")
            hit = stream.uniform(0, 100) < rate
            seconds = window * (1.0 - stream.random())  # in (0, window]
            if not hit:
                return 0.0
            self._strike("lag", service)
            return seconds

    def capacity_failures(self, count: int) -> list[str | None]:
        """For each of the ``count`` tasks of a RunTask: the failure reason, or None if it launches."""
        if self._settings.capacity_failure_rate <= 0:
            return [None] * count
        with self._lock:
            stream = self._stream("capacity")
            reasons: list[str | None] = []
            for _ in range(count):
                hit = stream.uniform(0, 100) < self._settings.capacity_failure_rate
                reason = stream.choice(CAPACITY_REASONS)
                reasons.append(reason if hit else None)
                if hit:
                    self._strike("capacity", "ecs:RunTask")
            return reasons

    def start_failure(self, service: str) -> str | None:
        """The reason a new task or job will fail to start after provisioning, or None."""
        return self._chance(self._settings.start_failure_rate, "start", service, START_FAILURES)

    def hold_runnable(self) -> bool:
        """Whether a new Batch job is held in RUNNABLE."""
        return self._chance(self._settings.runnable_hold_rate, "runnable-hold", "batch", ("held",)) is not None

    # ------------------------------------------------------------------ per event

    def event_fate(self, service: str) -> EventFate:
        """What happens to one event of ``service`` (``"ecs"``, ``"batch"``) on its way to SQS.

        Each behaviour draws from its own stream whenever it is on, whatever the others drew, so
        that switching loss on does not change which events are delayed, duplicated or reordered.
        """
        settings = self._settings
        if not settings.events_unkind:
            return IMMEDIATE
        with self._lock:
            delay = self._log_normal("event-delay", settings.event_delay_ms, settings.event_delay_p99_ms)
            duplicate = self._roll("event-duplicate", settings.event_duplicate)
            reorder = self._roll("event-reorder", settings.event_reorder)
            if self._roll("event-loss", settings.event_loss):
                self._strike("event-loss", service)
                return EventFate(lost=True)
            for kind, struck in (("event-duplicate", duplicate), ("event-reorder", reorder)):
                if struck:
                    self._strike(kind, service)
            return EventFate(delay=delay, duplicate=duplicate, reorder=reorder)

    def _roll(self, stream_name: str, rate: float) -> bool:
        return rate > 0 and self._stream(stream_name).uniform(0, 100) < rate

    def _chance(self, rate: float, kind: str, where: str, outcomes: Iterable[str]) -> str | None:
        if rate <= 0:
            return None
        with self._lock:
            stream = self._stream(kind)
            hit = stream.uniform(0, 100) < rate
            outcome = stream.choice(tuple(outcomes))
            if not hit:
                return None
            self._strike(kind, where)
            return outcome
