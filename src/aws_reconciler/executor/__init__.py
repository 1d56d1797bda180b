"""Scheduler-side executors (need ``airflow-aws-reconciler[airflow]``)."""

from .batch import BatchExecutor
from .ecs import EcsExecutor

__all__ = ["BatchExecutor", "EcsExecutor"]
