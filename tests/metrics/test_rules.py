"""The shipped Prometheus alert rules: valid (``promtool check rules``), unit-tested alert by alert
(``promtool test rules``), built on metrics the code exports, and documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from metrics_support import REPO, RULES, RULES_TEST, exported_series_names, promql_metric_names, require_binary

from aws_reconciler.metrics.definitions import Metrics

OPERATIONS_DOC = REPO / "docs" / "operations.md"
# Series Prometheus itself synthesises for every target.
PROMETHEUS_SERIES = {"up"}
# Series of other exporters the rules rely on (each documented in its rule): the depth of the events
# dead-letter queues, CloudWatch's AWS/SQS ApproximateNumberOfMessagesVisible as prometheus/cloudwatch_exporter
# exports it. They carry that exporter's job label, not ours.
EXTERNAL_SERIES = {"aws_sqs_approximate_number_of_messages_visible_average"}
EVENTS_TEMPLATE = REPO / "deploy" / "events" / "cloudformation.yaml"
REQUIRED_ALERTS = {
    "AwsReconcilerDown",
    "AwsReconcilerNoActiveLeader",
    "AwsReconcilerReconcileStalled",
    "AwsReconcilerLaunchFailuresRising",
    "AwsReconcilerAwsThrottling",
    "AwsReconcilerOldestPendingTooOld",
    "AwsReconcilerOrphansFound",
    "AwsReconcilerEventsDrift",
    "AwsReconcilerEventsDeadLetters",
    "AwsReconcilerEventsReceiveErrors",
}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def test_promtool_check_rules_accepts_the_shipped_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", RULES_TEST.name], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has a case where it fires and one where it must stay silent."""
    tests = yaml.safe_load(RULES_TEST.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test") or []:
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - silent == set(), "alerts never shown staying silent"
    assert firing | silent <= alerts, "tests of alerts that do not exist"


def test_the_required_alerts_exist_with_severity_and_documentation() -> None:
    alerts = _alerts()
    assert set(alerts) >= REQUIRED_ALERTS
    doc = OPERATIONS_DOC.read_text()
    # GitHub's anchors of the operations guide's headings.
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, f"{name}: no section {annotations['runbook']}"


def test_rules_use_only_metrics_the_code_exports() -> None:
    exported = exported_series_names(Metrics().registry) | PROMETHEUS_SERIES | EXTERNAL_SERIES
    for rule in _rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule.get('alert')}: no metric found in {rule['expr']}"
        assert names <= exported, f"{rule.get('alert')}: unknown metrics {sorted(names - exported)}"


def test_rules_select_the_job_label_the_helm_chart_sets() -> None:
    """The chart's ServiceMonitor relabels `job` to a fixed value; the rules must select it."""
    values = REPO / "charts" / "aws-reconciler" / "values.yaml"
    if not values.exists():
        pytest.skip("no Helm chart in this checkout")
    job = yaml.safe_load(values.read_text())["serviceMonitor"]["jobLabel"]
    for rule in _rules():
        if promql_metric_names(rule["expr"]) <= EXTERNAL_SERIES:
            continue  # another exporter's job: test_dead_letter_rule_selects_the_templates_queues
        selectors = re.findall(r"\{([^{}]*)\}", rule["expr"])
        assert selectors, rule["alert"]
        for selector in selectors:
            assert f'job="{job}"' in selector, f"{rule['alert']}: selector {{{selector}}} does not pin job={job}"


def test_dead_letter_rule_selects_the_templates_queues() -> None:
    """The queue_name selector matches the dead-letter queues deploy/events creates, not the events queues."""
    expr = _alerts()["AwsReconcilerEventsDeadLetters"]["expr"]
    (pattern,) = re.findall(r'queue_name=~"([^"]+)"', expr)
    names = re.findall(r'QueueName: !Sub "\$\{Deployment\}(-[a-z]+-events(?:-dlq)?)"', EVENTS_TEMPLATE.read_text())
    assert sorted(names) == ["-batch-events", "-batch-events-dlq", "-ecs-events", "-ecs-events-dlq"]
    for name in names:
        assert bool(re.fullmatch(pattern, f"prod-airflow{name}")) is name.endswith("-dlq"), name


def test_metric_name_parser_sees_through_promql() -> None:
    """The helper the name checks rely on: names found, functions, labels and variables skipped."""
    expr = (
        'histogram_quantile(0.99, sum by (le, backend) (rate(a_bucket{job=~"$job", x="y{z}"}[$__rate_interval])))'
        " / on (instance) group_left b_total offset 5m and c unless vector(0) > 1e3"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c"}
    with pytest.raises(ValueError, match="rat"):
        promql_metric_names("rat(x[5m])")


def test_rule_files_are_yaml_documents_prometheus_can_load() -> None:
    """Both files are plain YAML (no templating left for another tool to fill in)."""
    for path in (RULES, RULES_TEST):
        assert isinstance(yaml.safe_load(Path(path).read_text()), dict)
