"""The chaos suite's tests: the suite lives in the top-level ``chaos`` package, and its scheduler
side runs the real executors, so Airflow's home and JWT secret are set before Airflow is imported
(``setdefault``: when another directory's conftest ran first, its values stand)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if "AIRFLOW_HOME" not in os.environ or "AIRFLOW__API_AUTH__JWT_SECRET" not in os.environ:
    _home = tempfile.mkdtemp(prefix="aws-reconciler-chaos-tests-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ.setdefault("AIRFLOW_HOME", _home)
    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "chaos-tests-" + "0123456789abcdef" * 4)
