"""Typed settings for ``[aws_reconciler]``, ``[aws_reconciler_ecs]`` and ``[aws_reconciler_batch]``.

Every field's ``description`` is also what ``airflow config list`` shows (see ``provider.py``),
so the text here is user documentation.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# ECS `startedBy` was limited to 36 characters for years and is still best kept short; tag
# values allow letters, digits, spaces and + - = . _ : / @. The deployment name is both.
DEPLOYMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9+=._:/@-]{0,35}$"

# Options whose value must never be printed, exported or logged.
SECRET_OPTIONS = frozenset({"store_url", "token_key"})
# Options whose empty value means "off" rather than "unset" (every other empty option is unset).
EMPTY_MEANS_OFF = frozenset({"metrics_address", "aws_conn_id"})


def _split_list(value: Any) -> Any:
    """Accept ``a,b``, ``["a","b"]`` (JSON) or a list, as Airflow users write all three."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _json_value(value: Any, *, example: str = "") -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError as exc:
            expected = f"; expected JSON such as {example}" if example else ""
            raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}){expected}") from None
    return value


DEPLOYMENT_CHARACTERS = "letters, digits and + = . _ : / @ -"
_DEPLOYMENT_PUNCTUATION = frozenset("+=._:/@-")
MAX_DEPLOYMENT = 36


def check_deployment(value: str) -> str:
    """The deployment name is ECS ``startedBy`` and a tag value: say in words what is wrong with it."""
    rule = f"at most {MAX_DEPLOYMENT} characters: {DEPLOYMENT_CHARACTERS}, starting with a letter or digit"
    if not value:
        raise ValueError(f"must not be empty ({rule})")
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in _DEPLOYMENT_PUNCTUATION))})
    if bad:
        raise ValueError(f"contains {', '.join(repr(c) for c in bad)}; allowed: {rule}")
    if len(value) > MAX_DEPLOYMENT:
        raise ValueError(f"is {len(value)} characters long; {rule}")
    if value[0] in _DEPLOYMENT_PUNCTUATION:
        raise ValueError(f"starts with {value[0]!r}; {rule}")
    return value


def check_host_port(value: str) -> str:
    """``host:port`` (host may be empty for every interface); empty turns the server off."""
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise ValueError(
            "expected host:port, e.g. 0.0.0.0:9109 or :9109 (port 1-65535); empty disables the metrics server"
        )
    return value


class SectionSettings(BaseSettings):
    """Base of every section model: values arrive already layered by :mod:`.loader`."""

    section: ClassVar[str]
    model_config = SettingsConfigDict(extra="forbid", validate_default=True, frozen=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *args: Any, **kwargs: Any) -> Any:
        # The loader resolves defaults < airflow.cfg < environment itself (it must also report
        # where each value came from), then passes the winners as init values.
        return (init_settings,)


class CoreSettings(SectionSettings):
    """``[aws_reconciler]``: settings shared by the executors and the reconciler."""

    section: ClassVar[str] = "aws_reconciler"

    deployment: str = Field(
        "airflow",
        description=(
            "Name of this Airflow deployment on AWS. Sent as ECS startedBy and tagged on every task and "
            "job; the reconciler only ever stops tasks that carry it. 1-36 characters: letters, digits "
            "and + = . _ : / @ -."
        ),
    )
    store_url: SecretStr | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the task store. Defaults to Airflow's [database] sql_alchemy_conn (or "
            "sql_alchemy_conn_cmd), so the store's tables live beside Airflow's. Printed with its password masked."
        ),
    )
    store_url_cmd: str | None = Field(
        None,
        description=(
            "A command whose output is the store URL, as Airflow's *_cmd options (run without a shell); "
            "store_url wins when both are set."
        ),
    )
    token_key: SecretStr | None = Field(
        None,
        description=(
            "Fernet key that encrypts each workload's Airflow token in the task store (a comma list rotates "
            "keys, newest first, as Airflow's [core] fernet_key does); the schedulers and the reconciler must "
            "share it. Unset: tokens are stored in clear until their task starts, with a warning at start-up. "
            'Generate one with: python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())". Printed masked.'
        ),
    )
    token_key_cmd: str | None = Field(
        None,
        description=(
            "A command whose output is token_key, as Airflow's *_cmd options (run without a shell); "
            "token_key wins when both are set."
        ),
    )
    token_margin: float = Field(
        30.0,
        ge=0,
        description=(
            "Seconds before its Airflow workload token expires when a task is no longer launched: a container "
            "has to start and call the API server before the token's expiry, so a launch closer to it would "
            "only waste the container. Such a task waits for Airflow to requeue it with a fresh token "
            "([scheduler] task_queued_timeout handling). At most a quarter of task_queued_timeout is used."
        ),
    )
    reconcile_interval: float = Field(
        5.0, gt=0, description="Seconds between reconcile cycles (NOTIFY wakes it early)."
    )
    resync_interval: float = Field(
        60.0,
        gt=0,
        description="Seconds between full discoveries (ListTasks by startedBy) to find orphans and lost launches.",
    )
    running_describe_interval: float = Field(
        30.0,
        ge=0,
        description=(
            "Seconds between describes of the tasks that run (observation = poll): starting, stopping and "
            "unwanted tasks are described every cycle, the running ones together only this often, and the "
            "cycles in between read only the records with something to do. A task reports its own state to "
            "Airflow through the Execution "
            "API at once; this bounds how late a container that ended is noticed (and its executor slot "
            "freed). 0 describes every task every cycle."
        ),
    )
    events_resync_interval: float = Field(
        600.0,
        gt=0,
        description=(
            "Seconds between full resyncs (every open task described, every task of the deployment listed) of "
            "a backend whose observation is events: the anti-entropy pass that repairs a lost event and counts "
            "it in aws_reconciler_resync_drift_total. resync_interval applies in poll mode."
        ),
    )
    orphan_grace: float = Field(
        120.0, ge=0, description="Seconds a task of ours with no open record may run before the reconciler stops it."
    )
    retention: float = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds to keep reported task records before deleting them."
    )
    task_queued_timeout: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds after queueing when the Airflow workload token has expired; such a workload is never "
            "launched. Defaults to Airflow's [scheduler] task_queued_timeout (600)."
        ),
    )
    launch_concurrency: int = Field(
        16,
        ge=1,
        le=256,
        description="Launch calls in flight at once, so throughput is bound by rate limits, not latency.",
    )
    backoff_base: float = Field(2.0, gt=0, description="First retry delay in seconds for a retriable launch failure.")
    backoff_max: float = Field(300.0, gt=0, description="Upper bound in seconds of a row's retry delay.")
    lease_duration: float = Field(
        15.0, gt=0, description="Seconds a reconciler's leadership lease lasts without renewal."
    )
    renew_deadline: float = Field(
        10.0, gt=0, description="Seconds a leader keeps acting without a successful renewal before it stops (fencing)."
    )
    retry_period: float = Field(
        2.0, gt=0, description="Seconds between lease renewals and standby acquisition attempts."
    )
    aws_call_timeout: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds one AWS call may take in all (connecting and waiting for the answer) before it counts as "
            "failed with an unknown outcome. renew_deadline + aws_call_timeout must stay below lease_duration, so "
            "a launch or stop a leader sent has landed before another replica can take over. Defaults to 80% of "
            "lease_duration - renew_deadline (4 s with the default lease)."
        ),
    )
    missing_grace: float = Field(
        120.0,
        ge=0,
        description=(
            "Seconds after a launch during which AWS not knowing the task or job (DescribeTasks MISSING, absent "
            "from DescribeJobs) is taken for eventual consistency, not for its end; only after it does the task "
            "instance fail."
        ),
    )
    ecs_run_task_rate: float = Field(
        40.0, gt=0, description="Client-side sustained rate (calls/s) of RunTask+StopTask."
    )
    ecs_run_task_burst: int = Field(100, ge=1, description="Client-side burst of RunTask+StopTask calls.")
    ecs_describe_rate: float = Field(
        20.0, gt=0, description="Client-side sustained rate (calls/s) of DescribeTasks+ListTasks."
    )
    ecs_describe_burst: int = Field(100, ge=1, description="Client-side burst of DescribeTasks+ListTasks calls.")
    fargate_launch_rate: float = Field(
        20.0, gt=0, description="Client-side sustained rate (tasks/s) of Fargate launches."
    )
    fargate_launch_burst: int = Field(100, ge=1, description="Client-side burst of Fargate task launches.")
    # AWS documents only SubmitJob's limit (50 TPS per account). Every submit is preceded by a
    # ListJobs lookup of its name (idempotency), so the List/Describe bucket must keep up with it.
    batch_submit_rate: float = Field(
        50.0, gt=0, description="Client-side sustained rate (calls/s) of Batch SubmitJob+CancelJob+TerminateJob."
    )
    batch_submit_burst: int = Field(
        50, ge=1, description="Client-side burst of Batch SubmitJob+CancelJob+TerminateJob calls."
    )
    batch_describe_rate: float = Field(
        50.0,
        gt=0,
        description=(
            "Client-side sustained rate (calls/s) of Batch DescribeJobs+ListJobs (each submit looks its job "
            "name up first, so this also bounds submits)."
        ),
    )
    batch_describe_burst: int = Field(100, ge=1, description="Client-side burst of Batch DescribeJobs+ListJobs calls.")
    metrics_address: str = Field(
        "0.0.0.0:9109",
        description=(
            "host:port where the reconciler serves /metrics, /healthz and /readyz (standbys too); "
            "empty disables the server."
        ),
    )
    check_health_on_startup: bool = Field(
        True, description="The executor checks that the task store is reachable and migrated when the scheduler starts."
    )

    @field_validator("deployment")
    @classmethod
    def _deployment(cls, value: str) -> str:
        return check_deployment(value)

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, value: str) -> str:
        return check_host_port(value)

    @model_validator(mode="after")
    def _deadline_within_lease(self) -> CoreSettings:
        if not self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"renew_deadline ({self.renew_deadline}) must be shorter than lease_duration ({self.lease_duration}) "
                "so a leader stops acting before another can take over"
            )
        if not self.retry_period < self.renew_deadline:
            raise ValueError(
                f"retry_period ({self.retry_period}) must be shorter than renew_deadline ({self.renew_deadline})"
            )
        if self.aws_call_timeout is not None and not self.renew_deadline + self.aws_call_timeout < self.lease_duration:
            raise ValueError(
                f"renew_deadline ({self.renew_deadline}) + aws_call_timeout ({self.aws_call_timeout}) must be "
                f"shorter than lease_duration ({self.lease_duration}), so a call a leader sent lands before another "
                "can take over"
            )
        return self

    @property
    def call_timeout(self) -> float:
        """The bound of one AWS call: ``aws_call_timeout``, or 80% of the lease's slack beyond ``renew_deadline``."""
        if self.aws_call_timeout is not None:
            return self.aws_call_timeout
        return 0.8 * (self.lease_duration - self.renew_deadline)


class BackendSettings(SectionSettings):
    """Base of a backend's section: one *target* (cluster, job queue) enables it, more may be allowed.

    Subclasses name their fields in the ClassVars; decoding of list and JSON values, ``enabled``,
    ``targets`` and ``max_attempts`` are the same for every backend and live here.
    """

    # The option whose value enables the backend and is the default target.
    target_field: ClassVar[str]
    # The option listing further targets a task may choose through executor_config.
    allowed_field: ClassVar[str]
    # The option bounding launch/submit attempts per queueing (named as the provider names it).
    attempts_field: ClassVar[str]
    # Options written as comma lists or JSON lists; options written as JSON (objects default to {}).
    list_fields: ClassVar[frozenset[str]] = frozenset()
    json_fields: ClassVar[frozenset[str]] = frozenset()
    json_object_fields: ClassVar[frozenset[str]] = frozenset()
    # Shown when a JSON option does not parse.
    json_examples: ClassVar[dict[str, str]] = {}

    region_name: str | None = Field(
        None, description="AWS region; defaults to the boto3 chain (AWS_DEFAULT_REGION...)."
    )
    aws_conn_id: str = Field(
        "aws_default",
        description=(
            "Airflow connection whose AWS identity the scheduler and the API server use for their AWS calls "
            "(task logs), as the amazon provider's executors do; a missing connection or an empty value means "
            "the boto3 credential chain. The reconciler has no Airflow: it uses the boto3 chain (and role_arn)."
        ),
    )
    role_arn: str | None = Field(
        None,
        description=(
            "IAM role the reconciler assumes for this backend's calls (a cluster or job queue in another "
            "account); its own identity from the boto3 chain must be allowed sts:AssumeRole on it. "
            "Refreshed before it expires."
        ),
    )

    observation: Literal["poll", "events"] = Field(
        "poll",
        description=(
            "How the reconciler learns of task state changes: poll (describe the tracked tasks, a running one "
            "every [aws_reconciler] running_describe_interval) or "
            "events (AWS's own state-change events, delivered by an EventBridge rule to the SQS queue "
            "events_queue_url; every [aws_reconciler] events_resync_interval a full describe and discovery "
            "repairs whatever an event missed)."
        ),
    )
    events_queue_url: str | None = Field(
        None,
        description=(
            "URL of the SQS queue an EventBridge rule fills with this backend's state-change events (ECS Task "
            "State Change / Batch Job State Change of its clusters / job queues); required with observation = "
            "events. deploy/events/ holds a CloudFormation template that creates the rule, queue and DLQ."
        ),
    )

    @model_validator(mode="after")
    def _events_need_a_queue(self) -> BackendSettings:
        if self.observation == "events" and not self.events_queue_url:
            raise ValueError("observation is events but events_queue_url is not set")
        return self

    @field_validator("*", mode="before")
    @classmethod
    def _decode(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        if name in cls.list_fields:
            return _split_list(value)
        if name in cls.json_fields or name in cls.json_object_fields:
            decoded = _json_value(value, example=cls.json_examples.get(name, ""))
            return {} if decoded is None and name in cls.json_object_fields else decoded
        return value

    @property
    def target(self) -> str | None:
        """The default cluster / job queue; ``None`` when the backend is not configured."""
        value = getattr(self, self.target_field)
        return str(value) if value is not None else None

    @property
    def enabled(self) -> bool:
        """The backend runs when its target is configured."""
        return self.target is not None

    @property
    def targets(self) -> list[str]:
        """Every target the executor may send to and the reconciler must watch, the default first."""
        if self.target is None:
            return []
        allowed: list[str] = getattr(self, self.allowed_field)
        return [self.target, *[t for t in allowed if t != self.target]]

    @property
    def max_attempts(self) -> int:
        """Launch (submit) attempts per queueing before the task instance fails."""
        return int(getattr(self, self.attempts_field))


class EcsSettings(BackendSettings):
    """``[aws_reconciler_ecs]``: how task instances become ECS tasks (mirrors ``[aws_ecs_executor]``)."""

    section: ClassVar[str] = "aws_reconciler_ecs"
    target_field: ClassVar[str] = "cluster"
    allowed_field: ClassVar[str] = "allowed_clusters"
    attempts_field: ClassVar[str] = "max_launch_attempts"
    list_fields: ClassVar[frozenset[str]] = frozenset({"allowed_clusters", "subnets", "security_groups"})
    json_fields: ClassVar[frozenset[str]] = frozenset({"capacity_provider_strategy"})
    json_object_fields: ClassVar[frozenset[str]] = frozenset({"run_task_kwargs"})
    json_examples: ClassVar[dict[str, str]] = {
        "capacity_provider_strategy": '[{"capacityProvider": "FARGATE_SPOT", "weight": 1}]',
        "run_task_kwargs": '{"propagateTags": "TASK_DEFINITION", "enableExecuteCommand": true}',
    }

    cluster: str | None = Field(
        None, description="ECS cluster name or ARN tasks run in. Setting it enables the ECS backend."
    )
    allowed_clusters: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Further clusters a task may choose through executor_config (comma list); the reconciler watches them too."
        ),
    )
    container_name: str | None = Field(
        None, description="Name of the container in the task definition that runs the Airflow task."
    )
    task_definition: str | None = Field(None, description="Task definition family, family:revision or ARN.")
    launch_type: Literal["EC2", "FARGATE", "EXTERNAL"] | None = Field(
        None,
        description="EC2, FARGATE or EXTERNAL. Leave unset to use capacity_provider_strategy or the cluster default.",
    )
    capacity_provider_strategy: Annotated[list[dict[str, Any]] | None, NoDecode] = Field(
        None, description='JSON list, e.g. [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]. Excludes launch_type.'
    )
    platform_version: str | None = Field(
        None, description="Fargate platform version. Never sent with launch_type EC2, where it is invalid."
    )
    subnets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Subnet ids for awsvpc tasks (comma list)."
    )
    security_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Security group ids for awsvpc tasks (comma list)."
    )
    assign_public_ip: bool = Field(
        False, description="Give awsvpc tasks a public IP (needed in public subnets without NAT)."
    )
    run_task_kwargs: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description=(
            "JSON object merged into every RunTask request (e.g. overrides, propagateTags, enableExecuteCommand)."
        ),
    )
    max_launch_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "Launch attempts per queueing before the task instance fails (retriable failures only). Capacity "
            "shortages of a task whose workload token's expiry is known are retried until [aws_reconciler] "
            "token_margin before it instead."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> EcsSettings:
        if self.launch_type and self.capacity_provider_strategy:
            raise ValueError("set launch_type or capacity_provider_strategy, not both (ECS rejects the pair)")
        if self.cluster is not None:
            missing = [name for name in ("container_name", "task_definition") if not getattr(self, name)]
            if missing:
                raise ValueError(f"cluster is set but {', '.join(missing)} is not")
        return self


class BatchSettings(BackendSettings):
    """``[aws_reconciler_batch]``: how task instances become AWS Batch jobs (mirrors ``[aws_batch_executor]``)."""

    section: ClassVar[str] = "aws_reconciler_batch"
    target_field: ClassVar[str] = "job_queue"
    allowed_field: ClassVar[str] = "allowed_job_queues"
    attempts_field: ClassVar[str] = "max_submit_job_attempts"
    list_fields: ClassVar[frozenset[str]] = frozenset({"allowed_job_queues"})
    json_object_fields: ClassVar[frozenset[str]] = frozenset({"submit_job_kwargs"})
    json_examples: ClassVar[dict[str, str]] = {"submit_job_kwargs": '{"timeout": {"attemptDurationSeconds": 3600}}'}

    job_queue: str | None = Field(
        None, description="Batch job queue name or ARN jobs are submitted to. Setting it enables the Batch backend."
    )
    allowed_job_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Further job queues a task may choose through executor_config (comma list); "
            "the reconciler watches them too."
        ),
    )
    job_definition: str | None = Field(
        None,
        description=(
            "Job definition name, name:revision or ARN; its container (containerProperties) runs the Airflow task."
        ),
    )
    submit_job_kwargs: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description=(
            "JSON object merged into every SubmitJob request (e.g. containerOverrides, timeout, "
            "schedulingPriorityOverride, shareIdentifier)."
        ),
    )
    max_submit_job_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "Submit attempts per queueing before the task instance fails (retriable failures and jobs that "
            "failed before their container started only)."
        ),
    )
    runnable_timeout: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds after submission a job may still be RUNNABLE (waiting for capacity) before the reconciler "
            "cancels it and fails the task instance with Batch's reason. Defaults to [aws_reconciler] "
            "task_queued_timeout: a job starting later could not run its task (the workload token has expired)."
        ),
    )
    lookup_delay: float = Field(
        15.0,
        ge=0,
        description=(
            "Seconds after a SubmitJob that may have created a job (its answer lost: 5xx, timeout, crash) before "
            "the reconciler looks the job's name up to submit it again: ListJobs may not list a new job at once. "
            "Should two jobs of one task instance run anyway, the most advanced is kept and the others stopped."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> BatchSettings:
        if self.job_queue is not None and not self.job_definition:
            raise ValueError("job_queue is set but job_definition is not")
        return self
