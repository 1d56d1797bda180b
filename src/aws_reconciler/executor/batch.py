"""``aws_reconciler.executor.BatchExecutor``: every task instance becomes one AWS Batch job."""

from __future__ import annotations

from ..backends.batch.descriptor import BATCH
from .base import ReconcilerExecutor


class BatchExecutor(ReconcilerExecutor):
    """Records desired Batch jobs; the ``aws-reconciler run`` process submits them.

    ``executor_config`` is merged over the configured SubmitJob request (see the README).
    """

    descriptor = BATCH
