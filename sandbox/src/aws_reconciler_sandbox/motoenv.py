"""Process-wide moto state the sandbox relies on: one lock, configuration, reset and backend access.

moto keeps every backend in module-level dictionaries, so everything here is global to the
process, whatever server object is in front of it. That is why the lock lives here, not on a
server instance: a control call made from a test thread and an HTTP request served by a worker
thread must exclude each other.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.config import default_user_config
from moto.core.serialize import XFormedAttributePicker, get_serializer_class, never_return
from moto.core.utils import get_service_model
from moto.ecs.models import EC2ContainerServiceBackend
from moto.moto_api import state_manager

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "MOTO_LOCK",
    "batch_backend",
    "configure_moto",
    "ecs_backend",
    "iter_ecs_backends",
    "reset_moto",
    "serialize",
    "timestamps_as_text",
]

#: Held around every request moto serves and every direct read or write of its backends.
#: moto's backends are plain dicts mutated without locking; concurrent requests otherwise fail at
#: random with "dictionary changed size during iteration". Re-entrant so that control methods
#: can call each other.
MOTO_LOCK = threading.RLock()

_ECS_TASK_MODEL = "ecs::task"
_RESOURCE_FN = "_calculate_task_resource_requirements"
_AMIS_ENV = "MOTO_EC2_LOAD_DEFAULT_AMIS"


_MEMORY_KEYS = ("memory", "memoryReservation", "Memory", "MemoryReservation")


def _has_memory(container: dict[str, Any]) -> bool:
    return any(container.get(key) is not None for key in _MEMORY_KEYS)


def _tolerant_resource_requirements(original: Callable[[Any], dict[str, Any]]) -> Callable[[Any], Any]:
    """Wrap moto's task resource calculation so containers without ``memory`` do not crash RunTask.

    On Fargate the memory is usually set on the task only, which AWS accepts; moto 5.2.5 adds the
    missing container value (None) to an int and turns RunTask into an HTML 500.
    """

    def calculate(task_definition: Any) -> dict[str, Any]:
        proxy = copy.copy(task_definition)
        proxy.container_definitions = [
            c if _has_memory(c) else {**{k: v for k, v in c.items() if k not in _MEMORY_KEYS}, "memory": 0}
            for c in task_definition.container_definitions
        ]
        return original(proxy)

    return calculate


def configure_moto() -> Callable[[], None]:
    """Put moto into the mode the sandbox needs and return a function that undoes it.

    - ECS task status never advances on its own (moto's default moves a task one step towards
      STOPPED on every DescribeTasks); the sandbox, and later its task runner, set it explicitly.
    - Batch runs without Docker (``batch_simple``), which is all the sandbox can rely on.
    - RunTask accepts containers without a container-level memory.
    - EC2 does not load its ~6,500 default AMIs, unless the caller chose otherwise through
      ``MOTO_EC2_LOAD_DEFAULT_AMIS``: they cost ~0.2 s on every reset, and neither ECS nor Batch
      (whose managed compute environments use a fixed AMI id moto does not check) needs them.
    - SQS queues are ``sqs.IndexedQueue``: receiving and deleting cost the same however many
      messages a queue holds (moto's look through all of them, several times, on every call).

    Restoring matters because the settings are global: a later ``mock_aws`` test in the same
    process must see moto's normal behaviour again.
    """
    from moto.sqs.models import sqs_backends

    from .sqs import SandboxSqsBackend  # here: sqs.py reads this module's lock

    with MOTO_LOCK:
        previous_transition = state_manager._transitions.get(_ECS_TASK_MODEL)
        previous_batch = copy.deepcopy(default_user_config.get("batch", {}))
        original_calc = EC2ContainerServiceBackend.__dict__[_RESOURCE_FN]

        previous_sqs = sqs_backends.backend
        previous_amis = os.environ.get(_AMIS_ENV)
        if previous_amis is None:
            os.environ[_AMIS_ENV] = "false"  # read by moto whenever an EC2 backend is created
        state_manager.set_transition(_ECS_TASK_MODEL, {"progression": "manual", "times": 10**9})
        default_user_config["batch"] = {**previous_batch, "use_docker": False}
        setattr(
            EC2ContainerServiceBackend,
            _RESOURCE_FN,
            staticmethod(_tolerant_resource_requirements(original_calc.__func__)),
        )
        _serve_sqs_with(SandboxSqsBackend)

    def restore() -> None:
        with MOTO_LOCK:
            if previous_transition is None:
                state_manager.unset_transition(_ECS_TASK_MODEL)
            else:
                state_manager.set_transition(_ECS_TASK_MODEL, previous_transition)
            default_user_config["batch"] = previous_batch
            setattr(EC2ContainerServiceBackend, _RESOURCE_FN, original_calc)
            _serve_sqs_with(previous_sqs)
            if previous_amis is None:
                os.environ.pop(_AMIS_ENV, None)

    return restore


def _serve_sqs_with(backend: type) -> None:
    """Make ``backend`` the class of every SQS backend moto creates from now on (a reset drops
    the ones it holds)."""
    from moto.sqs.models import sqs_backends

    sqs_backends.backend = backend
    for per_account in sqs_backends.values():
        per_account.backend = backend


def reset_moto() -> None:
    """Drop every moto backend in the process (the same as ``POST /moto-api/reset``).

    The full reset, rather than dropping one account, is deliberate: moto also tracks every model
    instance it ever created for its dashboard, and only the full reset releases them.
    """
    from moto.moto_api._internal.models import moto_api_backend

    with MOTO_LOCK:
        moto_api_backend.reset()


def ecs_backend(account_id: str, region: str) -> Any:
    """The moto ECS backend of one account and region (created on first use, as moto does)."""
    return get_backend("ecs")[account_id][region]


def batch_backend(account_id: str, region: str) -> Any:
    """The moto Batch backend of one account and region: queues, definitions, tags.

    The plain backend, not ``batch_simple``'s wrapper: the wrapper delegates all but SubmitJob to
    it, and SubmitJob is the shim's (``batch.py``).
    """
    from moto.batch.models import batch_backends

    return batch_backends[account_id][region]


def iter_ecs_backends() -> Iterator[tuple[str, str, Any]]:
    """Every ECS backend that exists, as ``(account_id, region, backend)``; creates none."""
    backends = get_backend("ecs")
    for account_id, per_region in list(backends.items()):
        for region, backend in list(per_region.items()):
            yield account_id, region, backend


def timestamps_as_text(service: str, shape: str, value: Any, render: Callable[[datetime], str]) -> Any:
    """``value`` (a ``shape`` of ``service`` as ``serialize`` renders it: timestamps as epoch
    seconds) with every timestamp member rendered by ``render`` instead, as EventBridge shows them."""
    return _render_timestamps(_shape(service, shape), value, render)


@functools.cache
def _shape(service: str, name: str) -> Any:
    # One shape object per name: the members it resolves are cached on it, and resolving them
    # again for every event cost more than rendering the event.
    return get_service_model(service).shape_for(name)


def _render_timestamps(shape: Any, value: Any, render: Callable[[datetime], str]) -> Any:
    kind = shape.type_name
    if kind == "timestamp" and isinstance(value, int | float) and not isinstance(value, bool):
        return render(datetime.fromtimestamp(value, UTC))
    if kind == "structure" and isinstance(value, dict):
        members = shape.members
        return {k: _render_timestamps(members[k], v, render) if k in members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_render_timestamps(shape.member, item, render) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _render_timestamps(shape.value, v, render) for k, v in value.items()}
    return value


_ABSENT = object()


class _RememberingPicker(XFormedAttributePicker):
    """moto's attribute picker, remembering the names it tries for a member on a class of objects
    (it works them out again for every value, building a context for each: most of what
    serialising a task cost, and an event of each task is serialised).

    The names depend on the object's class (its name, ``Meta.serialization_aliases``), the
    member's key and its shape (its serialisation name, the structure it belongs to): the
    shapes moto serialises with are cached, one object per member of each structure.
    """

    _names: ClassVar[dict[tuple[type, str, Any], tuple[str, ...]]] = {}

    def get_possible_keys(self, context: Any) -> Generator[str]:
        key = (type(context.obj), context.key, context.shape)
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = tuple(super().get_possible_keys(context))
        yield from names

    def pick(self, obj: Any, key: str, shape: Any) -> Any:
        """The member's value as moto's picker finds it (the first of the names the object has),
        or ``_ABSENT`` where only moto's picker can tell: names not learned yet, a mapping, a
        dotted name, a member an ``exclude`` path may name."""
        names = self._names.get((type(obj), key, shape))
        if names is None or hasattr(obj, "__getitem__"):
            return _ABSENT
        if any(path.endswith(key) or key.endswith(path) for path in self.response_transformers):
            return _ABSENT
        for name in names:
            if "." in name:
                return _ABSENT
            value = getattr(obj, name, _ABSENT)
            if value is not _ABSENT:
                return value
        return None


@functools.cache
def _serializer_class(service_name: str, protocol: str) -> Any:
    """moto's serializer for the protocol, picking values through ``_RememberingPicker.pick``."""
    base: Any = get_serializer_class(service_name, protocol)

    class Remembering(base):
        def get_value(self, value: Any, key: str, shape: Any) -> Any:
            picked = self._value_picker.pick(value, key, shape)
            return super().get_value(value, key, shape) if picked is _ABSENT else picked

    return Remembering


def serialize(
    service: str, operation: str, result: dict[str, Any], *, exclude: Iterable[str] = ()
) -> tuple[int, dict[str, str], str]:
    """Serialise model objects the way moto's own response handler would for ``operation``.

    Shims build results from moto's model objects and let moto's serializer render them, so a
    task looks the same in RunTask, DescribeTasks and StopTask, and fields the shims set on the
    objects (``created_at``, ``stop_code``, ...) appear under their AWS names.
    ``exclude`` lists response key paths to omit (e.g. tags unless ``include=["TAGS"]``).
    """
    service_model = get_service_model(service)
    operation_model = service_model.operation_model(operation)
    serializer_cls = _serializer_class(service_model.service_name, service_model.protocol)
    picker = _RememberingPicker(response_transformers={path: never_return for path in exclude})
    serializer = serializer_cls(operation_model=operation_model, pretty_print=False, value_picker=picker)
    out = serializer.serialize(result)
    return int(out["status_code"]), dict(out["headers"]), str(out["body"])
