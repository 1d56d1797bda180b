"""Bad settings and bad arguments: one line on stderr naming the setting or value, the documented exit code.

Run as users run the command (a subprocess, so a traceback would show), with the environment
as the only source of settings.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aws_reconciler.cli import ExitCode
from aws_reconciler.config.models import DEPLOYMENT_PATTERN, check_deployment
from support.waiting import wait_for

ECS = {
    "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": "airflow",
    "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION": "airflow-task",
    "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME": "base",
}
PASSWORD = "Canary-Pa55word-cli"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_store_url() -> str:
    # Nothing listens on a port just released: connection refused, at once.
    return f"postgresql+psycopg://airflow:{PASSWORD}@127.0.0.1:{free_port()}/airflow?connect_timeout=2"


def run_cli(tmp_path: Path, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    base.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW_CONFIG=str(tmp_path / "absent.cfg"),
        AIRFLOW__AWS_RECONCILER__STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        AWS_DEFAULT_REGION="us-east-1",
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "aws_reconciler", *argv], env=base, capture_output=True, text=True, timeout=120
    )


CORPUS = [
    # (id, argv, settings, exit code, what the one line must say)
    (
        "deployment-space",
        ["config", "show"],
        {"AIRFLOW__AWS_RECONCILER__DEPLOYMENT": "my airflow"},
        ExitCode.CONFIG,
        ["[aws_reconciler] deployment", "contains ' '", "letters, digits and + = . _ : / @ -"],
    ),
    (
        "deployment-long",
        ["config", "show"],
        {"AIRFLOW__AWS_RECONCILER__DEPLOYMENT": "a" * 40},
        ExitCode.CONFIG,
        ["[aws_reconciler] deployment", "is 40 characters long", "at most 36 characters"],
    ),
    (
        "metrics-address",
        ["config", "show"],
        {"AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS": "9109"},
        ExitCode.CONFIG,
        ["[aws_reconciler] metrics_address", "expected host:port, e.g. 0.0.0.0:9109"],
    ),
    (
        "json-object",
        ["config", "show"],
        {**ECS, "AIRFLOW__AWS_RECONCILER_ECS__RUN_TASK_KWARGS": "{propagateTags: TASK}"},
        ExitCode.CONFIG,
        ["[aws_reconciler_ecs] run_task_kwargs", "not valid JSON", "line 1 column 2", '"propagateTags"'],
    ),
    (
        "json-list",
        ["config", "show"],
        {**ECS, "AIRFLOW__AWS_RECONCILER_ECS__CAPACITY_PROVIDER_STRATEGY": "[{"},
        ExitCode.CONFIG,
        ["[aws_reconciler_ecs] capacity_provider_strategy", "not valid JSON", '"capacityProvider"'],
    ),
    (
        "unknown-option",
        ["config", "show"],
        {"AIRFLOW__AWS_RECONCILER_ECS__CLUSTR": "x"},
        ExitCode.CONFIG,
        ["unknown option [aws_reconciler_ecs] clustr"],
    ),
    (
        "no-backend",
        ["run", "--once"],
        {},
        ExitCode.CONFIG,
        ["no backend is configured", "[aws_reconciler_ecs] cluster", "[aws_reconciler_batch] job_queue"],
    ),
    (
        "store-unknown-driver",
        ["db", "migrate"],
        {"AIRFLOW__AWS_RECONCILER__STORE_URL": f"postgrs://airflow:{PASSWORD}@db/airflow"},
        ExitCode.CONFIG,
        ["[aws_reconciler] store_url", "unknown database dialect or driver", "postgrs://airflow:***@db/airflow"],
    ),
    (
        "store-not-a-url",
        ["status"],
        {"AIRFLOW__AWS_RECONCILER__STORE_URL": "just some words"},
        ExitCode.CONFIG,
        ["[aws_reconciler] store_url", "is not a database URL"],
    ),
    (
        "store-unreachable",
        ["db", "migrate"],
        {"AIRFLOW__AWS_RECONCILER__STORE_URL": closed_store_url()},
        ExitCode.STORE_UNAVAILABLE,
        ["[aws_reconciler] store_url", "cannot be reached", "airflow:***@127.0.0.1"],
    ),
    (
        "store-unreachable-once",
        ["run", "--once"],
        {**ECS, "AIRFLOW__AWS_RECONCILER__STORE_URL": closed_store_url()},
        ExitCode.STORE_UNAVAILABLE,
        ["[aws_reconciler] store_url", "cannot be reached"],
    ),
]


@pytest.mark.parametrize(("argv", "env", "code", "says"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bad_setting_is_one_line_naming_it(
    tmp_path: Path, argv: list[str], env: dict[str, str], code: ExitCode, says: list[str]
) -> None:
    result = run_cli(tmp_path, *argv, env=env)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in says:
        assert text in lines[0], lines[0]
    assert PASSWORD not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--log-level", "foo", "status"], "'foo' is not a log level; expected one of DEBUG, INFO, WARNING, ERROR"),
        (["status", "--failures", "-1"], "-1 is negative"),
        (["status", "--failures", "many"], "'many' is not a whole number"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_argument_is_a_usage_error(tmp_path: Path, argv: list[str], says: str) -> None:
    result = run_cli(tmp_path, *argv, env={})
    assert result.returncode == ExitCode.CONFIG
    assert says in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "name",
    ["airflow", "a", "prod-1", "team/data@eu", "x+y=z.w_v:u", "9" * 36, "", " ", "a b", "-x", "a" * 37, "é", "a!b"],
)
def test_the_deployment_check_and_the_charts_pattern_agree(name: str) -> None:
    import re

    try:
        check_deployment(name)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == bool(re.fullmatch(DEPLOYMENT_PATTERN, name))


def test_config_show_says_which_backends_run_and_warns_without_one(tmp_path: Path) -> None:
    shown = run_cli(tmp_path, "config", "show", env=ECS)
    assert shown.returncode == ExitCode.OK
    assert "backend ecs    on: airflow" in shown.stdout
    assert "backend batch  off ([aws_reconciler_batch] job_queue is not set" in shown.stdout
    assert shown.stderr == ""

    empty = run_cli(tmp_path, "config", "show", env={"AIRFLOW__AWS_RECONCILER_ECS__CLUSTER": ""})
    assert empty.returncode == ExitCode.OK
    assert "backend ecs    off" in empty.stdout
    assert empty.stderr.startswith("aws-reconciler config show: warning: no backend is configured")


def test_run_configured_only_the_providers_way_names_config_migrate(tmp_path: Path) -> None:
    # A deployment moving from the amazon provider's executors: its settings are still theirs.
    provider = {
        "AIRFLOW__AWS_ECS_EXECUTOR__CLUSTER": "airflow",
        "AIRFLOW__AWS_ECS_EXECUTOR__TASK_DEFINITION": "airflow-task",
        "AIRFLOW__AWS_ECS_EXECUTOR__CONTAINER_NAME": "base",
    }
    result = run_cli(tmp_path, "run", "--once", env=provider)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    warning, error = [line for line in result.stderr.splitlines() if line.strip()]
    assert "WARNING" in warning and "run `aws-reconciler config migrate`" in warning, warning
    assert error.startswith("aws-reconciler: configuration error: no backend is configured"), error


def _readyz(port: int) -> tuple[int, dict[str, object]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None


def test_run_waits_for_an_unreachable_store_unready_then_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.update(
        ECS,
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW_CONFIG=str(tmp_path / "absent.cfg"),
        AIRFLOW__AWS_RECONCILER__STORE_URL=closed_store_url(),
        AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS=f"127.0.0.1:{port}",
        AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="0.2",
        AIRFLOW__AWS_RECONCILER__BACKOFF_MAX="0.5",
        AWS_DEFAULT_REGION="us-east-1",
    )
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "aws_reconciler", "run"], env=env, stderr=stderr)
    try:

        def waiting() -> tuple[int, dict[str, object]] | None:
            answer = _readyz(port)
            return answer if answer and answer[1].get("status") != "waiting for start-up" else None

        status, body = wait_for(waiting, what="/readyz to report on the store", timeout=60)
        assert (status, body) == (503, {"ok": False, "status": "waiting for the task store"})
        # It keeps retrying, one line per attempt, naming the option and the redacted URL.
        wait_for(lambda: err.read_text().count("cannot be reached") >= 2, what="a second attempt", timeout=60)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == ExitCode.OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    warnings = [line for line in text.splitlines() if "cannot be reached" in line]
    assert all("[aws_reconciler] store_url" in line and "airflow:***@127.0.0.1" in line for line in warnings)
    assert PASSWORD not in text
    assert "Traceback" not in text
