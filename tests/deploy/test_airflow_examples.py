"""charts/aws-reconciler/examples: values for the official Apache Airflow chart.

That chart is in no package registry, so it cannot be rendered here. Instead: the executor
string passes the official chart's schema pattern and names real executors, every
[aws_reconciler*] setting is a real option that the settings models accept, and the sidecar of
airflow-values-sidecar.yaml, merged over airflow-values.yaml as `helm -f a -f b` merges them, is
a valid Kubernetes container (kubernetes-validate, strict) for every tested Kubernetes version
whose reconciler starts with the settings it gets: the same airflow.cfg the official chart
renders for the scheduler, and the Secret's URL.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, KUBE_VERSIONS, chart_metadata, load_values, missing_tool

from aws_reconciler.backends.registry import enabled
from aws_reconciler.config.loader import SECTIONS, load_settings

EXAMPLES = CHART / "examples"
#: `executor` pattern of the official chart's values.schema.json (chart 1.16+).
AIRFLOW_CHART_EXECUTOR = re.compile(
    r"^(([a-zA-Z_][a-zA-Z0-9_]*.)*[A-Z][a-zA-Z0-9]+Executor)(,(([a-zA-Z_][a-zA-Z0-9_]*.)*[A-Z][a-zA-Z0-9]+Executor))*$"
)
OPTIONS = {model.section: set(model.model_fields) for model in SECTIONS}


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / name).read_text()))


def exported_executors() -> set[str]:
    """``aws_reconciler.executor.__all__``, read without importing Airflow."""
    init = Path(str(__import__("aws_reconciler").__file__)).parent / "executor" / "__init__.py"
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {f"aws_reconciler.executor.{name}" for name in ast.literal_eval(node.value)}
    raise AssertionError("aws_reconciler.executor has no __all__")


def test_executor_is_accepted_by_the_airflow_chart_and_exists() -> None:
    executor = example("airflow-values.yaml")["executor"]
    assert AIRFLOW_CHART_EXECUTOR.match(executor)
    for name in executor.split(","):
        assert name in exported_executors(), name
    # The comment's multi-executor form is valid too.
    both = "aws_reconciler.executor.EcsExecutor,aws_reconciler.executor.BatchExecutor"
    assert AIRFLOW_CHART_EXECUTOR.match(both) and set(both.split(",")) <= exported_executors()


def test_no_task_pods_or_celery() -> None:
    values = example("airflow-values.yaml")
    assert values["allowPodLaunching"] is False
    assert values["redis"]["enabled"] is False
    assert values["images"]["airflow"]["tag"] not in ("", "latest")


def test_example_settings_are_valid_for_executor_and_reconciler(tmp_path: Path) -> None:
    config = example("airflow-values.yaml")["config"]
    environ: dict[str, str] = {}
    for section, options in config.items():
        if section.startswith("aws_reconciler"):
            assert section in OPTIONS, section
            for option, value in options.items():
                assert option in OPTIONS[section], f"[{section}] {option}"
                environ[f"AIRFLOW__{section.upper()}__{option.upper()}"] = str(value)
    environ["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] = str(config["scheduler"]["task_queued_timeout"])
    environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'x.db'}"
    settings = load_settings(environ=environ, cfg_path=tmp_path / "absent.cfg")
    settings.require_backend()
    assert settings.ecs.subnets == ["subnet-0abc", "subnet-0def"]
    assert settings.task_queued_timeout == 600


def test_api_server_gets_the_log_reading_role() -> None:
    annotations = example("airflow-values.yaml")["apiServer"]["serviceAccount"]["annotations"]
    assert re.match(r"^arn:aws:iam::\d{12}:role/.+$", annotations["eks.amazonaws.com/role-arn"])


def merged() -> dict[str, Any]:
    """The official chart's values from ``-f airflow-values.yaml -f airflow-values-sidecar.yaml``."""
    return load_values((EXAMPLES / "airflow-values.yaml", EXAMPLES / "airflow-values-sidecar.yaml"))


def sidecar() -> dict[str, Any]:
    (container,) = merged()["scheduler"]["extraContainers"]
    return dict(container)


def airflow_cfg(config: dict[str, dict[str, Any]]) -> str:
    """The airflow.cfg the official chart renders from its ``config`` value (``[section]``, ``key = value``)."""
    lines: list[str] = []
    for section, options in config.items():
        lines += [f"[{section}]", *(f"{key} = {value}" for key, value in options.items()), ""]
    return "\n".join(lines)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_sidecar_is_a_valid_container(kube_version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError as exc:
        missing_tool(f"kubernetes-validate unavailable ({exc})")
    values = merged()["scheduler"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "airflow-scheduler-0"},
        "spec": {
            "containers": [{"name": "scheduler", "image": "my-airflow:3.3.2-1"}, sidecar()],
            # `config` is the official chart's own airflow.cfg volume.
            "volumes": [{"name": "config", "configMap": {"name": "airflow-config"}}, *values["extraVolumes"]],
        },
    }
    try:
        kubernetes_validate.validate(pod, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"sidecar invalid for Kubernetes {kube_version}: {exc}")


def test_sidecar_reads_the_database_url_from_the_airflow_secret() -> None:
    env = {e["name"]: e for e in sidecar()["env"]}
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"] == {
        "secretKeyRef": {"name": "airflow-metadata", "key": "connection"}
    }
    assert all("://" not in str(e.get("value", "")) for e in env.values())
    port = sidecar()["ports"][0]["containerPort"]
    assert env["AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS"]["value"] == f"0.0.0.0:{port}"


def test_sidecar_is_locked_down_and_probed() -> None:
    container = sidecar()
    assert container["command"] == ["aws-reconciler"] and container["args"][-1] == "run"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The scheduler pod's readiness must not depend on AWS.
    assert "readinessProbe" not in container
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/opt/airflow/airflow.cfg"]["subPath"] == "airflow.cfg"
    assert mounts["/tmp"]["name"] == "reconciler-tmp"


def test_sidecar_reconciler_starts_with_the_settings_it_gets(tmp_path: Path) -> None:
    """Its airflow.cfg is the scheduler's (the chart's ``config`` volume), the URL comes from the Secret."""
    values = merged()
    container = sidecar()
    env = {e["name"]: e for e in container["env"]}
    environ = {name: entry["value"] for name, entry in env.items() if "value" in entry}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert environ["AIRFLOW_CONFIG"] == mount["mountPath"] and mount["subPath"] == "airflow.cfg"
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(airflow_cfg(values["config"]))
    # What the secretKeyRef resolves to in the pod.
    environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'store.db'}"

    settings = load_settings(environ=environ, cfg_path=cfg)
    settings.require_backend()
    for descriptor in enabled(settings):
        descriptor.require(settings)
    assert [d.executor_name for d in enabled(settings)] == ["EcsExecutor"]
    assert f"aws_reconciler.executor.{enabled(settings)[0].executor_name}" == values["executor"]
    assert settings.core.deployment == values["config"]["aws_reconciler"]["deployment"]
    assert settings.core.metrics_address == f"0.0.0.0:{container['ports'][0]['containerPort']}"
    # "the executor migrates the store when the scheduler starts": only with this on.
    assert settings.core.check_health_on_startup is True
    assert settings.store_url.startswith("sqlite:///")


def test_sidecar_probe_names_its_own_port() -> None:
    container = sidecar()
    (port,) = container["ports"]
    # Kubernetes' IANA_SVC_NAME rule, which the OpenAPI schemas do not carry.
    assert re.fullmatch(r"(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", port["name"]) and "--" not in port["name"]
    assert container["livenessProbe"]["httpGet"]["port"] == port["name"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_sidecar_runs_what_the_chart_runs() -> None:
    """Same image version, user, resources and command as the chart's reconciler pods."""
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    container = sidecar()
    assert container["image"].rsplit(":", 1)[1] == chart_metadata()["appVersion"]
    assert container["image"].rsplit(":", 1)[0].endswith("/airflow-aws-reconciler")
    assert container["securityContext"]["runAsUser"] == chart_values["podSecurityContext"]["runAsUser"]
    assert container["resources"] == chart_values["resources"]
    assert container["command"] == ["aws-reconciler"]
    assert container["args"] == ["--log-level", chart_values["logLevel"], "run"]


def test_sidecar_scheduler_has_replicas_to_elect_a_leader_from() -> None:
    scheduler = merged()["scheduler"]
    assert scheduler["replicas"] >= 2
    role = scheduler["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", role)
