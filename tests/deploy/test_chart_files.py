"""The chart's copies of the alert rules and the dashboard equal their sources in deploy/.

Helm cannot read outside the chart, so charts/aws-reconciler/files/ holds copies made by
charts/aws-reconciler/sync-files.sh. A copy that differs from its source fails here; a source
that does not exist (yet) skips with the reason shown.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from deploy_support import (
    CHART,
    KUBE_VERSIONS,
    REPO,
    REQUIRED_FILE,
    HelmCli,
    cli_engine,
    missing_tool,
    split_template_output,
)

COPIES = {
    "deploy/prometheus/aws-reconciler-rules.yaml": "files/aws-reconciler-rules.yaml",
    "deploy/grafana/aws-reconciler.json": "files/aws-reconciler.json",
}


@pytest.mark.parametrize(("source", "copy"), sorted(COPIES.items()))
def test_chart_copy_equals_its_source(source: str, copy: str) -> None:
    src = REPO / source
    if not src.is_file():
        pytest.skip(f"{source} does not exist yet: nothing to compare charts/aws-reconciler/{copy} with")
    dst = CHART / copy
    assert dst.is_file(), f"charts/aws-reconciler/{copy} is missing: run charts/aws-reconciler/sync-files.sh"
    assert dst.read_bytes() == src.read_bytes(), (
        f"charts/aws-reconciler/{copy} differs from {source}: run charts/aws-reconciler/sync-files.sh"
    )


def test_sync_script_knows_every_copy() -> None:
    script = (CHART / "sync-files.sh").read_text()
    for source, copy in COPIES.items():
        assert f'"{source}:{copy}"' in script


def test_sync_script_copies_and_checks(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    # A scratch repository: the script works relative to its own location.
    chart = tmp_path / "charts" / "aws-reconciler"
    chart.mkdir(parents=True)
    shutil.copy(CHART / "sync-files.sh", chart / "sync-files.sh")
    for source in COPIES:
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source).write_text(f"content of {source}\n")

    check = subprocess.run([bash, str(chart / "sync-files.sh"), "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "differs" in check.stderr
    sync = subprocess.run([bash, str(chart / "sync-files.sh")], capture_output=True, text=True)
    assert sync.returncode == 0, sync.stderr
    for source, copy in COPIES.items():
        assert (chart / copy).read_text() == f"content of {source}\n"
    again = subprocess.run([bash, str(chart / "sync-files.sh"), "--check"], capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_packaged_chart_carries_the_copies(tmp_path: Path) -> None:
    """`helm package` honours .helmignore: files/ must survive it, the maintenance script not."""
    helm = cli_engine()
    if not isinstance(helm, HelmCli):
        missing_tool(str(helm))
        return
    packaged = subprocess.run(
        [helm.binary, "package", str(CHART), "--destination", str(tmp_path)], capture_output=True, text=True
    )
    assert packaged.returncode == 0, packaged.stderr
    (archive,) = tmp_path.glob("aws-reconciler-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"aws-reconciler/files/aws-reconciler-rules.yaml", "aws-reconciler/files/aws-reconciler.json"} <= names
    assert "aws-reconciler/sync-files.sh" not in names
    assert "aws-reconciler/generate-schema.py" not in names
    rendered = subprocess.run(
        [
            helm.binary,
            "template",
            "airflow",
            str(archive),
            "--kube-version",
            KUBE_VERSIONS[-1],
            "-f",
            str(REQUIRED_FILE),
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
        ],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    sources = split_template_output(rendered.stdout)
    assert "aws-reconciler/templates/prometheusrule.yaml" in sources
    assert "aws-reconciler/templates/dashboard-configmap.yaml" in sources
