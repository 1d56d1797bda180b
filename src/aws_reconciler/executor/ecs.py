"""``aws_reconciler.executor.EcsExecutor``: every task instance becomes one ECS task."""

from __future__ import annotations

from ..backends.ecs.descriptor import ECS
from .base import ReconcilerExecutor


class EcsExecutor(ReconcilerExecutor):
    """Records desired ECS tasks; the ``aws-reconciler run`` process launches them.

    ``executor_config`` is merged over the configured RunTask request (see the README).
    """

    descriptor = ECS
