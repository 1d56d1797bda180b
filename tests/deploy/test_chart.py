"""charts/aws-reconciler: lint, render, validate for every tested Kubernetes version, refuse bad
values, and what the objects say.

Helm 3 (CLI from tests/deploy/tools.sh) and Helm 4 (helm-python-sdk) both lint and render the
chart; object assertions use the Helm 3 CLI when installed, else the SDK.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from deploy_support import (
    CHART,
    ENGINE_NAMES,
    KUBE_VERSIONS,
    NAMESPACE,
    REPO,
    TESTED_KUBE_ANNOTATION,
    VALUES_FILES,
    Engine,
    RenderError,
    any_engine,
    chart_metadata,
    container,
    engine,
    env_of,
    load_values,
    merge_values,
    missing_tool,
    render,
    render_file,
    schema_generator,
    supported_kube_minors,
)
from pydantic import Field, SecretStr, field_validator

from aws_reconciler.config.loader import SECTIONS, ConfigError, load_settings
from aws_reconciler.config.models import SECRET_OPTIONS, CoreSettings, EcsSettings, SectionSettings

#: Custom resources kubernetes-validate has no schema for; checked by dedicated tests below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
#: Every option of every settings section, by section.
OPTIONS: dict[str, set[str]] = {model.section: set(model.model_fields) for model in SECTIONS}
#: Options values-all.yaml cannot set, with the test that covers them instead.
NOT_IN_VALUES_ALL = {
    # Excludes capacity_provider_strategy, which values-all sets: test_launch_type_settings_load.
    "aws_reconciler_ecs": {"launch_type"},
    # Refused by the chart (the store URL and the token key come from Secrets):
    # test_refused_options_say_what_to_do, test_the_token_key_comes_from_its_secret_only.
    "aws_reconciler": {"store_url_cmd", "token_key_cmd"},
}
SETTINGS_ENV = re.compile(r"^AIRFLOW__(AWS_RECONCILER(?:_[A-Z0-9]+)?)__([A-Z0-9_]+)$")
#: Keys that would hold a secret in plain text.
SECRET_KEYS = {"password", "passwd", "pass", "secret", "token", "apikey", "api_key", "secretaccesskey"}
#: Environment variable names that carry credentials.
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN_KEY|_TOKEN$|SQL_ALCHEMY_CONN|STORE_URL")
#: Matches credentials in a URL (scheme://user:password@host).
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"]+@")


@pytest.fixture(scope="module")
def helm() -> Engine:
    return any_engine()


def test_values_file_names_cover_all_variants() -> None:
    for files in VALUES_FILES.values():
        for path in files:
            assert path.is_file(), path


# ---- lint and validation ------------------------------------------------------------------


@pytest.mark.parametrize("values_name", sorted(VALUES_FILES))
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_helm_lint_strict(engine_name: str, values_name: str) -> None:
    helm_ = engine(engine_name)
    problems = helm_.lint(load_values(VALUES_FILES[values_name]))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("values_name", sorted(VALUES_FILES))
def test_helm3_and_helm4_render_the_same_objects(values_name: str) -> None:
    helm3, helm4 = engine("helm3-cli"), engine("helm4-sdk")
    objects3 = sorted(render_file(helm3, values_name).objects, key=json.dumps)
    objects4 = sorted(render_file(helm4, values_name).objects, key=json.dumps)
    assert objects3 == objects4


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError as exc:
        missing_tool(f"kubernetes-validate unavailable ({exc})")
    return kubernetes_validate


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", sorted(VALUES_FILES))
def test_rendered_objects_are_valid_kubernetes(values_name: str, kube_version: str) -> None:
    """`helm template --kube-version V` (which also checks Chart.yaml's kubeVersion admits V), then
    kubernetes-validate --strict against V's schemas."""
    kv = _kubernetes_validate()
    rendered = render_file(engine("helm3-cli"), values_name, kube_version)
    validated = set()
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kv.validate(obj, kube_version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} invalid for Kubernetes {kube_version}: {exc}")
        validated.add(obj["kind"])
    assert {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Job"} <= validated


def test_kube_version_floor_is_the_first_tested_version() -> None:
    """Chart.yaml's kubeVersion admits exactly from the first tested minor on, and the tested
    minors are consecutive: the range users are promised is the range validated here."""
    minors = supported_kube_minors()
    match = re.fullmatch(r">=(\d+)\.(\d+)\.0-0", chart_metadata()["kubeVersion"])
    assert match, f"Chart.yaml kubeVersion {chart_metadata()['kubeVersion']!r} is not of the form >=1.N.0-0"
    assert f"{match.group(1)}.{match.group(2)}" == minors[0], f"kubeVersion floor differs from {TESTED_KUBE_ANNOTATION}"
    numbers = [int(minor.split(".")[1]) for minor in minors]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), minors


def test_kube_version_below_the_floor_is_refused() -> None:
    major, minor = supported_kube_minors()[0].split(".")
    below = f"{major}.{int(minor) - 1}.0"
    with pytest.raises(RenderError, match=re.escape(f"incompatible with Kubernetes v{below}")):
        render(engine("helm3-cli"), {}, kube_version=below)


def test_docs_state_the_tested_range() -> None:
    minors = supported_kube_minors()
    text = (REPO / "docs" / "deploy.md").read_text()
    assert f"Kubernetes {minors[0]} to {minors[-1]}" in text, "docs/deploy.md must name the tested range"


def test_every_manifest_names_the_release_namespace(helm: Engine) -> None:
    rendered = render_file(helm, "all")
    for obj in rendered.objects:
        expected = "monitoring" if obj["metadata"]["name"].endswith("-dashboard") else NAMESPACE
        assert obj["metadata"]["namespace"] == expected, obj["metadata"]["name"]


# ---- the Deployment -------------------------------------------------------------------------


def test_two_replicas_by_default_with_a_surge_only_rollout(helm: Engine) -> None:
    deployment = render_file(helm, "defaults").one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert render_file(helm, "all").one("Deployment")["spec"]["replicas"] == 3


def test_runs_aws_reconciler_run(helm: Engine) -> None:
    main = container(render_file(helm, "defaults").one("Deployment")["spec"]["template"]["spec"])
    assert main["command"] == ["aws-reconciler"]
    assert main["args"][-1] == "run"
    assert main["args"][:2] == ["--log-level", "INFO"]


@pytest.mark.parametrize("values_name", sorted(VALUES_FILES))
def test_pods_are_locked_down(helm: Engine, values_name: str) -> None:
    rendered = render_file(helm, values_name)
    kinds = []
    for kind, pod in rendered.pod_specs():
        kinds.append(kind)
        pod_sc = pod["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert isinstance(pod_sc["runAsUser"], int) and pod_sc["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False, kind
        for main in pod["containers"]:
            sc = main["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "add" not in sc["capabilities"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            # A read-only root needs a writable /tmp.
            mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
            assert mounts.get("/tmp") == "tmp"
            assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]
    assert sorted(kinds) == ["Deployment", "Job"]


@pytest.mark.parametrize(("values_name", "port"), [("defaults", 9109), ("all", 9200)])
def test_probes_and_service_use_the_metrics_port(helm: Engine, values_name: str, port: int) -> None:
    rendered = render_file(helm, values_name)
    main = container(rendered.one("Deployment")["spec"]["template"]["spec"])
    assert main["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The reconciler listens where the probes look.
    assert env_of(main)["AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS"]["value"] == f"0.0.0.0:{port}"
    service = rendered.one("Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_selectors_match_the_reconciler_pods_only(helm: Engine) -> None:
    rendered = render_file(helm, "all")
    deployment = rendered.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    job_labels = rendered.one("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items(), "the migration pod must not count as a reconciler"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        obj = rendered.one(kind)
        match = obj["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
        assert match == selector, kind


def test_topology_spread_fills_in_the_selector(helm: Engine) -> None:
    rendered = render_file(helm, "all")
    spec = rendered.one("Deployment")["spec"]
    zone, host = spec["template"]["spec"]["topologySpreadConstraints"]
    assert zone["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert zone["matchLabelKeys"] == ["pod-template-hash"]
    assert zone["whenUnsatisfiable"] == "DoNotSchedule"
    # A constraint with its own selector is kept as written.
    assert host["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": "aws-reconciler"}}
    assert "matchLabelKeys" not in host
    assert (
        "topologySpreadConstraints"
        not in render(helm, {"topologySpread": {"enabled": False}}).one("Deployment")["spec"]["template"]["spec"]
    )


# ---- identity and secrets -------------------------------------------------------------------


def test_irsa_role_annotation_on_the_service_account(helm: Engine) -> None:
    rendered = render_file(helm, "all")
    account = rendered.one("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/airflow-reconciler"
    )
    assert account["metadata"]["annotations"]["example.com/owner"] == "data-platform"
    assert account["automountServiceAccountToken"] is False
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"] == "aws-reconciler"
    # The migration needs no AWS role: it runs under its own (here: configured) account.
    assert rendered.one("Job")["spec"]["template"]["spec"]["serviceAccountName"] == "aws-reconciler-migrate"
    # Without a role there is no annotation at all (an empty role-arn breaks the EKS webhook).
    defaults = render_file(helm, "defaults").one("ServiceAccount")
    assert "annotations" not in defaults["metadata"]


def test_existing_service_account_is_used_not_created(helm: Engine) -> None:
    rendered = render(helm, {"serviceAccount": {"create": False, "name": "platform-reconciler"}})
    assert rendered.maybe("ServiceAccount") is None
    assert rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-reconciler"


@pytest.mark.parametrize(
    ("values_name", "env_var", "secret", "key"),
    [
        ("defaults", "AIRFLOW__AWS_RECONCILER__STORE_URL", "airflow-metadata", "connection"),
        ("all", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "reconciler-store", "url"),
    ],
)
def test_database_url_only_from_the_existing_secret(
    helm: Engine, values_name: str, env_var: str, secret: str, key: str
) -> None:
    rendered = render_file(helm, values_name)
    for kind, pod in rendered.pod_specs():
        env = env_of(container(pod))
        assert env[env_var] == {"name": env_var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}, kind
        other = ({"AIRFLOW__AWS_RECONCILER__STORE_URL", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"} - {env_var}).pop()
        assert other not in env, kind
    assert rendered.maybe("Secret") is None, "the chart never creates a Secret"


@pytest.mark.parametrize("values_name", sorted(VALUES_FILES))
def test_no_plaintext_password_anywhere(helm: Engine, values_name: str) -> None:
    rendered = render_file(helm, values_name)
    assert not URL_WITH_PASSWORD.search(rendered.text)
    for obj in rendered.objects:
        for path, value in _leaves(obj):
            assert str(path[-1]).lower() not in SECRET_KEYS, (obj["kind"], path)
            if isinstance(value, str):
                assert not URL_WITH_PASSWORD.search(value), (obj["kind"], path)
    # Environment variables that carry credentials come from Secrets, never literal values.
    for kind, pod in rendered.pod_specs():
        for name, entry in env_of(container(pod)).items():
            if SECRET_ENV.search(name):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], (kind, name)
    if rendered.notes is not None:
        assert not URL_WITH_PASSWORD.search(rendered.notes)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"storeUrl": "postgresql://airflow:hunter2@db/airflow"}, "storeUrl"),
        ({"database": {"url": "postgresql://airflow:hunter2@db/airflow"}}, "url"),
        ({"database": {"password": "hunter2"}}, "password"),
        ({"config": {"aws_reconciler": {"store_url": "postgresql://airflow:hunter2@db/x"}}}, "store_url"),
        ({"config": {"database": {"sql_alchemy_conn": "postgresql://airflow:hunter2@db/x"}}}, "database"),
        (
            {"extraEnv": [{"name": "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "value": "postgresql://a:hunter2@db/x"}]},
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is managed by the chart",
        ),
        (
            {"extraEnv": [{"name": "AIRFLOW__AWS_RECONCILER__STORE_URL", "value": "postgresql://a:hunter2@db/x"}]},
            "AIRFLOW__AWS_RECONCILER__STORE_URL is managed by the chart",
        ),
    ],
    ids=["storeUrl", "database.url", "database.password", "config.store_url", "config.database", "extraEnv", "env2"],
)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_a_database_url_in_values_is_refused(engine_name: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as failure:
        render(engine(engine_name), values)
    assert message in str(failure.value)
    assert "hunter2" not in str(failure.value), "Helm must not echo the secret back"


# ---- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", sorted(VALUES_FILES))
def test_every_rendered_setting_is_a_real_option(helm: Engine, values_name: str) -> None:
    rendered = render_file(helm, values_name)
    seen = 0
    for _kind, pod in rendered.pod_specs():
        for name in env_of(container(pod)):
            match = SETTINGS_ENV.match(name)
            if not match:
                assert not name.startswith("AIRFLOW__AWS_RECONCILER"), name
                continue
            section, option = match.group(1).lower(), match.group(2).lower()
            assert section in OPTIONS, f"{name}: no settings section [{section}] (known: {sorted(OPTIONS)})"
            assert option in OPTIONS[section], f"{name}: [{section}] has no option {option}"
            seen += 1
    assert seen >= 1


def test_values_all_sets_every_option_of_every_section(helm: Engine) -> None:
    """So the test above really covers every option (a new option only needs a line in values-all)."""
    env = env_of(container(render_file(helm, "all").one("Deployment")["spec"]["template"]["spec"]))
    for section, options in OPTIONS.items():
        for option in options - SECRET_OPTIONS - NOT_IN_VALUES_ALL.get(section, set()):
            name = f"AIRFLOW__{section.upper()}__{option.upper()}"
            assert name in env, f"tests/deploy/values-all.yaml does not set config.{section}.{option}"


def test_rendered_settings_load_in_the_reconciler(helm: Engine, tmp_path: Path) -> None:
    """The exact env the pod gets (numbers, JSON lists and maps, booleans) passes the settings models."""
    env = env_of(container(render_file(helm, "all").one("Deployment")["spec"]["template"]["spec"]))
    environ = {name: entry["value"] for name, entry in env.items() if "value" in entry}
    environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'store.db'}"
    environ["AIRFLOW_CONFIG"] = str(tmp_path / "absent.cfg")
    settings = load_settings(environ=environ, cfg_path=tmp_path / "absent.cfg")
    assert settings.core.deployment == "prod-airflow"
    assert (settings.core.lease_duration, settings.core.renew_deadline, settings.core.retry_period) == (20, 12.5, 2)
    assert settings.core.retention == 1209600
    assert settings.core.metrics_address == "0.0.0.0:9200"
    assert settings.ecs.capacity_provider_strategy == [
        {"capacityProvider": "FARGATE_SPOT", "weight": 3},
        {"capacityProvider": "FARGATE", "weight": 1, "base": 1},
    ]
    assert settings.ecs.subnets == ["subnet-0abc", "subnet-0def"]
    assert settings.ecs.run_task_kwargs == {"propagateTags": "TASK_DEFINITION", "enableExecuteCommand": False}
    assert settings.ecs.assign_public_ip is False
    assert settings.task_queued_timeout == 900
    assert settings.batch.allowed_job_queues == ["airflow-jobs-spot"]
    assert settings.batch.submit_job_kwargs == {"timeout": {"attemptDurationSeconds": 86400}}
    assert settings.batch.runnable_timeout == 1800
    assert (settings.core.aws_call_timeout, settings.core.missing_grace, settings.batch.lookup_delay) == (6, 180, 20)
    assert environ["AIRFLOW__AWS_RECONCILER__RETENTION"] == "1209600", "whole numbers render without exponent"


def test_launch_type_settings_load(helm: Engine, tmp_path: Path) -> None:
    values = load_values(VALUES_FILES["minimal"], {"config": {"aws_reconciler_ecs": {"launch_type": "FARGATE"}}})
    env = env_of(container(render(helm, values).one("Deployment")["spec"]["template"]["spec"]))
    environ = {name: entry["value"] for name, entry in env.items() if "value" in entry}
    environ["AIRFLOW__AWS_RECONCILER__STORE_URL"] = f"sqlite:///{tmp_path / 'store.db'}"
    settings = load_settings(environ=environ, cfg_path=tmp_path / "absent.cfg")
    assert settings.ecs.launch_type == "FARGATE"
    assert settings.ecs.cluster == "airflow-tasks"


def test_unset_and_null_settings_are_not_rendered(helm: Engine) -> None:
    values = {"config": {"aws_reconciler": {"orphan_grace": None}, "aws_reconciler_ecs": {"platform_version": ""}}}
    env = env_of(container(render(helm, values).one("Deployment")["spec"]["template"]["spec"]))
    assert "AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE" not in env
    assert "AIRFLOW__AWS_RECONCILER_ECS__PLATFORM_VERSION" not in env


def test_airflow_cfg_mounted_from_the_airflow_chart(helm: Engine) -> None:
    rendered = render_file(helm, "all")
    for kind, pod in rendered.pod_specs():
        main = container(pod)
        assert env_of(main)["AIRFLOW_CONFIG"]["value"] == "/opt/airflow/config/airflow.cfg", kind
        volume = next(v for v in pod["volumes"] if v["name"] == "airflow-config")
        assert volume["configMap"] == {
            "name": "airflow-config",
            "items": [{"key": "airflow.cfg", "path": "airflow.cfg"}],
        }
        mount = next(m for m in main["volumeMounts"] if m["name"] == "airflow-config")
        assert mount == {"name": "airflow-config", "mountPath": "/opt/airflow/config", "readOnly": True}


# ---- values.schema.json: generated from the settings models ---------------------------------

SCHEMA_FILE = CHART / "values.schema.json"
#: Helm 3 writes "Must not validate the schema (not)" for `not: {}`: a message that says nothing.
UNHELPFUL = "Must not validate the schema"


def _config_schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA_FILE.read_text())["properties"]["config"])


def _names(message: str, path: tuple[str | int, ...]) -> bool:
    """Whether Helm's message names ``path`` (Helm 3 writes a.b.0.c, Helm 4 /a/b/0/c)."""
    parts = [str(part) for part in path]
    return ".".join(parts) in message or "/" + "/".join(parts) in message


def _refusal(engine_name: str, values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> str:
    """Helm's message refusing ``values`` (over the required values unless ``base``)."""
    with pytest.raises(RenderError) as failure:
        render(engine(engine_name), values, base=base)
    message = str(failure.value)
    assert UNHELPFUL not in message, message
    # Helm 4 quotes the expected value in '...' and escapes the apostrophes in it.
    return message.replace("\\'", "'")


def _settings_env(config: Mapping[str, Mapping[str, Any]], tmp_path: Path) -> dict[str, str]:
    """``config`` as the environment the chart renders for it (lists and objects as JSON)."""
    environ = {
        f"AIRFLOW__{section.upper()}__{option.upper()}": json.dumps(value)
        if isinstance(value, list | dict)
        else str(value)
        for section, options in config.items()
        for option, value in options.items()
    }
    environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'store.db'}"
    return environ


def test_committed_schema_is_generated_from_the_models() -> None:
    """A new, changed or removed option (or botocore model) changes the generated part."""
    generator = schema_generator()
    text = SCHEMA_FILE.read_text()
    if text != generator.render(json.loads(text)):
        pytest.fail(
            f"charts/aws-reconciler/values.schema.json is out of date with the settings models: run {generator.COMMAND}"
        )


class _WithNewOption(CoreSettings):
    new_interval: float = Field(30.0, gt=0, description="A new option.")


class _WithValidatedOption(CoreSettings):
    new_name: str = Field("x", description="A new option with a rule.")

    @field_validator("new_name")
    @classmethod
    def _new_name(cls, value: str) -> str:
        return value


class _WithSecretOption(CoreSettings):
    new_password: SecretStr | None = Field(None, description="A new secret.")


class _WithJsonOption(EcsSettings):
    json_object_fields: ClassVar[frozenset[str]] = frozenset({"run_task_kwargs", "new_kwargs"})
    new_kwargs: dict[str, Any] = Field(default_factory=dict, description="A new JSON option.")


def test_a_new_option_makes_the_committed_schema_stale(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = schema_generator()
    monkeypatch.setattr(generator, "SECTIONS", (_WithNewOption, *SECTIONS[1:]))
    option = generator.config_schema()["properties"]["aws_reconciler"]["properties"]["new_interval"]
    assert option["type"] == ["number", "null"] and option["exclusiveMinimum"] == 0
    assert generator.main(["--check"]) == 1
    assert generator.COMMAND in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ((_WithValidatedOption, *SECTIONS[1:]), "new_name has a validator: add its rule to RULES"),
        ((_WithSecretOption, *SECTIONS[1:]), "new_password is a secret: add it to REFUSED"),
        ((SECTIONS[0], _WithJsonOption, SECTIONS[2]), "new_kwargs is a JSON option: add its shape to JSON_SHAPES"),
    ],
    ids=["validator", "secret", "json"],
)
def test_the_generator_refuses_an_option_it_cannot_type(
    monkeypatch: pytest.MonkeyPatch, sections: tuple[type[SectionSettings], ...], message: str
) -> None:
    """Rather than letting the chart accept what the reconciler refuses (or a secret in values)."""
    generator = schema_generator()
    monkeypatch.setattr(generator, "SECTIONS", sections)
    with pytest.raises(SystemExit, match=re.escape(message)):
        generator.config_schema()


def test_schema_names_exactly_the_options_of_the_models() -> None:
    config = _config_schema()
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(OPTIONS) | {"scheduler"}
    for model in SECTIONS:
        section = config["properties"][model.section]
        assert list(section["properties"]) == list(model.model_fields), model.section
        assert section["additionalProperties"] is False, model.section


def test_schema_bounds_are_the_models_bounds() -> None:
    """A value the chart accepts is one the reconciler accepts, and the reverse."""
    sections = _config_schema()["properties"]
    checked = 0
    for model in SECTIONS:
        for option, field in model.model_fields.items():
            option_schema = sections[model.section]["properties"][option]
            if "const" in option_schema:  # refused by the chart whatever the value
                continue
            _assert_same_bounds(model.section, option, option_schema, field)
            checked += 1
    assert checked >= 40


def _assert_same_bounds(section: str, option: str, option_schema: Mapping[str, Any], field: Any) -> None:
    metadata: dict[str, Any] = {}
    for item in field.metadata:
        for attr in ("gt", "ge", "lt", "le"):
            if getattr(item, attr, None) is not None:
                metadata[attr] = getattr(item, attr)
    where = f"[{section}] {option}"
    assert option_schema.get("exclusiveMinimum") == metadata.get("gt"), where
    assert option_schema.get("minimum") == metadata.get("ge"), where
    assert option_schema.get("maximum") == metadata.get("le"), where
    types = set(option_schema.get("type", []) if isinstance(option_schema.get("type"), list) else [])
    annotation = str(field.annotation)
    if annotation.startswith("<class 'int'>") or annotation == "int":
        assert "integer" in types and "number" not in types, where
    if "float" in annotation:
        assert "number" in types, where
    if "bool" in annotation:
        assert types == {"boolean", "null"}, where


@pytest.mark.parametrize(
    ("section", "option"),
    [
        ("aws_reconciler_ecs", "clustr"),
        ("aws_reconciler", "lease_durration"),
        ("aws_reconciler_batch", "job_queues"),
        ("aws_reconciler", "Bad-Option"),
    ],
)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_unknown_option_is_refused_naming_it(engine_name: str, section: str, option: str, tmp_path: Path) -> None:
    message = _refusal(engine_name, {"config": {section: {option: "x"}}})
    assert _names(message, ("config", section)) and option in message, message
    # The reconciler would have refused it at start too.
    with pytest.raises(ConfigError, match=f"unknown option \\[{section}\\] {option.lower()}"):
        load_settings(environ=_settings_env({section: {option: "x"}}, tmp_path), cfg_path=tmp_path / "absent.cfg")


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_unknown_section_is_refused_naming_it(engine_name: str) -> None:
    message = _refusal(engine_name, {"config": {"aws_reconciler_esc": {"cluster": "c"}}})
    assert _names(message, ("config",)) and "aws_reconciler_esc" in message, message


@pytest.mark.parametrize(
    ("option", "value", "path", "expected"),
    [
        ("capacity_provider_strategy", [{"weight": 1}], (0,), "capacityProvider"),
        ("capacity_provider_strategy", [{"capacityProvider": "FARGATE", "weight": 5000}], (0, "weight"), ""),
        ("capacity_provider_strategy", [{"capacityProvider": "FARGATE", "wieght": 1}], (0,), "wieght"),
        ("capacity_provider_strategy", {"capacityProvider": "FARGATE"}, (), "array"),
        ("capacity_provider_strategy", '[{"capacityProvider": "FARGATE"}]', (), "string"),
        ("run_task_kwargs", ["propagateTags"], (), "object"),
        ("run_task_kwargs", {"propagateTag": "TASK_DEFINITION"}, (), "propagateTag"),
        ("run_task_kwargs", {"propagateTags": "ALL"}, ("propagateTags",), "TASK_DEFINITION"),
        ("run_task_kwargs", {"overrides": {"cpu": 1}}, ("overrides", "cpu"), "string"),
        ("run_task_kwargs", {"enableExecuteCommand": "yes"}, ("enableExecuteCommand",), "boolean"),
        ("submit_job_kwargs", "timeout=60", (), "object"),
        ("submit_job_kwargs", {"timeout": {"attemptDurationSeconds": "1h"}}, ("timeout", "attemptDurationSeconds"), ""),
    ],
    ids=lambda value: json.dumps(value)[:40] if not isinstance(value, str) else value[:40],
)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_json_option_of_the_wrong_shape_is_refused_naming_it(
    engine_name: str, option: str, value: Any, path: tuple[str | int, ...], expected: str
) -> None:
    """The JSON options have the shape of their RunTask / SubmitJob parameters (botocore's model)."""
    section = "aws_reconciler_batch" if option == "submit_job_kwargs" else "aws_reconciler_ecs"
    message = _refusal(engine_name, {"config": {section: {option: value}}})
    assert _names(message, ("config", section, option, *path)), message
    assert expected in message, message


def test_json_options_of_the_right_shape_reach_the_pods(helm: Engine) -> None:
    values = {
        "config": {
            "aws_reconciler_ecs": {
                "capacity_provider_strategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1, "base": 0}],
                # A fragment merged into the request: partial objects are fine.
                "run_task_kwargs": {"overrides": {"containerOverrides": [{"name": "base", "cpu": 512}]}},
            },
            "aws_reconciler_batch": {
                "job_queue": "q",
                "job_definition": "d",
                "submit_job_kwargs": {"retryStrategy": {"attempts": 2}, "tags": {"team": "data"}},
            },
        }
    }
    env = env_of(container(render(helm, values).one("Deployment")["spec"]["template"]["spec"]))
    assert json.loads(env["AIRFLOW__AWS_RECONCILER_ECS__RUN_TASK_KWARGS"]["value"]) == {
        "overrides": {"containerOverrides": [{"name": "base", "cpu": 512}]}
    }
    assert json.loads(env["AIRFLOW__AWS_RECONCILER_BATCH__SUBMIT_JOB_KWARGS"]["value"])["tags"] == {"team": "data"}


def _refused_cases() -> list[tuple[tuple[str, ...], str]]:
    """(path under config, the text Helm must print) for every option and request key the chart refuses."""
    generator = schema_generator()
    cases: list[tuple[tuple[str, ...], str]] = [
        ((section, option), f"left unset: {reason}") for (section, option), reason in generator.REFUSED.items()
    ]
    for option, key in (
        ("run_task_kwargs", "count"),
        ("run_task_kwargs", "startedBy"),
        ("run_task_kwargs", "clientToken"),
        ("submit_job_kwargs", "jobName"),
        ("submit_job_kwargs", "jobQueue"),
        ("submit_job_kwargs", "dependsOn"),
    ):
        section = "aws_reconciler_batch" if option == "submit_job_kwargs" else "aws_reconciler_ecs"
        properties = _config_schema()["properties"][section]["properties"][option]["properties"]
        cases.append(((section, option, key), str(properties[key]["const"])))
    return cases


@pytest.mark.parametrize(("path", "text"), _refused_cases(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_refused_options_say_what_to_do(engine_name: str, path: tuple[str, ...], text: str) -> None:
    value: Any = "postgresql://airflow:hunter2@db/airflow"
    for part in reversed(path):
        value = {part: value}
    message = _refusal(engine_name, {"config": value})
    assert _names(message, ("config", *path)), message
    assert text in message, message
    assert "hunter2" not in message, "Helm must not echo the value back"


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_helm_lint_prints_the_same_refusals(engine_name: str) -> None:
    values = load_values(VALUES_FILES["defaults"], {"config": {"aws_reconciler": {"store_url": "x"}}})
    problems = "\n".join(engine(engine_name).lint(values))
    assert _names(problems, ("config", "aws_reconciler", "store_url")), problems
    assert f"left unset: {schema_generator().REFUSED[('aws_reconciler', 'store_url')]}" in problems, problems


def test_refused_texts_name_where_to_set_it_instead() -> None:
    reasons = schema_generator().REFUSED
    assert "database.existingSecret" in reasons[("aws_reconciler", "store_url")]
    assert "database.existingSecret" in reasons[("aws_reconciler", "store_url_cmd")]
    assert "metrics.port" in reasons[("aws_reconciler", "metrics_address")]
    assert {option for _section, option in reasons} >= SECRET_OPTIONS


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"replicaCount": 0}, ("replicaCount",)),
        ({"replicaCount": "2"}, ("replicaCount",)),
        ({"config": {"aws_reconciler": {"deployment": "has spaces"}}}, ("config", "aws_reconciler", "deployment")),
        ({"config": {"aws_reconciler": {"deployment": "x" * 37}}}, ("config", "aws_reconciler", "deployment")),
        ({"config": {"aws_reconciler": {"lease_duration": 0}}}, ("config", "aws_reconciler", "lease_duration")),
        (
            {"config": {"aws_reconciler": {"launch_concurrency": 1.5}}},
            ("config", "aws_reconciler", "launch_concurrency"),
        ),
        (
            {"config": {"aws_reconciler_ecs": {"launch_type": "LAMBDA"}}},
            ("config", "aws_reconciler_ecs", "launch_type"),
        ),
        ({"config": {"aws_reconciler_ecs": {"subnets": 7}}}, ("config", "aws_reconciler_ecs", "subnets")),
        ({"image": {"tag": "latest"}}, ("image", "tag")),
        ({"metrics": {"port": 80}}, ("metrics", "port")),
        ({"serviceAccount": {"roleArn": "airflow-reconciler"}}, ("serviceAccount", "roleArn")),
        ({"database": {"existingSecret": ""}}, ("database", "existingSecret")),
        ({"database": {"envVar": "DATABASE_URL"}}, ("database", "envVar")),
        ({"logLevel": "TRACE"}, ("logLevel",)),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, ("podDisruptionBudget", "maxUnavailable")),
        ({"livenessProbe": {"httpGet": {"path": "/", "port": 80}}}, ("livenessProbe",)),
        ({"livenessProbe": {"successThreshold": 2}}, ("livenessProbe", "successThreshold")),
        (
            {"topologySpread": {"constraints": [{"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "Never"}]}},
            ("topologySpread", "constraints", "0", "whenUnsatisfiable"),
        ),
    ],
    ids=lambda value: json.dumps(value)[:60] if isinstance(value, dict) else None,
)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_schema_rejects_bad_values(engine_name: str, values: dict[str, Any], path: tuple[str, ...]) -> None:
    message = _refusal(engine_name, values)
    assert _names(message, path), message


@pytest.mark.parametrize(
    ("values", "text"),
    [
        (
            {"config": {"aws_reconciler": {"deployment": "has spaces"}}},
            "1-36 characters: letters, digits and + = . _ : / @ -, starting with a letter or digit",
        ),
        ({"image": {"tag": "latest"}}, "a fixed version such as 0.1.0"),
    ],
)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_rules_are_told_in_words(engine_name: str, values: dict[str, Any], text: str) -> None:
    """Not a regex, and not "Must not validate the schema (not)"."""
    message = _refusal(engine_name, values)
    assert text in message, message
    assert "^[" not in message, message


# ---- what would crash-loop (or never start) is refused --------------------------------------

IMAGE = {"repository": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/airflow-aws-reconciler"}
ECS = {"cluster": "airflow-tasks", "task_definition": "airflow-task", "container_name": "base"}
BATCH = {"job_queue": "airflow-jobs", "job_definition": "airflow-job"}
MOUNTED_CFG = {"airflowConfig": {"existingConfigMap": "airflow-config"}}
EVENTS_QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/airflow-ecs-events"


@pytest.mark.parametrize(
    ("values", "base", "message"),
    [
        # The image: none is published, so there is no default to fall back on.
        ({}, {"config": {"aws_reconciler_ecs": ECS}}, "no image is published: build docker/reconciler.Dockerfile"),
        ({"image": {"repository": ""}}, None, "no image is published"),
        # Nothing to reconcile: `aws-reconciler run` exits 2.
        ({}, {"image": IMAGE}, "no backend is configured, and the reconciler would exit at start"),
        (
            {"config": {"aws_reconciler_ecs": {"cluster": "c"}}},
            {"image": IMAGE},
            "config.aws_reconciler_ecs.cluster is set but task_definition and container_name are not",
        ),
        (
            {"config": {"aws_reconciler_ecs": {"cluster": "c", "task_definition": "t"}}},
            {"image": IMAGE},
            "config.aws_reconciler_ecs.cluster is set but container_name is not",
        ),
        (
            {"config": {"aws_reconciler_batch": {"job_queue": "q"}}},
            None,
            "config.aws_reconciler_batch.job_queue is set but job_definition is not",
        ),
        (
            {
                "config": {
                    "aws_reconciler_ecs": {
                        "launch_type": "FARGATE",
                        "capacity_provider_strategy": [{"capacityProvider": "FARGATE"}],
                    }
                }
            },
            None,
            "set launch_type or capacity_provider_strategy, not both",
        ),
        # Events mode without the queue it reads.
        (
            {"config": {"aws_reconciler_ecs": {"observation": "events"}}},
            None,
            "config.aws_reconciler_ecs.observation is events but events_queue_url is not set",
        ),
        (
            {"config": {"aws_reconciler_batch": {**BATCH, "observation": "events"}}},
            None,
            "config.aws_reconciler_batch.observation is events but events_queue_url is not set",
        ),
        # Leader election (the settings model's rules).
        ({"config": {"aws_reconciler": {"renew_deadline": 15}}}, None, "renew_deadline (15) must be shorter than"),
        (
            {"config": {"aws_reconciler": {"lease_duration": 8, "renew_deadline": 9, "retry_period": 1}}},
            None,
            "must be shorter than lease_duration (8)",
        ),
        ({"config": {"aws_reconciler": {"retry_period": 10}}}, None, "retry_period (10) must be shorter than"),
        (
            {"config": {"aws_reconciler": {"aws_call_timeout": 5}}},
            None,
            "renew_deadline (10) + aws_call_timeout (5) must be shorter than lease_duration (15)",
        ),
        # A PodDisruptionBudget that blocks every drain.
        (
            {"replicaCount": 1},
            None,
            "false while replicaCount is 1: a budget for a single pod either blocks every drain or protects nothing",
        ),
        ({"podDisruptionBudget": {"minAvailable": 2}}, None, "must be lower than replicaCount (2)"),
        (
            {"podDisruptionBudget": {"minAvailable": "100%"}},
            None,
            "minAvailable (100%) must be lower than replicaCount",
        ),
        (
            {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": "70%"}},
            None,
            "must be lower than replicaCount (3)",
        ),
        ({"podDisruptionBudget": {"maxUnavailable": 0}}, None, "maxUnavailable (0) allows no eviction"),
        ({"podDisruptionBudget": {"maxUnavailable": "0%"}}, None, "maxUnavailable (0%) allows no eviction"),
        ({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, None, "not both"),
        ({"serviceAccount": {"create": False}}, None, "serviceAccount.name is required"),
    ],
    ids=lambda value: json.dumps(value)[:70] if isinstance(value, dict) else None,
)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_values_that_would_crash_loop_fail_with_a_message(
    engine_name: str, values: dict[str, Any], base: dict[str, Any] | None, message: str
) -> None:
    assert message in _refusal(engine_name, values, base)


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_image_repository_is_required(engine_name: str) -> None:
    message = _refusal(engine_name, {}, {"config": {"aws_reconciler_ecs": ECS}})
    assert _names(message, ("image", "repository")), message
    assert "the reconciler image in your registry, e.g. 123456789012.dkr.ecr" in message, message


@pytest.mark.parametrize(
    ("values", "base"),
    [
        # airflow.cfg may hold what values leave out: the reconciler reads both.
        (MOUNTED_CFG, {"image": IMAGE}),
        ({**MOUNTED_CFG, "config": {"aws_reconciler_ecs": {"cluster": "c"}}}, {"image": IMAGE}),
        ({**MOUNTED_CFG, "config": {"aws_reconciler": {"renew_deadline": 12}}}, None),
        ({**MOUNTED_CFG, "config": {"aws_reconciler_ecs": {"observation": "events"}}}, None),
        ({"config": {"aws_reconciler_ecs": {"observation": "events", "events_queue_url": EVENTS_QUEUE_URL}}}, None),
        ({"config": {"aws_reconciler_ecs": {"observation": "poll"}}}, None),
        ({"replicaCount": 1, "podDisruptionBudget": {"enabled": False}}, None),
        ({"podDisruptionBudget": {"minAvailable": "50%"}}, None),
        ({"podDisruptionBudget": {"maxUnavailable": "10%"}}, None),
        ({"config": {"aws_reconciler": {"aws_call_timeout": 4.5}}}, None),
    ],
    ids=lambda value: json.dumps(value)[:70] if isinstance(value, dict) else None,
)
def test_values_next_to_those_rules_are_accepted(
    helm: Engine, values: dict[str, Any], base: dict[str, Any] | None
) -> None:
    assert render(helm, values, base=base).one("Deployment")


#: Every cross-option rule of the settings models (their model validators), with config the
#: chart must refuse because of it; a new rule fails test_every_cross_option_rule_is_in_the_chart.
MODEL_RULES: dict[str, list[dict[str, dict[str, Any]]]] = {
    "CoreSettings._deadline_within_lease": [
        {"aws_reconciler": {"renew_deadline": 15}},
        {"aws_reconciler": {"retry_period": 10}},
        {"aws_reconciler": {"lease_duration": 20, "renew_deadline": 12, "aws_call_timeout": 8}},
    ],
    "EcsSettings._consistent": [
        {"aws_reconciler_ecs": {"cluster": "c"}},
        {
            "aws_reconciler_ecs": {
                **ECS,
                "launch_type": "FARGATE",
                "capacity_provider_strategy": [{"capacityProvider": "F"}],
            }
        },
    ],
    "BatchSettings._consistent": [{"aws_reconciler_batch": {"job_queue": "q"}}],
    "EcsSettings._events_need_a_queue": [{"aws_reconciler_ecs": {**ECS, "observation": "events"}}],
    "BatchSettings._events_need_a_queue": [{"aws_reconciler_batch": {**BATCH, "observation": "events"}}],
}


def test_every_cross_option_rule_is_in_the_chart() -> None:
    found = {
        f"{model.__name__}.{name}" for model in SECTIONS for name in model.__pydantic_decorators__.model_validators
    }
    assert found == set(MODEL_RULES), (
        "the settings models' cross-option rules changed: make templates/_helpers.tpl (aws-reconciler.validate) "
        "refuse what they refuse and list a case in MODEL_RULES"
    )


@pytest.mark.parametrize(
    ("rule", "config"),
    [(rule, config) for rule, configs in MODEL_RULES.items() for config in configs],
    ids=lambda value: json.dumps(value)[:70] if isinstance(value, dict) else value,
)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_chart_and_models_refuse_the_same_config(
    engine_name: str, rule: str, config: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError):
        load_settings(environ=_settings_env(config, tmp_path), cfg_path=tmp_path / "absent.cfg")
    message = _refusal(engine_name, {"config": config}, {"image": IMAGE})
    assert any(f"config.{section}" in message for section in config), message


def test_lease_settings_reach_the_pods(helm: Engine) -> None:
    values = {"config": {"aws_reconciler": {"lease_duration": 30, "renew_deadline": 20, "retry_period": 5}}}
    env = env_of(container(render(helm, values).one("Deployment")["spec"]["template"]["spec"]))
    assert {
        k: env[f"AIRFLOW__AWS_RECONCILER__{k}"]["value"] for k in ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")
    } == {
        "LEASE_DURATION": "30",
        "RENEW_DEADLINE": "20",
        "RETRY_PERIOD": "5",
    }


# ---- availability ---------------------------------------------------------------------------


def test_pod_disruption_budget(helm: Engine) -> None:
    pdb = render_file(helm, "defaults").one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert render_file(helm, "all").one("PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert render(helm, {"podDisruptionBudget": {"enabled": False}}).maybe("PodDisruptionBudget") is None


def test_graceful_shutdown_time(helm: Engine) -> None:
    pod = render_file(helm, "defaults").one("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60


# ---- the migration --------------------------------------------------------------------------


def test_migration_is_a_pre_install_pre_upgrade_hook(helm: Engine) -> None:
    job = render_file(helm, "defaults").one("Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    migrate = container(job["spec"]["template"]["spec"])
    assert migrate["command"] == ["aws-reconciler"]
    assert migrate["args"][-2:] == ["db", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # A pre-install hook runs before the chart's ServiceAccount exists.
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]


def test_migration_without_hooks_is_a_job_per_revision(helm: Engine) -> None:
    job = render_file(helm, "all").one("Job")
    assert "annotations" not in job["metadata"]
    assert job["metadata"]["name"].endswith("-migrate-1")
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert render(helm, {"migration": {"enabled": False}}).maybe("Job") is None


def test_migration_and_reconciler_see_the_same_settings(helm: Engine) -> None:
    rendered = render_file(helm, "all")
    reconciler = env_of(container(rendered.one("Deployment")["spec"]["template"]["spec"]))
    migration = env_of(container(rendered.one("Job")["spec"]["template"]["spec"]))
    reconciler.pop("AIRFLOW__AWS_RECONCILER__METRICS_ADDRESS")
    assert reconciler == migration


# ---- monitoring and network -----------------------------------------------------------------


def test_optional_objects_are_off_by_default(helm: Engine) -> None:
    kinds = render_file(helm, "defaults").kinds()
    assert kinds == sorted(["Deployment", "Job", "PodDisruptionBudget", "Service", "ServiceAccount"])


def test_optional_objects_when_enabled(helm: Engine) -> None:
    kinds = render_file(helm, "all").kinds()
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy"):
        assert kind in kinds


@pytest.mark.parametrize("option", ["serviceMonitor", "prometheusRule", "grafanaDashboard", "networkPolicy"])
def test_each_optional_object_alone(helm: Engine, option: str) -> None:
    kind = {
        "serviceMonitor": "ServiceMonitor",
        "prometheusRule": "PrometheusRule",
        "grafanaDashboard": "ConfigMap",
        "networkPolicy": "NetworkPolicy",
    }[option]
    kinds = render(helm, {option: {"enabled": True}}).kinds()
    assert kinds.count(kind) == 1
    assert len(kinds) == 6


def test_service_monitor_scrapes_the_service_as_job_aws_reconciler(helm: Engine) -> None:
    rendered = render_file(helm, "all")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= rendered.one("Service")["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("metrics", "/metrics", "15s")
    assert endpoint["relabelings"][0] == {"action": "replace", "targetLabel": "job", "replacement": "aws-reconciler"}
    assert endpoint["relabelings"][1]["targetLabel"] == "cluster"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"


def test_prometheus_rule_carries_the_rule_file(helm: Engine) -> None:
    rules_file = CHART / "files" / "aws-reconciler-rules.yaml"
    rule = render_file(helm, "all").one("PrometheusRule")
    source = yaml.safe_load(rules_file.read_text())
    assert rule["spec"] == {"groups": source["groups"]}
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Alert templates reach Prometheus untouched, not evaluated by Helm.
    assert "{{ $labels." in json.dumps(rule["spec"]) or "{{ $value" in json.dumps(rule["spec"])


def test_rules_select_the_job_label_the_service_monitor_sets() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    job = values["serviceMonitor"]["jobLabel"]
    groups = yaml.safe_load((CHART / "files" / "aws-reconciler-rules.yaml").read_text())["groups"]
    selected = {m for g in groups for r in g["rules"] for m in re.findall(r'job="([^"]*)"', r["expr"])}
    assert selected == {job}


def test_prometheus_rule_passes_promtool(helm: Engine, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool not installed (Debian package prometheus)"
        if os.environ.get("AWS_RECONCILER_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"{reason} and AWS_RECONCILER_REQUIRE_PROMTOOL=1")
        pytest.skip(reason)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(render_file(helm, "all").one("PrometheusRule")["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_config_map_for_the_grafana_sidecar(helm: Engine) -> None:
    config_map = render_file(helm, "all").one("ConfigMap", component="dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Airflow"}
    assert config_map["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(config_map["data"]["aws-reconciler.json"])
    assert dashboard == json.loads((CHART / "files" / "aws-reconciler.json").read_text())
    # The default labels are what the Grafana sidecar watches.
    default_map = render(helm, {"grafanaDashboard": {"enabled": True}}).one("ConfigMap")
    assert default_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert default_map["metadata"]["namespace"] == NAMESPACE


def test_network_policy(helm: Engine) -> None:
    policy = render_file(helm, "all").one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule.get("ports", [])}
    assert {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (443, "TCP"), (3128, "TCP")} <= egress_ports
    aws_rule = next(rule for rule in policy["egress"] if rule["ports"][0]["port"] == 443)
    assert aws_rule["to"] == [{"ipBlock": {"cidr": "10.0.128.0/20"}}]


# ---- NOTES.txt (rendered by the Helm 4 SDK; `helm template` skips it) -----------------------


def _notes(values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> str:
    notes = render(engine("helm4-sdk"), values, base=base).notes
    assert notes is not None
    return notes


def test_notes_warn_about_a_missing_role() -> None:
    notes = _notes({})
    assert "serviceAccount.roleArn is empty" in notes
    assert "aws_reconciler.executor.EcsExecutor" in notes


def test_notes_without_warnings_for_a_complete_install() -> None:
    notes = _notes(load_values(VALUES_FILES["minimal"]))
    assert "WARNING" not in notes
    assert "airflow-metadata" in notes
    assert "port-forward" in notes


@pytest.mark.parametrize(
    ("config", "executor"),
    [
        ({"aws_reconciler_ecs": ECS}, "aws_reconciler.executor.EcsExecutor"),
        ({"aws_reconciler_batch": BATCH}, "aws_reconciler.executor.BatchExecutor"),
        (
            {"aws_reconciler_ecs": ECS, "aws_reconciler_batch": BATCH},
            "aws_reconciler.executor.EcsExecutor,aws_reconciler.executor.BatchExecutor",
        ),
    ],
)
def test_notes_name_the_executors_of_the_configured_backends(config: dict[str, Any], executor: str) -> None:
    assert f"AIRFLOW__CORE__EXECUTOR={executor}\n" in _notes({"config": config}, base={"image": IMAGE})


def test_notes_warn_about_a_single_replica() -> None:
    assert "not highly available" in _notes({"replicaCount": 1, "podDisruptionBudget": {"enabled": False}})


# ---- helpers --------------------------------------------------------------------------------


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, Mapping):
        return [leaf for key, item in value.items() for leaf in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, (*path, index))]
    return [(path, value)]


def test_the_token_key_comes_from_its_secret_only(helm: Engine) -> None:
    """The Fernet key sealing workload tokens reaches the reconciler from a Secret, never from values."""
    values = merge_values(load_values(VALUES_FILES["all"]), {"tokenKey": {"existingSecret": "airflow-token-key"}})
    rendered = render(helm, values, base={})
    env = env_of(container(rendered.one("Deployment")["spec"]["template"]["spec"]))
    assert env["AIRFLOW__AWS_RECONCILER__TOKEN_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "airflow-token-key", "key": "token-key"}
    }
    without = env_of(container(render_file(helm, "all").one("Deployment")["spec"]["template"]["spec"]))
    assert "AIRFLOW__AWS_RECONCILER__TOKEN_KEY" not in without
