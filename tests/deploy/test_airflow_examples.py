"""charts/aws-reconciler/examples: values for the official Apache Airflow chart.

That chart is in no package registry, so it cannot be rendered here. Instead: the executor
string passes the official chart's schema pattern and names real executors, every
[aws_reconciler*] setting is a real option that the settings models accept, and the sidecar
container is a valid Kubernetes container (kubernetes-validate, strict) for 1.29-1.33.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, KUBE_VERSIONS, missing_tool

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


def sidecar() -> dict[str, Any]:
    (container,) = example("airflow-values-sidecar.yaml")["scheduler"]["extraContainers"]
    return dict(container)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_sidecar_is_a_valid_container(kube_version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError as exc:
        missing_tool(f"kubernetes-validate unavailable ({exc})")
    values = example("airflow-values-sidecar.yaml")["scheduler"]
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
