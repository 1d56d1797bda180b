"""The process environment both executors need, set before anything imports Airflow.

Airflow reads ``AIRFLOW_HOME`` and its configuration when first imported, and every executor's
``__init__`` needs a JWT signing secret, so :func:`prepare` must run first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

#: Fake credentials the sandbox accepts; botocore also sends every client to ``AWS_ENDPOINT_URL``.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def prepare() -> Path:
    """An isolated, throw-away Airflow home and quiet logging. Returns the home."""
    home = Path(tempfile.mkdtemp(prefix="aws-reconciler-bench-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = "bench-" + "0123456789abcdef" * 4
    # Per-task INFO lines would be part of what is timed, for both executors alike; keep them out.
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    # The peer's EcsHook looks up connection "aws_default": an environment connection keeps that
    # lookup away from Airflow's metadata database, which a scheduler would have but we do not.
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = "aws://"
    os.environ.update(FAKE_AWS)
    return home
