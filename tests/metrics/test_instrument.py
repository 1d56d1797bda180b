"""AWS call instrumentation keeps a failed call's identity.

botocore passes no operation model to ``after-call-error`` handlers (connection errors, timeouts);
a handler that needed one raised a TypeError inside botocore that replaced the real exception.
A client pointed at a closed port shows the real EndpointConnectionError and counts it.
"""

from __future__ import annotations

import socket

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from aws_reconciler.backends.client import aws_client_config
from aws_reconciler.backends.errors import Outcome, classify
from aws_reconciler.metrics.definitions import Metrics
from aws_reconciler.reconciler.instrument import instrument_client


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_connection_error_propagates_as_itself_and_is_counted() -> None:
    metrics = Metrics()
    client = boto3.session.Session().client(
        "ecs",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=aws_client_config(max_pool_connections=2, call_timeout=2),
    )
    instrument_client(client, metrics)

    with pytest.raises(EndpointConnectionError) as raised:
        client.list_clusters()

    error = classify(raised.value)
    assert error.outcome is Outcome.AMBIGUOUS and error.reason.startswith("AWS unreachable")
    sample = metrics.registry.get_sample_value
    labels = {"service": "ecs", "operation": "ListClusters"}
    assert sample("aws_reconciler_aws_requests_total", {**labels, "outcome": "error"}) == 1
    assert sample("aws_reconciler_aws_requests_total", {**labels, "outcome": "success"}) is None
    assert sample("aws_reconciler_aws_request_duration_seconds_count", labels) == 1
