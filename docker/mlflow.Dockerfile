# The MLflow tracking server and model registry: the pinned Python package (every dependency at
# the version in requirements/mlflow.lock.txt, with the `auth` extra and boto3 for S3), SQLite
# backend store on the /mlflow volume, served artifacts in MLFLOW_ARTIFACTS_DESTINATION (an
# s3://<bucket>/<prefix>; unset: /mlflow/artifacts on the volume), running as an unprivileged user
# behind MLflow's basic-auth app: every request but /health needs an account (docker/mlflow-entrypoint.sh).
FROM python:3.11-slim-bookworm
RUN useradd --system --create-home --home-dir /home/mlflow mlflow \
 && mkdir -p /mlflow && chown mlflow:mlflow /mlflow
COPY requirements/mlflow.lock.txt /tmp/mlflow.lock.txt
RUN python3 -m venv /opt/mlflow \
 && /opt/mlflow/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/mlflow.lock.txt \
 && rm /tmp/mlflow.lock.txt
COPY scripts/mlflow/basic-auth.ini scripts/mlflow/provision-auth.py scripts/mlflow/conveyor_auth.py docker/mlflow-entrypoint.sh /opt/conveyor/
USER mlflow
# The auth INI's database path is relative: the accounts live on the volume, beside mlflow.db.
WORKDIR /mlflow
ENV MLFLOW_AUTH_CONFIG_PATH=/opt/conveyor/basic-auth.ini
# The INI's authorization_function (conveyor_auth.py: only the admin changes accounts) is imported from here.
ENV PYTHONPATH=/opt/conveyor
VOLUME ["/mlflow"]
EXPOSE 5000
# A long start period: MLflow's first start (database migrations) took 2.5 min on a busy 2-core
# machine, and an "unhealthy" verdict there kept the trainer (which waits for it) from starting.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=10 \
  CMD ["/opt/mlflow/bin/python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/bin/sh", "/opt/conveyor/mlflow-entrypoint.sh"]
# The Host check (MLflow >= 3.5) must let the other services in by their compose name.
CMD ["--host", "0.0.0.0", "--port", "5000", "--workers", "2", \
     "--backend-store-uri", "sqlite:////mlflow/mlflow.db", "--serve-artifacts", \
     "--allowed-hosts", "mlflow,mlflow:5000,localhost,localhost:*,127.0.0.1,127.0.0.1:*"]
