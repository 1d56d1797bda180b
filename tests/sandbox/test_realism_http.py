"""The sandbox's realism through real boto3 clients over HTTP: each behaviour, switched on at run time
through the control API, really happens to the calls. The clock and the sleeps are the test's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from realism_support import ManualClock, RecordingSleep

from aws_reconciler_sandbox import SandboxControlClient, SandboxControlError, SandboxServer, bootstrap
from aws_reconciler_sandbox.realism import BUCKETS, CAPACITY_REASONS, PROFILES

REGION = "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def sleep() -> Iterator[RecordingSleep]:
    sleeper = RecordingSleep()
    yield sleeper
    sleeper.release()  # let held answers go before the server stops


@pytest.fixture(scope="module")
def sandbox(clock: ManualClock, sleep: RecordingSleep) -> Iterator[SandboxServer]:
    with SandboxServer(region=REGION, clock=clock, sleep=sleep) as server:
        yield server


@pytest.fixture
def env(sandbox: SandboxServer, sleep: RecordingSleep) -> Iterator[dict[str, str]]:
    """A fresh account with the default resources, created while the sandbox is kind."""
    sandbox.configure_realism(profile="kind")
    sandbox.reset()
    settings = bootstrap(endpoint_url=sandbox.endpoint_url, region=REGION, batch=True)
    sleep.clear()
    yield settings
    sandbox.configure_realism(profile="kind")


@pytest.fixture
def control(sandbox: SandboxServer, env: dict[str, str]) -> SandboxControlClient:
    """Realism is switched over HTTP, as for a sandbox in another process."""
    return SandboxControlClient(sandbox.endpoint_url)


@pytest.fixture
def ecs(sandbox: SandboxServer, env: dict[str, str]) -> Any:
    return sandbox.client("ecs", config=NO_RETRY)


@pytest.fixture
def batch(sandbox: SandboxServer, env: dict[str, str]) -> Any:
    return sandbox.client("batch", config=NO_RETRY)


def run_args(env: dict[str, str], **overrides: Any) -> dict[str, Any]:
    return {
        "cluster": "airflow",
        "taskDefinition": "airflow-task",
        "launchType": "FARGATE",
        "networkConfiguration": {
            "awsvpcConfiguration": {"subnets": env["AIRFLOW__AWS_RECONCILER_ECS__SUBNETS"].split(",")}
        },
        **overrides,
    }


def launch(ecs: Any, env: dict[str, str], **overrides: Any) -> str:
    response = ecs.run_task(**run_args(env, **overrides))
    assert response["failures"] == []
    return str(response["tasks"][0]["taskArn"])


def submit(batch: Any, name: str = "job") -> str:
    return str(batch.submit_job(jobName=name, jobQueue="airflow", jobDefinition="airflow-job")["jobId"])


def error_of(call: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as exc:
        call(**kwargs)
    response = exc.value.response
    return str(response["Error"]["Code"]), int(response["ResponseMetadata"]["HTTPStatusCode"])


# ---------------------------------------------------------------------------- eventual consistency


def test_a_new_task_is_missing_and_unlisted_for_its_window(
    sandbox: SandboxServer, control: SandboxControlClient, clock: ManualClock, ecs: Any, env: dict[str, str]
) -> None:
    control.configure_realism(ecs_lag_rate=100, ecs_lag=5)
    arn = launch(ecs, env)
    described = ecs.describe_tasks(cluster="airflow", tasks=[arn])
    assert described["tasks"] == [] and described["failures"] == [{"arn": arn, "reason": "MISSING"}]
    assert ecs.list_tasks(cluster="airflow")["taskArns"] == []
    assert [t["arn"] for t in sandbox.tasks()] == [arn]  # the sandbox's own view is the truth
    clock.advance(5)
    assert [t["taskArn"] for t in ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"]] == [arn]
    assert ecs.list_tasks(cluster="airflow")["taskArns"] == [arn]
    # Switched off at run time: the next task is seen at once.
    control.configure_realism(ecs_lag_rate=0)
    later = launch(ecs, env)
    assert ecs.describe_tasks(cluster="airflow", tasks=[later])["failures"] == []
    assert control.realism_state()["injected"] == {"lag ecs": 1}


def test_a_new_job_is_unseen_by_list_and_describe_for_its_window(
    control: SandboxControlClient, clock: ManualClock, batch: Any
) -> None:
    control.configure_realism(batch_lag_rate=100, batch_lag=5)
    job_id = submit(batch, "airflow-ti-1")
    by_name = {"jobQueue": "airflow", "filters": [{"name": "JOB_NAME", "values": ["airflow-ti-1"]}]}
    assert batch.describe_jobs(jobs=[job_id])["jobs"] == []
    assert batch.list_jobs(**by_name)["jobSummaryList"] == []
    assert batch.list_jobs(jobQueue="airflow", jobStatus="RUNNABLE")["jobSummaryList"] == []
    clock.advance(5)
    assert [j["jobId"] for j in batch.describe_jobs(jobs=[job_id])["jobs"]] == [job_id]
    assert [j["jobId"] for j in batch.list_jobs(**by_name)["jobSummaryList"]] == [job_id]
    assert [j["jobId"] for j in batch.list_jobs(jobQueue="airflow", jobStatus="RUNNABLE")["jobSummaryList"]] == [job_id]


# ---------------------------------------------------------------------------- throttling


def test_describe_and_list_are_throttled_once_their_bucket_is_empty(
    control: SandboxControlClient, clock: ManualClock, ecs: Any, env: dict[str, str]
) -> None:
    arn = launch(ecs, env)
    control.configure_realism(throttling=True)
    burst = int(BUCKETS["ecs-describe"].burst)
    for i in range(burst):
        if i % 2:
            ecs.list_tasks(cluster="airflow")
        else:
            ecs.describe_tasks(cluster="airflow", tasks=[arn])
    assert error_of(ecs.describe_tasks, cluster="airflow", tasks=[arn]) == ("ThrottlingException", 400)
    assert error_of(ecs.list_tasks, cluster="airflow") == ("ThrottlingException", 400)
    ecs.describe_clusters(clusters=["airflow"])  # another action, no bucket of its own
    clock.advance(1 / BUCKETS["ecs-describe"].rate)
    assert ecs.describe_tasks(cluster="airflow", tasks=[arn])["tasks"]
    assert control.realism_state()["injected"] == {"throttled ecs:DescribeTasks": 1, "throttled ecs:ListTasks": 1}


def test_run_task_throttling_in_disguise_launches_nothing(
    sandbox: SandboxServer, control: SandboxControlClient, ecs: Any, env: dict[str, str]
) -> None:
    control.configure_realism(throttling=True, disguised_throttle=100)
    for _ in range(10):
        assert len(ecs.run_task(**run_args(env, count=10))["tasks"]) == 10
    with pytest.raises(ClientError) as exc:
        ecs.run_task(**run_args(env))
    assert exc.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "Rate exceeded" in exc.value.response["Error"]["Message"]
    assert len(sandbox.tasks()) == 100


def test_submit_job_is_throttled_at_50_per_second(
    sandbox: SandboxServer, control: SandboxControlClient, clock: ManualClock, batch: Any
) -> None:
    control.configure_realism(throttling=True)
    for i in range(50):
        submit(batch, f"job-{i}")
    assert error_of(batch.submit_job, jobName="late", jobQueue="airflow", jobDefinition="airflow-job") == (
        "TooManyRequestsException",
        429,
    )
    assert len(sandbox.jobs()) == 50
    clock.advance(1 / 50)
    submit(batch, "in-time")


# ---------------------------------------------------------------------------- faults


def test_faults_strike_their_share_of_calls_and_replay_with_the_seed(control: SandboxControlClient, ecs: Any) -> None:
    def failing_calls() -> list[int]:
        failed = []
        for i in range(200):
            try:
                ecs.list_tasks(cluster="airflow")
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "ServerException"
                failed.append(i)
        return failed

    control.configure_realism(seed=11, faults=["ecs:ListTasks:5xx=30"])
    first = failing_calls()
    assert 30 < len(first) < 90
    assert control.realism_state()["injected"] == {"5xx ecs:ListTasks": len(first)}
    control.configure_realism(seed=11)  # the same settings again: the draws start over
    assert failing_calls() == first
    control.configure_realism(seed=12)
    assert failing_calls() != first


def test_a_phantom_launch_happens_although_the_answer_is_a_500(
    sandbox: SandboxServer, control: SandboxControlClient, ecs: Any, env: dict[str, str]
) -> None:
    control.configure_realism(faults=["ecs:RunTask:phantom=100"])
    assert error_of(ecs.run_task, **run_args(env, clientToken="rec-1-1")) == ("ServerException", 500)
    [task] = sandbox.tasks()
    control.configure_realism(faults=["ecs:RunTask:"])
    assert launch(ecs, env, clientToken="rec-1-1") == task["arn"]  # the idempotent retry finds it


def test_a_reset_connection_gets_no_answer_and_launches_nothing(
    sandbox: SandboxServer, control: SandboxControlClient, ecs: Any, env: dict[str, str]
) -> None:
    control.configure_realism(faults=["ecs:RunTask:reset=100"])
    with pytest.raises(ConnectionClosedError):
        ecs.run_task(**run_args(env))
    assert sandbox.tasks() == []
    assert ecs.list_tasks(cluster="airflow")["taskArns"] == []  # the server serves on


def test_a_timeout_holds_the_answer_past_the_clients_read_timeout(
    sandbox: SandboxServer, control: SandboxControlClient, sleep: RecordingSleep, env: dict[str, str]
) -> None:
    control.configure_realism(faults=["ecs:RunTask:timeout=100"], timeout_hold=30)
    impatient = sandbox.client("ecs", config=NO_RETRY.merge(Config(read_timeout=0.5)))
    with pytest.raises(ReadTimeoutError):
        impatient.run_task(**run_args(env))
    assert 30 in sleep.waits
    assert len(sandbox.tasks()) == 1  # executed: the caller cannot tell


def test_planned_errors_come_before_realism(sandbox: SandboxServer, control: SandboxControlClient, ecs: Any) -> None:
    control.configure_realism(faults=["*:5xx=100"])
    sandbox.inject_error(operation="ListTasks", code="AccessDeniedException", message="no")
    assert error_of(ecs.list_tasks, cluster="airflow") == ("AccessDeniedException", 400)
    assert error_of(ecs.list_tasks, cluster="airflow") == ("ServerException", 500)


# ---------------------------------------------------------------------------- latency


def test_every_call_waits_its_drawn_latency(control: SandboxControlClient, sleep: RecordingSleep, ecs: Any) -> None:
    control.configure_realism(latency_ms=25)
    for _ in range(3):
        ecs.list_tasks(cluster="airflow")
    assert sleep.waits == [0.025] * 3
    sleep.clear()
    control.configure_realism(latency_p99_ms=250)
    for _ in range(20):
        ecs.list_clusters()
    assert len(sleep.waits) == 20 and len(set(sleep.waits)) == 20 and all(0 < w < 1.25 for w in sleep.waits)


# ---------------------------------------------------------------------------- capacity


def test_capacity_failures_leave_some_tasks_unlaunched(
    sandbox: SandboxServer, control: SandboxControlClient, ecs: Any, env: dict[str, str]
) -> None:
    control.configure_realism(capacity_failure_rate=100)
    none = ecs.run_task(**run_args(env, count=3))
    assert none["tasks"] == [] and len(none["failures"]) == 3
    assert {f["reason"] for f in none["failures"]} <= set(CAPACITY_REASONS)
    assert all(f["arn"].endswith(":cluster/airflow") for f in none["failures"])
    control.configure_realism(capacity_failure_rate=50, seed=4)
    some = ecs.run_task(**run_args(env, count=10, clientToken="rec-2-1"))
    assert 0 < len(some["tasks"]) < 10 and len(some["tasks"]) + len(some["failures"]) == 10
    assert len(sandbox.tasks()) == len(some["tasks"])
    again = ecs.run_task(**run_args(env, count=10, clientToken="rec-2-1"))
    assert (again["tasks"], again["failures"]) == (some["tasks"], some["failures"])  # idempotent, as recorded


# ---------------------------------------------------------------------------- the control API


def test_profiles_and_settings_over_http(control: SandboxControlClient) -> None:
    assert control.realism_state() == {"settings": PROFILES["kind"].to_dict(), "injected": {}}
    state = control.configure_realism(profile="realistic", seed=5)
    assert state["settings"] == PROFILES["realistic"].changed(seed=5).to_dict()
    for bad, words in (
        ({"profile": "cruel"}, "profile must be one of kind, realistic"),
        ({"ecs_lag_rate": 101}, "ecs_lag_rate: 101 is not a percentage"),
        ({"lag": 1}, "unknown realism setting(s): lag"),
        ({"faults": ["RunTask:boom=1"]}, "'boom=1' is not KIND=PERCENT"),
    ):
        with pytest.raises(SandboxControlError) as exc:
            control.configure_realism(**bad)
        assert exc.value.status == 400 and words in exc.value.message
    assert control.realism_state()["settings"]["seed"] == 5  # a refused change changes nothing
    assert control.configure_realism(profile="kind")["settings"] == PROFILES["kind"].to_dict()
