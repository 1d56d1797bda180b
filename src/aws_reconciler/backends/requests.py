"""What the ECS and Batch request builders share: checking ``executor_config`` against botocore's model.

Pure and offline (no AWS calls). Each backend's ``spec`` module keeps what is its own (the base
request, reserved keys, limits); this module holds the error type, the service-model lookup and the
checks whose logic is the same for RunTask and SubmitJob.
"""

from __future__ import annotations

import json
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

import botocore.session
from botocore.model import StructureShape
from botocore.validate import ParamValidator

from ..config import ConfigError
from ..config.models import BackendSettings
from .tags import IDENTITY_TAGS

T = TypeVar("T")


class InvalidExecutorConfig(ValueError):
    """A task's ``executor_config`` cannot produce a valid request; ``key`` names the culprit."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"invalid executor_config key {key!r}: {message}")
        self.key = key


@cache
def input_shape(service: str, operation: str) -> StructureShape:
    """The input shape of ``operation`` from botocore's bundled service model: the authoritative schema."""
    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    assert isinstance(shape, StructureShape)
    return shape


def check_keys(
    executor_config: Any, *, shape: StructureShape, operation: str, reserved: Mapping[str, str]
) -> Mapping[str, Any] | None:
    """``executor_config`` as a mapping of ``operation``'s parameters (``None`` when unset).

    Rejects anything but a dict, the keys in ``reserved`` (with the reason given there) and keys
    that are not parameters of ``shape``.
    """
    if executor_config is None:
        return None
    if not isinstance(executor_config, Mapping):
        raise InvalidExecutorConfig(
            "executor_config", f"must be a dict of {operation} keys, got {type(executor_config).__name__}"
        )
    allowed = shape.members
    for key in executor_config:
        if key in reserved:
            raise InvalidExecutorConfig(key, f"cannot be set per task: {reserved[key]}")
        if key not in allowed:
            # Only what a task may set: naming a reserved key here would invite the next error.
            settable = sorted(k for k in allowed if k not in reserved)
            raise InvalidExecutorConfig(
                key, f"not a {operation} parameter a task may set; one of: {', '.join(settable)}"
            )
    return executor_config


@dataclass(frozen=True)
class TaskConfigRules:
    """What a backend's per-task ``executor_config`` may hold: parameters of ``service``'s
    ``operation`` (botocore's model says which), none of ``reserved`` (key -> why), and a target
    under ``target_key`` that the backend's section allows."""

    service: str
    operation: str
    target_key: str
    reserved: Mapping[str, str]
    # The section's option merged into every request (run_task_kwargs, submit_job_kwargs).
    settings_option: str

    @property
    def shape(self) -> StructureShape:
        """The operation's input shape."""
        return input_shape(self.service, self.operation)

    def check_section(self, section: BackendSettings) -> None:
        """The section's request option may not set what the reconciler owns: :class:`ConfigError` at start-up
        (``count: 2`` in run_task_kwargs would launch two tasks for every task instance)."""
        where = f"invalid setting [{section.section}] {self.settings_option}"
        for key in getattr(section, self.settings_option):
            if key in self.reserved:
                raise ConfigError(f"{where}: {key!r} cannot be set: {self.reserved[key]}")
            if key == self.target_key:
                raise ConfigError(f"{where}: set the {self.target_key} with {section.target_field}")

    def check(self, executor_config: Any, section: BackendSettings) -> dict[str, Any]:
        """The checks every backend makes alike; an empty dict when ``executor_config`` is unset."""
        config = check_keys(executor_config, shape=self.shape, operation=self.operation, reserved=self.reserved)
        if config is None:
            return {}
        check_allowed(config, self.target_key, section.targets, section=section.section, setting=section.allowed_field)
        return dict(config)


def check_command_not_overridden(container: Any, *, key: str, what: str) -> None:
    """The executor sets the command that runs the Airflow task; a per-task override would replace it."""
    if isinstance(container, Mapping) and "command" in container:
        raise InvalidExecutorConfig(key, f"{what} runs the Airflow task and is set by the executor")


def check_size(payload: Any, *, limit: int, key: str, what: str, encode: bool = False) -> None:
    """``payload`` as compact JSON must stay within AWS's ``limit`` (characters, or bytes with ``encode``)."""
    text = json.dumps(payload, separators=(",", ":"))
    size = len(text.encode()) if encode else len(text)
    if size > limit:
        unit = "bytes" if encode else "characters"
        raise InvalidExecutorConfig(
            key,
            f"{what} is {size} {unit}, over AWS's limit of {limit} "
            "(the Airflow workload is part of the container command: shorten overrides or environment)",
        )


def check_allowed(
    executor_config: Mapping[str, Any], key: str, allowed: Sequence[str], *, section: str, setting: str
) -> None:
    """A per-task ``key`` (cluster, job queue) must be one the reconciler is configured to watch."""
    value = executor_config.get(key)
    if value is not None and value not in allowed:
        raise InvalidExecutorConfig(
            key,
            f"{value!r} is not configured; allowed: {', '.join(allowed)} "
            f"(add it to [{section}] {setting} so the reconciler watches it)",
        )


def check_no_identity_tags(tag_keys: Iterable[Any]) -> None:
    """A task may not set the tags the reconciler identifies its tasks by."""
    for tag in tag_keys:
        if tag in IDENTITY_TAGS:
            raise InvalidExecutorConfig(f"tags.{tag}", "is reserved for the reconciler's identity tags")


def validate(request: Mapping[str, Any], shape: StructureShape) -> None:
    """Validate ``request`` as botocore would before sending it; the first bad key names the error."""
    report = ParamValidator().validate(dict(request), shape)
    if report.has_errors():
        message = report.generate_report()
        raise InvalidExecutorConfig(first_key(message), message.strip())


def first_key(report: str) -> str:
    """The key a botocore validation report is about, or ``executor_config``."""
    # botocore's report reads 'Invalid type for parameter overrides.cpu, value: ...'; name the key.
    for marker in ("parameter ", "Unknown parameter in "):
        if marker in report:
            rest = report.split(marker, 1)[1]
            return rest.split(",", 1)[0].split(":", 1)[0].strip().strip('"')
    return "executor_config"


class RequestTemplates(Generic[T]):
    """The templates (``T``) a backend's request builder resolved: its request before a task's
    own fields (record id, command, identity tags), one per settings section, deployment, team
    and ``executor_config``.

    The checks, the merge and botocore's validation then run once per distinct
    ``executor_config``, not once per task: queueing 1000 tasks of one DAG costs one of them,
    and each task only copies the template and fills in its fields. A small LRU of ``maxsize``
    templates, safe across threads. Templates are kept by the ``executor_config``'s value (each
    task instance has its own copy of it); a task whose config does not pickle is resolved on
    its own, as every task was before.
    """

    def __init__(self, maxsize: int = 64) -> None:
        self._maxsize = maxsize
        # key -> (the section it was resolved from, the template); the section is kept so that
        # its id() in the key cannot be reused by another object while the entry lives.
        self._entries: OrderedDict[Hashable, tuple[object, T]] = OrderedDict()
        self._lock = threading.Lock()

    def build(
        self,
        section: object,
        *,
        deployment: str,
        team: str | None,
        executor_config: Any,
        resolve: Callable[[], T],
        fill: Callable[[T], dict[str, Any]],
        validate: Callable[[dict[str, Any]], None],
        finish: Callable[[dict[str, Any]], None],
        plain: bool,
    ) -> dict[str, Any]:
        """One task's request: ``fill(template)``, then ``finish`` (the checks of the task's own
        request, e.g. its size), with the template resolved and ``validate``-d on first use.

        ``plain``: the task's own fields are strings, which botocore's model accepts wherever
        the template puts them, so ``validate`` need not run for it again; a task whose fields
        are anything else is validated whole, as its first task was.
        """
        key = _template_key(section, deployment, team, executor_config)
        template = self._get(key, section) if key is not None else None
        fresh = template is None
        if template is None:
            template = resolve()
        request = fill(template)
        if fresh or not plain:
            validate(request)
        if fresh and key is not None:
            self._put(key, section, template)
        finish(request)
        return request

    def _get(self, key: Hashable, section: object) -> T | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is not section:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def _put(self, key: Hashable, section: object, template: T) -> None:
        with self._lock:
            self._entries[key] = (section, template)
            self._entries.move_to_end(key)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)


def plain_fields(record_id: Any, command: Sequence[Any]) -> bool:
    """A task's own request fields are strings (see :meth:`RequestTemplates.build`)."""
    return isinstance(record_id, str) and all(isinstance(part, str) for part in command)


def _template_key(section: object, deployment: str, team: str | None, executor_config: Any) -> Hashable | None:
    # The pickle stands for the config's value, types included (1, 1.0 and True are equal in
    # Python, not to botocore; a tuple is not a list) and keys in their order; the equal copies
    # Airflow hands over for each task pickle the same. A config that does not pickle is not kept.
    try:
        config = pickle.dumps(executor_config, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    return (id(section), deployment, team, config)
