"""``aws_reconciler.executor.EcsExecutor``: every task instance becomes one ECS task."""

from __future__ import annotations

from typing import Any, ClassVar

from ..backends.ecs.spec import build_run_task_request
from ..config import ConfigError, Settings
from ..model import Backend
from ..store.records import TaskRecord
from .base import ReconcilerExecutor
from .logs import LogLocation, ecs_executor_log_location


class EcsExecutor(ReconcilerExecutor):
    """Records desired ECS tasks; the ``aws-reconciler run`` process launches them.

    ``executor_config`` is merged over the configured RunTask request (see the README).
    """

    backend: ClassVar[Backend] = Backend.ECS
    target_key: ClassVar[str] = "cluster"

    def check_settings(self, settings: Settings) -> None:
        """The ECS section must name a cluster, task definition and container."""
        if not settings.ecs.enabled:
            raise ConfigError("EcsExecutor needs [aws_reconciler_ecs] cluster (AIRFLOW__AWS_RECONCILER_ECS__CLUSTER)")

    def build_request(self, **request: Any) -> dict[str, Any]:
        """Resolve the RunTask request; an invalid ``executor_config`` fails that task (see ``build_spec``)."""
        return build_run_task_request(ecs=self.settings.ecs, **request)

    def _log_location(self, record: TaskRecord) -> LogLocation:
        """The awslogs stream of the task's Airflow container (see :mod:`.logs`)."""
        return ecs_executor_log_location(self, record)
