"""The docs name only options, commands and metrics that exist, and the README lists every option.

The README's settings tables are rendered from the settings models (defaults and descriptions
included): a new or changed option fails here with the table to paste.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aws_reconciler.cli import build_parser
from aws_reconciler.config.loader import SECTIONS
from aws_reconciler.metrics.definitions import Metrics

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "charts" / "aws-reconciler" / "README.md"]
# Sections of other software that the docs mention (the provider's, Airflow's own).
FOREIGN_SECTIONS = {
    "aws_ecs_executor",
    "aws_batch_executor",
    "database",
    "scheduler",
    "core",
    "logging",
    "api",
    "api_auth",
    "execution_api",
}


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        return "" if value in ([], {}) else str(value)
    return "" if info.default is None else str(info.default)


def settings_tables() -> str:
    """The README's settings section body, rendered from the models."""
    parts = []
    for model in SECTIONS:
        rows = ["| option | default | description |", "|---|---|---|"]
        for name, info in model.model_fields.items():
            default = _default(info)
            shown = f"`{default}`" if default else ""
            rows.append(f"| `{name}` | {shown} | {info.description} |")
        parts.append(f"### [{model.section}]\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def test_readme_lists_every_option_with_its_default_and_description() -> None:
    text = README.read_text()
    start = text.index("### [aws_reconciler]\n")
    end = text.index("\n## ", start)
    expected = settings_tables()
    assert text[start:end].strip() == expected, f"README.md's settings tables are stale; use:\n\n{expected}\n"


def _known_options() -> set[tuple[str, str]]:
    return {(model.section, name) for model in SECTIONS for name in model.model_fields}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_option_named_in_the_docs_exists(path: Path) -> None:
    known = _known_options()
    sections = {model.section for model in SECTIONS}
    text = path.read_text()
    unknown = []
    for section, option in re.findall(r"\[(aws_reconciler(?:_\w+)?)\] ([a-z_]+)", text):
        if section in sections and (section, option) not in known:
            unknown.append(f"[{section}] {option}")
    for section, option in re.findall(r"AIRFLOW__(AWS_RECONCILER(?:_[A-Z]+)?)__([A-Z_]+)", text):
        key = (section.lower(), option.lower())
        if key[0] in sections and key not in known:
            unknown.append(f"AIRFLOW__{section}__{option}")
    assert unknown == [], f"{path.relative_to(REPO)} names options that do not exist: {sorted(set(unknown))}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_named_in_the_docs_exists(path: Path) -> None:
    top = _subcommands(build_parser())
    wrong = []
    # Commands as written in code: `aws-reconciler status`, and lines of shell blocks.
    for first, second in re.findall(
        r"(?:`|^|\$ )aws-reconciler ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", path.read_text(), re.M
    ):
        if first not in top:
            wrong.append(first)
            continue
        nested = _subcommands(top[first])
        if nested and second and second not in nested:
            wrong.append(f"{first} {second}")
    assert wrong == [], f"{path.relative_to(REPO)} names commands that do not exist: {sorted(set(wrong))}"


def _metric_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry=registry)
    # Labelled metrics have no samples until used: derive the exposed names from each type.
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_named_in_docs_rules_and_dashboard_exists_and_every_metric_is_documented() -> None:
    names = _metric_names()
    sources = [
        *DOCS,
        REPO / "deploy" / "prometheus" / "aws-reconciler-rules.yaml",
        REPO / "deploy" / "grafana" / "aws-reconciler.json",
    ]
    unknown = {}
    for path in sources:
        for name in set(re.findall(r"\baws_reconciler_[a-z_]*[a-z]\b", path.read_text())):
            if name in {"aws_reconciler_ecs", "aws_reconciler_batch", "aws_reconciler_task", "aws_reconciler_lease"}:
                continue  # settings sections and store tables share the prefix
            if name.startswith(("aws_reconciler_alembic", "aws_reconciler_sandbox")):
                continue
            if name not in names:
                unknown.setdefault(str(path.relative_to(REPO)), set()).add(name)
    assert unknown == {}
    operations = (REPO / "docs" / "operations.md").read_text()
    families = {n for n in names if not n.endswith(("_bucket", "_count", "_sum", "_created"))}
    undocumented = {n for n in families if n not in operations and n.removesuffix("_total") not in operations}
    assert undocumented == set(), f"docs/operations.md does not describe {sorted(undocumented)}"


if __name__ == "__main__":
    # `python tests/docs/test_docs_match_code.py`: rewrite the README's settings tables from the models.
    text = README.read_text()
    start = text.index("### [aws_reconciler]\n")
    end = text.index("\n## ", start)
    README.write_text(text[:start] + settings_tables() + "\n" + text[end:])
