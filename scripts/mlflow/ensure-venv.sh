#!/usr/bin/env bash
# The pinned MLflow server's venv (.venv/mlflow) from requirements/mlflow.lock.txt (regenerate it
# from requirements/mlflow.in with `--relock`; the `auth` extra brings Flask-WTF for `mlflow server
# --app-name basic-auth`). Prints the path of the mlflow executable.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${MLFLOW_VENV:-$root/.venv/mlflow}"
bash "$root/harness/ensure-venv.sh" --what MLflow --in "$root/requirements/mlflow.in" "$@" \
  "$venv" "$root/requirements/mlflow.lock.txt"
echo "$venv/bin/mlflow"
