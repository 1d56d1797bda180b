"""The realism policy on its own: a seed, a hand-driven clock and a table of calls in, decisions out."""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from aws_reconciler_sandbox import add_sandbox_parser
from aws_reconciler_sandbox.cli import realism_from_args
from aws_reconciler_sandbox.faults import Decision, ErrorAnswer
from aws_reconciler_sandbox.realism import (
    BUCKETS,
    CAPACITY_REASONS,
    PASS,
    PROFILES,
    START_FAILURES,
    Call,
    FaultRule,
    Realism,
    RealismSettings,
    TokenBucket,
)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


ACCOUNT = "123456789012"
DESCRIBE = Call("ecs", "DescribeTasks", ACCOUNT, "us-east-1")
LIST = Call("ecs", "ListTasks", ACCOUNT, "us-east-1")
RUN = Call("ecs", "RunTask", ACCOUNT, "us-east-1")
SUBMIT = Call("batch", "SubmitJob", ACCOUNT, "us-east-1")


def policy(clock: Clock | None = None, **settings: Any) -> Realism:
    return Realism(RealismSettings().changed(**settings), clock=clock or Clock())


def codes(decisions: Iterable[Decision]) -> list[str | None]:
    return [d.error.code if d.error else None for d in decisions]


# ---------------------------------------------------------------------------- kind is kind


def test_the_kind_profile_never_strikes() -> None:
    realism = Realism(PROFILES["kind"])
    calls = [DESCRIBE, LIST, RUN, SUBMIT, Call("logs", "GetLogEvents")]
    assert all(realism.decide(call) is PASS for call in calls * 200)
    assert realism.lag("ecs") == realism.lag("batch") == 0
    assert realism.capacity_failures(10) == [None] * 10
    assert realism.start_failure("ecs") is None and not realism.hold_runnable()
    assert realism.injected() == {}
    assert not PROFILES["kind"].active and PROFILES["realistic"].active


# ---------------------------------------------------------------------------- token buckets


@pytest.mark.parametrize(
    ("burst", "rate", "steps", "expected"),
    [
        # (seconds to advance, tokens to take) -> taken?
        (2, 1, [(0, 1), (0, 1), (0, 1)], [True, True, False]),
        (2, 1, [(0, 2), (0.5, 1), (0.5, 1)], [True, False, True]),  # half a token is not one
        (2, 1, [(0, 2), (10, 1), (0, 1), (0, 1)], [True, True, True, False]),  # refill stops at the burst
        (100, 20, [(0, 10)] * 10 + [(0, 1), (0.05, 1)], [True] * 10 + [False, True]),
        (5, 1, [(0, 6)], [False]),  # more than the burst never fits
    ],
)
def test_token_bucket(burst: float, rate: float, steps: list[tuple[float, int]], expected: list[bool]) -> None:
    from aws_reconciler_sandbox.realism import BucketShape

    now = 0.0
    bucket = TokenBucket(BucketShape("b", burst, rate), now)
    taken = []
    for advance, tokens in steps:
        now += advance
        taken.append(bucket.take(now, tokens))
    assert taken == expected


def test_describe_and_list_share_a_bucket_of_100_refilled_at_20_per_second() -> None:
    clock = Clock()
    realism = policy(clock, throttling=True)
    decisions = [realism.decide(DESCRIBE if i % 2 else LIST) for i in range(101)]
    assert codes(decisions) == [None] * 100 + ["ThrottlingException"]
    assert decisions[-1].error == ErrorAnswer("ThrottlingException", "Rate exceeded", 400)
    assert not decisions[-1].execute
    # Other buckets, accounts and regions are untouched.
    assert realism.decide(RUN) == PASS
    assert realism.decide(Call("ecs", "DescribeTasks", "210987654321", "us-east-1")) == PASS
    assert realism.decide(Call("ecs", "DescribeTasks", ACCOUNT, "eu-west-1")) == PASS
    assert realism.decide(Call("ecs", "DescribeClusters", ACCOUNT, "us-east-1")) == PASS  # no bucket
    clock.advance(1 / 20)
    assert codes(realism.decide(DESCRIBE) for _ in range(2)) == [None, "ThrottlingException"]
    assert realism.injected() == {"throttled ecs:DescribeTasks": 1, "throttled ecs:ListTasks": 1}


@pytest.mark.parametrize(
    ("call", "allowed", "code", "status"),
    [
        (RUN, 100, "ThrottlingException", 400),
        (Call("ecs", "StopTask", ACCOUNT, "us-east-1"), 100, "ThrottlingException", 400),
        (SUBMIT, 50, "TooManyRequestsException", 429),
        (Call("ecs", "RegisterTaskDefinition", ACCOUNT, "us-east-1"), 20, "ThrottlingException", 400),
    ],
)
def test_buckets_have_aws_burst_and_answer(call: Call, allowed: int, code: str, status: int) -> None:
    realism = policy(throttling=True)
    decisions = [realism.decide(call) for _ in range(allowed + 1)]
    assert codes(decisions) == [None] * allowed + [code]
    assert decisions[-1].error is not None and decisions[-1].error.status == status


def test_fargate_launches_draw_one_token_per_task() -> None:
    clock = Clock()
    realism = policy(clock, throttling=True)
    ten = Call.of("ecs", "RunTask", ACCOUNT, "us-east-1", {"launchType": "FARGATE", "count": 10})
    assert ten.fargate_launches == 10
    assert codes(realism.decide(ten) for _ in range(11)) == [None] * 10 + ["ThrottlingException"]
    clock.advance(10 / BUCKETS["ecs-fargate-launch"].rate)
    assert realism.decide(ten) == PASS
    ec2 = Call.of("ecs", "RunTask", ACCOUNT, "us-east-1", {"launchType": "EC2", "count": 10})
    spot = Call.of(
        "ecs", "RunTask", ACCOUNT, "us-east-1", {"capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT"}]}
    )
    assert (ec2.fargate_launches, spot.fargate_launches) == (0, 1)


def test_run_task_throttles_can_come_disguised() -> None:
    realism = policy(throttling=True, disguised_throttle=100)
    [*_, throttled] = [realism.decide(RUN) for _ in range(101)]
    assert throttled.error is not None
    assert throttled.error.code == "InvalidParameterException" and "Rate exceeded" in throttled.error.message
    # Only RunTask disguises its throttling.
    [*_, listed] = [realism.decide(LIST) for _ in range(101)]
    assert listed.error is not None and listed.error.code == "ThrottlingException"


# ---------------------------------------------------------------------------- faults by percentage


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("throttle", Decision(error=ErrorAnswer("ThrottlingException", "Rate exceeded", 400), execute=False)),
        (
            "5xx",
            Decision(
                error=ErrorAnswer("ServerException", "Service Unavailable. Please try again later.", 500), execute=False
            ),
        ),
        (
            "phantom",
            Decision(error=ErrorAnswer("ServerException", "Service Unavailable. Please try again later.", 500)),
        ),
        ("timeout", Decision(hold=65.0)),
        ("reset", Decision(execute=False, reset=True)),
    ],
)
def test_each_fault_kind_decides_so(kind: str, expected: Decision) -> None:
    realism = policy(faults=[f"ecs:DescribeTasks:{kind}=100"])
    assert realism.decide(DESCRIBE) == expected
    assert realism.decide(LIST) == PASS
    assert realism.injected() == {f"{kind} ecs:DescribeTasks": 1}


def test_batch_and_other_services_answer_in_their_own_words() -> None:
    realism = policy(faults=["*:throttle=100", "logs:GetLogEvents:5xx=100"])
    assert codes([realism.decide(SUBMIT)]) == ["TooManyRequestsException"]
    assert codes([realism.decide(Call("logs", "GetLogEvents"))]) == ["InternalFailure"]


@pytest.mark.parametrize(
    ("service", "operation", "expected"),
    [
        ("ecs", "RunTask", "ecs:RunTask"),
        ("batch", "RunTask", "RunTask"),  # not the ECS rule: it names its service
        ("ecs", "ListTasks", "ListTasks"),
        ("ecs", "StopTask", "*"),
        ("logs", "GetLogEvents", "*"),
    ],
)
def test_the_most_specific_rule_applies(service: str, operation: str, expected: str) -> None:
    settings = RealismSettings().changed(
        faults=["*:5xx=1", "RunTask:5xx=2", "ecs:RunTask:5xx=3", "ListTasks:phantom=4"]
    )
    rule = settings.rule_for(service, operation)
    assert rule is not None and rule.operation == expected


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("*:5xx=1", FaultRule("*", server_error=1)),
        ("ecs:RunTask:phantom=2,timeout=0.5", FaultRule("ecs:RunTask", phantom=2, timeout=0.5)),
        ("ListTasks:throttle=3, reset=4", FaultRule("ListTasks", throttle=3, reset=4)),
        ("StopTask:", FaultRule("StopTask")),
    ],
)
def test_fault_rules_read_and_write_back(text: str, rule: FaultRule) -> None:
    assert FaultRule.parse(text) == rule
    assert FaultRule.parse(rule.spec()) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5xx=1", "expected OPERATION:KIND"),
        ("*:boom=1", "'boom=1' is not KIND=PERCENT"),
        ("*:5xx=many", "'many' is not a number"),
        ("*:5xx=101", "fault * 5xx: 101 is not a percentage"),
        ("*:5xx=60,phantom=50", "add up to more than 100"),
        ("a:b:c:5xx=1", "must be '*', 'Operation' or 'service:Operation'"),
    ],
)
def test_bad_fault_rules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        FaultRule.parse(text)


def test_percentages_hold_over_many_calls_and_the_seed_replays_them() -> None:
    def run(seed: int, **extra: Any) -> list[str | None]:
        realism = policy(seed=seed, faults=["ecs:ListTasks:5xx=20,phantom=5"], **extra)
        return codes(realism.decide(LIST) for _ in range(4000))

    first = run(7)
    counts = Counter(first)
    assert 3000 - 150 < counts[None] < 3000 + 150  # 75% pass
    assert first == run(7)  # the same seed: the same calls fail
    assert first != run(8)
    # Streams are per behaviour: switching latency on does not move the faults.
    assert first == run(7, latency_ms=10, latency_p99_ms=100)


# ---------------------------------------------------------------------------- latency


def test_latency_is_log_normal_from_median_and_p99() -> None:
    realism = policy(latency_ms=40, latency_p99_ms=400)
    delays = [realism.decide(LIST).delay for _ in range(5000)]
    assert 0.036 < statistics.median(delays) < 0.044
    p99 = sorted(delays)[int(len(delays) * 0.99)]
    assert 0.3 < p99 < 0.55
    assert max(delays) <= 5 * 0.4  # the far tail is capped
    constant = policy(latency_ms=25)
    assert {constant.decide(RUN).delay for _ in range(10)} == {0.025}


# ---------------------------------------------------------------------------- per task or job


def test_lag_windows_are_drawn_within_the_window() -> None:
    realism = policy(ecs_lag_rate=100, ecs_lag=3, batch_lag_rate=50, batch_lag=5)
    ecs = [realism.lag("ecs") for _ in range(500)]
    assert all(0 < lag <= 3 for lag in ecs)
    batch = [realism.lag("batch") for _ in range(1000)]
    assert 400 < sum(1 for lag in batch if lag > 0) < 600
    assert all(0 <= lag <= 5 for lag in batch)
    assert realism.injected()["lag ecs"] == 500


def test_capacity_start_and_runnable_draws() -> None:
    realism = policy(capacity_failure_rate=30, start_failure_rate=100, runnable_hold_rate=100)
    reasons = [r for _ in range(100) for r in realism.capacity_failures(10)]
    failed = [r for r in reasons if r is not None]
    assert 240 < len(failed) < 360
    assert set(failed) == set(CAPACITY_REASONS)
    assert realism.start_failure("ecs") in START_FAILURES
    assert realism.hold_runnable()
    assert realism.injected()["capacity ecs:RunTask"] == len(failed)


def test_reset_replays_from_the_seed() -> None:
    realism = policy(seed=3, faults=["*:5xx=50"], ecs_lag_rate=50, ecs_lag=1)
    first = (codes(realism.decide(LIST) for _ in range(50)), [realism.lag("ecs") for _ in range(20)])
    realism.reset()
    assert realism.injected() == {}
    assert (codes(realism.decide(LIST) for _ in range(50)), [realism.lag("ecs") for _ in range(20)]) == first


# ---------------------------------------------------------------------------- settings


def test_changes_merge_fault_rules_by_operation() -> None:
    settings = PROFILES["realistic"].changed(faults=["ecs:RunTask:phantom=20", "*:5xx=2"], seed=9)
    assert settings.seed == 9
    assert [rule.spec() for rule in settings.faults] == ["*:5xx=2", "ecs:RunTask:phantom=20"]
    assert RealismSettings().changed(**settings.to_dict()) == settings  # the control API's round trip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ecs_lag_rate": 150}, "ecs_lag_rate: 150 is not a percentage"),
        ({"ecs_lag": -1}, "ecs_lag: -1 must be a number of at least 0"),
        ({"latency_ms": "fast"}, "latency_ms: 'fast' must be a number"),
        ({"seed": 1.5}, "seed: 1.5 must be a whole number"),
        ({"lag": 1}, "unknown realism setting\\(s\\): lag"),
        ({"faults": [{"operation": "*", "boom": 1}]}, "unknown field\\(s\\) boom"),
    ],
)
def test_bad_settings_name_the_setting(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RealismSettings().changed(**changes)
    with pytest.raises(ValueError, match="more than one rule"):
        RealismSettings(faults=(FaultRule("*", server_error=1), FaultRule("*", phantom=1)))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sandbox_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sandbox", *argv])


def test_cli_flags_override_the_profile() -> None:
    assert realism_from_args(parse()) == PROFILES["kind"]
    assert realism_from_args(parse("--profile", "realistic")) == PROFILES["realistic"]
    settings = realism_from_args(
        parse(
            "--profile",
            "realistic",
            "--seed",
            "42",
            "--no-throttling",
            "--ecs-lag",
            "10",
            "--fault",
            "ecs:RunTask:phantom=20",
            "--fault",
            "*:5xx=3",
        )
    )
    assert settings == PROFILES["realistic"].changed(
        seed=42, throttling=False, ecs_lag=10, faults=["ecs:RunTask:phantom=20", "*:5xx=3"]
    )
    assert realism_from_args(parse("--throttling", "--latency-ms", "5")) == RealismSettings(
        throttling=True, latency_ms=5
    )


def test_cli_rejects_bad_values_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="aws-reconciler sandbox: start_failure_rate: 200 is not a percentage"):
        realism_from_args(parse("--start-failure-rate", "200"))
    with pytest.raises(SystemExit):
        parse("--fault", "RunTask:boom=1")
    assert "'boom=1' is not KIND=PERCENT" in capsys.readouterr().err
