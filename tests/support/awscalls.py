"""Counting the AWS API calls a test makes."""

from __future__ import annotations

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
