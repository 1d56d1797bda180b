"""ECS fidelity shims: make moto's ECS behave like the real service where the project depends on it.

What moto 5.2.5 gets wrong, and what this module does about it (measured, see the project's notes on moto):

- RunTask ignores ``clientToken``: here a token is idempotent per (account, region, cluster,
  token); a repeat returns the recorded response and launches nothing, a repeat with other
  parameters is a ``ConflictException``, like AWS.
- RunTask never reports ``failures``: failures can be planned (``FaultPlan.fail_run_task``) or
  drawn per task (``Realism.capacity_failures``); an EC2 launch into a cluster without container
  instances is a failure, not a 500.
- RunTask with awsvpc networking but no ``securityGroups`` crashes moto; AWS uses the VPC's
  default group, and so does the shim. ``count`` is checked (1..10) as AWS does.
- ListTasks matches the cluster by substring, includes STOPPED tasks by default and ignores
  ``maxResults``/``nextToken``: reimplemented here from the backend's task table.
- DescribeTasks drops unknown ARNs silently, is not scoped to the cluster and does not keep the
  requested order: reimplemented (``failures`` with reason ``MISSING``).
- StopTask on an unknown task is an HTML 500 and sets no ``stopCode``/``stoppedAt``: fixed.
- moto is consistent at once; ECS is not. With ``Realism`` lag on, a task just launched is,
  for its drawn window, ``MISSING`` to DescribeTasks and absent from ListTasks.
- Tasks lack ``createdAt``/``startedAt``/``stoppedAt``/``stopCode``/``cpu``/``memory`` and carry
  ``exitCode: 0`` from birth: the shim sets the fields on moto's own task objects, and moto's
  serializer renders them, so every operation shows the same task.
- moto emits no events: every change of a task goes through ``EcsShim._changed``, which numbers
  it (``version``, as DescribeTasks shows it) and emits the "ECS Task State Change" event whose
  detail is the task as DescribeTasks renders it (``events.py`` delivers it).

The shim works on moto's backend objects directly. That is safe because the sandbox serves moto
in its own process and every call here runs under ``MOTO_LOCK``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .awsproto import AwsRequest, RawResponse, error_response, json_response
from .events import ECS_DETAIL_TYPE, ECS_SOURCE, EventBridge, iso_millis
from .faults import FaultPlan
from .motoenv import MOTO_LOCK, ecs_backend, iter_ecs_backends, serialize, timestamps_as_text
from .realism import Realism

__all__ = ["LAST_STATUSES", "EcsError", "EcsShim", "TaskListener"]

#: ECS task lifecycle, in order (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-lifecycle-explanation.html)
LAST_STATUSES = (
    "PROVISIONING",
    "PENDING",
    "ACTIVATING",
    "RUNNING",
    "DEACTIVATING",
    "STOPPING",
    "DEPROVISIONING",
    "STOPPED",
)
_STOPPING_PHASE = frozenset(LAST_STATUSES[LAST_STATUSES.index("DEACTIVATING") :])
_DESCRIBE_TAGS_PATH = "DescribeTasksResponse.tasks.Task.tags"
_MAX_DESCRIBE = 100
_MAX_LIST = 100
_DEFAULT_STOP_REASON = "Task stopped by user"


#: Sends the current request to moto, optionally with a rewritten body.
Forward = Callable[[bytes | None], RawResponse]


class EcsError(Exception):
    """An ECS API error to return to the caller (``__type`` = ``code``)."""

    def __init__(self, code: str, message: str, *, status: int = 400, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra

    def response(self) -> RawResponse:
        """The error as an AWS JSON response."""
        return error_response("json", self.code, self.message, status=self.status, extra=self.extra)


def _invalid(message: str) -> EcsError:
    return EcsError("InvalidParameterException", message)


def _now() -> datetime:
    # Aware UTC: moto's serializer turns it into epoch seconds with milliseconds, like AWS.
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class _TokenRecord:
    fingerprint: str
    task_arns: tuple[str, ...]
    response: bytes


def _family_of(task_definition_arn: str) -> str:
    # arn:aws:ecs:us-east-1:123456789012:task-definition/family:3 -> family
    return task_definition_arn.rsplit("/", 1)[-1].rsplit(":", 1)[0]


def _encode_token(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "p": position}).encode()).decode()


def _decode_token(token: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        position = data["p"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise _invalid("Invalid nextToken.") from exc
    if not isinstance(position, int) or position < 0:
        raise _invalid("Invalid nextToken.")
    return position


class TaskListener(Protocol):
    """Told about task lifecycle events by the shim; what a task runner implements.

    Every method is called with ``MOTO_LOCK`` held, from the thread serving the request, so it
    must be quick and must not wait for anything (no process waits, no I/O beyond a wake-up).
    """

    def task_created(self, backend: Any, task: Any) -> None:
        """A task was launched (RunTask) and initialised as PROVISIONING."""

    def stop_requested(self, backend: Any, task: Any) -> bool:
        """StopTask recorded ``desiredStatus`` STOPPED and ``stopCode`` UserInitiated on a task that
        has not stopped. Return True when the listener owns the rest of the stop (it may already
        have moved the task to STOPPED); False makes the shim stop the task at once itself."""
        return False

    def forget_all(self) -> None:
        """Every task is gone (sandbox or moto reset): forget them and end their processes."""


class EcsShim:
    """Serves the ECS operations moto gets wrong and holds the state moto does not keep.

    ``immediate_stop``: StopTask moves the task to STOPPED at once (moto's behaviour, fine without
    a task runner). A task runner sets it to False and installs itself as ``listener``; StopTask
    then only records the request and the listener drives STOPPING..STOPPED. Both are
    configuration, which ``reset`` leaves alone.
    """

    #: Operations answered here; everything else goes straight to moto.
    OPERATIONS = frozenset({"RunTask", "ListTasks", "DescribeTasks", "StopTask"})

    def __init__(self, faults: FaultPlan, realism: Realism, eventbridge: EventBridge | None = None) -> None:
        self._faults = faults
        self._realism = realism
        self._eventbridge = eventbridge
        self._tokens: dict[tuple[str, str, str, str], _TokenRecord] = {}
        self._token_of_task: dict[str, str] = {}
        # Task ARN -> clock reading from which reads see it (only tasks launched with a lag).
        self._visible_at: dict[str, float] = {}
        self.immediate_stop = True
        self.listener: TaskListener | None = None

    def reset(self) -> None:
        """Forget all shim state (call together with a moto reset) and tell the listener."""
        with MOTO_LOCK:
            self._tokens.clear()
            self._token_of_task.clear()
            self._visible_at.clear()
            if self.listener is not None:
                self.listener.forget_all()

    # ------------------------------------------------------------------ request handling

    def handle(self, request: AwsRequest, forward: Forward) -> RawResponse:
        """Answer one ECS request. ``forward(body=None)`` sends the request (or a new body) to moto."""
        if request.operation not in self.OPERATIONS:
            return forward(None)
        try:
            params = request.json()
        except ValueError as exc:
            return error_response("json", "SerializationException", str(exc))
        backend = ecs_backend(request.account_id, request.region)
        try:
            with MOTO_LOCK:
                if request.operation == "RunTask":
                    return self._run_task(backend, params, forward)
                if request.operation == "ListTasks":
                    return self._list_tasks(backend, params)
                if request.operation == "DescribeTasks":
                    return self._describe_tasks(backend, params)
                return self._stop_task(backend, params)
        except EcsError as exc:
            return exc.response()

    @staticmethod
    def _cluster(backend: Any, params: dict[str, Any]) -> Any:
        # AWS accepts the short name or the full ARN; the default cluster is "default".
        name = str(params.get("cluster") or "default").rsplit("/", 1)[-1]
        cluster = backend.clusters.get(name)
        if cluster is None:
            raise EcsError("ClusterNotFoundException", "Cluster not found.")
        return cluster

    @staticmethod
    def _serialized(operation: str, result: dict[str, Any], *, exclude: tuple[str, ...] = ()) -> RawResponse:
        status, headers, body = serialize("ecs", operation, result, exclude=exclude)
        return RawResponse(status, [("x-amzn-RequestId", str(uuid.uuid4())), *headers.items()], body.encode())

    def _run_task(self, backend: Any, params: dict[str, Any], forward: Forward) -> RawResponse:
        token = params.get("clientToken")
        if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= 64):
            raise _invalid("clientToken must be a string of 1 to 64 characters.")
        count = params.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= 10:
            raise _invalid("count must be between 1 and 10.")
        cluster = self._cluster(backend, params)
        key = (backend.account_id, backend.region_name, cluster.name, token or "")
        fingerprint = json.dumps(
            {**{k: v for k, v in params.items() if k != "clientToken"}, "cluster": cluster.name},
            sort_keys=True,
            default=str,
        )
        if token:
            record = self._tokens.get(key)
            if record is not None:
                if record.fingerprint != fingerprint:
                    raise EcsError(
                        "ConflictException",
                        "The RunTask request could not be processed due to conflicts. The provided "
                        "clientToken is already in use with a different RunTask request.",
                        extra={"resourceIds": list(record.task_arns)},
                    )
                # Idempotent repeat: the original answer, and nothing launched.
                return RawResponse(
                    200,
                    [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", str(uuid.uuid4()))],
                    record.response,
                )

        reason = self._faults.take_run_task_failure()
        if reason is not None:
            return json_response({"tasks": [], "failures": [{"arn": cluster.arn, "reason": reason}]})
        # AWS places each task on its own: some of a RunTask's tasks may launch, some not.
        failures = [
            {"arn": cluster.arn, "reason": reason} for reason in self._realism.capacity_failures(count) if reason
        ]
        if len(failures) == count:
            return json_response({"tasks": [], "failures": failures})

        filled = self._with_default_security_group(backend, params)
        if failures:
            filled = {**filled, "count": count - len(failures)}
        try:
            moto_response = forward(json.dumps(filled).encode() if filled is not params else None)
        except Exception as exc:
            # moto raises a bare Exception for EC2 launches into a cluster without container
            # instances; AWS answers that with a failure, not an error.
            if "No instances found in cluster" in str(exc):
                return json_response(
                    {
                        "tasks": [],
                        "failures": [
                            {"arn": cluster.arn, "reason": "No Container Instances were found in your cluster."}
                        ],
                    }
                )
            raise
        if moto_response.status != 200:
            return moto_response

        arns = [t["taskArn"] for t in json.loads(moto_response.body).get("tasks", [])]
        tasks = [backend.tasks[cluster.name][arn] for arn in arns]
        now = self._realism.now()
        for task in tasks:
            self._initialise(backend, task, token)
            lag = self._realism.lag("ecs")
            if lag > 0:
                self._visible_at[task.task_arn] = now + lag
            if self.listener is not None:
                self.listener.task_created(backend, task)
        response = self._serialized("RunTask", {"tasks": tasks, "failures": failures})
        if token:
            self._tokens[key] = _TokenRecord(fingerprint, tuple(arns), response.body)
        return response

    @staticmethod
    def _with_default_security_group(backend: Any, params: dict[str, Any]) -> dict[str, Any]:
        """Fill in the VPC's default security group when awsvpc networking names none.

        AWS does that; moto 5.2.5 fails with a KeyError (a 500) instead.
        """
        vpc_config = (params.get("networkConfiguration") or {}).get("awsvpcConfiguration")
        if not vpc_config or vpc_config.get("securityGroups") or not vpc_config.get("subnets"):
            return params
        from moto.backends import get_backend

        ec2 = get_backend("ec2")[backend.account_id][backend.region_name]
        try:
            vpc_id = ec2.get_subnet(vpc_config["subnets"][0]).vpc_id
            group = ec2.get_default_security_group(vpc_id)
        except Exception:  # unknown subnet: let moto report it its own way
            return params
        if group is None:
            return params
        return {
            **params,
            "networkConfiguration": {
                **params["networkConfiguration"],
                "awsvpcConfiguration": {**vpc_config, "securityGroups": [group.id]},
            },
        }

    def _initialise(self, backend: Any, task: Any, token: str | None) -> None:
        """Give a task just launched by moto the fields and status a real new task has."""
        now = _now()
        task.last_status = "PROVISIONING"
        task.created_at = now
        task.stopped_reason = None  # moto sets "", AWS omits the field until the task stops
        task.stop_code = None
        task.started_by = task.started_by or None
        task.connectivity = None
        try:
            definition = backend.describe_task_definition(task.task_definition_arn)
            overrides = task.overrides or {}
            task.cpu = overrides.get("cpu") or definition.cpu
            task.memory = overrides.get("memory") or definition.memory
        except Exception:  # the definition was deregistered meanwhile: leave cpu/memory out
            pass
        partition = task.task_arn.split(":", 2)[1]
        for container in task.containers:
            # moto reports exitCode 0 from creation; AWS has no exit code until the container stops.
            container.exitCode = None
            container.reason = None
            container.last_status = "PENDING"
            container.health_status = "UNKNOWN"
            container.task_arn = task.task_arn
            container.container_arn = (
                f"arn:{partition}:ecs:{task.region_name}:{backend.account_id}:container/"
                f"{task.cluster_name}/{task.id}/{uuid.uuid4()}"
            )
        if token:
            self._token_of_task[task.task_arn] = token
        task.version = 0
        self._changed([task], now)

    def _changed(self, tasks: Sequence[Any], now: datetime) -> None:
        """Every change of a task ends here: ``version`` goes up (1 at launch), and ECS's event goes out.

        The caller holds ``MOTO_LOCK`` and has made the whole change of every task of ``tasks``.
        Their details are rendered together, when the first is needed (only a bus with rules
        needs them): one serialisation of many tasks costs much less than one per task.
        """
        for task in tasks:
            task.version = getattr(task, "version", 0) + 1
            task.updated_at = now
        if self._eventbridge is None:
            return
        rendered: list[dict[str, Any]] = []

        def detail(position: int) -> dict[str, Any]:
            if not rendered:
                rendered.extend(self.event_details(tasks))
            return rendered[position]

        for position, task in enumerate(tasks):
            _arn, _partition, _service, region, account_id, _rest = task.task_arn.split(":", 5)
            self._eventbridge.emit(
                source=ECS_SOURCE,
                detail_type=ECS_DETAIL_TYPE,
                account_id=account_id,
                region=region,
                resource=task.task_arn,
                key=task.task_arn,
                time=now,
                detail=functools.partial(detail, position),
            )

    @staticmethod
    def event_details(tasks: Sequence[Any]) -> list[dict[str, Any]]:
        """The tasks as their "ECS Task State Change" events carry them: as DescribeTasks renders
        them, without tags (ECS sends none), times as ISO-8601 text, plus ``updatedAt``."""
        _status, _headers, body = serialize(
            "ecs", "DescribeTasks", {"tasks": list(tasks), "failures": []}, exclude=(_DESCRIBE_TAGS_PATH,)
        )
        details: list[dict[str, Any]] = []
        for task, described in zip(tasks, json.loads(body)["tasks"], strict=True):
            detail: dict[str, Any] = timestamps_as_text("ecs", "Task", described, iso_millis)
            detail["updatedAt"] = iso_millis(task.updated_at)
            details.append(detail)
        return details

    def _list_tasks(self, backend: Any, params: dict[str, Any]) -> RawResponse:
        cluster = self._cluster(backend, params)
        desired = params.get("desiredStatus") or "RUNNING"  # AWS default; moto lists STOPPED too
        if desired not in ("RUNNING", "PENDING", "STOPPED"):
            raise _invalid("desiredStatus must be one of RUNNING, PENDING, STOPPED.")
        max_results = params.get("maxResults", _MAX_LIST)
        if not isinstance(max_results, int) or not 1 <= max_results <= _MAX_LIST:
            raise _invalid(f"maxResults must be between 1 and {_MAX_LIST}.")
        start = _decode_token(params["nextToken"]) if params.get("nextToken") else 0
        family = params.get("family")
        started_by = params.get("startedBy")
        service_name = params.get("serviceName")
        launch_type = params.get("launchType")
        instance = params.get("containerInstance")
        instance_id = str(instance).rsplit("/", 1)[-1] if instance else None
        now = self._realism.now()

        def wanted(task: Any) -> bool:
            return (
                self._visible(task, now)
                and task.desired_status == desired
                and (family is None or _family_of(task.task_definition_arn) == family)
                and (started_by is None or task.started_by == started_by)
                and (service_name is None or task.group == f"service:{service_name}")
                and (launch_type is None or task.launch_type == launch_type)
                and (instance_id is None or (task.container_instance_arn or "").rsplit("/", 1)[-1] == instance_id)
            )

        # The token is a position in the cluster's task table, which only ever grows (moto never
        # deletes a task), so a page boundary stays put while tasks are added or change status.
        table = list(backend.tasks.get(cluster.name, {}).values())
        arns: list[str] = []
        next_token: str | None = None
        for position in range(start, len(table)):
            if not wanted(table[position]):
                continue
            if len(arns) == max_results:
                next_token = _encode_token(position)
                break
            arns.append(table[position].task_arn)
        payload: dict[str, Any] = {"taskArns": arns}
        if next_token is not None:
            payload["nextToken"] = next_token
        return json_response(payload)

    def _visible(self, task: Any, now: float) -> bool:
        """Whether reads see the task yet (ECS is eventually consistent; see ``Realism.lag``)."""
        visible_at = self._visible_at.get(task.task_arn)
        if visible_at is None:
            return True
        if now < visible_at:
            return False
        del self._visible_at[task.task_arn]  # seen once, seen for good
        return True

    @staticmethod
    def _lookup(cluster_tasks: dict[str, Any], ref: str, by_id: dict[str, Any] | None) -> Any:
        task = cluster_tasks.get(ref)
        if task is None and by_id is not None:
            task = by_id.get(ref.rsplit("/", 1)[-1])
        return task

    def _describe_tasks(self, backend: Any, params: dict[str, Any]) -> RawResponse:
        cluster = self._cluster(backend, params)
        refs = params.get("tasks") or []
        if not refs:
            raise _invalid("Tasks cannot be empty.")
        if len(refs) > _MAX_DESCRIBE:
            raise _invalid(f"Tasks cannot contain more than {_MAX_DESCRIBE} elements.")
        cluster_tasks: dict[str, Any] = backend.tasks.get(cluster.name, {})
        by_id: dict[str, Any] | None = None
        found: list[Any] = []
        failures: list[dict[str, str]] = []
        seen: set[str] = set()
        now = self._realism.now()
        for ref in refs:
            ref = str(ref)
            if ref not in cluster_tasks and by_id is None:
                # Task ids and short-format ARNs need the id index; full ARNs never do.
                by_id = {t.id: t for t in cluster_tasks.values()}
            task = self._lookup(cluster_tasks, ref, by_id)
            if task is None or not self._visible(task, now):
                failures.append({"arn": ref, "reason": "MISSING"})
            elif task.task_arn not in seen:
                seen.add(task.task_arn)
                found.append(task)
        exclude = () if "TAGS" in (params.get("include") or []) else (_DESCRIBE_TAGS_PATH,)
        return self._serialized("DescribeTasks", {"tasks": found, "failures": failures}, exclude=exclude)

    def _stop_task(self, backend: Any, params: dict[str, Any]) -> RawResponse:
        cluster = self._cluster(backend, params)
        ref = params.get("task")
        if not ref:
            raise _invalid("task must be specified.")
        cluster_tasks: dict[str, Any] = backend.tasks.get(cluster.name, {})
        task = self._lookup(cluster_tasks, str(ref), {t.id: t for t in cluster_tasks.values()})
        if task is None:
            raise _invalid("The referenced task was not found.")
        if task.last_status != "STOPPED" and task.desired_status != "STOPPED":
            reason = params.get("reason") or _DEFAULT_STOP_REASON
            now = _now()
            task.desired_status = "STOPPED"
            task.stop_code = "UserInitiated"
            task.stopped_reason = reason
            task.stopping_at = now
            self._changed([task], now)  # desiredStatus STOPPED: an event of its own, as on ECS
            owned = (
                not self.immediate_stop and self.listener is not None and self.listener.stop_requested(backend, task)
            )
            if not owned:
                # moto's stop_task also gives back the container instance's resources (EC2).
                backend.stop_task(cluster.name, task.task_arn, reason)
                task.stopped_at = now
                task.execution_stopped_at = now
                for container in task.containers:
                    container.last_status = "STOPPED"
                self._changed([task], now)
        return self._serialized("StopTask", {"task": task})

    # ------------------------------------------------------------------ control

    def find(self, task_arn: str) -> Any:
        """The task with this ARN or id (the caller holds ``MOTO_LOCK``); ``KeyError`` if none."""
        return self.find_all([task_arn])[0]

    def find_all(self, refs: Sequence[str]) -> list[Any]:
        """The tasks with these ARNs or ids, in order (the caller holds ``MOTO_LOCK``).

        ``KeyError`` naming every one not found; ``ValueError`` when one task is named twice (a
        change applied twice would be two events).
        """
        backends = [backend for _account, _region, backend in iter_ecs_backends()]
        found: list[Any] = []
        missing: list[str] = []
        for ref in refs:
            task = next((t for b in backends for tasks in b.tasks.values() if (t := tasks.get(ref)) is not None), None)
            found.append(task)
            if task is None:
                missing.append(ref)
        if missing:
            # Bare task ids: one index of every task, built only when some ref needs it.
            by_id = {t.id: t for b in backends for tasks in b.tasks.values() for t in tasks.values()}
            found = [t if t is not None else by_id.get(ref) for ref, t in zip(refs, found, strict=True)]
            missing = [ref for ref, t in zip(refs, found, strict=True) if t is None]
        if missing:
            raise KeyError(f"no such task: {', '.join(missing)}")
        twice = [arn for arn, times in Counter(t.task_arn for t in found).items() if times > 1]
        if twice:
            raise ValueError(f"task named more than once: {', '.join(twice)}")
        return found

    def apply_task_state(
        self,
        task: Any,
        *,
        last_status: str,
        stop_code: str | None = None,
        stopped_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
        empty_containers: bool = False,
    ) -> dict[str, Any]:
        """Move a task to ``last_status`` with AWS's times (see ``Sandbox.set_task_state``); returns
        its snapshot. ``apply_task_states`` with one task: the caller holds ``MOTO_LOCK`` and the
        task object (``find``), as the task runner does for every transition.
        """
        return self.apply_task_states(
            [task],
            last_status=last_status,
            stop_code=stop_code,
            stopped_reason=stopped_reason,
            exit_code=exit_code,
            container_reason=container_reason,
            empty_containers=empty_containers,
        )[0]

    def apply_task_states(
        self,
        tasks: Sequence[Any],
        *,
        last_status: str,
        stop_code: str | None = None,
        stopped_reason: str | None = None,
        exit_code: int | None = None,
        container_reason: str | None = None,
        empty_containers: bool = False,
    ) -> list[dict[str, Any]]:
        """Move every task of ``tasks`` (``find_all``) to ``last_status`` with AWS's times, at one
        instant, in one hold of ``MOTO_LOCK`` (see ``Sandbox.set_task_states``); returns their
        snapshots, in order. Their events are queued together and delivered once the lock is let
        go. ``ValueError`` for an unknown status, before any task moves.
        """
        if last_status not in LAST_STATUSES:
            raise ValueError(f"last_status must be one of {', '.join(LAST_STATUSES)}")
        container_status = (
            "STOPPED"
            if last_status == "STOPPED"
            else "RUNNING"
            if last_status in ("RUNNING", *_STOPPING_PHASE)
            else "PENDING"
        )
        with MOTO_LOCK:
            now = _now()
            for task in tasks:
                task.last_status = last_status
                if last_status == "RUNNING":
                    task.pull_started_at = getattr(task, "pull_started_at", None) or now
                    task.pull_stopped_at = getattr(task, "pull_stopped_at", None) or now
                    task.started_at = getattr(task, "started_at", None) or now
                    task.connectivity = "CONNECTED"
                    task.connectivity_at = getattr(task, "connectivity_at", None) or now
                if last_status in _STOPPING_PHASE:
                    task.desired_status = "STOPPED"
                    task.stopping_at = getattr(task, "stopping_at", None) or now
                if stop_code is not None:
                    task.stop_code = stop_code
                if stopped_reason is not None:
                    task.stopped_reason = stopped_reason
                if last_status == "STOPPED":
                    task.stopped_at = getattr(task, "stopped_at", None) or now
                    task.execution_stopped_at = getattr(task, "execution_stopped_at", None) or now
                    if not getattr(task, "stop_code", None):
                        task.stop_code = "EssentialContainerExited"
                        if not task.stopped_reason:
                            task.stopped_reason = "Essential container in task exited"
                if empty_containers:
                    task.containers = []
                for container in task.containers:
                    container.last_status = container_status
                    if exit_code is not None:
                        container.exitCode = exit_code
                    if container_reason is not None:
                        container.reason = container_reason
            self._changed(tasks, now)
            return [self._snapshot(task) for task in tasks]

    def client_token(self, task_arn: str) -> str | None:
        """The clientToken the task was launched with, if any."""
        with MOTO_LOCK:
            return self._token_of_task.get(task_arn)

    def _snapshot(self, task: Any) -> dict[str, Any]:
        return {
            "arn": task.task_arn,
            "cluster": task.cluster_name,
            "region": task.region_name,
            "taskDefinitionArn": task.task_definition_arn,
            "launchType": task.launch_type or None,
            "group": task.group,
            "startedBy": task.started_by or None,
            "tags": {t["key"]: t["value"] for t in task.tags or []},
            "clientToken": self._token_of_task.get(task.task_arn),
            "overrides": task.overrides or {},
            "lastStatus": task.last_status,
            "desiredStatus": task.desired_status,
            "stopCode": getattr(task, "stop_code", None),
            "stoppedReason": task.stopped_reason or None,
            "createdAt": _iso(getattr(task, "created_at", None)),
            "startedAt": _iso(getattr(task, "started_at", None)),
            "stoppedAt": _iso(getattr(task, "stopped_at", None)),
            "containers": [
                {
                    "name": c.name,
                    "lastStatus": c.last_status,
                    "exitCode": c.exitCode,
                    "reason": getattr(c, "reason", None),
                }
                for c in task.containers
            ],
        }

    def tasks(self, *, cluster: str | None = None) -> list[dict[str, Any]]:
        """A snapshot of every task in every account and region, oldest first per cluster."""
        name = cluster.rsplit("/", 1)[-1] if cluster else None
        with MOTO_LOCK:
            return [
                self._snapshot(task)
                for _account, _region, backend in iter_ecs_backends()
                for cluster_name, cluster_tasks in backend.tasks.items()
                if name is None or cluster_name == name
                for task in cluster_tasks.values()
            ]
