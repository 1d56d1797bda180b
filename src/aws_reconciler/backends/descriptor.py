"""What one AWS service is to the rest of the product: a backend's descriptor.

The factory, the executors, ``aws-reconciler check`` and the CLI loop over
:data:`aws_reconciler.backends.registry.DESCRIPTORS` instead of naming ECS and Batch, so a new
backend (EKS, Lambda) is one folder under ``backends/`` with a descriptor, not six copied files.
Everything here is data or a pure function of settings, except ``build`` (which only constructs)
and the probes and log locators (which call AWS through what they are handed).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from ..config import ConfigError, Settings
from ..config.models import BackendSettings
from ..config.sources import config_section, env_var_name
from ..model import Backend, Clock, TiKey
from .base import TaskBackend

T = TypeVar("T")


class LogsUnavailable(Exception):
    """The task's logs cannot be shown, for a reason the user should read (``str(exc)``)."""


class LogLocation(NamedTuple):
    """A CloudWatch Logs stream; ``region`` ``None`` means the backend's region."""

    group: str
    stream: str
    region: str | None = None


class LogLookup(Protocol):
    """What a log locator may use: cached clients and a cache for facts that never change.

    Locators run inside an API server request on every refresh of the log view: cache, never sleep.
    """

    def client(self, service: str, region: str | None = None) -> Any:
        """A client for ``service`` (short timeouts, few retries)."""

    def memo(self, namespace: str, key: Hashable, compute: Callable[[], T], *, ttl: float | None = None) -> T:
        """``compute()`` once per ``(namespace, key)`` (for ``ttl`` seconds; forever when ``None``)."""


@dataclass(frozen=True)
class LogSubject:
    """The try whose logs are wanted, as the locator may see it: never the stored request whole
    (it carries the workload token), only ``request_field(name)``, one top-level field of it."""

    record_id: str
    external_id: str
    request_field: Callable[[str], str | None]


@dataclass(frozen=True)
class Probe:
    """One permission ``check`` proves by a call that changes nothing.

    ``call`` either succeeds or fails with an AWS error other than access denied (a resource that
    cannot exist, a parameter AWS rejects only after authorising): both prove the permission.
    """

    permission: str
    call: Callable[[], Any]


class BuildRequest(Protocol):
    """Resolve and validate one task instance's request at queue time; pure and offline."""

    def __call__(
        self,
        section: Any,
        *,
        deployment: str,
        record_id: str,
        key: TiKey,
        command: Sequence[str],
        executor_config: Any,
        team: str | None = None,
    ) -> dict[str, Any]:
        """The request, or :class:`~aws_reconciler.backends.requests.InvalidExecutorConfig` naming the bad key."""


class BuildBackend(Protocol):
    """Construct the reconciler's backend around a ready client (buckets shaped like AWS's)."""

    def __call__(
        self, settings: Settings, *, client: Any, may_act: Callable[[], bool], clock: Clock | None
    ) -> TaskBackend:
        """The backend; no AWS call."""


@dataclass(frozen=True, kw_only=True)
class BackendDescriptor:
    """One AWS service as a backend: identity, settings, requests, construction, probes and logs."""

    kind: Backend
    # boto3's name of the service the reconciler's client talks to.
    service: str
    # The Airflow executor class name users put in [core] executor (in aws_reconciler.executor).
    executor_name: str
    # The request key naming the target the reconciler watches (cluster / job queue).
    target_key: str
    # What AWS's state-change events of this service say of themselves (EventBridge ``source`` and
    # ``detail-type``): the rule of events mode matches them, and the reconciler checks them.
    event_source: str
    event_detail_type: str
    # The settings section that configures it (``settings.ecs``).
    section: Callable[[Settings], BackendSettings]
    build_request: BuildRequest
    build: BuildBackend
    probes: Callable[[Settings, Any], list[Probe]]
    locate_logs: Callable[[LogLookup, Any, LogSubject], LogLocation | None]
    # Start-up validation beyond "is it configured": raises ConfigError naming the option.
    check_settings: Callable[[Any], None] = field(default=lambda section: None)

    def settings_of(self, settings: Settings) -> BackendSettings:
        """This backend's section of ``settings``."""
        return self.section(settings)

    def require(self, settings: Settings) -> BackendSettings:
        """The section, validated for use; :class:`~aws_reconciler.config.ConfigError` when it is not configured."""
        section = self.section(settings)
        if not section.enabled:
            option = section.target_field
            env = env_var_name(section.section, option, settings.team)
            named = config_section(section.section, settings.team)
            raise ConfigError(f"{self.executor_name}{settings.of_team} needs [{named}] {option} ({env})")
        self.check_settings(section)
        return section
