"""Counting the AWS API calls a test makes: one counter for every test that proves "no AWS call"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import botocore.client
import pytest


def record_api_calls(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[str, str]]) -> None:
    """Append (service, operation) of every API call of every boto3/botocore client to ``calls``
    (``BaseClient._make_api_call`` is the single choke point of all of them)."""
    original = botocore.client.BaseClient._make_api_call

    def counting(self: Any, operation_name: str, api_params: Any) -> Any:
        calls.append((self.meta.service_model.service_name, operation_name))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting)


@dataclass
class AwsCalls:
    """Every botocore API call made in the test, as (service, operation)."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def assert_none(self) -> None:
        """No AWS call so far, and the counter demonstrably works in this very test.

        Without the second half, a counter that silently stopped seeing calls (a botocore
        refactor, a patch applied to the wrong object) would make every zero-call test pass.
        """
        assert self.calls == [], f"unexpected AWS calls: {self.calls}"
        import boto3
        from moto import mock_aws

        with mock_aws():
            boto3.client(
                "ecs", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
            ).list_clusters()
        assert self.calls == [("ecs", "ListClusters")], "the AWS call counter missed a real boto3 call"
        self.calls.clear()
