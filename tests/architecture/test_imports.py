"""The dependency picture of docs/architecture.md holds: import-linter's contracts in pyproject.toml.

The second test proves the check has teeth: the same contracts over a copy of the source with one
forbidden import added must fail, naming the contract that broke.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: a copy of the source there shadows the editable install.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root / "sandbox" / "src")]))
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout, result.stdout


def test_a_forbidden_import_breaks_the_contracts(tmp_path: Path) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=ignore)
    shutil.copytree(REPO / "sandbox" / "src", tmp_path / "sandbox" / "src", ignore=ignore)
    target = tmp_path / "src" / "aws_reconciler" / "backends" / "tags.py"
    target.write_text(target.read_text() + "\nfrom ..store import tasks as _forbidden  # noqa\n")

    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "aws_reconciler.backends.tags -> aws_reconciler.store" in result.stdout
    assert "backends speak AWS only" in result.stdout


def test_every_test_module_has_a_name_of_its_own() -> None:
    """pytest imports test modules by their base name (no packages under tests/): two of one name
    in different folders stop the whole run at collection."""
    tests = Path(__file__).resolve().parents[1]
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
