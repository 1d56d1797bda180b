"""Batch jobs on the task runner: SUBMITTED -> PENDING -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED | FAILED.

At RUNNING the job's container command (the override's, else the job definition's) runs as a
local process; the job ends SUCCEEDED on exit code 0, else FAILED, with the code in
``container.exitCode`` and the attempt. TerminateJob sends SIGTERM to the group and SIGKILL
after ``RunnerOptions.default_stop_timeout``; the job ends FAILED with the terminate reason. A
job that fails to start ends FAILED, "Task failed to start", the cause in ``container.reason``.
``hold_runnable`` (or the realism policy) keeps a job in RUNNABLE, as a queue without capacity
does. Output goes to the job's stream (``/aws/batch/job``, ``<job definition>/default/<job id>``
unless the job definition configures ``awslogs``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .batch import FINISHED, BatchJob
from .runner import Ending, ShimDriver, Workload
from .taskspec import ContainerPlan, LogTarget

__all__ = ["BatchJobs"]

_STOPPED_BY_SANDBOX = "The sandbox's task runner was stopped"


@dataclass(eq=False)
class _Job(Workload):
    job: Any = None
    held: bool = False  # stays RUNNABLE (no capacity) until a test moves it


class BatchJobs(ShimDriver):
    """The Batch driver of the task runner, and the ``BatchShim``'s ``JobListener``."""

    command_home = "the job definition or in containerOverrides"

    # ------------------------------------------------------------------ JobListener (under MOTO_LOCK)

    def job_created(self, job: BatchJob) -> None:
        """Track a job SubmitJob just accepted; decide now whether it will fail to start or wait."""
        failure = self.start_failure(str(job.definition.get("image", "")), "batch")
        held = self._faults.take_runnable_hold() is not None or self._realism.hold_runnable()
        self.runner.track(_Job(job.job_id, self, failure, time.monotonic(), job=job, held=held))

    def stop_requested(self, job: BatchJob) -> bool:
        """TerminateJob on a STARTING or RUNNING job: its process is signalled on the next tick."""
        if self._runner is None or self._runner.get(job.job_id) is None:
            return False  # not ours (submitted before the runner started): the shim fails it
        self._runner.wake()
        return True

    # ------------------------------------------------------------------ Driver (under MOTO_LOCK)

    def finished(self, work: _Job) -> bool:
        """Cancelled, or finished by ``set_job_state``."""
        return work.job.status in FINISHED

    def stop_wanted(self, work: _Job) -> bool:
        """TerminateJob was called."""
        return work.job.terminate_reason is not None

    def advance(self, work: _Job, now: float) -> bool:
        """One status on; True at the end of STARTING."""
        job, options = work.job, self.runner.options
        if job.status == "SUBMITTED":
            self._shim.apply_job_state(job, status="PENDING")
        elif job.status == "PENDING":
            self._shim.apply_job_state(job, status="RUNNABLE")
            work.due = now + options.provisioning_delay
        elif job.status == "RUNNABLE" and not work.held:
            self._shim.apply_job_state(job, status="STARTING")
            work.due = now + options.pending_delay
        return bool(job.status == "STARTING" and now >= work.due)

    def plan(self, work: _Job) -> ContainerPlan:
        """The job's one container, as pinned at submission."""
        job = work.job
        region, group, stream, create_group = job.log_target()
        return ContainerPlan(
            name="default",
            image=str(job.definition.get("image", "")),
            argv=tuple(job.command()),
            environment=job.environment(),
            log=LogTarget(job.account_id, region, group, stream, create_group),
        )

    def agent_env(self, work: _Job) -> dict[str, str]:
        """What Batch and the ECS agent put into every job's container."""
        job = work.job
        return {
            "AWS_BATCH_JOB_ID": job.job_id,
            "AWS_BATCH_JQ_NAME": job.queue_name,
            "AWS_BATCH_JOB_ATTEMPT": "1",
            "AWS_REGION": job.region,
            "AWS_DEFAULT_REGION": job.region,
            "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
        }

    def started(self, work: _Job) -> None:
        """RUNNING."""
        self._shim.apply_job_state(work.job, status="RUNNING")

    def stopping(self, work: _Job) -> None:
        """Batch shows no status of its own while the container has its grace."""

    def end(self, work: _Job, ending: Ending) -> None:
        """SUCCEEDED on exit code 0 without a terminate, FAILED otherwise."""
        job = work.job
        succeeded = ending.exit_code == 0 and job.terminate_reason is None
        self._shim.apply_job_state(
            job,
            status="SUCCEEDED" if succeeded else "FAILED",
            status_reason=_STOPPED_BY_SANDBOX if ending.shutdown else job.terminate_reason,
            exit_code=ending.exit_code,
            container_reason=ending.failure,
        )
