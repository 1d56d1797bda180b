"""Provider registration, as an operator sees it through the ``airflow`` CLI.

The CLI runs in subprocesses (a fresh Airflow process discovers providers through the
``apache_airflow_provider`` entry point, exactly as the scheduler does) with a throw-away
``AIRFLOW_HOME`` and none of the test environment's ``[aws_reconciler*]`` overrides.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from pydantic.fields import FieldInfo

from aws_reconciler.config.models import BatchSettings, CoreSettings, EcsSettings, SectionSettings

pytestmark = pytest.mark.airflow

EXECUTOR = "aws_reconciler.executor.EcsExecutor"
BATCH_EXECUTOR = "aws_reconciler.executor.BatchExecutor"
COMMANDS = {
    "executors": ["providers", "executors", "--output", "json"],
    "providers": ["providers", "list", "--output", "json"],
    # Every section at once (one Airflow start-up instead of one per section); split below.
    "config": ["config", "list", "--defaults", "--show-values"],
}


@pytest.fixture(scope="module")
def cli_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """stdout of each CLI command; started together because each pays Airflow's ~4 s start-up."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__AWS_RECONCILER", "AIRFLOW_CONFIG"))}
    env["AIRFLOW_HOME"] = str(home)
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=env,
            cwd=home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in COMMANDS.items()
    }
    outputs: dict[str, str] = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, f"airflow {' '.join(COMMANDS[name])} failed:\n{stderr}"
        outputs[name] = stdout
    return outputs


def test_airflow_lists_the_executor(cli_output: dict[str, str]) -> None:
    # `--output json` prints only the JSON document on stdout.
    listed = [row["executor_class_names"] for row in json.loads(cli_output["executors"])]
    assert EXECUTOR in listed
    assert BATCH_EXECUTOR in listed


def test_airflow_describes_what_the_executors_run(cli_output: dict[str, str]) -> None:
    from aws_reconciler.executor import BatchExecutor, EcsExecutor

    (ours,) = [p for p in json.loads(cli_output["providers"]) if p["package_name"] == "airflow-aws-reconciler"]
    for ability in ("task instances", "deadline alert callbacks", "connection tests", "multi-team"):
        assert ability in ours["description"], ours["description"]
    # What the description says, the executors declare to Airflow's scheduler and loader.
    for executor in (EcsExecutor, BatchExecutor):
        assert executor.supports_callbacks and executor.supports_connection_test and executor.supports_multi_team
        assert executor.pre_assigns_external_executor_id and executor.supports_ad_hoc_ti_run


def test_the_listed_executors_import_through_airflows_loader() -> None:
    from airflow.executors.executor_loader import ExecutorLoader, ExecutorName

    from aws_reconciler.executor import BatchExecutor, EcsExecutor

    executor_cls, _ = ExecutorLoader.import_executor_cls(ExecutorName(EXECUTOR))
    assert executor_cls is EcsExecutor
    executor_cls, _ = ExecutorLoader.import_executor_cls(ExecutorName(BATCH_EXECUTOR))
    assert executor_cls is BatchExecutor


def _section(config_list: str, section: str) -> str:
    """One ``[section]`` of ``airflow config list`` output, up to the next section header."""
    match = re.search(rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", config_list, flags=re.MULTILINE | re.DOTALL)
    assert match, f"[{section}] is missing from `airflow config list`"
    return match.group(0)


def _expected_default(field: FieldInfo) -> str:
    """The default as `airflow config list --show-values` prints it; unset/empty prints nothing."""
    value: Any = field.get_default(call_default_factory=True)
    if value is None or value == [] or value == {}:
        return ""
    return str(value)


@pytest.mark.parametrize("model", [CoreSettings, EcsSettings, BatchSettings], ids=lambda m: m.section)
def test_airflow_config_documents_every_option_with_its_default(
    cli_output: dict[str, str], model: type[SectionSettings]
) -> None:
    output = _section(cli_output["config"], model.section)
    shown = dict(re.findall(r"^# ([a-z_]+) = (.*)$", output, flags=re.MULTILINE))
    for name, field in model.model_fields.items():
        assert name in shown, f"[{model.section}] {name} is missing from `airflow config list`"
        assert f"AIRFLOW__{model.section.upper()}__{name.upper()}" in output
        assert shown[name].strip() == _expected_default(field), f"[{model.section}] {name}: default drifted"
    assert set(shown) == set(model.model_fields), "airflow documents options the code does not read"


def test_the_provider_is_found_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("aws_reconciler.")]
    info = entry.load()()
    assert info["package-name"] == "airflow-aws-reconciler"
    assert EXECUTOR in info["executors"]
