"""The Grafana dashboard: valid against Grafana's dashboard schema (generated from the npm package
``@grafana/schema``, committed), laid out sanely, and querying only metrics the code exports."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from metrics_support import (
    DASHBOARD,
    DASHBOARD_SCHEMA,
    GENERATE_SCHEMA,
    dashboard_targets,
    exported_series_names,
    promql_metric_names,
)

from aws_reconciler.metrics.definitions import Metrics

# What operators asked to see, as the series that show it.
REQUIRED_SERIES = {
    "aws_reconciler_tasks",  # tasks by phase
    "aws_reconciler_launches_total",  # launch rate and failures
    "aws_reconciler_queue_to_launch_seconds_bucket",  # queue-to-launch p50/p99
    "aws_reconciler_reconcile_duration_seconds_bucket",  # reconcile duration
    "aws_reconciler_aws_requests_total",  # AWS calls and errors by operation
    "aws_reconciler_aws_throttled_total",  # throttles by operation
    "aws_reconciler_orphans_found_total",  # orphans
    "aws_reconciler_leader",  # leader
    "aws_reconciler_oldest_pending_seconds",  # oldest pending
}
# Network errors of npm: regenerating needs the registry once; offline, the check cannot run.
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "network")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _validator() -> Any:
    """A validator of the schema's own draft (draft-07), after checking the schema itself."""
    schema = json.loads(DASHBOARD_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def test_dashboard_validates_against_grafanas_schema() -> None:
    errors = sorted(_validator().iter_errors(_dashboard()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:20])


@pytest.mark.parametrize(
    ("mutation", "why"),
    [
        (lambda d: d.update({"__inputs": []}), "an unknown top-level key"),
        (lambda d: d["panels"][1].pop("type"), "a panel without a type"),
        (lambda d: d["panels"][1]["gridPos"].update({"w": "wide"}), "a non-numeric width"),
        (lambda d: d["panels"][1].update({"tittle": "typo"}), "a misspelt panel key"),
        (lambda d: d.pop("schemaVersion"), "no schemaVersion"),
    ],
)
def test_the_schema_has_teeth(mutation: Any, why: str) -> None:
    """The committed schema is strict enough to catch real mistakes."""
    broken = copy.deepcopy(_dashboard())
    mutation(broken)
    assert list(_validator().iter_errors(broken)), f"the schema accepted {why}"


def test_every_panel_query_names_only_exported_metrics() -> None:
    exported = exported_series_names(Metrics().registry)
    used: set[str] = set()
    targets = list(dashboard_targets(_dashboard()))
    assert targets
    for title, expr in targets:
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= exported, f"{title}: {sorted(names - exported)} are not exported"
        used |= names
    assert used >= REQUIRED_SERIES, f"not on the dashboard: {sorted(REQUIRED_SERIES - used)}"


def test_panels_are_laid_out_on_the_grid_without_overlap() -> None:
    dashboard = _dashboard()
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), f"{panel['title']}: say what the panel shows"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job"} <= variables


def test_committed_schema_is_what_the_pinned_grafana_schema_generates(tmp_path: Path) -> None:
    """Regenerate with npm (when available) and compare: the committed file is not hand-edited."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the committed schema cannot be regenerated here")
    output = tmp_path / "dashboard.schema.json"
    result = subprocess.run(
        [str(GENERATE_SCHEMA), str(output)], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0 and any(marker in result.stderr for marker in _OFFLINE):
        pytest.skip(f"npm could not reach its registry: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(output.read_text()) == json.loads(DASHBOARD_SCHEMA.read_text()), (
        "deploy/grafana/schema/dashboard.schema.json differs from what generate.sh produces: run it and commit"
    )
