"""Reading a CloudWatch Logs stream for the Airflow UI, with the clients and cache it needs.

:class:`TaskLogs` is what the backends' log locators see as a
:class:`~aws_reconciler.backends.descriptor.LogLookup`: cached clients with short timeouts, and a
bounded cache of facts that never change (a revision's log options, a job's stream).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.config import Config

from ...backends.descriptor import LogLocation

T = TypeVar("T")

#: Lines returned per call at most: a stable prefix of the stream, so Airflow's ``log_pos`` holds.
DEFAULT_MAX_LINES = 10_000
#: GetLogEvents pages per call at most (each page is up to 1 MB or 10,000 events).
DEFAULT_MAX_PAGES = 10
#: Facts cached per executor (task -> revision, revision -> log options, ...).
DEFAULT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class LogPage:
    """What one ``get_task_log`` read found."""

    lines: list[str]
    truncated: bool


def log_client_config() -> Config:
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
        return self._session.client(service, region_name=region, config=log_client_config())

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
