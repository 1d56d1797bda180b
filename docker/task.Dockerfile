# syntax=docker/dockerfile:1
#
# Example Airflow image for the tasks the executors launch: ECS tasks and Batch jobs run
#   python -m airflow.sdk.execution_time.execute_workload --json-string '<workload>'
# in it. The same image can serve the scheduler, dag-processor, triggerer and API server of the
# official Airflow chart (it has airflow-aws-reconciler installed for the executors).
#
# Build from the repository root (BuildKit reads docker/task.Dockerfile.dockerignore):
#   docker build -f docker/task.Dockerfile \
#     --build-arg DAGS_DIR=path/to/your/dags \
#     --build-arg EXECUTION_API_SERVER_URL=https://airflow-api.internal.example.com/execution/ \
#     --build-arg REMOTE_BASE_LOG_FOLDER=s3://my-airflow-logs/tasks \
#     -t my-airflow:3.3.2-1 .
#
# Deployment-specific values (API server URL, log bucket) can also be set, or overridden, in the
# ECS task definition's / Batch job definition's `environment`, which wins over the image.

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.12

# ---- build: the airflow-aws-reconciler wheel from this repository ----------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime: the official Airflow image + providers + the executors + your DAGs -------------
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
ARG PYTHON_VERSION
# Your DAG folder, relative to the build context (default: this project's example DAGs).
ARG DAGS_DIR=sandbox/src/aws_reconciler_sandbox/demo/dags
# Where tasks reach the API server's Execution API. ECS tasks and Batch jobs run OUTSIDE the
# Kubernetes cluster: use an address routable from their subnets (an internal load balancer),
# never a *.svc.cluster.local name. The placeholder fails loudly until it is set.
ARG EXECUTION_API_SERVER_URL=https://airflow-api.internal.example.com/execution/
# Remote task logs (the container's local files vanish with it): s3://bucket/prefix or
# cloudwatch://arn:aws:logs:<region>:<account>:log-group:<group>. The API server reads them back.
ARG REMOTE_BASE_LOG_FOLDER=s3://my-airflow-logs/tasks

# Providers your DAGs need, installed within Airflow's constraints for this exact version so
# pip can neither upgrade nor downgrade Airflow itself.
COPY --chown=airflow:0 docker/task-requirements.txt /tmp/task-requirements.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir \
      --constraint "https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" \
      "apache-airflow==${AIRFLOW_VERSION}" \
      --requirement /tmp/task-requirements.txt \
      /tmp/wheels/*.whl \
    && pip check

# DAG files; the DAG bundle below names this folder.
COPY --chown=airflow:0 ${DAGS_DIR} /opt/airflow/dags

# What every task container needs. The workload names its DAG bundle ("dags-folder"): the
# bundle configuration must match the dag-processor's, so keep these identical there.
ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST='[{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}}]' \
    AIRFLOW__CORE__EXECUTION_API_SERVER_URL=${EXECUTION_API_SERVER_URL} \
    AIRFLOW__LOGGING__REMOTE_LOGGING=True \
    AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER=${REMOTE_BASE_LOG_FOLDER} \
    AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID=aws_default \
    AIRFLOW__LOGGING__DELETE_LOCAL_LOGS=True \
    AIRFLOW_CONN_AWS_DEFAULT=aws:// \
    CONNECTION_CHECK_MAX_COUNT=0

# The image's own unprivileged user (uid 50000), never root.
USER 50000

# A task container is one-shot: ECS/Batch track its exit, and the reconciler observes that.
HEALTHCHECK NONE

# apache/airflow's ENTRYPOINT (dumb-init + /entrypoint) stays: it execs `python -m ...` as is.
CMD ["airflow", "version"]
