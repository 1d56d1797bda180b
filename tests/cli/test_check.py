"""`aws-reconciler check` against the sandbox: all permissions present, then one denied."""

from __future__ import annotations

import pytest

from aws_reconciler.cli import main
from aws_reconciler_sandbox import SandboxServer

REGION = "us-east-1"


def test_all_permissions_present(configured: SandboxServer, capsys: pytest.CaptureFixture[str]) -> None:
    tasks_before = len(configured.tasks())
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    for permission in (
        "ecs:RunTask",
        "ecs:StopTask",
        "ecs:DescribeTasks",
        "ecs:ListTasks",
        "ecs:DescribeTaskDefinition",
    ):
        assert f"ok       {permission}" in out, out
    assert "MISSING" not in out
    # The probes changed nothing: no task was launched.
    assert len(configured.tasks()) == tasks_before


def test_a_denied_permission_is_reported_and_fails(
    configured: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.inject_error(
        operation="StopTask",
        code="AccessDeniedException",
        message="User: arn:aws:sts::123456789012:assumed-role/reconciler is not authorized to perform: ecs:StopTask",
    )
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    line = next(line for line in captured.out.splitlines() if "ecs:StopTask" in line)
    assert line.startswith("MISSING") and "AccessDeniedException" in line
    assert "1 permission(s) missing" in captured.err
    assert all(line.startswith("ok") for line in captured.out.splitlines() if "ecs:RunTask" in line)


def test_a_denied_batch_permission_is_reported(configured: SandboxServer, capsys: pytest.CaptureFixture[str]) -> None:
    configured.inject_error(operation="TerminateJob", code="AccessDeniedException", message="not authorized")
    assert main(["check"]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if "batch:TerminateJob" in line)
    assert line.startswith("MISSING")
