"""Scheduler-side executors (need ``airflow-aws-reconciler[airflow]``)."""

from .ecs import EcsExecutor

__all__ = ["EcsExecutor"]
