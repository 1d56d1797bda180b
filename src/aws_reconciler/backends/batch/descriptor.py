"""AWS Batch as a backend: what the factory, the executor, ``check`` and the log view need of it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ...config import Settings
from ...model import Backend, Clock
from ..descriptor import BackendDescriptor, Probe
from ..ratelimit import TokenBucket
from .backend import BatchBackend
from .logs import locate_logs
from .spec import build_submit_job_request, check_settings

_MISSING_JOB = "00000000-0000-0000-0000-000000000000"
_MISSING_DEFINITION = "aws-reconciler-check-00000000-0000-0000-0000-000000000000"


def _build(settings: Settings, *, client: Any, may_act: Callable[[], bool], clock: Clock | None) -> BatchBackend:
    core, batch = settings.core, settings.batch
    check_settings(batch)
    return BatchBackend(
        client=client,
        deployment=core.deployment,
        job_queues=batch.targets,
        submit_bucket=TokenBucket(rate=core.batch_submit_rate, burst=core.batch_submit_burst),
        describe_bucket=TokenBucket(rate=core.batch_describe_rate, burst=core.batch_describe_burst),
        runnable_timeout=settings.runnable_timeout,
        clock=clock,
        may_act=may_act,
        lookup_delay=batch.lookup_delay,
        team=settings.team,
    )


def probes(settings: Settings, client: Any) -> list[Probe]:
    """The Batch calls the reconciler makes, per configured job queue, in a form that changes nothing."""
    found = [
        Probe("batch:DescribeJobs", partial(client.describe_jobs, jobs=[_MISSING_JOB])),
        Probe("batch:TerminateJob", partial(client.terminate_job, jobId=_MISSING_JOB, reason="aws-reconciler check")),
        Probe("batch:CancelJob", partial(client.cancel_job, jobId=_MISSING_JOB, reason="aws-reconciler check")),
    ]
    deployment = settings.core.deployment
    for queue in settings.batch.targets:
        found.append(Probe(f"batch:ListJobs {queue}", partial(client.list_jobs, jobQueue=queue, jobStatus="RUNNING")))
        # A job definition that cannot exist: Batch authorises SubmitJob, and TagResource for the
        # tags on submit, before it looks the definition up, so nothing is ever queued.
        found.append(
            Probe(
                f"batch:SubmitJob+TagResource {queue}",
                partial(
                    client.submit_job,
                    jobName="aws-reconciler-check",
                    jobQueue=queue,
                    jobDefinition=_MISSING_DEFINITION,
                    tags={"aws-reconciler:deployment": deployment},
                ),
            )
        )
    return found


BATCH = BackendDescriptor(
    kind=Backend.BATCH,
    service="batch",
    executor_name="BatchExecutor",
    target_key="jobQueue",
    event_source="aws.batch",
    event_detail_type="Batch Job State Change",
    section=lambda settings: settings.batch,
    build_request=lambda section, **request: build_submit_job_request(batch=section, **request),
    build=_build,
    probes=probes,
    locate_logs=locate_logs,
    check_settings=check_settings,
)
