"""``aws_reconciler.executor.BatchExecutor``: every task instance becomes one AWS Batch job."""

from __future__ import annotations

from typing import Any, ClassVar

from ..backends.batch.spec import build_submit_job_request, check_settings
from ..config import ConfigError, Settings
from ..model import Backend
from ..store.records import TaskRecord
from .base import ReconcilerExecutor
from .logs import BATCH_DEFAULT_LOG_GROUP, LogLocation, LogsUnavailable, task_logs_of


class _NoStreamYet(Exception):
    """The job has not started: not cached, so the next refresh asks again."""


class BatchExecutor(ReconcilerExecutor):
    """Records desired Batch jobs; the ``aws-reconciler run`` process submits them.

    ``executor_config`` is merged over the configured SubmitJob request (see the README).
    """

    backend: ClassVar[Backend] = Backend.BATCH
    target_key: ClassVar[str] = "jobQueue"

    def check_settings(self, settings: Settings) -> None:
        """The Batch section must name a job queue and a job definition."""
        if not settings.batch.enabled:
            raise ConfigError(
                "BatchExecutor needs [aws_reconciler_batch] job_queue (AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE)"
            )
        check_settings(settings.batch)

    def build_request(self, **request: Any) -> dict[str, Any]:
        """Resolve the SubmitJob request; an invalid ``executor_config`` fails that task (see ``build_spec``)."""
        return build_submit_job_request(batch=self.settings.batch, **request)

    def _log_location(self, record: TaskRecord) -> LogLocation | None:
        """The job's CloudWatch stream: ``container.logStreamName`` of DescribeJobs, in the job
        definition's ``awslogs-group`` or Batch's default ``/aws/batch/job``. ``None`` until the
        job has started (Batch names the stream then); once known, cached (it never changes)."""
        job_id = record.external_id
        if not job_id:
            raise LogsUnavailable("the Batch job has not been submitted yet")
        logs = task_logs_of(self)
        region = self.settings.batch.region_name

        def locate() -> LogLocation:
            answer = logs.client("batch", region).describe_jobs(jobs=[job_id])
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
            return logs.memo("batch:log-location", job_id, locate)
        except _NoStreamYet:
            return None
