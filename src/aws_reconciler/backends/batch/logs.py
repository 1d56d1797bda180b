"""Where a Batch job logs: the API server's log view asks this (DescribeJobs only,
deploy/iam/scheduler-policy.json)."""

from __future__ import annotations

from ...config.models import BatchSettings
from ..descriptor import LogLocation, LogLookup, LogSubject, LogsUnavailable

#: Where AWS Batch jobs log unless their job definition names another ``awslogs-group``.
BATCH_DEFAULT_LOG_GROUP = "/aws/batch/job"


class _NoStreamYet(Exception):
    """The job has not started: not cached, so the next refresh asks again."""


def locate_logs(lookup: LogLookup, batch: BatchSettings, subject: LogSubject) -> LogLocation | None:
    """The job's CloudWatch stream: ``container.logStreamName`` of DescribeJobs, in the job
    definition's ``awslogs-group`` or Batch's default ``/aws/batch/job``. ``None`` until the job
    has started (Batch names the stream then); once known, cached (it never changes)."""
    job_id = subject.external_id
    region = batch.region_name

    def locate() -> LogLocation:
        answer = lookup.client("batch", region).describe_jobs(jobs=[job_id])
        jobs = answer.get("jobs") or []
        if not jobs:
            raise LogsUnavailable(f"AWS Batch no longer describes job {job_id}, so its log stream is unknown")
        container = jobs[0].get("container") or {}
        stream = container.get("logStreamName")
        if not stream:
            raise _NoStreamYet
        config = container.get("logConfiguration") or {}
        driver = config.get("logDriver") or "awslogs"  # Batch's default driver
        if driver != "awslogs":
            raise LogsUnavailable(
                f"job {job_id} does not log to CloudWatch Logs (log driver: {driver}); use the awslogs driver "
                "in the job definition to see its output here"
            )
        options = config.get("options") or {}
        return LogLocation(
            group=str(options.get("awslogs-group") or BATCH_DEFAULT_LOG_GROUP),
            stream=str(stream),
            region=str(options.get("awslogs-region") or region or "") or None,
        )

    try:
        return lookup.memo("batch:log-location", job_id, locate)
    except _NoStreamYet:
        return None
