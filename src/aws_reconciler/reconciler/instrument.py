"""Count and time every AWS call of a boto3 client through botocore's event hooks.

Here, not in ``metrics``: it joins the AWS error classification (``backends``) with the metric
definitions, and ``metrics`` stays a leaf.
"""

from __future__ import annotations

import time
from typing import Any

from ..backends.errors import THROTTLING_CODES, is_throttling_message
from ..metrics.definitions import Metrics

_STARTED = "aws_reconciler_started"


def instrument_client(client: Any, metrics: Metrics) -> None:
    """Record ``aws_reconciler_aws_*`` for each call of ``client``: success, error or throttled."""
    service = client.meta.service_model.service_name

    def before(context: dict[str, Any], **_: Any) -> None:
        context[_STARTED] = time.perf_counter()

    def observe(operation: str, context: dict[str, Any], outcome: str) -> None:
        metrics.aws_requests.labels(service, operation, outcome).inc()
        if outcome == "throttled":
            metrics.aws_throttled.labels(service, operation).inc()
        started = context.pop(_STARTED, None)
        if started is not None:
            metrics.aws_duration.labels(service, operation).observe(time.perf_counter() - started)

    def after(http_response: Any, parsed: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
        error = (parsed or {}).get("Error") or {}
        status = getattr(http_response, "status_code", 0) or 0
        if status < 300 and not error:
            outcome = "success"
        elif str(error.get("Code", "")) in THROTTLING_CODES or is_throttling_message(str(error.get("Message", ""))):
            outcome = "throttled"
        else:
            outcome = "error"
        observe(model.name, context, outcome)

    def after_error(event_name: str, context: dict[str, Any], **_: Any) -> None:
        # Connection errors and timeouts never produce a response, and botocore passes no
        # operation model with them: the operation is the event name's last part
        # (``after-call-error.ecs.RunTask``). A handler that raised here would replace the
        # real exception (a read timeout, NoCredentialsError) with its own TypeError.
        observe(event_name.rsplit(".", 1)[-1], context, "error")

    events = client.meta.events
    events.register("before-call", before)
    events.register("after-call", after)
    events.register("after-call-error", after_error)
