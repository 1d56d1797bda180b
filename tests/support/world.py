"""One reconciler scenario's world, on ECS or on Batch (no fixtures here: see ``tests/conftest.py``).

A :class:`World` holds the sandbox, the settings (read from an environment only), a migrated store,
a fake clock and the engines built on them through the product's factory. A scenario queues rows the
way the executor does, runs cycles, injects faults and asks the fake AWS what was launched and
stopped in words both backends share; the :class:`Adapter` of each backend says what those words
mean there (ECS: cluster, task ARN, clientToken, StopTask; Batch: job queue, job id, job name,
CancelJob / TerminateJob).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from botocore.exceptions import ClientError
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.engine import make_url

from aws_reconciler.backends.base import TaskBackend
from aws_reconciler.backends.batch.descriptor import BATCH
from aws_reconciler.backends.client import aws_client_config
from aws_reconciler.backends.descriptor import BackendDescriptor
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler.config import Settings
from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.model import Backend, Clock, Phase, TiKey
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.events import EventFeed
from aws_reconciler.reconciler.factory import build_backend, controller_settings, event_queue, lease_name
from aws_reconciler.reconciler.leader import LeaderElector
from aws_reconciler.reconciler.manager import Manager
from aws_reconciler.store import LeaseStore, NewTask, TaskRecord, TaskStore, Waker, create_store_engine, migrate
from aws_reconciler.store.lease import Fence

from .scenario import Crash, FakeClock
from .stores import make_settings

if TYPE_CHECKING:
    # Imported where used: the sandbox pulls in moto, which most test runs never need.
    from aws_reconciler_sandbox import SandboxServer

REGION = "us-east-1"
DEPLOYMENT = "airflow"
CANNOT_PULL = "CannotPullContainerError: pull image manifest has been retried 5 time(s)"

#: The calls a scenario names without naming the backend; the adapter maps them to its API.
VERBS = ("launch", "describe", "list")


@dataclass(frozen=True)
class Launched:
    """A task (ECS) or job (Batch) as the fake AWS holds it."""

    id: str  # task ARN / job id: the row's external_id
    key: str  # what makes a launch attempt idempotent: clientToken / job name
    identity: dict[str, Any]  # the backend's launch identity (see Adapter.identity)
    tags: dict[str, str]
    command: list[str] | None  # the workload's command as launched
    live: bool  # neither stopped nor finished
    stopped_by: str | None  # the stop call AWS records: StopTask, CancelJob or TerminateJob
    reason: str  # why it stopped, in AWS's words (stoppedReason / statusReason)
    raw: dict[str, Any]  # the sandbox's snapshot, for what only one backend has


class Adapter:
    """What a scenario's words mean on one backend. Subclasses fill in the class attributes."""

    name: ClassVar[str]
    descriptor: ClassVar[BackendDescriptor]
    operations: ClassVar[dict[str, str]]  # verb -> AWS operation
    stop_operations: ClassVar[tuple[str, ...]]
    launch_method: ClassVar[str]  # the client method of a launch
    # A retry of a launch whose outcome is unknown: its first call (ECS: RunTask again, the same
    # clientToken returning what the lost call started; Batch: ListJobs by the attempt's job name).
    retry_method: ClassVar[str]
    retry_sends_launch: ClassVar[bool]
    throttle: ClassVar[dict[str, Any]]  # how AWS refuses a call for its rate: code, message, status
    max_attempts_env: ClassVar[str]
    gone_words: ClassVar[str]  # in a row's reason when its task/job no longer exists
    definition_gone: ClassVar[tuple[str, str]]  # a terminal launch error: code, message
    describe_batch: ClassVar[str]  # where the ids-per-describe-call constant lives
    events_target: ClassVar[str]  # provision_event_queue's argument naming the targets

    @property
    def kind(self) -> Backend:
        return self.descriptor.kind

    @property
    def service(self) -> str:
        return self.descriptor.service

    def bootstrap(self, sandbox: SandboxServer) -> dict[str, str]:
        """A clean account's resources and the settings that reach them."""
        raise NotImplementedError

    def is_retry_call(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether a call of ``retry_method`` with ``kwargs`` is a retry's (not discovery's)."""
        return True

    def throttled(self, operation: str) -> ClientError:
        """The error botocore raises when AWS refuses ``operation`` for its rate."""
        error = {"Code": self.throttle["code"], "Message": self.throttle["message"]}
        meta = {"HTTPStatusCode": self.throttle["status"]}
        return ClientError({"Error": error, "ResponseMetadata": meta}, operation)

    def attempt_key(self, record_id: str, attempt: int) -> str:
        """The idempotency key of a (short-id) row's launch attempt."""
        raise NotImplementedError

    def identity(self, record_id: str, attempt: int) -> dict[str, Any]:
        """What a launch of the attempt must carry besides the tags and the command."""
        raise NotImplementedError

    def valid_key(self, key: str) -> bool:
        """Whether AWS accepts ``key`` as an idempotency key."""
        raise NotImplementedError

    def stop_for(self, *, running: bool) -> str:
        """The call that stops a task or job that is waiting (not ``running``) or running."""
        raise NotImplementedError

    def stops(self, *, waiting: int = 0, running: int = 0) -> dict[str, int]:
        """The stop calls AWS sees for that many waiting and running tasks (zeros left out)."""
        counts: dict[str, int] = {}
        for n, is_running in ((waiting, False), (running, True)):
            if n:
                op = self.stop_for(running=is_running)
                counts[op] = counts.get(op, 0) + n
        return counts

    def everything(self, sandbox: SandboxServer) -> list[Launched]:
        """Every task or job in the sandbox, oldest first."""
        raise NotImplementedError

    def set_running(self, sandbox: SandboxServer, external_id: str) -> None:
        raise NotImplementedError

    def set_exited(self, sandbox: SandboxServer, external_id: str, exit_code: int) -> None:
        """Its container ran and exited with ``exit_code`` (0: success)."""
        raise NotImplementedError

    def set_failed_to_start(self, sandbox: SandboxServer, external_id: str, how: str) -> None:
        """Stopped before its container started: ``how`` is "failed-to-start" (the platform could
        not set it up: ResourceInitializationError) or "cannot-pull" (CannotPullContainerError)."""
        raise NotImplementedError

    def finish_stop(self, sandbox: SandboxServer, external_id: str) -> None:
        """A task or job we stopped is seen stopped (its container handled SIGTERM and exited 0)."""
        raise NotImplementedError

    def start_foreign(self, world: World, *, tags: dict[str, str] | None, **where: Any) -> str:
        """A launch behind the reconciler's back, looking like ours but for ``tags`` and ``where``
        (ECS: ``started_by``; Batch: ``queue``, ``name``)."""
        raise NotImplementedError

    def lookalikes(self, world: World) -> dict[str, str]:
        """Foreign launches this backend must tell from its own beyond the tags (never stopped)."""
        raise NotImplementedError

    def lagging(self, client: Any, *, clock: Clock) -> Lagging:
        """``client`` as AWS answers right after a launch: what ``hidden`` names does not exist yet."""
        raise NotImplementedError

    def observe_by_events(self, sandbox: SandboxServer, aws: Mapping[str, str]) -> dict[str, str]:
        """Provision this backend's events queue (as deploy/events/ does) and the settings that use it."""
        from aws_reconciler_sandbox import provision_event_queue

        section = self.descriptor.settings_of(make_settings("sqlite://", **aws))
        where = {self.events_target: section.targets}
        url = provision_event_queue(endpoint_url=sandbox.endpoint_url, region=REGION, deployment=DEPLOYMENT, **where)
        prefix = f"AIRFLOW__{section.section.upper()}__"
        return {f"{prefix}OBSERVATION": "events", f"{prefix}EVENTS_QUEUE_URL": url}


class Lagging:
    """A client to which the tasks/jobs in ``hidden`` do not exist yet (eventual consistency)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.hidden: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Intercepted:
    """A boto3 client whose ``method`` runs through ``around(call, **kwargs)``; the rest is the client's."""

    def __init__(self, client: Any, method: str, around: Callable[..., Any]) -> None:
        self._client = client
        real = getattr(client, method)
        setattr(self, method, lambda **kwargs: around(real, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# ---- ECS ---------------------------------------------------------------------------------------


class _LaggingEcs(Lagging):
    """DescribeTasks answers MISSING for hidden tasks and ListTasks omits them, as ECS does for a
    while after RunTask."""

    def describe_tasks(self, **kwargs: Any) -> Any:
        response = self._client.describe_tasks(**kwargs)
        tasks = [t for t in response.get("tasks") or [] if t["taskArn"] not in self.hidden]
        missing = [{"arn": arn, "reason": "MISSING"} for arn in kwargs["tasks"] if arn in self.hidden]
        return {**response, "tasks": tasks, "failures": [*(response.get("failures") or []), *missing]}

    def list_tasks(self, **kwargs: Any) -> Any:
        response = self._client.list_tasks(**kwargs)
        return {**response, "taskArns": [a for a in response.get("taskArns") or [] if a not in self.hidden]}


class EcsAdapter(Adapter):
    name = "ecs"
    descriptor = ECS
    events_target = "clusters"
    operations = {"launch": "RunTask", "describe": "DescribeTasks", "list": "ListTasks"}
    stop_operations = ("StopTask",)
    launch_method = "run_task"
    retry_method = "run_task"
    retry_sends_launch = True
    throttle = {"code": "ThrottlingException", "message": "Rate exceeded", "status": 400}
    max_attempts_env = "AIRFLOW__AWS_RECONCILER_ECS__MAX_LAUNCH_ATTEMPTS"
    gone_words = "MISSING"
    definition_gone = ("ClientException", "TaskDefinition is inactive")
    describe_batch = "aws_reconciler.backends.ecs.backend.DESCRIBE_BATCH"

    def bootstrap(self, sandbox: SandboxServer) -> dict[str, str]:
        from aws_reconciler_sandbox import bootstrap

        return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)

    def attempt_key(self, record_id: str, attempt: int) -> str:
        return f"{record_id}-{attempt}"

    def identity(self, record_id: str, attempt: int) -> dict[str, Any]:
        return {"startedBy": DEPLOYMENT, "clientToken": self.attempt_key(record_id, attempt)}

    def valid_key(self, key: str) -> bool:
        return 0 < len(key) <= 64 and key.isascii()

    def stop_for(self, *, running: bool) -> str:
        return "StopTask"

    def everything(self, sandbox: SandboxServer) -> list[Launched]:
        return [self._view(task) for task in sandbox.tasks()]

    @staticmethod
    def _view(task: dict[str, Any]) -> Launched:
        ours = [c["command"] for c in (task["overrides"].get("containerOverrides") or []) if c["name"] == "base"]
        stopped = task["desiredStatus"] == "STOPPED"
        return Launched(
            id=task["arn"],
            key=task["clientToken"] or "",
            identity={"startedBy": task["startedBy"], "clientToken": task["clientToken"]},
            tags=task["tags"],
            command=ours[0] if len(ours) == 1 else None,
            live=not stopped,
            stopped_by="StopTask" if stopped and task["stopCode"] == "UserInitiated" else None,
            reason=task["stoppedReason"] or "",
            raw=task,
        )

    def set_running(self, sandbox: SandboxServer, external_id: str) -> None:
        sandbox.set_task_state(task_arn=external_id, last_status="RUNNING")

    def set_exited(self, sandbox: SandboxServer, external_id: str, exit_code: int) -> None:
        sandbox.set_task_state(task_arn=external_id, last_status="STOPPED", exit_code=exit_code)

    def set_failed_to_start(self, sandbox: SandboxServer, external_id: str, how: str) -> None:
        failures: dict[str, dict[str, Any]] = {
            "failed-to-start": {
                "stop_code": "TaskFailedToStart",
                "stopped_reason": "ResourceInitializationError",
                "empty_containers": True,
            },
            "cannot-pull": {"container_reason": CANNOT_PULL},
        }
        sandbox.set_task_state(task_arn=external_id, last_status="STOPPED", **failures[how])

    def finish_stop(self, sandbox: SandboxServer, external_id: str) -> None:
        sandbox.set_task_state(task_arn=external_id, last_status="STOPPED", exit_code=0)

    def start_foreign(
        self, world: World, *, tags: dict[str, str] | None, started_by: str | None = DEPLOYMENT, **where: Any
    ) -> str:
        ecs = world.sandbox.client("ecs")
        section = world.settings.ecs
        args: dict[str, Any] = {
            "cluster": section.cluster,
            "taskDefinition": section.task_definition,
            "launchType": "FARGATE",
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": list(section.subnets),
                    "securityGroups": list(section.security_groups),
                }
            },
        }
        if started_by is not None:
            args["startedBy"] = started_by
        if tags is not None:
            args["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        return str(ecs.run_task(**args)["tasks"][0]["taskArn"])

    def lookalikes(self, world: World) -> dict[str, str]:
        # Discovery lists by startedBy, then checks the tags: a task must have both to be ours.
        ours = {DEPLOYMENT_TAG: DEPLOYMENT}
        return {
            "other deployment, other startedBy": self.start_foreign(
                world, started_by="other", tags={DEPLOYMENT_TAG: "other", ID_TAG: "v"}
            ),
            "our tags, other startedBy": self.start_foreign(world, started_by="other", tags={**ours, ID_TAG: "z"}),
            "no startedBy": self.start_foreign(world, started_by=None, tags={**ours, ID_TAG: "w"}),
        }

    def lagging(self, client: Any, *, clock: Clock) -> Lagging:
        return _LaggingEcs(client)


# ---- Batch -------------------------------------------------------------------------------------

QUEUE = "airflow"
DEFINITION = "airflow-job"
FINISHED = ("SUCCEEDED", "FAILED")


class LaggingBatch(Lagging):
    """A job is shown only ``window`` seconds (on the scenario's clock) after it was submitted, or
    never while its id is in ``hidden``: DescribeJobs leaves it out, ListJobs (by name or by status)
    does not list it, as Batch does for a while after SubmitJob."""

    def __init__(self, client: Any, *, clock: Clock, window: float = 0.0) -> None:
        super().__init__(client)
        self._clock = clock
        self.window = timedelta(seconds=window)
        self._submitted: dict[str, Any] = {}  # job name -> when submitted

    def _visible(self, job: dict[str, Any]) -> bool:
        if job["jobId"] in self.hidden:
            return False
        submitted = self._submitted.get(job.get("jobName", ""))
        return submitted is None or self._clock() >= submitted + self.window

    def submit_job(self, **kwargs: Any) -> Any:
        self._submitted.setdefault(kwargs["jobName"], self._clock())
        return self._client.submit_job(**kwargs)

    def list_jobs(self, **kwargs: Any) -> Any:
        page = self._client.list_jobs(**kwargs)
        return {**page, "jobSummaryList": [j for j in page.get("jobSummaryList") or [] if self._visible(j)]}

    def describe_jobs(self, **kwargs: Any) -> Any:
        answer = self._client.describe_jobs(**kwargs)
        return {**answer, "jobs": [j for j in answer.get("jobs") or [] if self._visible(j)]}


class BatchAdapter(Adapter):
    name = "batch"
    descriptor = BATCH
    events_target = "job_queues"
    operations = {"launch": "SubmitJob", "describe": "DescribeJobs", "list": "ListJobs"}
    stop_operations = ("CancelJob", "TerminateJob")
    launch_method = "submit_job"
    retry_method = "list_jobs"
    retry_sends_launch = False
    throttle = {"code": "TooManyRequestsException", "message": "Too Many Requests", "status": 429}
    max_attempts_env = "AIRFLOW__AWS_RECONCILER_BATCH__MAX_SUBMIT_JOB_ATTEMPTS"
    gone_words = "no longer exists"
    definition_gone = ("ClientException", "Job definition airflow-job:7 does not exist")
    describe_batch = "aws_reconciler.backends.batch.backend.DESCRIBE_BATCH"

    def bootstrap(self, sandbox: SandboxServer) -> dict[str, str]:
        from aws_reconciler_sandbox import bootstrap

        return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)

    def is_retry_call(self, kwargs: Mapping[str, Any]) -> bool:
        return bool(kwargs.get("filters"))  # a name lookup; discovery lists by status

    def attempt_key(self, record_id: str, attempt: int) -> str:
        return f"af-{record_id}-{attempt}"

    def identity(self, record_id: str, attempt: int) -> dict[str, Any]:
        return {"jobName": self.attempt_key(record_id, attempt), "propagateTags": True}

    def valid_key(self, key: str) -> bool:
        return 0 < len(key) <= 128 and key.replace("-", "").replace("_", "").isalnum() and key.isascii()

    def stop_for(self, *, running: bool) -> str:
        return "TerminateJob" if running else "CancelJob"

    def everything(self, sandbox: SandboxServer) -> list[Launched]:
        return [self._view(job) for job in sandbox.jobs()]

    @staticmethod
    def _view(job: dict[str, Any]) -> Launched:
        failed = job["status"] == "FAILED"
        stopped_by = None
        if failed and job["isCancelled"]:
            stopped_by = "CancelJob"
        elif failed and job["isTerminated"]:
            stopped_by = "TerminateJob"
        return Launched(
            id=job["jobId"],
            key=job["jobName"],
            identity={"jobName": job["jobName"], "propagateTags": job["request"].get("propagateTags")},
            tags=job["tags"],
            command=(job["request"].get("containerOverrides") or {}).get("command"),
            live=job["status"] not in FINISHED,
            stopped_by=stopped_by,
            reason=job.get("statusReason") or "",
            raw=job,
        )

    def set_running(self, sandbox: SandboxServer, external_id: str) -> None:
        sandbox.set_job_state(job_id=external_id, status="RUNNING")

    def set_exited(self, sandbox: SandboxServer, external_id: str, exit_code: int) -> None:
        sandbox.set_job_state(job_id=external_id, status="FAILED" if exit_code else "SUCCEEDED", exit_code=exit_code)

    def set_failed_to_start(self, sandbox: SandboxServer, external_id: str, how: str) -> None:
        failures: dict[str, dict[str, Any]] = {
            "failed-to-start": {
                "status_reason": "Task failed to start",
                "container_reason": "ResourceInitializationError: unable to pull secrets or registry auth",
            },
            "cannot-pull": {"container_reason": CANNOT_PULL},
        }
        sandbox.set_job_state(job_id=external_id, status="FAILED", **failures[how])

    def finish_stop(self, sandbox: SandboxServer, external_id: str) -> None:
        """Nothing to do: the sandbox (runner off) ends a cancelled or terminated job at once."""

    def start_foreign(
        self, world: World, *, tags: dict[str, str] | None, queue: str = QUEUE, name: str = "foreign", **where: Any
    ) -> str:
        args: dict[str, Any] = {"jobName": name, "jobQueue": queue, "jobDefinition": DEFINITION}
        if tags is not None:
            args["tags"] = tags
        return str(world.sandbox.client("batch").submit_job(**args)["jobId"])

    def lookalikes(self, world: World) -> dict[str, str]:
        # Discovery lists the configured queues only.
        self.create_queue(world, "elsewhere")
        tags = {DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "y"}
        return {"a queue we do not watch": self.start_foreign(world, tags=tags, queue="elsewhere")}

    def lagging(self, client: Any, *, clock: Clock) -> Lagging:
        return LaggingBatch(client, clock=clock)

    @staticmethod
    def create_queue(world: World, name: str) -> None:
        """Another job queue over the bootstrap's compute environment."""
        world.sandbox.client("batch").create_job_queue(
            jobQueueName=name,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "airflow"}],
        )


#: Every backend a scenario runs on, by the id its tests carry (``test_x[ecs-sqlite]``).
ADAPTERS: dict[str, Adapter] = {"ecs": EcsAdapter(), "batch": BatchAdapter()}


def only(*names: str) -> pytest.MarkDecorator:
    """Run a scenario (or a module: ``pytestmark``) on these backends only, not on all of ``ADAPTERS``."""
    return pytest.mark.parametrize("backend", names, indirect=True)


#: How the world's reconciler observes and which store it uses, by the id its tests carry
#: (``test_x[ecs-events-postgres]``).
WORLD_SETUPS: dict[str, tuple[str, str]] = {
    "poll-sqlite": ("poll", "sqlite"),
    "poll-postgres": ("poll", "postgres"),
    "events-postgres": ("events", "postgres"),
}


def events_only() -> pytest.MarkDecorator:
    """A scenario about observing by events (a module: ``pytestmark``)."""
    return pytest.mark.parametrize(
        "world_setup", [k for k, (observation, _) in WORLD_SETUPS.items() if observation == "events"], indirect=True
    )


def polling_only() -> pytest.MarkDecorator:
    """A scenario about what only a describe sees (a describe batch failing, a Batch job past its
    RUNNABLE timeout, which events mode finds at its next resync): ``observation = poll`` only."""
    return pytest.mark.parametrize(
        "world_setup", [k for k, (observation, _) in WORLD_SETUPS.items() if observation == "poll"], indirect=True
    )


class SettledFeed(EventFeed):
    """The reconciler's feed, receiving only once the sandbox has delivered every event it emitted:
    a driven cycle then sees what a describe at the same moment would (the emulated delivery
    runs on its own thread)."""

    def __init__(self, sandbox: SandboxServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sandbox = sandbox

    def drain(self, *, limit: int = 1000) -> None:
        deadline = time.monotonic() + 10
        while self._sandbox.event_stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.005)
        super().drain(limit=limit)


# ---- the world ---------------------------------------------------------------------------------


@dataclass
class World:
    """One scenario's sandbox, settings, store, clock, and the engines and runners built on them."""

    on: Adapter
    sandbox: SandboxServer
    store_url: str
    base_env: dict[str, str]
    settings: Settings
    db: DbEngine
    store: TaskStore
    clock: FakeClock
    engines: list[Controller] = field(default_factory=list)
    wakers: list[Waker] = field(default_factory=list)

    # ---- settings and parts ----

    def configure(self, **env: str) -> World:
        """The settings from the base environment plus ``env`` (for what is built from now on).
        Observing by events, the rule follows the targets (as a redeployed template would)."""
        merged = {**self.base_env, **env}
        self.settings = make_settings(self.store_url, **merged)
        if self.on.descriptor.settings_of(self.settings).observation == "events":
            self.on.observe_by_events(self.sandbox, merged)
        return self

    def client(self) -> Any:
        """A client configured like the reconciler's: no botocore retries."""
        return self.sandbox.client(
            self.on.service, config=aws_client_config(max_pool_connections=self.settings.core.launch_concurrency + 4)
        )

    def backend(self, *, client: Any = None) -> Any:
        """The factory's backend on the fake clock, pausing only briefly (real time) after AWS throttles."""
        backend: Any = build_backend(
            self.on.descriptor, self.settings, client=client if client is not None else self.client(), clock=self.clock
        )
        backend.throttle_pause = 0.01
        return backend

    def engine(
        self,
        *,
        backend: TaskBackend | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        fence: Callable[[], Fence | None] | None = None,
        rng: Callable[[], float] = lambda: 0.0,
    ) -> Controller:
        """A fresh engine on the shared store and clock (closed at teardown)."""
        backend = backend if backend is not None else self.backend()
        settings = controller_settings(self.settings, self.on.kind)
        if settings.events_resync_interval is not None:
            # A scenario's clock means the same in both modes: resyncs as often as polling's discoveries.
            settings = dataclasses.replace(settings, events_resync_interval=settings.resync_interval)
        engine = Controller(
            store=self.store,
            backend=backend,
            settings=settings,
            is_leader=is_leader,
            fence=fence,
            clock=self.clock,
            rng=rng,
            events=self._feed(backend, is_leader=is_leader),
        )
        self.engines.append(engine)
        return engine

    def _feed(self, backend: TaskBackend, *, is_leader: Callable[[], bool]) -> EventFeed | None:
        """The events feed of an engine when the world observes by events (None: it polls)."""
        section = self.on.descriptor.settings_of(self.settings)
        if section.observation != "events":
            return None
        sqs = self.sandbox.client("sqs")
        return SettledFeed(
            self.sandbox,
            queue=event_queue(self.on.descriptor, self.settings, client=sqs),
            backend=backend,
            source=self.on.descriptor.event_source,
            detail_type=self.on.descriptor.event_detail_type,
            metrics=Metrics(),
            is_leader=is_leader,
            hold_for=self.settings.core.missing_grace,
        )

    def crash_after_launch(self, record_id: str) -> tuple[Launched, Controller]:
        """A cycle whose launch of ``record_id`` reaches AWS and whose process dies before the answer
        is stored; then a new engine whose discovery sees nothing (ListTasks / ListJobs lagging
        behind the launch). Returns what the dead process launched and the new engine."""
        backend = self.backend()
        real_launch = backend.launch

        def launch_then_crash(**kwargs: Any) -> str:
            real_launch(**kwargs)
            raise Crash

        backend.launch = launch_then_crash
        first = self.engine(backend=backend)
        with pytest.raises(Crash):
            first.reconcile()
        first.close()
        [launched] = self.launched_of(record_id)
        blind = self.backend()
        blind.discover = lambda: []
        return launched, self.engine(backend=blind)

    def elector(self, *, holder: str = "replica-a", monotonic: Callable[[], float] | None = None) -> LeaderElector:
        core = self.settings.core
        return LeaderElector(
            leases=LeaseStore(self.db),
            name=lease_name(self.settings),
            holder=holder,
            lease_duration=core.lease_duration,
            renew_deadline=core.renew_deadline,
            retry_period=core.retry_period,
            monotonic=monotonic or time.monotonic,
        )

    def runner(
        self, *, holder: str = "replica-a", acquire: bool = True, worlds: Sequence[World] | None = None
    ) -> Manager:
        """A runner wired like ``build_manager``: one fresh engine per world (this one unless
        ``worlds``: twins, for several backends); the lease is taken once when ``acquire``, no
        threads. Its waker is closed at teardown."""
        elector = self.elector(holder=holder)
        if acquire:
            assert elector.try_once()
        core = self.settings.core
        waker = Waker(self.db)
        self.wakers.append(waker)
        return Manager(
            engines=[each.engine(is_leader=elector.is_leader) for each in (worlds or [self])],
            elector=elector,
            waker=waker,
            interval=core.reconcile_interval,
            backoff_base=core.backoff_base,
            backoff_max=core.backoff_max,
        )

    def twin(self, adapter: Adapter) -> World:
        """This world seen through another backend (same sandbox, settings, store and clock)."""
        return dataclasses.replace(self, on=adapter)

    # ---- rows ----

    def add(
        self,
        n: int = 1,
        *,
        commands: list[list[str]] | None = None,
        ids: list[str] | None = None,
        keys: list[TiKey] | None = None,
        executor_config: Any = None,
    ) -> list[str]:
        """Insert ``n`` pending rows the way the executor does; returns their ids."""
        descriptor = self.on.descriptor
        rows: list[NewTask] = []
        for i in range(n):
            record_id = ids[i] if ids else str(uuid.uuid4())
            # One task instance per row: rows of one TI key would supersede each other.
            key = (
                keys[i]
                if keys
                else TiKey("scenario_dag", f"task_{i}", f"manual__2030-01-01T00:00:00_{record_id}", -1, 1)
            )
            spec = descriptor.build_request(
                descriptor.settings_of(self.settings),
                deployment=DEPLOYMENT,
                record_id=record_id,
                key=key,
                command=commands[i] if commands else ["airflow", "tasks", "run", key.task_id],
                executor_config=executor_config,
            )
            rows.append(
                NewTask(
                    id=record_id,
                    backend=descriptor.kind,
                    owner="scheduler-1",
                    key=key,
                    queue="default",
                    target=spec[descriptor.target_key],
                    spec=spec,
                )
            )
        self.store.add(rows)
        return [r.id for r in rows]

    def running(self, engine: Controller, count: int) -> list[str]:
        """``count`` new rows that ``engine`` launched and recorded ``running``: two cycles, the
        tasks made RUNNING between them."""
        ids = self.add(count)
        engine.reconcile()
        for record_id in ids:
            self.set_running(self.external_id(record_id))
        engine.reconcile()
        assert {self.row(r).phase for r in ids} == {Phase.RUNNING}
        return ids

    def row(self, record_id: str) -> TaskRecord:
        record = self.store.get(record_id)
        assert record is not None, f"no row {record_id}"
        return record

    def external_id(self, record_id: str) -> str:
        """The task ARN / job id the row carries (it must carry one)."""
        external_id = self.row(record_id).external_id
        assert external_id, f"row {record_id} has launched nothing"
        return external_id

    # ---- what the fake AWS holds and saw ----

    def launched_of(self, record_id: str) -> list[Launched]:
        """Every task/job in the sandbox carrying this record's id tag, oldest first."""
        return [t for t in self.on.everything(self.sandbox) if t.tags.get(ID_TAG) == record_id]

    def launched(self, external_id: str) -> Launched:
        [found] = [t for t in self.on.everything(self.sandbox) if t.id == external_id]
        return found

    def everything(self) -> list[Launched]:
        return self.on.everything(self.sandbox)

    def calls(self, what: str) -> int:
        """Calls of a verb ("launch", "describe", "list") or of an operation of this backend."""
        operation = self.on.operations.get(what, what)
        return self.sandbox.calls().get(f"{self.on.service}:{operation}", 0)

    def stop_calls(self) -> dict[str, int]:
        """The stop calls AWS saw, by operation (zeros left out)."""
        seen = {op: self.calls(op) for op in self.on.stop_operations}
        return {op: n for op, n in seen.items() if n}

    # ---- moving the fake AWS ----

    def inject(
        self, verb: str, *, code: str, message: str, status: int = 400, times: int | None = 1, phantom: bool = False
    ) -> None:
        """The next ``times`` calls of ``verb`` (or of this backend's operation) fail with ``code``."""
        operation = self.on.operations.get(verb, verb)
        self.sandbox.inject_error(
            operation=f"{self.on.service}:{operation}",
            code=code,
            message=message,
            status=status,
            times=times,
            phantom=phantom,
        )

    def throttle(self, verb: str, *, times: int | None = 1) -> None:
        """The next ``times`` calls of ``verb`` are refused the way this backend refuses for its rate."""
        self.inject(verb, times=times, **self.on.throttle)

    def set_running(self, external_id: str) -> None:
        self.on.set_running(self.sandbox, external_id)

    def set_exited(self, external_id: str, exit_code: int) -> None:
        self.on.set_exited(self.sandbox, external_id, exit_code)

    def set_failed_to_start(self, external_id: str, how: str) -> None:
        self.on.set_failed_to_start(self.sandbox, external_id, how)

    def finish_stop(self, external_id: str) -> None:
        self.on.finish_stop(self.sandbox, external_id)

    def start_foreign(self, *, tags: dict[str, str] | None, **where: Any) -> str:
        """A launch behind the reconciler's back (another deployment, a human, a lost row)."""
        return self.on.start_foreign(self, tags=tags, **where)

    def intercept(self, method: str, around: Callable[..., Any]) -> Intercepted:
        """A client like :meth:`client` whose ``method`` ("launch" for this backend's) runs
        through ``around(call, **kwargs)``."""
        name = self.on.launch_method if method == "launch" else method
        return Intercepted(self.client(), name, around)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        for waker in self.wakers:
            waker.close()
        self.db.dispose()


_MIGRATED_SQLITE: list[Path] = []


def migrated_store(store_url: str) -> DbEngine:
    """An engine on a migrated store. A new SQLite file starts as a copy of one migrated once per
    process: running the migrations costs a scenario about as much as the scenario itself."""
    database = make_url(store_url).database
    if make_url(store_url).get_backend_name() != "sqlite" or not database or Path(database).exists():
        engine = create_store_engine(store_url)
        migrate(engine)
        return engine
    if not _MIGRATED_SQLITE:
        template = Path(tempfile.mkdtemp(prefix="aws-reconciler-migrated-")) / "store.db"
        atexit.register(shutil.rmtree, template.parent, ignore_errors=True)
        engine = create_store_engine(f"sqlite:///{template}")
        migrate(engine)
        engine.dispose()  # the last connection closed: WAL checkpointed into the file
        _MIGRATED_SQLITE.append(template)
    shutil.copyfile(_MIGRATED_SQLITE[0], database)
    return create_store_engine(store_url)


@contextlib.contextmanager
def open_world(
    adapter: Adapter,
    *,
    sandbox: SandboxServer,
    store_url: str,
    env: Mapping[str, str] | None = None,
    observation: str = "poll",
) -> Iterator[World]:
    """A clean sandbox account for ``adapter``'s backend and a migrated store; the settings are the
    bootstrap's output plus ``env``. With ``observation`` "events" an EventBridge rule sends the
    backend's events to a queue the reconciler reads, and its resyncs come as often as polling's
    discoveries (``resync_interval``: see :meth:`World.engine`)."""
    sandbox.reset()
    aws = adapter.bootstrap(sandbox)
    # A scenario's running tasks are looked at every cycle unless it tests the spacing of looks.
    base_env = {
        "AIRFLOW__AWS_RECONCILER__RUNNING_DESCRIBE_INTERVAL": "0",
        **{k: v for k, v in aws.items() if k.startswith("AIRFLOW__")},
        **(env or {}),
    }
    if observation == "events":
        base_env.update(adapter.observe_by_events(sandbox, aws))
    db = migrated_store(store_url)
    clock = FakeClock()
    world = World(
        on=adapter,
        sandbox=sandbox,
        store_url=store_url,
        base_env=base_env,
        settings=make_settings(store_url, **base_env),
        db=db,
        store=TaskStore(db, clock=clock),
        clock=clock,
    )
    try:
        yield world
    finally:
        world.close()
        sandbox.clear_faults()
