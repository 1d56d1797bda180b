"""Task logs in the Airflow UI: the CloudWatch Logs lines of a task instance's container.

Airflow's API server calls ``executor.get_task_log(ti, try_number)`` for a RUNNING task instance
every time its log view refreshes, so this path is kept cheap:

- one indexed read of the task store (by record id, else by TI key); of the launch request only
  its ``taskDefinition`` is ever read, never the workload token beside it;
- where the logs are is resolved once and cached (a revision's ``awslogs`` options never
  change; a bare family is re-resolved every few minutes);
- then ``logs:GetLogEvents`` from the head of the stream, paginated and bounded.

What Airflow does with the answer shapes it: the second element (lines) is merged with the other
log sources and Airflow remembers how many lines it has shown (``log_pos``), skipping that many on
the next refresh. So lines are only ever real log lines, a stable prefix of the stream; every
explanation ("not launched yet", "logs not configured", "truncated") goes into the first element,
which Airflow shows in the "Log message source details" group.

Backends plug in with one method on their executor, ``_log_location(record)``:

- ``record`` is the :class:`~aws_reconciler.store.TaskRecord` of the try being viewed, without
  ``spec``; ``record.external_id`` (task ARN / job id) is always set when it is called;
- it returns a :class:`LogLocation` (or a plain ``(group, stream)`` tuple) once the task's stream
  is known; ``None`` while the task has no log stream *yet* (e.g. a Batch job not RUNNING);
- it raises :class:`LogsUnavailable` with a message for the user when the logs cannot exist
  there (no ``awslogs``, no stream prefix, the task is gone...);
- it may call AWS through :func:`task_logs_of` (cached clients, :meth:`TaskLogs.memo` for
  facts that never change); any other exception is caught and shown as a read failure;
- it runs inside an API server request for every refresh of the log view: cache, never sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from botocore.config import Config
from botocore.exceptions import ClientError

from ..config import ConfigError
from ..model import TiKey
from ..store.queries import TaskQueries
from ..store.records import TaskRecord

if TYPE_CHECKING:
    from .base import ReconcilerExecutor

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Lines returned per call at most: a stable prefix of the stream, so Airflow's ``log_pos`` holds.
DEFAULT_MAX_LINES = 10_000
#: GetLogEvents pages per call at most (each page is up to 1 MB or 10,000 events).
DEFAULT_MAX_PAGES = 10
#: Facts cached per executor (task -> revision, revision -> log options, ...).
DEFAULT_CACHE_SIZE = 4096
#: Where AWS Batch jobs log unless their job definition names another ``awslogs-group``.
BATCH_DEFAULT_LOG_GROUP = "/aws/batch/job"


class LogsUnavailable(Exception):
    """The task's logs cannot be shown, for a reason the user should read (``str(exc)``)."""


class LogLocation(NamedTuple):
    """A CloudWatch Logs stream; ``region`` ``None`` means the executor's region."""

    group: str
    stream: str
    region: str | None = None


@dataclass(frozen=True)
class LogPage:
    """What one ``get_task_log`` read found."""

    lines: list[str]
    truncated: bool


def _client_config() -> Config:
    # The API server waits for this inside an HTTP request: fail fast, retry once, never hang.
    return Config(
        retries={"mode": "standard", "total_max_attempts": 2},
        connect_timeout=3,
        read_timeout=10,
        max_pool_connections=10,
    )


class TaskLogs:
    """One executor's log-reading state: AWS clients and a cache of immutable facts. Thread-safe
    (the API server serves log requests from a thread pool).

    ``max_lines`` and ``max_pages`` bound one read; ``page_size`` is the ``limit`` of one
    GetLogEvents call (AWS allows up to 10,000); ``cache_size`` bounds :meth:`memo`.
    ``client_factory(service, region)`` replaces boto3's standard chain (tests).
    """

    def __init__(
        self,
        *,
        region_name: str | None,
        max_lines: int = DEFAULT_MAX_LINES,
        max_pages: int = DEFAULT_MAX_PAGES,
        page_size: int = 10_000,
        cache_size: int = DEFAULT_CACHE_SIZE,
        client_factory: Callable[[str, str | None], Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region_name = region_name
        self.max_lines = max_lines
        self.max_pages = max_pages
        self.page_size = page_size
        self._cache_size = cache_size
        self._client_factory = client_factory or self._boto3_client
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._cache: OrderedDict[tuple[str, Hashable], tuple[Any, float | None]] = OrderedDict()
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._session: Any = None

    def _boto3_client(self, service: str, region: str | None) -> Any:
        import boto3

        # Called under self._lock: a boto3 Session is not thread-safe, its clients are.
        if self._session is None:
            self._session = boto3.session.Session()
        return self._session.client(service, region_name=region, config=_client_config())

    def client(self, service: str, region: str | None = None) -> Any:
        """A cached client (standard credential chain, ``AWS_ENDPOINT_URL`` honoured) of ``service``."""
        key = (service, region or self.region_name)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = self._client_factory(service, key[1])
            return client

    def memo(self, namespace: str, key: Hashable, compute: Callable[[], T], *, ttl: float | None = None) -> T:
        """``compute()`` once per key (least recently used evicted); for facts that do not change,
        or change rarely (``ttl`` seconds).

        Failures are not cached: the next refresh tries again. Two threads may compute the same
        key at once; both get a correct answer, so no lock is held across the AWS call.
        """
        cache_key = (namespace, key)
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None and (cached[1] is None or cached[1] > now):
                self._cache.move_to_end(cache_key)
                return cached[0]
        value = compute()
        with self._lock:
            self._cache[cache_key] = (value, None if ttl is None else now + ttl)
            self._cache.move_to_end(cache_key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return value

    def read(self, location: LogLocation) -> LogPage:
        """Events of the stream from its head: at most ``max_lines`` lines, ``max_pages`` calls.

        Raises ``ClientError`` as AWS answered (``ResourceNotFoundException``: no stream yet).
        """
        logs = self.client("logs", location.region)
        lines: list[str] = []
        token: str | None = None
        for _ in range(self.max_pages):
            kwargs: dict[str, Any] = {
                "logGroupName": location.group,
                "logStreamName": location.stream,
                "startFromHead": True,
                "limit": max(1, min(self.page_size, self.max_lines - len(lines))),
            }
            if token is not None:
                kwargs["nextToken"] = token
            page = logs.get_log_events(**kwargs)
            lines.extend(str(event.get("message", "")).rstrip("\r\n") for event in page.get("events") or [])
            if len(lines) >= self.max_lines:
                return LogPage(lines[: self.max_lines], truncated=True)
            following = page.get("nextForwardToken")
            # GetLogEvents signals the end by handing back the token it was given.
            if not following or following == token:
                return LogPage(lines, truncated=False)
            token = following
        return LogPage(lines, truncated=True)


_STATE_ATTRIBUTE = "_aws_reconciler_task_logs"
_STATE_LOCK = threading.Lock()


def task_logs_of(executor: ReconcilerExecutor) -> TaskLogs:
    """The executor's :class:`TaskLogs`, created on first use (its ``__init__`` stays I/O-free)."""
    state = executor.__dict__.get(_STATE_ATTRIBUTE)
    if state is None:
        with _STATE_LOCK:
            state = executor.__dict__.get(_STATE_ATTRIBUTE)
            if state is None:
                state = TaskLogs(region_name=executor.settings.ecs.region_name)
                executor.__dict__[_STATE_ATTRIBUTE] = state
    assert isinstance(state, TaskLogs)
    return state


# ---- finding the try's record ----------------------------------------------------------------


def find_record(queries: TaskQueries, ti: Any, try_number: int, *, executor: ReconcilerExecutor) -> TaskRecord | None:
    """The record of try ``try_number`` of ``ti``.

    By ``ti.external_executor_id`` (our record id) when it names a row of that try; else the
    newest queueing of the TI key with ``try_number`` (Airflow < 3.3 without pre-assigned ids,
    an earlier try viewed while a later one runs, a sensor queued several times).
    """
    record_id = getattr(ti, "external_executor_id", None)
    if record_id:
        record = queries.record(str(record_id))
        if record is not None and record.key.try_number == try_number and record.backend is executor.backend:
            return record
    map_index = getattr(ti, "map_index", -1)
    key = TiKey(
        dag_id=str(ti.dag_id),
        task_id=str(ti.task_id),
        run_id=str(ti.run_id),
        map_index=int(map_index if map_index is not None else -1),
        try_number=int(try_number),
    )
    return queries.newest_for_key(key, backend=executor.backend)


# ---- ECS -------------------------------------------------------------------------------------

#: How long a family name (no revision) stays resolved to its latest revision's log options.
FAMILY_TTL = 300.0


def task_id_of(task_arn: str) -> str:
    """The id at the end of an ECS task ARN (``.../task/<cluster>/<id>`` or old ``.../task/<id>``)."""
    return task_arn.rsplit("/", 1)[-1]


def is_pinned(task_definition: str) -> bool:
    """``family:revision`` or a revision ARN: names one immutable revision (a bare family does not)."""
    return ":" in task_definition.rsplit("/", 1)[-1]


def _log_configurations(logs: TaskLogs, task_definition: str) -> tuple[str, dict[str, dict[str, Any] | None]]:
    definition = logs.client("ecs").describe_task_definition(taskDefinition=task_definition)["taskDefinition"]
    # Only what locating the stream needs, so the cache stays small.
    containers = {str(c.get("name")): c.get("logConfiguration") for c in definition.get("containerDefinitions") or []}
    return str(definition.get("taskDefinitionArn") or task_definition), containers


def ecs_log_location(
    logs: TaskLogs, record: TaskRecord, *, container_name: str, task_definition: str | None
) -> LogLocation:
    """Where the ``awslogs`` driver writes the Airflow container of this task:
    ``<awslogs-stream-prefix>/<container>/<task id>`` in ``awslogs-group``.

    ``task_definition`` is what the task's RunTask request named (from the store). Its log
    options come from DescribeTaskDefinition, cached: forever for a revision (immutable), for
    :data:`FAMILY_TTL` for a bare family, which a later registration moves to a new revision.
    Not DescribeTasks: its answer carries the container command, i.e. the workload token, which
    has no business in the API server (botocore logs bodies at DEBUG).
    """
    task_arn = record.external_id
    if not task_arn:
        raise LogsUnavailable("the ECS task has not been launched yet")
    if not task_definition:
        raise LogsUnavailable(f"the launch request of task record {record.id} names no task definition")
    definition_arn, configurations = logs.memo(
        "ecs:log-configurations",
        task_definition,
        lambda: _log_configurations(logs, task_definition),
        ttl=None if is_pinned(task_definition) else FAMILY_TTL,
    )
    if container_name not in configurations:
        raise LogsUnavailable(f"task definition {definition_arn} has no container named {container_name!r}")
    config = configurations[container_name] or {}
    driver = config.get("logDriver")
    if driver != "awslogs":
        raise LogsUnavailable(
            f"container {container_name!r} of task definition {definition_arn} does not log to CloudWatch Logs "
            f"(log driver: {driver or 'none'}); configure the awslogs log driver with awslogs-group and "
            "awslogs-stream-prefix to see its output here"
        )
    options = config.get("options") or {}
    group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
    if not group:
        raise LogsUnavailable(f"container {container_name!r} of task definition {definition_arn} sets no awslogs-group")
    if not prefix:
        raise LogsUnavailable(
            f"container {container_name!r} of task definition {definition_arn} sets no awslogs-stream-prefix: its "
            "stream is then named after the Docker container id, which Airflow cannot know; set awslogs-stream-prefix"
        )
    return LogLocation(
        group=str(group),
        stream=f"{prefix}/{container_name}/{task_id_of(task_arn)}",
        region=str(options["awslogs-region"]) if options.get("awslogs-region") else None,
    )


def ecs_executor_log_location(executor: ReconcilerExecutor, record: TaskRecord) -> LogLocation:
    """``EcsExecutor._log_location``: the task definition from the store, then :func:`ecs_log_location`."""
    container = executor.settings.ecs.container_name
    if not container:
        raise LogsUnavailable("[aws_reconciler_ecs] container_name is not set, so the task's container is unknown")
    logs = task_logs_of(executor)
    # A record's launch request never changes: one read per record and API server process.
    task_definition = logs.memo(
        "ecs:record-task-definition", record.id, lambda: TaskQueries(executor.store.engine).task_definition(record.id)
    )
    return ecs_log_location(logs, record, container_name=container, task_definition=task_definition)


# ---- the executor's get_task_log ---------------------------------------------------------------

_SOURCE = "aws-reconciler"


def _describe(record: TaskRecord) -> str:
    return f"task record {record.id} ({record.backend.value}, phase {record.phase.value}, attempt {record.attempt})"


def read_task_log(executor: ReconcilerExecutor, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
    """``(sources, lines)`` for Airflow: where the lines come from (and why there are none), and
    the container's output. Never raises: the log view must render whatever happens here."""
    try:
        return _read_task_log(executor, ti, try_number)
    except LogsUnavailable as exc:
        return [f"{_SOURCE}: {exc}"], []
    except ConfigError as exc:
        # Names the option and where it was set, never a secret's value.
        return [f"{_SOURCE}: configuration error: {exc}"], []
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Error"), error.get("Message", "")
        log.warning("reading the logs of %s try %s failed: %s: %s", getattr(ti, "key", ti), try_number, code, message)
        return [f"{_SOURCE}: could not read the task's logs: {code}: {message}"], []
    except Exception as exc:
        # Only the type: messages of database and connection errors may name hosts or users.
        log.warning("reading the logs of %s try %s failed", getattr(ti, "key", ti), try_number, exc_info=True)
        return [f"{_SOURCE}: could not read the task's logs: {type(exc).__name__}"], []


def _read_task_log(executor: ReconcilerExecutor, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
    record = find_record(TaskQueries(executor.store.engine), ti, try_number, executor=executor)
    if record is None:
        return [f"{_SOURCE}: no task record for try {try_number} of this task instance yet"], []
    if record.external_id is None:
        waiting = f"; last error: {record.last_error}" if record.last_error else ""
        return [
            f"{_SOURCE}: {_describe(record)}: not launched yet, so there are no logs yet; they appear here "
            f"once the container runs{waiting}"
        ], []
    locate: Callable[[TaskRecord], LogLocation | tuple[str, str] | None] | None = getattr(
        executor, "_log_location", None
    )
    if locate is None:
        return [f"{_SOURCE}: {type(executor).__name__} does not know where its tasks' logs are"], []
    found = locate(record)
    if found is None:
        return [f"{_SOURCE}: {_describe(record)}: the task has no log stream yet (it has not started)"], []
    location = found if isinstance(found, LogLocation) else LogLocation(*found)
    where = f"CloudWatch Logs group {location.group}, stream {location.stream}"
    try:
        page = task_logs_of(executor).read(location)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        return [
            f"{_SOURCE}: {where} does not exist yet: the container has not started or written any output "
            f"({_describe(record)}; AWS: {exc.response['Error'].get('Message', '')})"
        ], []
    sources = [where]
    if page.truncated:
        sources.append(f"{_SOURCE}: showing the first {len(page.lines)} lines; the rest is in {where}")
    elif not page.lines:
        sources.append(f"{_SOURCE}: no output in {where} yet")
    return sources, page.lines
