"""The sandbox through real boto3 clients over HTTP: each fidelity shim, faults, control API, locking."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from aws_reconciler_sandbox import (
    SandboxControlClient,
    SandboxControlError,
    SandboxServer,
    bootstrap,
)

REGION = "us-east-1"
# One attempt: an injected or accidental error must reach the test, not be retried away.
# In a client Config, botocore's "max_attempts" counts *retries* (total = value + 1), so
# {"max_attempts": 1} still retries once; "total_max_attempts" counts the first call too.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(region=REGION) as server:
        yield server


@pytest.fixture
def env(sandbox: SandboxServer) -> dict[str, str]:
    return bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)


def make_client(sandbox: SandboxServer, service: str, **config: Any) -> Any:
    return boto3.client(
        service,
        endpoint_url=sandbox.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRY.merge(Config(**config)) if config else NO_RETRY,
    )


@pytest.fixture
def ecs(sandbox: SandboxServer, env: dict[str, str]) -> Any:
    return make_client(sandbox, "ecs")


def run_args(env: dict[str, str], **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "cluster": env["AIRFLOW__AWS_RECONCILER_ECS__CLUSTER"],
        "taskDefinition": env["AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION"],
        "launchType": "FARGATE",
        "startedBy": "airflow",
        "networkConfiguration": {
            "awsvpcConfiguration": {
                "subnets": env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(","),
                "securityGroups": [env["AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS"]],
            }
        },
    }
    args.update(overrides)
    return args


def launch(ecs: Any, env: dict[str, str], **overrides: Any) -> str:
    response = ecs.run_task(**run_args(env, **overrides))
    assert response["failures"] == []
    return str(response["tasks"][0]["taskArn"])


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# ---------------------------------------------------------------------------- RunTask


def test_new_task_is_provisioning_with_aws_fields(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env)
    for _ in range(6):  # moto alone would walk the task to STOPPED after 4 describes
        task = ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"][0]
    assert task["lastStatus"] == "PROVISIONING"
    assert task["desiredStatus"] == "RUNNING"
    assert "createdAt" in task
    assert task["cpu"] == "256" and task["memory"] == "512"
    assert "stoppedReason" not in task and "stopCode" not in task
    assert "exitCode" not in task["containers"][0]  # moto says 0 from birth; AWS has none yet
    assert task["containers"][0]["taskArn"] == arn


def test_client_token_returns_same_task_and_launches_once(
    sandbox: SandboxServer, ecs: Any, env: dict[str, str]
) -> None:
    first = ecs.run_task(**run_args(env, clientToken="rec-1-1"))
    second = ecs.run_task(**run_args(env, clientToken="rec-1-1"))
    arn = first["tasks"][0]["taskArn"]
    assert second["tasks"][0]["taskArn"] == arn
    tasks = sandbox.tasks(cluster="airflow")
    assert [t["arn"] for t in tasks] == [arn]
    assert tasks[0]["clientToken"] == "rec-1-1"
    assert sandbox.calls()["ecs:RunTask"] == 2
    # Another token is another task.
    assert launch(ecs, env, clientToken="rec-1-2") != arn


def test_client_token_with_other_parameters_conflicts(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env, clientToken="rec-2-1")
    with pytest.raises(ClientError) as exc:
        ecs.run_task(**run_args(env, clientToken="rec-2-1", startedBy="someone-else"))
    assert error_code(exc) == "ConflictException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert exc.value.response["resourceIds"] == [arn]
    assert len(sandbox.tasks()) == 1


def test_client_token_is_scoped_to_the_cluster(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    ecs.create_cluster(clusterName="other")
    first = launch(ecs, env, clientToken="same")
    second = launch(ecs, env, clientToken="same", cluster="other")
    assert first != second


def test_injected_run_task_failures_launch_nothing(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    sandbox.fail_run_task(reason="RESOURCE:MEMORY", times=2)
    for _ in range(2):
        response = ecs.run_task(**run_args(env))
        assert response["tasks"] == []
        assert response["failures"][0]["reason"] == "RESOURCE:MEMORY"
        assert response["failures"][0]["arn"].endswith(":cluster/airflow")
    assert sandbox.tasks() == []
    launch(ecs, env)  # the plan is used up
    assert len(sandbox.tasks()) == 1


def test_ec2_launch_without_container_instances_is_a_failure_not_a_500(ecs: Any, env: dict[str, str]) -> None:
    response = ecs.run_task(**run_args(env, launchType="EC2"))
    assert response["tasks"] == []
    assert "No Container Instances" in response["failures"][0]["reason"]


def test_run_task_count_is_validated(ecs: Any, env: dict[str, str]) -> None:
    with pytest.raises(ClientError) as exc:
        ecs.run_task(**run_args(env, count=11))
    assert error_code(exc) == "InvalidParameterException"


# ---------------------------------------------------------------------------- injected errors


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        ("ThrottlingException", "Rate exceeded", 400),
        ("InvalidParameterException", "Rate exceeded", 400),
        ("AccessDeniedException", "User is not authorized to perform: ecs:RunTask", 400),
        ("ServerException", "Service unavailable", 500),
    ],
)
def test_injected_error_reaches_boto3(
    sandbox: SandboxServer, ecs: Any, env: dict[str, str], code: str, message: str, status: int
) -> None:
    sandbox.inject_error(operation="RunTask", code=code, message=message, status=status)
    with pytest.raises(ClientError) as exc:
        ecs.run_task(**run_args(env))
    assert error_code(exc) == code
    assert exc.value.response["Error"]["Message"] == message
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert sandbox.tasks() == []  # not executed
    launch(ecs, env)  # times=1: the next call is served normally


def test_injected_error_matches_only_its_operation(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env)
    sandbox.inject_error(operation="ecs:DescribeTasks", code="ThrottlingException", message="Rate exceeded", times=None)
    ecs.list_tasks(cluster="airflow")
    for _ in range(3):
        with pytest.raises(ClientError) as exc:
            ecs.describe_tasks(cluster="airflow", tasks=[arn])
        assert error_code(exc) == "ThrottlingException"
    sandbox.clear_faults()
    assert ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"]


def test_phantom_error_executes_the_launch(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    sandbox.inject_error(operation="RunTask", code="ServerException", message="lost response", status=500, phantom=True)
    with pytest.raises(ClientError) as exc:
        ecs.run_task(**run_args(env, clientToken="rec-3-1"))
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    launched = sandbox.tasks()
    assert len(launched) == 1 and launched[0]["clientToken"] == "rec-3-1"
    # The crash-safe retry: same token, same task, nothing new launched.
    assert launch(ecs, env, clientToken="rec-3-1") == launched[0]["arn"]
    assert len(sandbox.tasks()) == 1


# ---------------------------------------------------------------------------- ListTasks


def test_list_tasks_paginates_250_tasks_in_3_pages(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    launched: set[str] = set()
    for _ in range(25):
        launched.update(t["taskArn"] for t in ecs.run_task(**run_args(env, count=10))["tasks"])
    assert len(launched) == 250
    pages = list(ecs.get_paginator("list_tasks").paginate(cluster="airflow", PaginationConfig={"PageSize": 100}))
    assert [len(p["taskArns"]) for p in pages] == [100, 100, 50]
    listed = [arn for p in pages for arn in p["taskArns"]]
    assert len(listed) == len(set(listed)) and set(listed) == launched
    # Default page size is 100 as well, and the last full page carries no dangling token.
    first = ecs.list_tasks(cluster="airflow")
    assert len(first["taskArns"]) == 100 and "nextToken" in first
    with pytest.raises(ClientError) as exc:
        ecs.list_tasks(cluster="airflow", nextToken="garbage!")
    assert error_code(exc) == "InvalidParameterException"


def test_list_tasks_has_no_empty_trailing_page(ecs: Any, env: dict[str, str]) -> None:
    for _ in range(2):
        ecs.run_task(**run_args(env, count=10))
    page = ecs.list_tasks(cluster="airflow", maxResults=20)
    assert len(page["taskArns"]) == 20 and "nextToken" not in page


def test_list_tasks_defaults_to_running(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    keep = launch(ecs, env)
    gone = launch(ecs, env)
    ecs.stop_task(cluster="airflow", task=gone)
    assert ecs.list_tasks(cluster="airflow")["taskArns"] == [keep]
    assert ecs.list_tasks(cluster="airflow", desiredStatus="STOPPED")["taskArns"] == [gone]
    assert ecs.list_tasks(cluster="airflow", startedBy="airflow")["taskArns"] == [keep]
    assert ecs.list_tasks(cluster="airflow", startedBy="nobody")["taskArns"] == []
    assert ecs.list_tasks(cluster="airflow", family="airflow-task")["taskArns"] == [keep]


def test_list_tasks_matches_the_cluster_exactly(ecs: Any, env: dict[str, str]) -> None:
    ecs.create_cluster(clusterName="air")
    in_air = launch(ecs, env, cluster="air")
    in_airflow = launch(ecs, env, cluster="airflow")
    assert ecs.list_tasks(cluster="air")["taskArns"] == [in_air]
    assert ecs.list_tasks(cluster="airflow")["taskArns"] == [in_airflow]
    with pytest.raises(ClientError) as exc:
        ecs.list_tasks(cluster="missing")
    assert error_code(exc) == "ClusterNotFoundException"


# ---------------------------------------------------------------------------- DescribeTasks


def test_describe_tasks_reports_missing_keeps_order_and_scope(ecs: Any, env: dict[str, str]) -> None:
    ecs.create_cluster(clusterName="air")
    a = launch(ecs, env)
    b = launch(ecs, env)
    elsewhere = launch(ecs, env, cluster="air")
    unknown = a.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    response = ecs.describe_tasks(cluster="airflow", tasks=[b, unknown, a, elsewhere])
    assert [t["taskArn"] for t in response["tasks"]] == [b, a]
    assert response["failures"] == [
        {"arn": unknown, "reason": "MISSING"},
        {"arn": elsewhere, "reason": "MISSING"},
    ]
    # Task ids work too; tags only with include=["TAGS"], as in AWS.
    by_id = ecs.describe_tasks(cluster="airflow", tasks=[a.rsplit("/", 1)[1]])["tasks"]
    assert [t["taskArn"] for t in by_id] == [a] and "tags" not in by_id[0]


def test_describe_tasks_includes_tags_on_request(ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env, tags=[{"key": "aws-reconciler:id", "value": "rec-9"}])
    task = ecs.describe_tasks(cluster="airflow", tasks=[arn], include=["TAGS"])["tasks"][0]
    assert task["tags"] == [{"key": "aws-reconciler:id", "value": "rec-9"}]


# ---------------------------------------------------------------------------- task state


def test_task_failed_to_start_with_empty_containers(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env)
    sandbox.set_task_state(
        task_arn=arn,
        last_status="STOPPED",
        stop_code="TaskFailedToStart",
        stopped_reason="CannotPullContainerError: pull image manifest has been retried 5 time(s)",
        empty_containers=True,
    )
    task = ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"][0]
    assert task["lastStatus"] == "STOPPED" and task["desiredStatus"] == "STOPPED"
    assert task["stopCode"] == "TaskFailedToStart"
    assert task["stoppedReason"].startswith("CannotPullContainerError")
    assert task["containers"] == []
    assert "stoppedAt" in task and "startedAt" not in task


def test_task_that_ran_reports_exit_code_and_times(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env)
    running = sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    assert running["lastStatus"] == "RUNNING" and running["startedAt"] is not None
    sandbox.set_task_state(task_arn=arn, last_status="STOPPED", exit_code=137, container_reason="OutOfMemoryError")
    task = ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"][0]
    assert task["stopCode"] == "EssentialContainerExited"
    assert task["containers"][0]["exitCode"] == 137
    assert task["containers"][0]["reason"] == "OutOfMemoryError"
    assert task["containers"][0]["lastStatus"] == "STOPPED"
    assert task["createdAt"] <= task["startedAt"] <= task["stoppedAt"]


def test_set_task_state_rejects_unknown_task_and_status(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env)
    with pytest.raises(KeyError):
        sandbox.set_task_state(task_arn=arn + "x", last_status="RUNNING")
    with pytest.raises(ValueError, match="last_status"):
        sandbox.set_task_state(task_arn=arn, last_status="DONE")


# ---------------------------------------------------------------------------- StopTask


def test_stop_task(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    arn = launch(ecs, env)
    sandbox.set_task_state(task_arn=arn, last_status="RUNNING")
    stopped = ecs.stop_task(cluster="airflow", task=arn, reason="revoked by Airflow")["task"]
    assert stopped["lastStatus"] == "STOPPED" and stopped["desiredStatus"] == "STOPPED"
    assert stopped["stopCode"] == "UserInitiated"
    assert stopped["stoppedReason"] == "revoked by Airflow"
    assert "stoppedAt" in stopped
    # Stopping again changes nothing.
    again = ecs.stop_task(cluster="airflow", task=arn, reason="other")["task"]
    assert again["stoppedReason"] == "revoked by Airflow"
    with pytest.raises(ClientError) as exc:
        ecs.stop_task(cluster="airflow", task=arn.rsplit("/", 1)[0] + "/0000")
    assert error_code(exc) == "InvalidParameterException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# ---------------------------------------------------------------------------- counting, locking


def test_calls_are_counted_and_can_prove_zero_aws_calls(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    assert sandbox.calls()["ec2:DescribeSubnets"] == 1  # bootstrap's calls, by service
    sandbox.reset_calls()
    assert sandbox.calls() == {}
    launch(ecs, env)
    ecs.list_tasks(cluster="airflow")
    ecs.list_tasks(cluster="airflow")
    assert sandbox.calls() == {"ecs:RunTask": 1, "ecs:ListTasks": 2}


def test_concurrent_run_task_is_serialised_by_the_lock(
    sandbox: SandboxServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto's races are rare enough that "no 500s" alone passes without the lock most of the time,
    # so also measure how many requests are inside moto at once: without the lock this reaches 16.
    inside = 0
    peak = 0
    guard = threading.Lock()
    forward = sandbox.app._forward

    def tracked_forward(environ: dict[str, Any], body: bytes) -> Any:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        try:
            return forward(environ, body)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(sandbox.app, "_forward", tracked_forward)
    ecs = make_client(sandbox, "ecs", max_pool_connections=16)
    args = run_args(env)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def worker() -> list[str]:
        start.wait()
        arns = []
        for _ in range(20):
            try:
                arns.append(ecs.run_task(**args)["tasks"][0]["taskArn"])
            except BaseException as exc:  # collected: any 500 fails the test below
                errors.append(exc)
        return arns

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = [f.result() for f in [pool.submit(worker) for _ in range(16)]]
    assert errors == []
    assert peak == 1
    arns = {arn for result in results for arn in result}
    assert len(arns) == 320
    assert len(sandbox.tasks(cluster="airflow")) == 320
    assert sandbox.calls()["ecs:RunTask"] == 320


# ---------------------------------------------------------------------------- control over HTTP


def test_http_control_api(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    control = SandboxControlClient(sandbox.endpoint_url)
    assert control.health()

    control.fail_run_task(reason="RESOURCE:CPU")
    assert ecs.run_task(**run_args(env))["failures"][0]["reason"] == "RESOURCE:CPU"

    control.inject_error(operation="ListTasks", code="ThrottlingException", message="Rate exceeded")
    assert control.pending_faults()["errors"][0]["code"] == "ThrottlingException"
    with pytest.raises(ClientError) as exc:
        ecs.list_tasks(cluster="airflow")
    assert error_code(exc) == "ThrottlingException"

    arn = launch(ecs, env, clientToken="rec-4-1", overrides={"containerOverrides": [{"name": "base"}]})
    [task] = control.tasks(cluster="airflow")
    assert task["arn"] == arn and task["clientToken"] == "rec-4-1"
    assert task["overrides"] == {"containerOverrides": [{"name": "base"}]}
    assert control.tasks(cluster="nothing-here") == []

    moved = control.set_task_state(task_arn=arn, last_status="STOPPED", exit_code=0)
    assert moved["lastStatus"] == "STOPPED" and moved["containers"][0]["exitCode"] == 0
    with pytest.raises(SandboxControlError) as missing:
        control.set_task_state(task_arn="arn:aws:ecs:us-east-1:123456789012:task/airflow/nope", last_status="RUNNING")
    assert missing.value.status == 404
    with pytest.raises(SandboxControlError) as bad:
        control.set_task_state(task_arn=arn, last_status="EXPLODED")
    assert bad.value.status == 400

    assert control.calls()["ecs:RunTask"] == 2
    control.reset_calls()
    assert control.calls() == {}
    control.reset()
    assert control.tasks() == []
    assert make_client(sandbox, "ecs").list_clusters()["clusterArns"] == []


def test_the_control_api_is_declared_once(sandbox: SandboxServer) -> None:
    """The routes and the client come from the ``@operation`` methods of ``Sandbox``; the docs list them."""
    import inspect
    import urllib.error
    import urllib.request
    from pathlib import Path

    from aws_reconciler_sandbox.app import OPERATIONS

    control = SandboxControlClient(sandbox.endpoint_url)
    docs = (Path(__file__).parents[2] / "docs" / "sandbox.md").read_text()
    assert len(OPERATIONS) >= 17
    for path, op in OPERATIONS.items():
        assert f"`{path}`" in docs, f"docs/sandbox.md does not list {path}"
        if op.name == "health":
            continue  # the client's own: True or False, never an error
        method = getattr(control, op.name)
        assert inspect.signature(method) == inspect.signature(getattr(sandbox, op.name)), op.name
        assert method.__doc__ == inspect.getdoc(getattr(sandbox, op.name))
    with pytest.raises(TypeError):
        control.fail_run_task(reasons="RESOURCE:CPU")  # refused before anything is sent
    with pytest.raises(AttributeError):
        control.start  # noqa: B018 (the server's lifecycle is no control operation)
    assert control.pending_faults() == sandbox.pending_faults()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for url, verb, status in (
        ("/_sandbox/nothing", "GET", 404),
        ("/_sandbox/reset", "GET", 405),
        ("/_sandbox/fail-run-task", "POST", 400),
    ):
        data = b'{"unknown": 1}' if verb == "POST" else None
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(urllib.request.Request(f"{sandbox.endpoint_url}{url}", data=data, method=verb))
        assert exc.value.code == status


# ---------------------------------------------------------------------------- lifecycle, bootstrap


def test_state_does_not_leak_between_servers() -> None:
    with SandboxServer() as first:
        first.client("ecs").create_cluster(clusterName="leak")
        first.inject_error(operation="ListClusters", code="ThrottlingException", message="Rate exceeded")
        with pytest.raises(RuntimeError, match="another SandboxServer"):
            SandboxServer().start()
    with SandboxServer() as second:
        assert second.client("ecs").list_clusters()["clusterArns"] == []
        assert second.calls() == {"ecs:ListClusters": 1}


def test_stop_restores_moto_defaults() -> None:
    from moto.core.config import default_user_config
    from moto.moto_api import state_manager

    before = (state_manager.get_transition("ecs::task"), dict(default_user_config["batch"]))
    with SandboxServer():
        assert state_manager.get_transition("ecs::task")["progression"] == "manual"
        assert default_user_config["batch"]["use_docker"] is False
    assert (state_manager.get_transition("ecs::task"), dict(default_user_config["batch"])) == before


def test_moto_api_reset_also_forgets_client_tokens(sandbox: SandboxServer, ecs: Any, env: dict[str, str]) -> None:
    import urllib.request

    launch(ecs, env, clientToken="rec-5-1")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(urllib.request.Request(f"{sandbox.endpoint_url}/moto-api/reset", data=b"", method="POST")).close()
    env = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)
    launch(ecs, env, clientToken="rec-5-1")  # a fresh launch, not a replay of a vanished task
    assert len(sandbox.tasks()) == 1


def test_bootstrap_is_idempotent_and_complete(sandbox: SandboxServer, env: dict[str, str]) -> None:
    again = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION)
    assert again == env
    assert set(env) == {
        "AIRFLOW__AWS_RECONCILER_ECS__CLUSTER",
        "AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION",
        "AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME",
        "AIRFLOW__AWS_RECONCILER_ECS__SUBNETS",
        "AIRFLOW__AWS_RECONCILER_ECS__SECURITY_GROUPS",
        "AIRFLOW__AWS_RECONCILER_ECS__REGION_NAME",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    }
    ecs = make_client(sandbox, "ecs")
    definition = ecs.describe_task_definition(taskDefinition="airflow-task")["taskDefinition"]
    container = definition["containerDefinitions"][0]
    assert container["name"] == "base"
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/aws-reconciler/tasks"
    logs = make_client(sandbox, "logs")
    assert logs.describe_log_groups(logGroupNamePrefix="/aws-reconciler/tasks")["logGroups"]


def test_awsvpc_without_security_groups_uses_the_vpc_default(ecs: Any, env: dict[str, str]) -> None:
    network = {"awsvpcConfiguration": {"subnets": env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(",")[:1]}}
    arn = launch(ecs, env, networkConfiguration=network)
    assert ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"][0]["lastStatus"] == "PROVISIONING"


def test_a_moto_crash_is_an_aws_shaped_500(
    sandbox: SandboxServer, ecs: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.ecs.models import EC2ContainerServiceBackend

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(EC2ContainerServiceBackend, "list_clusters", crash)
    with pytest.raises(ClientError) as exc:
        ecs.list_clusters()
    assert error_code(exc) == "ServerException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
