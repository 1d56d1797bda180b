"""The product as users install it: a wheel in a fresh venv, without the test extra or the sandbox.

Builds the wheel and the sdist, installs the wheel the two documented ways (``[postgres]``, the
reconciler image's install, and ``[airflow,postgres]``, the scheduler's), and runs the commands an
operator runs first against a sandbox served from the development venv, as the fake AWS would be
a separate process anyway. Versions are held to the development venv's (``pip freeze`` as
constraints), so the fresh venvs resolve from pip's cache to what the rest of the suite tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.processes import ServedSandbox, serve_sandbox

# Installing Airflow into a fresh venv takes a minute or two even from the cache.
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
DEV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path


@dataclass(frozen=True)
class Venv:
    root: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(
        self, *argv: str, env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.bin(argv[0]), *argv[1:]],
            env=dict(env) if env is not None else _clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


def _clean_env(**extra: str) -> dict[str, str]:
    # Nothing of the development venv or of the test run's settings may leak into the fresh one.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(DEV_BIN)))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    # No isolation: the build backend pinned in the test extra is already here, and a build that
    # needs no download is one that works wherever the tests do.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dists(wheel=wheel, sdist=sdist)


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    path = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    path.write_text("\n".join(line for line in frozen.splitlines() if " @ " not in line) + "\n")
    return path


def _venv(root: Path, requirement: str, constraints: Path) -> Venv:
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    venv = Venv(root)
    venv.run("python", "-m", "pip", "install", "--quiet", "--constraint", str(constraints), requirement, timeout=900)
    return venv


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory, dists: Dists, constraints: Path) -> Venv:
    return _venv(tmp_path_factory.mktemp("venv") / "base", f"{dists.wheel}[postgres]", constraints)


@pytest.fixture(scope="module")
def airflow_venv(tmp_path_factory: pytest.TempPathFactory, dists: Dists, constraints: Path) -> Venv:
    return _venv(tmp_path_factory.mktemp("venv") / "airflow", f"{dists.wheel}[airflow,postgres]", constraints)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedSandbox]:
    with serve_sandbox(tmp_path_factory.mktemp("sandbox")) as served:
        yield served


def test_wheel_ships_the_product_only(dists: Dists) -> None:
    names = zipfile.ZipFile(dists.wheel).namelist()
    assert "aws_reconciler/cli.py" in names
    assert "aws_reconciler/store/migrations/versions/0001_initial.py" in names
    assert not [n for n in names if n.startswith(("aws_reconciler_sandbox", "tests/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_sdist_carries_license_readme_tests_and_the_sandbox(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for expected in ("LICENSE", "README.md", "tests/conftest.py", "sandbox/pyproject.toml", "pyproject.toml"):
        assert expected in names


@pytest.mark.parametrize("which", ["base", "airflow"])
def test_reconciler_runs_from_the_installed_wheel(
    which: str, request: pytest.FixtureRequest, sandbox: ServedSandbox, tmp_path: Path
) -> None:
    venv: Venv = request.getfixturevalue(f"{which}_venv")
    assert venv.run("python", "-c", "import moto", check=False).returncode != 0, "moto came with the product"

    version = venv.run("aws-reconciler", "--version").stdout
    assert version.strip() == "aws-reconciler 0.1.0"
    assert "run" in venv.run("aws-reconciler", "--help").stdout

    missing = venv.run("aws-reconciler", "sandbox", "--port", "0", check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "aws-reconciler sandbox: not installed; install aws-reconciler-sandbox (from a checkout: pip install ./sandbox)"
    ]

    env = _clean_env(
        **sandbox.settings,
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__AWS_RECONCILER__STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        AIRFLOW__AWS_RECONCILER_ECS__LAUNCH_TYPE="FARGATE",
    )
    migrated = venv.run("aws-reconciler", "db", "migrate", env=env)
    assert "-> 0001" in migrated.stdout or "->" in migrated.stdout
    venv.run("aws-reconciler", "db", "check", env=env)
    once = venv.run("aws-reconciler", "run", "--once", env=env)
    # At INFO, a single cycle says what it did, even when that was nothing.
    assert "ecs cycle: launched 0, finished 0, failed 0, revoked 0, stopped 0" in once.stderr
    shown = venv.run("aws-reconciler", "config", "show", env=env).stdout
    assert sandbox.settings["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"] in shown


def test_airflow_lists_both_executors(airflow_venv: Venv, tmp_path: Path) -> None:
    env = _clean_env(AIRFLOW_HOME=str(tmp_path / "airflow"))
    listed = airflow_venv.run("airflow", "providers", "executors", "--output", "plain", env=env).stdout
    assert "aws_reconciler.executor.EcsExecutor" in listed
    assert "aws_reconciler.executor.BatchExecutor" in listed
