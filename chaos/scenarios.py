"""The scenarios, their short (CI) and long variants, and the seeded plan of one run.

A :class:`Scenario` says how much load and how much trouble; :func:`plan_run` draws, from one
seed, everything random about a run before it starts: when each task arrives and how it behaves,
which tasks the scheduler revokes, when the scheduler-side executors die and how, how long each
reconciler leader lives before it is killed and with which signal, and the sandbox's own seed.
The same seed gives the same plan (``tests/chaos/test_chaos_plans.py``), so a failing run replays
its conditions with ``python -m chaos.run --seed N``; thread and process timing still varies,
which is why the suite checks invariants rather than a recorded history.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

__all__ = [
    "BACKENDS",
    "BROKEN_ON_PURPOSE",
    "LONG",
    "SHORT",
    "Arrival",
    "Behaviour",
    "ExecutorKill",
    "ReconcilerKill",
    "RunPlan",
    "Scenario",
    "Timing",
    "plan_run",
    "variant",
]

BACKENDS = ("ecs", "batch")

#: Faults by percentage on every call the reconciler makes that matters, 20% in all per
#: operation (the issue's goal); the realistic profile's mix stays on for every other call.
TWENTY_PERCENT = "throttle=5,5xx=5,phantom=4,timeout=2,reset=4"
FAULTED_OPERATIONS = (
    "ecs:RunTask",
    "ecs:DescribeTasks",
    "ecs:ListTasks",
    "ecs:StopTask",
    "batch:SubmitJob",
    "batch:DescribeJobs",
    "batch:ListJobs",
    "batch:TerminateJob",
    "batch:CancelJob",
)


@dataclass(frozen=True)
class Timing:
    """The reconciler's settings in the suite: the product's, compressed so that a run of many
    kills takes minutes (a SIGKILLed leader's lease must run out before anyone leads again).

    Kept consistent with the product's rules: ``renew_deadline + aws_call_timeout <
    lease_duration``; Batch's ``lookup_delay`` above the realistic profile's ListJobs lag (5 s);
    ``missing_grace`` far above its DescribeTasks lag (3 s).
    """

    reconcile_interval: float = 0.5
    resync_interval: float = 3.0
    orphan_grace: float = 5.0
    lease_duration: float = 5.0
    renew_deadline: float = 3.0
    retry_period: float = 0.5
    aws_call_timeout: float = 1.5
    backoff_base: float = 0.5
    backoff_max: float = 5.0
    missing_grace: float = 30.0
    lookup_delay: float = 8.0
    runnable_timeout: float = 20.0
    #: The anti-entropy resync of events mode (the product's 600 s, compressed).
    events_resync_interval: float = 8.0
    #: How often polling describes a running task (the product's 30 s, compressed).
    running_describe_interval: float = 2.0
    #: How often the modelled scheduler heartbeats its executors.
    heartbeat: float = 0.5

    @property
    def takeover_bound(self) -> float:
        """What leader.py promises after a SIGKILL: ``lease_duration + retry_period``."""
        return self.lease_duration + self.retry_period

    @property
    def generous_takeover_bound(self) -> float:
        """What the short run asserts (twice the promise: processes start slowly on a busy machine)."""
        return 2 * self.takeover_bound

    def reconciler_env(self) -> dict[str, str]:
        """These settings as ``aws-reconciler run`` reads them."""
        core = {
            "RECONCILE_INTERVAL": self.reconcile_interval,
            "RESYNC_INTERVAL": self.resync_interval,
            "ORPHAN_GRACE": self.orphan_grace,
            "LEASE_DURATION": self.lease_duration,
            "RENEW_DEADLINE": self.renew_deadline,
            "RETRY_PERIOD": self.retry_period,
            "AWS_CALL_TIMEOUT": self.aws_call_timeout,
            "BACKOFF_BASE": self.backoff_base,
            "BACKOFF_MAX": self.backoff_max,
            "MISSING_GRACE": self.missing_grace,
            "EVENTS_RESYNC_INTERVAL": self.events_resync_interval,
            "RUNNING_DESCRIBE_INTERVAL": self.running_describe_interval,
        }
        batch = {"LOOKUP_DELAY": self.lookup_delay, "RUNNABLE_TIMEOUT": self.runnable_timeout}
        return {
            **{f"AIRFLOW__AWS_RECONCILER__{k}": f"{v:g}" for k, v in core.items()},
            **{f"AIRFLOW__AWS_RECONCILER_BATCH__{k}": f"{v:g}" for k, v in batch.items()},
        }


@dataclass(frozen=True)
class Scenario:
    """How much load and trouble one scenario brings (both backends run side by side)."""

    name: str
    summary: str
    tasks: dict[str, int]  # backend -> task instances
    replicas: int  # 1: the one reconciler is killed and restarted; 2: the leader is killed
    sigkills: int
    sigterms: int = 0
    executor_kills: int = 0
    #: Extra ``aws-reconciler sandbox --fault`` rules on top of the realistic profile.
    faults: tuple[str, ...] = ()
    #: Further ``aws-reconciler sandbox`` arguments (realism flags over the profile's values).
    sandbox_args: tuple[str, ...] = ()
    #: Seconds a leader runs before it is killed, drawn uniformly.
    uptime: tuple[float, float] = (0.5, 6.0)
    #: Share of tasks that run long (15-30 s), and of those the share the scheduler revokes.
    long_share: float = 0.08
    revoke_share: float = 0.5
    #: Share of tasks whose container exits 1 (a failed task).
    failing_share: float = 0.15
    #: How the reconcilers observe: ``poll``, or ``events`` (EventBridge -> SQS, both backends).
    observation: str = "poll"
    timing: Timing = field(default_factory=Timing)

    def load_seconds(self) -> float:
        """About how long the kills take: the span over which tasks arrive."""
        up = sum(self.uptime) / 2
        down = self.timing.takeover_bound if self.replicas == 1 else 0.0
        return max(20.0, self.sigkills * (up + down + 1.0) + self.sigterms * (up + 1.0))


_FAULTS = tuple(f"{operation}:{TWENTY_PERCENT}" for operation in FAULTED_OPERATIONS)

LONG: tuple[Scenario, ...] = (
    Scenario(
        "kills",
        "one reconciler, SIGKILLed at random points and restarted; executors killed and adopted",
        tasks={"ecs": 500, "batch": 200},
        replicas=1,
        sigkills=50,
        executor_kills=10,
    ),
    Scenario(
        "faults",
        "20% faults on every reconciler call that matters, a few SIGKILLs and executor kills",
        tasks={"ecs": 200, "batch": 150},
        replicas=1,
        sigkills=5,
        executor_kills=5,
        faults=_FAULTS,
    ),
    Scenario(
        "ha",
        "two replicas, the leader killed under load (SIGKILL, and SIGTERM which releases the lease)",
        tasks={"ecs": 150, "batch": 100},
        replicas=2,
        sigkills=10,
        sigterms=4,
        executor_kills=3,
        uptime=(2.0, 8.0),
    ),
    Scenario(
        "events",
        "observation by events: 5% of events lost, 10% delivered twice, 10% reordered; SIGKILLs and executor kills",
        tasks={"ecs": 200, "batch": 100},
        replicas=1,
        sigkills=10,
        executor_kills=3,
        observation="events",
        sandbox_args=("--event-loss", "5", "--event-duplicate", "10", "--event-reorder", "10"),
    ),
)

#: What ``make test`` runs: the same scenarios, small enough for a few minutes in CI.
SHORT: tuple[Scenario, ...] = (
    dataclasses.replace(LONG[0], tasks={"ecs": 50, "batch": 25}, sigkills=5, executor_kills=2),
    dataclasses.replace(LONG[1], tasks={"ecs": 40, "batch": 25}, sigkills=1, executor_kills=1),
    dataclasses.replace(LONG[2], tasks={"ecs": 30, "batch": 20}, sigkills=2, sigterms=1, executor_kills=1),
    dataclasses.replace(LONG[3], tasks={"ecs": 40, "batch": 20}, sigkills=2, executor_kills=1),
)


#: Not a guarantee but a check of the instrument: Batch resubmitting an ambiguous SubmitJob
#: without waiting out ListJobs' lag (``lookup_delay`` 0) must be caught running two jobs of one
#: name, which is what the lookup delay exists to prevent.
BROKEN_ON_PURPOSE = Scenario(
    "broken-on-purpose",
    "Batch without its lookup delay, every job hidden from ListJobs for a while, 30% phantom SubmitJobs",
    tasks={"batch": 30},
    replicas=1,
    sigkills=0,
    faults=("batch:SubmitJob:phantom=30",),
    sandbox_args=("--batch-lag-rate", "100"),
    long_share=0.0,
    timing=Timing(lookup_delay=0.0),
)


def variant(long: bool) -> tuple[Scenario, ...]:
    """The long or the short variant."""
    return LONG if long else SHORT


@dataclass(frozen=True)
class Behaviour:
    """What one task's container does (the chaos task image reads it from its environment)."""

    seconds: float
    exit_code: int

    def environment(self) -> dict[str, str]:
        """The container environment that makes the task image behave so."""
        return {"CHAOS_SECONDS": f"{self.seconds:.2f}", "CHAOS_EXIT": str(self.exit_code)}


@dataclass(frozen=True)
class Arrival:
    """One task instance the scheduler queues at ``at`` seconds into the run."""

    at: float
    backend: str
    task_id: str
    behaviour: Behaviour
    #: Seconds after queueing when the scheduler revokes it (stuck in queued), or None.
    revoke_after: float | None = None
    #: When revoked: seconds until the try is queued again, and how it behaves then.
    requeue_after: float = 1.0
    requeued: Behaviour | None = None


@dataclass(frozen=True)
class ExecutorKill:
    """The scheduler dies at ``at``: ``lose_queued`` before it hands its queued workloads to the
    executors (Airflow then resets them), else after a heartbeat and before it read the events."""

    at: float
    lose_queued: bool


@dataclass(frozen=True)
class ReconcilerKill:
    """The leader runs ``uptime`` seconds, then gets ``signal`` (``SIGKILL`` or ``SIGTERM``)."""

    uptime: float
    signal: str


@dataclass(frozen=True)
class RunPlan:
    """Everything random about one run, drawn before it starts."""

    seed: int
    sandbox_seed: int
    arrivals: tuple[Arrival, ...]
    executor_kills: tuple[ExecutorKill, ...]
    reconciler_kills: tuple[ReconcilerKill, ...]
    load_seconds: float


def _behaviour(rng: random.Random, scenario: Scenario, *, long: bool) -> Behaviour:
    seconds = rng.uniform(15.0, 30.0) if long else rng.uniform(0.2, 3.0)
    return Behaviour(round(seconds, 2), 1 if rng.random() < scenario.failing_share else 0)


def plan_run(scenario: Scenario, seed: int) -> RunPlan:
    """The plan of one run of ``scenario`` with ``seed`` (pure: the same seed, the same plan)."""
    rng = random.Random(f"chaos:{seed}:{scenario.name}")
    span = scenario.load_seconds()
    # Most tasks arrive one by one; two bursts test launch budgets and rate limits.
    bursts = sorted(rng.uniform(0.1, 0.8) * span for _ in range(2))
    arrivals: list[Arrival] = []
    for backend in BACKENDS:
        for n in range(scenario.tasks.get(backend, 0)):
            at = rng.choice(bursts) if rng.random() < 0.3 else rng.uniform(0.0, span)
            long = rng.random() < scenario.long_share
            revoke = long and rng.random() < scenario.revoke_share
            arrivals.append(
                Arrival(
                    at=round(at, 3),
                    backend=backend,
                    task_id=f"{backend}_{n:04d}",
                    behaviour=_behaviour(rng, scenario, long=long),
                    revoke_after=round(rng.uniform(3.0, 10.0), 2) if revoke else None,
                    requeue_after=round(rng.uniform(0.5, 2.0), 2),
                    requeued=_behaviour(rng, scenario, long=False) if revoke else None,
                )
            )
    arrivals.sort(key=lambda a: (a.at, a.task_id))
    executor_kills = tuple(
        sorted(
            (ExecutorKill(round(rng.uniform(0.05, 0.95) * span, 3), rng.random() < 0.5)
             for _ in range(scenario.executor_kills)),
            key=lambda k: k.at,
        )
    )  # fmt: skip
    signals = ["SIGKILL"] * scenario.sigkills + ["SIGTERM"] * scenario.sigterms
    rng.shuffle(signals)
    kills = tuple(ReconcilerKill(round(rng.uniform(*scenario.uptime), 2), sig) for sig in signals)
    return RunPlan(
        seed=seed,
        sandbox_seed=rng.randrange(2**31),
        arrivals=tuple(arrivals),
        executor_kills=executor_kills,
        reconciler_kills=kills,
        load_seconds=span,
    )
