"""``aws_reconciler.executor.EcsExecutor``: every task instance becomes one ECS task."""

from __future__ import annotations

from typing import Any, ClassVar

from ..backends.ecs.spec import InvalidExecutorConfig, build_run_task_request
from ..config import ConfigError, Settings
from ..store.records import Backend, TaskRecord
from .base import ReconcilerExecutor, SpecError
from .logs import LogLocation, ecs_executor_log_location
from .workload import ti_key, workload_command


class EcsExecutor(ReconcilerExecutor):
    """Records desired ECS tasks; the ``aws-reconciler run`` process launches them.

    ``executor_config`` is merged over the configured RunTask request (see the README).
    """

    backend: ClassVar[Backend] = Backend.ECS

    def check_settings(self, settings: Settings) -> None:
        """The ECS section must name a cluster, task definition and container."""
        if not settings.ecs.enabled:
            raise ConfigError("EcsExecutor needs [aws_reconciler_ecs] cluster (AIRFLOW__AWS_RECONCILER_ECS__CLUSTER)")

    def build_spec(self, *, record_id: str, workload: Any) -> tuple[dict[str, Any], str | None]:
        """Resolve the RunTask request; an invalid ``executor_config`` raises :class:`SpecError`."""
        try:
            spec = build_run_task_request(
                ecs=self.settings.ecs,
                deployment=self.settings.core.deployment,
                record_id=record_id,
                key=ti_key(workload),
                command=workload_command(workload),
                executor_config=workload.ti.executor_config,
            )
        except InvalidExecutorConfig as exc:
            raise SpecError(str(exc)) from None
        return spec, spec["cluster"]

    def _log_location(self, record: TaskRecord) -> LogLocation:
        """The awslogs stream of the task's Airflow container (see :mod:`.logs`)."""
        return ecs_executor_log_location(self, record)
