"""Airflow executors for AWS ECS and Batch, driven by a separate reconciler."""

__version__ = "0.1.0"
