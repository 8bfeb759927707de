#!/bin/sh
# The MLflow container's start: Conveyor's accounts go into the auth database first
# (scripts/mlflow/provision-auth.py: the admin from MLFLOW_AUTH_ADMIN_PASSWORD[_FILE], the READ-only
# reader from MLFLOW_AUTH_READER_PASSWORD[_FILE]), then the server runs MLflow's basic-auth app
# with the arguments of the image's CMD. Without an admin password it stops here, with the reason.
set -eu
/opt/mlflow/bin/python /opt/conveyor/provision-auth.py
# The passwords were needed for that only; the server never reads them once the admin exists.
unset MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_AUTH_READER_PASSWORD
# Signs the UI's sign-up form (CSRF). One per container start is enough: the workers of this one
# server share it, and REST clients (Basic auth on every request) never see it.
if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(/opt/mlflow/bin/python -c 'import secrets; print(secrets.token_hex(32))')
  export MLFLOW_FLASK_SERVER_SECRET_KEY
fi
# Compose passes an empty MLFLOW_S3_ENDPOINT_URL to mean AWS's own endpoint; MLflow would hand the
# empty string to boto3 as the endpoint ("Invalid endpoint"), so empty is made unset.
if [ -z "${MLFLOW_S3_ENDPOINT_URL:-}" ]; then unset MLFLOW_S3_ENDPOINT_URL; fi
# Artifacts where MLFLOW_ARTIFACTS_DESTINATION says (compose: the `s3` service's versioned bucket; on
# AWS a real one, with MLFLOW_S3_ENDPOINT_URL empty and the task's role or AWS_* keys), else on the
# volume. Clients always go through the server (--serve-artifacts): only this container talks to S3.
exec /opt/mlflow/bin/mlflow server --app-name basic-auth --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlflow/artifacts}" "$@"
