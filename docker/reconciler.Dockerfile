# syntax=docker/dockerfile:1
#
# The reconciler image: `aws-reconciler run` and `aws-reconciler db migrate`.
# boto3, SQLAlchemy + psycopg, Alembic, pydantic-settings, prometheus-client. No Airflow: the
# reconciler never imports it.
#
# Build from the repository root (BuildKit reads docker/reconciler.Dockerfile.dockerignore):
#   docker build -f docker/reconciler.Dockerfile -t airflow-aws-reconciler:0.1.0 .
#
# Dependencies are installed with docker/reconciler-constraints.txt, the versions the test suite
# runs with (tests/deploy/test_dockerfiles.py keeps them equal to pyproject's `test` extra).

ARG PYTHON_VERSION=3.12

# ---- build: a virtualenv with the package and its runtime dependencies ---------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY docker/reconciler-constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# Not editable: only the installed package is copied into the runtime stage, never the source.
RUN pip install --constraint /tmp/constraints.txt ".[postgres]" \
    && pip check \
    && aws-reconciler --version \
    && aws-reconciler --help >/dev/null \
    && aws-reconciler run --help >/dev/null \
    && aws-reconciler db migrate --help >/dev/null \
    && python -c "import aws_reconciler.reconciler.factory, aws_reconciler.store.migrate, psycopg" \
    && ! python -c "import airflow" 2>/dev/null \
    && ! python -c "import moto" 2>/dev/null

# ---- runtime -------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="airflow-aws-reconciler" \
      org.opencontainers.image.description="aws-reconciler: launches, observes and stops the ECS tasks and Batch jobs of Airflow's EcsExecutor/BatchExecutor" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid (the chart's runAsUser/runAsGroup) with no login shell.
RUN groupadd --system --gid 10001 reconciler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin reconciler

COPY --from=build /opt/venv /opt/venv

# The root filesystem can be read-only: no .pyc writes, logs to stderr unbuffered, and
# airflow.cfg (optional) is looked up under /opt/airflow (the chart mounts it via AIRFLOW_CONFIG).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow

USER 10001:10001
WORKDIR /tmp

# /metrics, /healthz, /readyz ([aws_reconciler] metrics_address, default 0.0.0.0:9109).
EXPOSE 9109

# For `docker run`; Kubernetes uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9109/healthz', timeout=4)"]

# Python is PID 1 and handles SIGTERM itself: in-flight AWS calls finish, the lease is released.
ENTRYPOINT ["aws-reconciler"]
CMD ["run"]
