"""ECS tasks on the task runner: PROVISIONING -> PENDING -> RUNNING -> (STOPPING) -> STOPPED.

At RUNNING the command of the task's essential container runs as a local process. When it ends
the task is STOPPED with ``stopCode`` EssentialContainerExited and the container's exit code.
StopTask sends SIGTERM to the group and SIGKILL after the container's ``stopTimeout``; a task
stopped before it started stops at once. A task that fails to start ends ``TaskFailedToStart``
after PROVISIONING, with no containers when none was ever created. Output goes to the stream
the ``awslogs`` driver would write (``<awslogs-stream-prefix>/<container>/<task id>``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .runner import Ending, ShimDriver, TaskRunner, Workload
from .taskspec import ContainerPlan, plan_container

__all__ = ["EcsTasks"]


@dataclass(eq=False)
class _Task(Workload):
    task: Any = None
    backend: Any = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EcsTasks(ShimDriver):
    """The ECS driver of the task runner, and the ``EcsShim``'s ``TaskListener``."""

    command_home = "the task definition or in overrides.containerOverrides"

    def attach(self, runner: TaskRunner) -> None:
        """StopTask now only records the request; the runner drives STOPPING..STOPPED."""
        super().attach(runner)
        self._shim.immediate_stop = False

    def detach(self, runner: TaskRunner) -> None:
        """Hand StopTask back to the shim."""
        if self._shim.listener is self:
            self._shim.immediate_stop = True
        super().detach(runner)

    # ------------------------------------------------------------------ TaskListener (under MOTO_LOCK)

    def task_created(self, backend: Any, task: Any) -> None:
        """Track a task RunTask just launched; decide now whether it will fail to start."""
        plan: ContainerPlan | None = None
        failure: str | None = None
        try:
            plan = plan_container(backend, task)
        except Exception as exc:  # e.g. a definition moto cannot find any more
            failure = f"ResourceInitializationError: the sandbox cannot read the task definition: {exc}"
        if plan is not None:
            failure = self.start_failure(plan.image, "ecs")
        due = time.monotonic() + self.runner.options.provisioning_delay
        self.runner.track(_Task(task.task_arn, self, failure, due, plan=plan, task=task, backend=backend))

    def stop_requested(self, backend: Any, task: Any) -> bool:
        """StopTask: a task without a process stops now; a running one on the next tick."""
        work = self._runner.get(task.task_arn) if self._runner is not None else None
        if self._runner is None or work is None:
            return False  # not ours (launched before the runner started): the shim stops it
        if not (work.running or work.spawning):
            self._runner.end_unstarted(work)
        else:
            self._runner.wake()
        return True

    # ------------------------------------------------------------------ Driver (under MOTO_LOCK)

    def finished(self, work: _Task) -> bool:
        """Stopped from outside (``set_task_state``)."""
        return bool(work.task.last_status == "STOPPED")

    def stop_wanted(self, work: _Task) -> bool:
        """StopTask was called."""
        return bool(work.task.desired_status == "STOPPED")

    def advance(self, work: _Task, now: float) -> bool:
        """PROVISIONING -> PENDING (or the failure to start), PENDING -> the start."""
        task = work.task
        if task.last_status != "PROVISIONING" or work.failure is not None:
            return True
        utc = _utcnow()
        task.pull_started_at = getattr(task, "pull_started_at", None) or utc
        task.connectivity = "CONNECTED"  # the ENI is attached before the image is pulled
        task.connectivity_at = getattr(task, "connectivity_at", None) or utc
        self._shim.apply_task_state(task, last_status="PENDING")
        work.due = now + self.runner.options.pending_delay
        return False

    def plan(self, work: _Task) -> ContainerPlan:
        """Resolved at launch, as AWS fixes a task's definition then."""
        assert work.plan is not None  # a task without a plan has a failure and never gets here
        return work.plan

    def agent_env(self, work: _Task) -> dict[str, str]:
        """What the ECS agent puts into every container."""
        task = work.task
        return {
            "AWS_REGION": task.region_name,
            "AWS_DEFAULT_REGION": task.region_name,
            "AWS_EXECUTION_ENV": f"AWS_ECS_{task.launch_type or 'EC2'}",
        }

    def started(self, work: _Task) -> None:
        """RUNNING, the image pulled."""
        work.task.pull_stopped_at = getattr(work.task, "pull_stopped_at", None) or _utcnow()
        self._shim.apply_task_state(work.task, last_status="RUNNING")

    def stopping(self, work: _Task) -> None:
        """STOPPING while the container has its grace."""
        self._shim.apply_task_state(work.task, last_status="STOPPING")

    def end(self, work: _Task, ending: Ending) -> None:
        """STOPPED, giving back what the task held.

        The stop code stays UserInitiated after a StopTask; otherwise the shim fills in
        EssentialContainerExited and "Essential container in task exited".
        """
        task = work.task
        if getattr(task, "container_instance_arn", None):
            # An EC2 task holds CPU and memory of its container instance; moto's stop_task
            # returns them (it also overwrites the reason, which is put back).
            reason = task.stopped_reason
            with contextlib.suppress(Exception):
                work.backend.stop_task(task.cluster_name, task.task_arn, reason or "")
            task.stopped_reason = reason
        stop_code: str | None = None
        stopped_reason: str | None = None
        if ending.failure is not None:
            stop_code, stopped_reason = "TaskFailedToStart", ending.failure
        elif ending.shutdown:
            stop_code, stopped_reason = "TerminationNotice", "The sandbox's task runner was stopped"
        self._shim.apply_task_state(
            task,
            last_status="STOPPED",
            stop_code=stop_code,
            stopped_reason=stopped_reason,
            exit_code=ending.exit_code,
            empty_containers=ending.failure is not None and ending.placement,
            container_reason=None if ending.placement else ending.failure,
        )
