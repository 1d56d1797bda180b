"""AWS Batch fidelity shims: jobs that behave like the real service where the project depends on it.

What moto 5.2.5 gets wrong about jobs (see the project's notes on moto), and what this module does:

- With ``batch_simple`` (no Docker) a job SUCCEEDS inside the SubmitJob call; AWS takes it
  through SUBMITTED, PENDING, RUNNABLE, STARTING and RUNNING. Here a job waits in RUNNABLE (as
  for capacity) until the task runner or a test moves it (``set_job_state``).
- DescribeJobs shows no ``container.exitCode`` (moto keeps it in the last attempt at best),
  returns every job for an empty list and mutates the job's environment on each call: the
  description is built here, with ``exitCode``, ``reason``, ``logStreamName``, attempts,
  ``isCancelled``/``isTerminated`` and the job definition pinned at submission.
- ListJobs has no pagination and ignores ``AFTER_CREATED_AT``/``BEFORE_CREATED_AT``: reimplemented
  (``maxResults``/``nextToken``, all four filters, newest first with a filter, RUNNING by default).
- TerminateJob only sets a flag and CancelJob only acts on early states of moto's own thread:
  here CancelJob fails a job that has not started (and leaves a started one alone, like AWS),
  and TerminateJob fails any job, through the task runner's SIGTERM/SIGKILL when it has a process.
- moto sees a job at once; Batch does not. With ``Realism`` lag on, a job just submitted is, for
  its drawn window, absent from ListJobs (also with the ``JOB_NAME`` filter) and DescribeJobs.
- moto emits no events: every status of a job (SUBMITTED at SubmitJob, then each one
  ``apply_job_state`` sets) goes through ``BatchShim._changed``, which emits the "Batch Job State
  Change" event whose detail is the job as DescribeJobs shows it (``events.py`` delivers it).

Job queues, compute environments and job definitions stay moto's. Jobs live here; their tags
are kept in moto's tagger so ``ListTagsForResource`` sees them. Every call runs under ``MOTO_LOCK``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from .awsproto import AwsRequest, RawResponse, error_response, json_response
from .events import BATCH_DETAIL_TYPE, BATCH_SOURCE, EventBridge
from .motoenv import MOTO_LOCK, batch_backend
from .realism import Realism

__all__ = ["JOB_STATUSES", "BatchError", "BatchJob", "BatchShim", "JobListener"]

#: The Batch job lifecycle, in order (https://docs.aws.amazon.com/batch/latest/userguide/job_states.html)
JOB_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
NOT_STARTED = frozenset({"SUBMITTED", "PENDING", "RUNNABLE"})
FINISHED = frozenset({"SUCCEEDED", "FAILED"})
DEFAULT_LOG_GROUP = "/aws/batch/job"
#: What Batch says of a job whose container never started (an image that cannot be pulled...).
FAILED_TO_START = "Task failed to start"
EXITED = "Essential container in task exited"
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_MAX_DESCRIBE = 100
_MAX_LIST = 1000  # with jobStatus (or nothing)
_MAX_LIST_FILTERED = 100  # with a filter
_MAX_TAGS = 50
_MAX_PAYLOAD = 30 * 1024
_MAX_REASON = 1024
_FILTERS = ("JOB_NAME", "JOB_DEFINITION", "BEFORE_CREATED_AT", "AFTER_CREATED_AT")

Forward = Callable[[bytes | None], RawResponse]


class BatchError(Exception):
    """A Batch API error to return to the caller (``ClientException`` unless told otherwise)."""

    def __init__(self, message: str, *, code: str = "ClientException", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def response(self) -> RawResponse:
        """The error as Batch's REST-JSON response."""
        return error_response("rest-json", self.code, self.message, status=self.status)


def now_ms() -> int:
    """Batch's timestamps: epoch milliseconds."""
    return int(time.time() * 1000)


def _pairs(entries: Any) -> dict[str, str]:
    return {str(e["name"]): str(e.get("value", "")) for e in entries or [] if isinstance(e, dict) and "name" in e}


@dataclass(eq=False)
class BatchJob:
    """One job. Guarded by ``MOTO_LOCK``. ``definition`` is the job definition's
    ``containerProperties`` as it was at submission: a later revision changes no submitted job."""

    job_id: str
    arn: str
    name: str
    account_id: str
    region: str
    queue_arn: str
    queue_name: str
    definition_arn: str
    definition_name: str
    definition: dict[str, Any]
    request: dict[str, Any]
    created_ms: int
    status: str = "SUBMITTED"
    status_reason: str | None = None
    started_ms: int | None = None
    stopped_ms: int | None = None
    exit_code: int | None = None
    container_reason: str | None = None
    task_arn: str | None = None
    log_stream: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    is_cancelled: bool = False
    is_terminated: bool = False
    #: TerminateJob's reason while the runner stops the job's process.
    terminate_reason: str | None = None
    #: Clock reading from which ListJobs and DescribeJobs see the job; None: at once.
    visible_at: float | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        """``containerOverrides`` of the request."""
        return dict(self.request.get("containerOverrides") or {})

    def command(self) -> list[str]:
        """What the container runs: the override's command, else the job definition's."""
        command = self.overrides.get("command")
        return [str(a) for a in (command if command is not None else self.definition.get("command") or [])]

    def environment(self) -> dict[str, str]:
        """The job definition's variables updated by the override's."""
        return {**_pairs(self.definition.get("environment")), **_pairs(self.overrides.get("environment"))}

    def log_target(self) -> tuple[str, str, str, bool]:
        """``(region, group, stream, create_group)`` where the container's output goes.

        Batch's default: ``/aws/batch/job``, stream ``<job definition name>/default/<id>`` (the
        id of the ECS task on AWS; the job id stands in here). An ``awslogs`` configuration in the
        job definition names another group and replaces the name with ``awslogs-stream-prefix``.
        """
        config = self.definition.get("logConfiguration") or {}
        options = (config.get("options") or {}) if config.get("logDriver", "awslogs") == "awslogs" else {}
        group = str(options.get("awslogs-group") or DEFAULT_LOG_GROUP)
        prefix = str(options.get("awslogs-stream-prefix") or self.definition_name)
        create = group == DEFAULT_LOG_GROUP or str(options.get("awslogs-create-group", "")).lower() == "true"
        return str(options.get("awslogs-region") or self.region), group, f"{prefix}/default/{self.job_id}", create


class JobListener(Protocol):
    """Told about jobs by the shim; what the task runner implements. Called under ``MOTO_LOCK``
    from the request thread: quick, no waiting."""

    def job_created(self, job: BatchJob) -> None:
        """SubmitJob accepted ``job`` (SUBMITTED)."""

    def stop_requested(self, job: BatchJob) -> bool:
        """TerminateJob on a STARTING or RUNNING job. True when the listener ends the job itself
        (SIGTERM, later FAILED); False makes the shim fail it at once."""
        return False

    def forget_all(self) -> None:
        """Every job is gone (sandbox or moto reset)."""


def _task_arn(job: BatchJob) -> str:
    # Batch runs each attempt as an ECS task in the compute environment's cluster.
    return f"arn:aws:ecs:{job.region}:{job.account_id}:task/batch/{uuid.uuid4().hex}"


def _encode_token(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "p": position}).encode()).decode()


def _decode_token(token: str) -> int:
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))["p"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise BatchError("Invalid nextToken") from exc
    if not isinstance(position, int) or position < 0:
        raise BatchError("Invalid nextToken")
    return position


class BatchShim:
    """Serves the job operations and holds the jobs (see the module docstring).

    Without a ``listener`` (no task runner) a submitted job goes to RUNNABLE and stays there
    until ``set_job_state`` moves it; a listener takes the job from SUBMITTED itself.
    """

    OPERATIONS = frozenset({"SubmitJob", "DescribeJobs", "ListJobs", "CancelJob", "TerminateJob"})

    def __init__(self, realism: Realism, eventbridge: EventBridge | None = None) -> None:
        self._realism = realism
        self._eventbridge = eventbridge
        self._jobs: dict[str, BatchJob] = {}  # by id, in submission order
        self.listener: JobListener | None = None

    def reset(self) -> None:
        """Forget every job (call together with a moto reset) and tell the listener."""
        with MOTO_LOCK:
            self._jobs.clear()
            if self.listener is not None:
                self.listener.forget_all()

    # ------------------------------------------------------------------ requests

    def handle(self, request: AwsRequest, forward: Forward) -> RawResponse:
        """Answer one Batch request; anything but the job operations goes to moto."""
        if request.operation not in self.OPERATIONS:
            return forward(None)
        try:
            params = request.json()
        except ValueError as exc:
            return error_response("rest-json", "ClientException", str(exc))
        try:
            with MOTO_LOCK:
                handler = getattr(self, f"_{request.operation}")
                payload = handler(request.account_id, request.region, params)
        except BatchError as exc:
            return exc.response()
        return json_response(payload, protocol="rest-json")

    def _queue(self, account_id: str, region: str, ref: Any) -> Any:
        queue = batch_backend(account_id, region).get_job_queue(str(ref or ""))
        if queue is None:
            raise BatchError(f"Job queue {ref} does not exist")
        return queue

    def _SubmitJob(self, account_id: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        name = str(params.get("jobName") or "")
        if not _JOB_NAME.match(name):
            raise BatchError(
                "Job name must be 1-128 letters, numbers, hyphens and underscores, starting with a letter or number"
            )
        if len(json.dumps(params, separators=(",", ":")).encode()) > _MAX_PAYLOAD:
            raise BatchError(f"Job payload exceeds the maximum size of {_MAX_PAYLOAD // 1024} KiB")
        if (params.get("arrayProperties") or {}).get("size"):
            raise BatchError("the sandbox does not emulate array jobs")
        tags = params.get("tags") or {}
        if len(tags) > _MAX_TAGS:
            raise BatchError(f"A job can have at most {_MAX_TAGS} tags")
        for variable in _pairs((params.get("containerOverrides") or {}).get("environment")):
            if variable.startswith("AWS_BATCH"):
                raise BatchError(f"Environment variable {variable}: names starting with AWS_BATCH are reserved")
        backend = batch_backend(account_id, region)
        queue = self._queue(account_id, region, params.get("jobQueue"))
        definition = backend.get_job_definition(str(params.get("jobDefinition") or ""))
        if definition is None or getattr(definition, "status", "ACTIVE") != "ACTIVE":
            raise BatchError(f"Job definition {params.get('jobDefinition')} does not exist")
        if definition.container_properties is None:
            raise BatchError("the sandbox runs only container jobs (containerProperties)")
        job_id = str(uuid.uuid4())
        arn = f"arn:aws:batch:{region}:{account_id}:job/{job_id}"
        job = BatchJob(
            job_id=job_id,
            arn=arn,
            name=name,
            account_id=account_id,
            region=region,
            queue_arn=queue.arn,
            queue_name=queue.name,
            definition_arn=definition.arn,
            definition_name=definition.name,
            definition=copy.deepcopy(definition.container_properties),
            request=copy.deepcopy(params),
            created_ms=now_ms(),
        )
        lag = self._realism.lag("batch")
        if lag > 0:
            job.visible_at = self._realism.now() + lag
        if tags:
            backend.tag_resource(arn, {str(k): str(v) for k, v in tags.items()})
        self._jobs[job_id] = job
        self._changed(job, job.created_ms)
        if self.listener is not None:
            self.listener.job_created(job)
        else:
            # No runner: the job waits for capacity until a test moves it.
            self.apply_job_state(job, status="RUNNABLE")
        return {"jobArn": arn, "jobName": name, "jobId": job_id}

    def _find_ref(self, ref: str) -> BatchJob | None:
        return self._jobs.get(ref.rsplit("/", 1)[-1])

    def _DescribeJobs(self, account_id: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        refs = [str(r) for r in params.get("jobs") or []]
        if not refs:
            raise BatchError("jobs must contain at least one job id")
        if len(refs) > _MAX_DESCRIBE:
            raise BatchError(f"jobs cannot contain more than {_MAX_DESCRIBE} job ids")
        found: dict[str, BatchJob] = {}
        now = self._realism.now()
        for ref in refs:
            job = self._find_ref(ref)
            # Unknown ids are left out, without a word, as Batch does.
            if job is not None and (job.account_id, job.region) == (account_id, region) and self._visible(job, now):
                found.setdefault(job.job_id, job)
        return {"jobs": [self.describe(job) for job in found.values()]}

    def _ListJobs(self, account_id: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("arrayJobId") or params.get("multiNodeJobId"):
            raise BatchError("the sandbox does not emulate array or multi-node parallel jobs")
        queue = self._queue(account_id, region, params.get("jobQueue"))
        filters = params.get("filters") or []
        if len(filters) > 1:
            raise BatchError("Only one filter can be used at a time")
        now = self._realism.now()
        jobs = [
            j
            for j in self._jobs.values()
            if (j.account_id, j.region, j.queue_arn) == (account_id, region, queue.arn) and self._visible(j, now)
        ]
        if filters:
            # With a filter jobStatus is ignored, and the newest jobs come first.
            jobs = [j for j in reversed(jobs) if self._matches(j, filters[0])]
            limit = _MAX_LIST_FILTERED
        else:
            status = params.get("jobStatus") or "RUNNING"
            if status not in JOB_STATUSES:
                raise BatchError(f"jobStatus must be one of {', '.join(JOB_STATUSES)}")
            jobs = [j for j in jobs if j.status == status]
            limit = _MAX_LIST
        max_results = params.get("maxResults") or limit
        if not isinstance(max_results, int) or max_results < 1:
            raise BatchError("maxResults must be at least 1")
        max_results = min(max_results, limit)
        # The token is a position in this filtered, ordered list: fine for the short-lived
        # listings the reconciler makes (a job changing status between pages can be missed or
        # listed twice, as on AWS).
        start = _decode_token(params["nextToken"]) if params.get("nextToken") else 0
        page = jobs[start : start + max_results]
        payload: dict[str, Any] = {"jobSummaryList": [self.summary(j) for j in page]}
        if start + max_results < len(jobs):
            payload["nextToken"] = _encode_token(start + max_results)
        return payload

    @staticmethod
    def _visible(job: BatchJob, now: float) -> bool:
        if job.visible_at is not None and now < job.visible_at:
            return False
        job.visible_at = None  # seen once, seen for good
        return True

    @staticmethod
    def _matches(job: BatchJob, flt: dict[str, Any]) -> bool:
        name = flt.get("name")
        values = [str(v) for v in flt.get("values") or []]
        if name not in _FILTERS or len(values) != 1:
            raise BatchError(f"filters: name must be one of {', '.join(_FILTERS)}, with exactly one value")
        value = values[0]
        if name == "JOB_NAME":
            # Case-insensitive; a trailing '*' matches any name that begins with the rest.
            if value.endswith("*"):
                return job.name.lower().startswith(value[:-1].lower())
            return job.name.lower() == value.lower()
        if name == "JOB_DEFINITION":
            if value.endswith("*"):
                return job.definition_name.startswith(value[:-1])
            return value in (job.definition_arn, job.definition_name, job.definition_arn.rsplit("/", 1)[-1])
        try:
            when = int(value) * 1000  # the filters take seconds since the epoch
        except ValueError as exc:
            raise BatchError(f"filters: {name} takes seconds since the epoch") from exc
        return job.created_ms < when if name == "BEFORE_CREATED_AT" else job.created_ms > when

    def _job(self, params: dict[str, Any]) -> tuple[BatchJob, str]:
        ref, reason = str(params.get("jobId") or ""), str(params.get("reason") or "")
        if not ref or not reason:
            raise BatchError("jobId and reason are required")
        job = self._find_ref(ref)
        if job is None:
            raise BatchError(f"Job {ref} does not exist")
        return job, reason[:_MAX_REASON]

    def _CancelJob(self, account_id: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        job, reason = self._job(params)
        # A job that has started is left alone, and the call still succeeds (TerminateJob ends it).
        if job.status in NOT_STARTED:
            job.is_cancelled = True
            self.apply_job_state(job, status="FAILED", status_reason=reason)
        return {}

    def _TerminateJob(self, account_id: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        job, reason = self._job(params)
        if job.status in FINISHED or job.terminate_reason is not None:
            return {}
        job.is_terminated = True
        if job.status in NOT_STARTED:
            self.apply_job_state(job, status="FAILED", status_reason=reason)
            return {}
        job.terminate_reason = reason
        if self.listener is None or not self.listener.stop_requested(job):
            self.apply_job_state(job, status="FAILED", status_reason=reason)
        return {}

    # ------------------------------------------------------------------ descriptions

    def _container(self, job: BatchJob) -> dict[str, Any]:
        definition = job.definition
        requirements = {r.get("type"): r for r in definition.get("resourceRequirements") or []}
        requirements.update({r.get("type"): r for r in job.overrides.get("resourceRequirements") or []})
        container: dict[str, Any] = {
            "image": definition.get("image", ""),
            "command": job.command(),
            "environment": [{"name": k, "value": v} for k, v in job.environment().items()],
            "resourceRequirements": list(requirements.values()),
            "volumes": definition.get("volumes") or [],
            "mountPoints": definition.get("mountPoints") or [],
            "ulimits": definition.get("ulimits") or [],
            "networkInterfaces": [],
        }
        for key in ("jobRoleArn", "executionRoleArn", "logConfiguration", "networkConfiguration", "user"):
            if definition.get(key) is not None:
                container[key] = definition[key]
        for key, value in (
            ("exitCode", job.exit_code),
            ("reason", job.container_reason),
            ("taskArn", job.task_arn),
            ("logStreamName", job.log_stream),
        ):
            if value is not None:
                container[key] = value
        return container

    def describe(self, job: BatchJob) -> dict[str, Any]:
        """The job as DescribeJobs returns it."""
        detail: dict[str, Any] = {
            "jobArn": job.arn,
            "jobName": job.name,
            "jobId": job.job_id,
            "jobQueue": job.queue_arn,
            "status": job.status,
            "attempts": copy.deepcopy(job.attempts),
            "createdAt": job.created_ms,
            "dependsOn": [],
            "jobDefinition": job.definition_arn,
            "parameters": job.request.get("parameters") or {},
            "container": self._container(job),
            "tags": batch_backend(job.account_id, job.region).list_tags_for_resource(job.arn),
            "propagateTags": bool(job.request.get("propagateTags", False)),
            "platformCapabilities": ["FARGATE"] if "networkConfiguration" in job.definition else ["EC2"],
            "isCancelled": job.is_cancelled,
            "isTerminated": job.is_terminated,
        }
        for key, value in (
            ("statusReason", job.status_reason),
            ("startedAt", job.started_ms),
            ("stoppedAt", job.stopped_ms),
            ("timeout", job.request.get("timeout")),
        ):
            if value is not None:
                detail[key] = value
        return detail

    @staticmethod
    def summary(job: BatchJob) -> dict[str, Any]:
        """The job as ListJobs returns it (no tags: discovery must describe the jobs)."""
        summary: dict[str, Any] = {
            "jobArn": job.arn,
            "jobId": job.job_id,
            "jobName": job.name,
            "createdAt": job.created_ms,
            "status": job.status,
            "jobDefinition": job.definition_arn,
            "isCancelled": job.is_cancelled,
            "isTerminated": job.is_terminated,
        }
        for key, value in (
            ("statusReason", job.status_reason),
            ("startedAt", job.started_ms),
            ("stoppedAt", job.stopped_ms),
        ):
            if value is not None:
                summary[key] = value
        container = {k: v for k, v in (("exitCode", job.exit_code), ("reason", job.container_reason)) if v is not None}
        if container:
            summary["container"] = container
        return summary

    # ------------------------------------------------------------------ control

    def find(self, job_id: str) -> BatchJob:
        """The job with this id or ARN; ``KeyError`` if none."""
        return self.find_all([job_id])[0]

    def find_all(self, refs: Sequence[str]) -> list[BatchJob]:
        """The jobs with these ids or ARNs, in order. ``KeyError`` naming every one not found;
        ``ValueError`` when one job is named twice (a change applied twice would be two events)."""
        found = [self._find_ref(ref) for ref in refs]
        missing = [ref for ref, job in zip(refs, found, strict=True) if job is None]
        if missing:
            raise KeyError(f"no such job: {', '.join(missing)}")
        jobs = [job for job in found if job is not None]
        twice = [job_id for job_id, times in Counter(job.job_id for job in jobs).items() if times > 1]
        if twice:
            raise ValueError(f"job named more than once: {', '.join(twice)}")
        return jobs

    def apply_job_state(
        self,
        job: BatchJob,
        *,
        status: str,
        status_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
    ) -> dict[str, Any]:
        """Move a job to ``status`` with the fields AWS would set; returns its description. The
        caller holds ``MOTO_LOCK`` and the job (``find``). ``ValueError`` for an unknown status or
        a finished job.

        STARTING gives the job an ECS task, RUNNING its ``startedAt`` and log stream (once). A
        finished job gets ``stoppedAt`` and an attempt, when a task was started for it or a
        ``container_reason`` says why none could start; SUCCEEDED without an exit code means 0.
        The default ``statusReason`` is Batch's: "Essential container in task exited" after an
        exit, "Task failed to start" with only a container reason.
        """
        self._check_change([job], status)
        with MOTO_LOCK:
            now = now_ms()
            job.status = status
            if status in ("STARTING", "RUNNING") and job.task_arn is None:
                job.task_arn = _task_arn(job)
            if status == "RUNNING":
                job.started_ms = job.started_ms or now
                job.log_stream = job.log_stream or job.log_target()[2]
            if status_reason is not None:
                job.status_reason = status_reason
            if container_reason is not None:
                job.container_reason = container_reason
            if status == "SUCCEEDED" and exit_code is None:
                exit_code = 0
            if exit_code is not None:
                job.exit_code = exit_code
                # An exit code means a container ran, also when a test skipped STARTING/RUNNING.
                job.task_arn = job.task_arn or _task_arn(job)
                job.started_ms = job.started_ms or now
                job.log_stream = job.log_stream or job.log_target()[2]
            if status in FINISHED:
                self._finish(job, now)
            self._changed(job, now)
            return self.describe(job)

    def apply_job_states(self, jobs: Sequence[BatchJob], *, status: str, **change: Any) -> list[dict[str, Any]]:
        """Move every job of ``jobs`` (``find_all``) as ``apply_job_state`` moves one, in order, in one
        hold of ``MOTO_LOCK``: their events are queued together and delivered once it is let go.
        ``ValueError`` for an unknown status or a finished job, before any job moves."""
        with MOTO_LOCK:
            self._check_change(jobs, status)
            return [self.apply_job_state(job, status=status, **change) for job in jobs]

    @staticmethod
    def _check_change(jobs: Iterable[BatchJob], status: str) -> None:
        if status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {', '.join(JOB_STATUSES)}")
        finished = [f"{job.job_id} ({job.status})" for job in jobs if job.status in FINISHED]
        if finished:
            raise ValueError(f"job {', '.join(finished)} has finished and cannot change status")

    def _changed(self, job: BatchJob, now: int) -> None:
        """Every status a job takes ends here: Batch's event goes out. The caller holds ``MOTO_LOCK``."""
        if self._eventbridge is None:
            return
        self._eventbridge.emit(
            source=BATCH_SOURCE,
            detail_type=BATCH_DETAIL_TYPE,
            account_id=job.account_id,
            region=job.region,
            resource=job.arn,
            key=job.job_id,
            time=datetime.fromtimestamp(now / 1000, UTC),
            detail=lambda: self.describe(job),
        )

    @staticmethod
    def _finish(job: BatchJob, now: int) -> None:
        job.stopped_ms = job.stopped_ms or now
        if job.status_reason is None:
            if job.exit_code is not None:
                job.status_reason = EXITED
            elif job.container_reason is not None:
                job.status_reason = FAILED_TO_START
        if job.task_arn is None and job.container_reason is None:
            return  # cancelled before any task: no attempt
        container = {
            k: v
            for k, v in (
                ("taskArn", job.task_arn),
                ("exitCode", job.exit_code),
                ("reason", job.container_reason),
                ("logStreamName", job.log_stream),
            )
            if v is not None
        }
        attempt: dict[str, Any] = {"container": container, "stoppedAt": job.stopped_ms}
        if job.started_ms is not None:
            attempt["startedAt"] = job.started_ms
        if job.status_reason is not None:
            attempt["statusReason"] = job.status_reason
        job.attempts.append(attempt)

    def jobs(self, *, queue: str | None = None) -> list[dict[str, Any]]:
        """A snapshot of every job (optionally of one queue, by name or ARN), oldest first."""
        with MOTO_LOCK:
            return [
                self.snapshot(job)
                for job in self._jobs.values()
                if queue is None or queue in (job.queue_name, job.queue_arn)
            ]

    def snapshot(self, job: BatchJob) -> dict[str, Any]:
        """What tests look at: the description plus the request as submitted."""
        return {**self.describe(job), "request": copy.deepcopy(job.request)}

    def all_jobs(self) -> Iterable[BatchJob]:
        """The jobs themselves (for the task runner); the caller holds ``MOTO_LOCK``."""
        return list(self._jobs.values())
