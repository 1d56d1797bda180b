"""The shared scheduler-side executor: record desired state, report finished rows, adopt, revoke.

No AWS call ever happens here: the scheduler's heartbeat only touches the task store, with one
transaction per ``_process_workloads`` call and one indexed query per ``sync`` (plus, when rows
finished, one indexed query of Airflow's task instances and one write).

Database trouble never escapes the heartbeat: the scheduler would exit, and with a store outside
Airflow's database that is a crash loop. Workloads then stay queued and finished rows unreported
until a later heartbeat gets through.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from airflow.executors.base_executor import BaseExecutor
from airflow.observability.stats import Stats

from ..backends.descriptor import BackendDescriptor, LogLocation, LogSubject, LogsUnavailable
from ..backends.requests import InvalidExecutorConfig
from ..config import ConfigError, Settings, load_settings
from ..model import Backend, Phase, TiKey, WorkloadKind, redact_tokens
from ..store.database import create_store_engine
from ..store.migrate import check_schema, migrate
from ..store.queries import TaskQueries
from ..store.records import NewTask, TaskRecord
from ..store.sealing import CLEAR_WARNING, TokenKeyError, TokenSealer
from ..store.tasks import TaskStore
from ..store.trouble import classify_store_error
from .credentials import connection_clients
from .logs import TaskLogs, read_task_log
from .logs.cloudwatch import log_client_config
from .logs.never_ran import NeverRanLog, never_ran_lines
from .reporting import Action, Decision, TryState, decide, decide_by_exit, may_hold, never_ran
from .workload import record_id_of, stored_key, ti_key_of_model, token_expiry, workload_command, workload_kind

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance


#: The event Airflow's event log shows for a try the executor failed before it ran (beside the
#: scheduler's own "state mismatch" entry, whose text buries the reason).
NEVER_RAN_EVENT = "aws-reconciler: not run"


class SpecError(ValueError):
    """The workload cannot become a valid AWS request; fails that one task."""


class ReconcilerExecutor(BaseExecutor):
    """Base of :class:`EcsExecutor` and friends: a subclass names its backend's descriptor, which
    says how a workload becomes a request, what the backend's settings are and where logs are."""

    descriptor: ClassVar[BackendDescriptor]
    backend: ClassVar[Backend]
    # Airflow 3.3+: the scheduler writes a UUID into ti.external_executor_id in the same UPDATE
    # that sets QUEUED; it is our record id, clientToken stem and identity tag.
    pre_assigns_external_executor_id: ClassVar[bool] = True
    supports_ad_hoc_ti_run = True
    # One instance per Airflow team ("...;team_a=aws_reconciler.executor.EcsExecutor"), each with
    # the team's own settings, rows and identity tag; its team's reconciler alone runs its tasks.
    supports_multi_team = True
    # ExecuteCallback workloads (deadline alerts) run as ECS tasks / Batch jobs like tasks do.
    supports_callbacks = True
    # TestConnection workloads too: the connection is tested from where tasks run (their network,
    # their role); the container reports the result to the API server itself.
    supports_connection_test = True
    is_local = False
    is_production = True
    serve_logs = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "descriptor" in cls.__dict__:
            cls.backend = cls.descriptor.kind

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The API server instantiates executors too (for logs): no I/O here.
        super().__init__(*args, **kwargs)
        self._settings: Settings | None = None
        self._store: TaskStore | None = None
        self._task_logs: TaskLogs | None = None
        # The API server serves log requests from a thread pool.
        self._task_logs_lock = threading.Lock()
        self._never_ran_log: NeverRanLog | None = None
        self._token_sealer: TokenSealer | None = None
        self._pinned_events: list[Any] = []

    # ---- wiring ---------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """Settings, loaded on first use (a bad value raises :class:`ConfigError`)."""
        if self._settings is None:
            # Airflow resolves what our loader cannot: sql_alchemy_conn_secret, its default database.
            # A team's executor reads the team's own values, as Airflow's ExecutorConf does.
            self._settings = load_settings(airflow_conf=_airflow_conf, team=self.team_name)
        return self._settings

    @property
    def store(self) -> TaskStore:
        """The task store, connected on first use."""
        if self._store is None:
            self._store = TaskStore(create_store_engine(self.settings.store_url), team=self.settings.team)
        return self._store

    @property
    def token_sealer(self) -> TokenSealer:
        """Seals each workload's token for the store (``[aws_reconciler] token_key``), built on first use."""
        if self._token_sealer is None:
            key = self.settings.token_key
            self._token_sealer = TokenSealer(
                key.get_secret_value() if key is not None else None, origin=self.settings.token_key_origin
            )
        return self._token_sealer

    @property
    def owner(self) -> str:
        """The scheduler job that owns (reports) the rows this executor writes."""
        return str(self.job_id) if self.job_id is not None else "unowned"

    def start(self) -> None:
        """Validate settings and the store; create the store's tables on first start.

        A bad setting ends the scheduler with one line naming it (see :class:`ExecutorStartError`).
        """
        try:
            settings = self.settings
            # Before the checks: a deployment still configured the provider's way fails them, and
            # the warning names the command that converts its settings.
            for warning in settings.warnings:
                self.log.warning("%s", warning)
            self.descriptor.require(settings)
            sealer = self.token_sealer
        except (ConfigError, TokenKeyError) as exc:
            _print_start_errors_in_one_line()
            raise ExecutorStartError(f"{type(self).__name__} cannot start: {exc}") from None
        if settings.core.check_health_on_startup:
            try:
                engine = self.store.engine
                try:
                    check_schema(engine)
                except Exception:
                    migrate(engine)
                    check_schema(engine)
            except Exception as exc:
                # A store URL that cannot work, or a store that does not answer while the
                # scheduler starts: one line naming store_url (password masked), not a traceback.
                trouble = classify_store_error(exc, label=self._store_label_or_unknown())
                if trouble is None:
                    raise
                _print_start_errors_in_one_line()
                raise ExecutorStartError(f"{type(self).__name__} cannot start: {trouble}") from None
        if not sealer.encrypting:
            self.log.warning("%s", CLEAR_WARNING)
        self.log.info(
            "%s%s started: deployment %s, store %s",
            type(self).__name__,
            settings.of_team,
            settings.core.deployment,
            self.store_label(),
        )

    def _store_label_or_unknown(self) -> str:
        try:
            return self.store_label()
        except Exception:
            return "(unparsable URL)"

    def store_label(self) -> str:
        """The store URL without its password, for logs."""
        from ..config import redact_url

        return redact_url(self.settings.store_url)

    def build_spec(
        self, *, record_id: str, workload: Any, key: TiKey | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """The resolved AWS request and its target (cluster / job queue); raises :class:`SpecError`.

        Only a task has an ``executor_config``; a callback or connection test runs with the
        configured request as it is. ``key``: the workload's stored key, when the caller has it.
        """
        ti = getattr(workload, "ti", None)
        try:
            spec = self.descriptor.build_request(
                self.descriptor.settings_of(self.settings),
                deployment=self.settings.core.deployment,
                record_id=record_id,
                key=key if key is not None else stored_key(workload, record_id),
                command=workload_command(workload),
                executor_config=ti.executor_config if ti is not None else None,
                team=self.settings.team,
            )
        except InvalidExecutorConfig as exc:
            raise SpecError(str(exc)) from None
        return spec, spec[self.descriptor.target_key]

    # ---- the scheduler's calls ------------------------------------------------------------

    def _process_workloads(self, workload_items: Sequence[Any]) -> None:
        """Insert one row per workload (task, callback or connection test), all in one transaction;
        invalid ones as failed rows.

        When the store cannot be written, every workload stays queued and the next heartbeat
        tries again (the insert is idempotent, so a commit whose answer was lost is no harm).
        """
        rows: list[NewTask] = []
        owner = self.owner
        for workload in workload_items:
            kind = workload_kind(workload)
            key = _workload_key(workload, kind)
            record_id = record_id_of(workload)
            if not record_id:
                # Airflow < 3.3 does not pre-assign an id: make one and tell the scheduler.
                record_id = str(uuid.uuid4())
                self.queued(key, info=record_id)
            stored = stored_key(workload, record_id)
            token = getattr(workload, "token", None)
            try:
                spec, target = self.build_spec(record_id=record_id, workload=workload, key=stored)
                # The token goes into a column of its own, sealed; the stored request keeps a placeholder.
                spec, sealed_token = self.token_sealer.seal_request(spec, token)
                phase, reason = Phase.PENDING, None
            except (SpecError, ConfigError, ValueError) as exc:
                spec, target, phase, reason, sealed_token = None, None, Phase.FAILED, str(exc), None
                self.log.error("%s %s not launched: %s", kind.value, key, reason)
            rows.append(
                NewTask(
                    id=record_id,
                    backend=self.backend,
                    owner=owner,
                    key=stored,
                    queue=workload.ti.queue if kind is WorkloadKind.TASK else getattr(workload, "queue", None),
                    target=target,
                    spec=spec,
                    phase=phase,
                    status_reason=reason,
                    token_expires_at=token_expiry(token),
                    kind=kind,
                    log_path=getattr(workload, "log_path", None) if kind is WorkloadKind.TASK else None,
                    workload_token=sealed_token,
                )
            )
        try:
            conflicts = set(self.store.add(rows))
        except sa.exc.SQLAlchemyError as exc:
            self.log.error(
                "task store unavailable, %d task(s) stay queued for the next heartbeat: %s",
                len(rows),
                _one_line(exc),
            )
            self._count("store_errors", 1)
            return
        for workload, row in zip(workload_items, rows, strict=True):
            key = _workload_key(workload, row.kind)
            self._queue_of(row.kind).pop(key, None)
            if row.id in conflicts:
                reason = f"record id {row.id} is already stored for another task instance or callback; not launched"
                self.log.error("%s %s not launched: %s", row.kind.value, key, reason)
                self.fail(key, info=reason)
            else:
                self.running.add(key)
        invalid = sum(1 for r in rows if r.phase is Phase.FAILED) + len(conflicts)
        self._count("queued", len(rows) - invalid)
        self._count("invalid_config", invalid)

    def _queue_of(self, kind: WorkloadKind) -> dict[Any, Any]:
        """BaseExecutor's queue that holds workloads of ``kind`` until ``_process_workloads`` takes them."""
        if kind is WorkloadKind.CALLBACK:
            return self.queued_callbacks
        if kind is WorkloadKind.CONNECTION_TEST:
            return self.queued_connection_tests
        return self.queued_tasks

    def sync(self) -> None:
        """Report each finished row exactly once, and only when it is the try's real outcome.

        One indexed query of the store; when rows finished, one indexed query of Airflow's task
        instances and one write. No AWS call. Database trouble is logged in one line and the rows
        are reported on a later heartbeat.
        """
        try:
            self._sync()
        except sa.exc.SQLAlchemyError as exc:
            self.log.error("could not report finished tasks, retrying next heartbeat: %s", _one_line(exc))
            self._count("store_errors", 1)

    def _sync(self) -> None:
        # The scheduler saved the previous heartbeat's event log entries after that heartbeat.
        self._pinned_events.clear()
        rows = self.store.finished_unreported(owner=self.owner, backend=self.backend)
        if not rows:
            return
        tasks = [r for r in rows if r.kind is WorkloadKind.TASK]
        current = self._current_tries(r for r in tasks if r.superseded_at is None)
        states = {r.id: current.get(_primary(r)) for r in tasks}
        now = self.store.database_now() if any(may_hold(r, states[r.id]) for r in tasks) else None
        timeout = self.settings.task_queued_timeout
        decisions = {
            r.id: (
                decide(r, states[r.id], now=now, task_queued_timeout=timeout)
                if r.kind is WorkloadKind.TASK
                else decide_by_exit(r)
            )
            for r in rows
        }
        reports = [d.report for d in decisions.values() if d.report is not None]
        # Marked first, then told: a write that fails tells Airflow nothing twice, and a row
        # adopted by another scheduler meanwhile is reported by that one alone.
        marked = self.store.mark_reported(reports, owner=self.owner)
        counts: Counter[str] = Counter()
        for row in rows:
            decision = decisions[row.id]
            if decision.action is Action.HOLD:
                counts[decision.outcome.value] += 1
                continue
            key = _airflow_key_of(row)
            if row.id not in marked:
                # Another scheduler adopted it (or revoked it) since it was read: its TI is not
                # this scheduler's any more.
                self.running.discard(key)
                continue
            self._apply(key, decision)
            counts[decision.outcome.value] += 1
            if row.kind is WorkloadKind.TASK and never_ran(row, states.get(row.id), decision):
                self._explain_never_ran(row, key, decision.info or row.phase.value)
            elif row.kind is WorkloadKind.CONNECTION_TEST and decision.action is Action.FAILED:
                # Airflow drains this event without a word; its reaper fails the test much later.
                self.log.warning("connection test %s ended without a result: %s", key, decision.info)
        for name, n in counts.items():
            self._count(name, n)

    def log_task_event(self, *, event: str, extra: str, ti_key: Any) -> None:
        """Airflow's, plus a reference to the entry until the scheduler has saved it.

        Airflow 3.3's scheduler saves these entries with ``bulk_save_objects`` over a generator that
        pops them off the queue; SQLAlchemy's instance state refers to its object weakly, so an
        entry referred to nowhere else is collected during the insert and written as an empty row,
        which the database refuses (``log.event`` is NOT NULL) and the scheduler drops with an error.
        """
        super().log_task_event(event=event, extra=extra, ti_key=ti_key)
        if self._task_event_logs:
            self._pinned_events.append(self._task_event_logs[-1])

    def _explain_never_ran(self, row: TaskRecord, key: Any, reason: str) -> None:
        """Say why the try never ran where its user looks: Airflow's event log, and the try's own
        task log (which nothing else writes). Never raises: the failure is reported regardless."""
        try:
            self.log_task_event(event=NEVER_RAN_EVENT, extra=reason, ti_key=key)
            if row.log_path:
                self.never_ran_log().write(row.log_path, never_ran_lines(row, reason))
        except Exception:
            self.log.warning("could not record why %s never ran", key, exc_info=True)

    def never_ran_log(self) -> NeverRanLog:
        """The writer of never-ran reasons into Airflow's task logs, created on first use."""
        if self._never_ran_log is None:
            from airflow.configuration import conf

            self._never_ran_log = NeverRanLog(
                base_log_folder=Path(conf.get("logging", "base_log_folder")).expanduser(),
                remote=_remote_task_log,
            )
        return self._never_ran_log

    def _apply(self, key: Any, decision: Decision) -> None:
        if decision.action is Action.SUCCESS:
            self.success(key, info=decision.info)
        elif decision.action is Action.FAILED:
            self.fail(key, info=decision.info)
        else:
            self.running.discard(key)

    def _current_tries(self, rows: Iterable[TaskRecord]) -> dict[tuple[str, str, str, int], TryState]:
        """The rows' task instances as Airflow's database has them now: one query on its TI key.

        A session of its own (not the scheduler's scoped one, which must not be closed here).
        """
        keys = [_airflow_key(r.key) for r in rows]
        if not keys:
            return {}
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        condition = TaskInstance.filter_for_tis(keys)
        if condition is None:
            return {}
        query = sa.select(
            TaskInstance.dag_id,
            TaskInstance.task_id,
            TaskInstance.run_id,
            TaskInstance.map_index,
            TaskInstance.try_number,
            TaskInstance.state,
        ).where(condition)
        with create_session(scoped=False) as session:
            return {
                (r.dag_id, r.task_id, r.run_id, r.map_index): TryState(
                    r.try_number, None if r.state is None else str(getattr(r.state, "value", r.state))
                )
                for r in session.execute(query)
            }

    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        """Adopt from the store alone (zero AWS calls): by record id, else by TI key."""
        if not tis:
            return []
        ids = {ti.external_executor_id for ti in tis if ti.external_executor_id}
        # Only a TI without an id is matched by key. An id names one queueing: when its row is
        # missing, that queueing never reached the store, and an older row of the same key (an
        # earlier queueing of the same try) must not be reported as its outcome.
        keys = {ti_key_of_model(ti) for ti in tis if not ti.external_executor_id}
        adopted = self.store.adopt(owner=self.owner, backend=self.backend, ids=ids, keys=keys)
        adopted_ids = {r.id for r in adopted}
        adopted_keys = {r.key for r in adopted}
        not_adopted = []
        for ti in tis:
            if ti.external_executor_id:
                found = ti.external_executor_id in adopted_ids
            else:
                found = ti_key_of_model(ti) in adopted_keys
            if found:
                self.running.add(ti.key)
            else:
                not_adopted.append(ti)
        if adopted:
            self.log.info("adopted %d task instances from the task store", len(tis) - len(not_adopted))
        self._count("adopted", len(tis) - len(not_adopted))
        return not_adopted

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Ask the reconciler to stop the task; never raises, never changes the TI state."""
        try:
            ids = [ti.external_executor_id] if ti.external_executor_id else []
            self.store.revoke(ids=ids, keys=[ti_key_of_model(ti)])
        except Exception:
            self.log.exception("could not record the revoke of %s; the reconciler will not stop it", ti.key)
        self.queued_tasks.pop(ti.key, None)
        self.running.discard(ti.key)
        self._count("revoked", 1)

    def _count(self, event: str, n: int) -> None:
        """What only the scheduler side knows, through Airflow's own metrics (StatsD/OpenTelemetry)."""
        if n:
            Stats.incr(f"aws_reconciler.{self.backend.value}.{event}", n)

    def get_task_log(self, ti: TaskInstance, try_number: int) -> tuple[list[str], list[str]]:
        """``(sources, lines)``: the CloudWatch Logs output of the try's container, for the Airflow UI.

        Called by the API server while the TI runs; the backend descriptor's locator says where
        its logs are (see :mod:`aws_reconciler.executor.logs`). Never raises.
        """
        return read_task_log(
            TaskQueries(self.store.engine),
            ti,
            try_number,
            backend=self.backend,
            locate=self._log_location,
            reader=self.task_logs,
        )

    def task_logs(self) -> TaskLogs:
        """This executor's CloudWatch reader and cache, created on first use (``__init__`` stays I/O-free)."""
        with self._task_logs_lock:
            if self._task_logs is None:
                section = self.descriptor.settings_of(self.settings)
                # The Airflow way on the Airflow side: the identity of [<section>] aws_conn_id.
                self._task_logs = TaskLogs(
                    region_name=section.region_name,
                    client_factory=connection_clients(section.aws_conn_id or None, config=log_client_config()),
                )
            return self._task_logs

    def _log_location(self, record: TaskRecord) -> LogLocation | None:
        """Where the try's container logs, by the backend's locator; ``None`` until it has a stream."""
        if not record.external_id:
            raise LogsUnavailable(f"the {self.backend.value} task of record {record.id} has not been launched yet")
        queries = TaskQueries(self.store.engine)
        subject = LogSubject(
            record_id=record.id,
            external_id=record.external_id,
            request_field=lambda name: queries.request_field(record.id, name),
        )
        return self.descriptor.locate_logs(self.task_logs(), self.descriptor.settings_of(self.settings), subject)

    def end(self) -> None:
        """Nothing to wait for: tasks keep running and the next scheduler adopts them."""
        if self._never_ran_log is not None:
            self._never_ran_log.close()

    def terminate(self) -> None:
        """Same as :meth:`end`: the reconciler, not the scheduler, owns the tasks."""


class ExecutorStartError(ConfigError):
    """The executor cannot start (a bad setting); the message is one line that names it.

    Raised from ``start()``, which the scheduler calls before its loop, as Airflow's own executors
    do: the scheduler logs it (a traceback of two frames: nothing chained, nothing below
    ``start()``), marks its job failed and exits with status 1. At exit it is printed as its one
    line, not as the 40-frame traceback of the whole CLI (see :func:`_print_start_errors_in_one_line`).
    """


def _print_start_errors_in_one_line() -> None:
    """Print an :class:`ExecutorStartError` that ends the process as one line on stderr.

    Airflow's scheduler has already logged it; Python would print it again with every frame of
    the CLI. Any other uncaught exception still goes to the hook that was installed before.
    """
    previous = sys.excepthook
    if getattr(previous, "_aws_reconciler", False):
        return

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, ExecutorStartError):
            print(f"error: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    excepthook._aws_reconciler = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def _one_line(exc: BaseException) -> str:
    """A database error in one line: the driver's message, never the statement or parameters
    (a parameter may be a workload token), and masked: a server may quote the failing row."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(redact_tokens(str(orig)).split())
    return f"{type(orig).__name__}: {text[:300]}"


def _workload_key(workload: Any, kind: WorkloadKind) -> Any:
    """The key Airflow tracks the workload by (in ``queued_*``, ``running`` and events)."""
    return workload.ti.key if kind is WorkloadKind.TASK else workload.key


def _primary(record: TaskRecord) -> tuple[str, str, str, int]:
    key = record.key
    return (key.dag_id, key.task_id, key.run_id, key.map_index)


def _remote_task_log() -> Any | None:
    """Airflow's remote task log handler, when ``[logging] remote_logging`` is on."""
    from airflow.configuration import conf

    if not conf.getboolean("logging", "remote_logging", fallback=False):
        return None
    from airflow.logging_config import get_remote_task_log

    return get_remote_task_log()


def _airflow_conf(section: str, option: str) -> str | None:
    from airflow.configuration import conf

    value = conf.get(section, option, fallback=None)
    return str(value) if value else None


def _airflow_key_of(record: TaskRecord) -> Any:
    """The key Airflow knows the row's workload by: a TaskInstanceKey, CallbackKey or ConnectionTestKey."""
    if record.kind is WorkloadKind.CALLBACK:
        from airflow.models.callback import CallbackKey

        return CallbackKey(id=record.id)
    if record.kind is WorkloadKind.CONNECTION_TEST:
        from airflow.models.connection_test import ConnectionTestKey

        return ConnectionTestKey(id=record.id)
    return _airflow_key(record.key)


def _airflow_key(key: Any) -> Any:
    from airflow.models.taskinstancekey import TaskInstanceKey

    return TaskInstanceKey(
        dag_id=key.dag_id, task_id=key.task_id, run_id=key.run_id, try_number=key.try_number, map_index=key.map_index
    )
