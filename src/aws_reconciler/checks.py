"""``aws-reconciler check``: does this identity have every permission the reconciler needs?

Each probe calls a real API in a way that changes nothing: read-only calls, or mutating calls
aimed at resources that cannot exist (a task ARN of zeros) or with a parameter AWS rejects only
*after* authorising the caller. So "AccessDenied" means the permission is missing, and any other
answer means it is granted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from .backends.errors import classify
from .config import Settings

DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403", "UnrecognizedClientException"}
)


@dataclass(frozen=True)
class CheckResult:
    """One permission and what AWS said about it."""

    permission: str
    ok: bool
    detail: str


def _probe(permission: str, call: Callable[[], Any], *, expected_codes: frozenset[str] = frozenset()) -> CheckResult:
    """Run ``call``; success or an error other than access denied proves the permission."""
    try:
        call()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = str(exc.response.get("Error", {}).get("Message", ""))
        if code in DENIED_CODES or "not authorized" in message.lower():
            return CheckResult(permission, False, f"{code}: {message}")
        if expected_codes and code not in expected_codes:
            return CheckResult(permission, True, f"allowed (AWS answered {code})")
        return CheckResult(permission, True, f"allowed ({code})")
    except Exception as exc:
        return CheckResult(permission, False, classify(exc).reason)
    return CheckResult(permission, True, "allowed")


def ecs_checks(settings: Settings, client: Any) -> list[CheckResult]:
    """Probe every ECS permission the reconciler uses, per configured cluster."""
    ecs = settings.ecs
    deployment = settings.core.deployment
    results: list[CheckResult] = []
    assert ecs.task_definition is not None
    results.append(
        _probe(
            f"ecs:DescribeTaskDefinition {ecs.task_definition}",
            lambda: client.describe_task_definition(taskDefinition=ecs.task_definition),
        )
    )
    for cluster in ecs.clusters:
        results.append(
            _probe(f"ecs:ListTasks {cluster}", partial(client.list_tasks, cluster=cluster, startedBy=deployment))
        )
        # A bare task id: IAM builds the ARN in the caller's own account, so a policy scoped to
        # `task/<cluster>/*` is evaluated exactly as for real tasks.
        missing_task = "0" * 32
        results.append(
            _probe(
                f"ecs:DescribeTasks {cluster}",
                partial(client.describe_tasks, cluster=cluster, tasks=[missing_task], include=["TAGS"]),
            )
        )
        results.append(
            _probe(
                f"ecs:StopTask {cluster}",
                partial(client.stop_task, cluster=cluster, task=missing_task, reason="aws-reconciler check"),
            )
        )
        # count=0 is rejected by parameter validation after authorisation: nothing can launch.
        results.append(
            _probe(
                f"ecs:RunTask {cluster} {ecs.task_definition}",
                partial(
                    client.run_task,
                    cluster=cluster,
                    taskDefinition=ecs.task_definition,
                    count=0,
                    startedBy=deployment,
                    tags=[{"key": "aws-reconciler:deployment", "value": deployment}],
                ),
            )
        )
    return results


def batch_checks(settings: Settings, client: Any) -> list[CheckResult]:
    """Probe the Batch permissions the reconciler uses, per configured job queue."""
    missing_job = "00000000-0000-0000-0000-000000000000"
    results = [
        _probe("batch:DescribeJobs", partial(client.describe_jobs, jobs=[missing_job])),
        _probe("batch:TerminateJob", partial(client.terminate_job, jobId=missing_job, reason="aws-reconciler check")),
        _probe("batch:CancelJob", partial(client.cancel_job, jobId=missing_job, reason="aws-reconciler check")),
    ]
    for queue in settings.batch.job_queues:
        results.append(
            _probe(f"batch:ListJobs {queue}", partial(client.list_jobs, jobQueue=queue, jobStatus="RUNNING"))
        )
    return results


def render(results: list[CheckResult]) -> str:
    """A table for humans: one line per permission."""
    width = max((len(r.permission) for r in results), default=10)
    lines = [f"{'ok' if r.ok else 'MISSING':<8} {r.permission:<{width}}  {r.detail}" for r in results]
    lines.append(
        "note: iam:PassRole (task and execution roles) and ecs:TagResource on RunTask are only checked by a real launch"
    )
    return "\n".join(lines)
