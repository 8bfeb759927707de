#!/usr/bin/env bash
# Creates (or reuses) the project's own virtual environment with the pinned MLflow server:
# requirements/mlflow.lock.txt, every package at an exact version (regenerate it from
# requirements/mlflow.in with `pip install -r requirements/mlflow.in && pip freeze` in a scratch
# venv; the `auth` extra brings Flask-WTF for `mlflow server --app-name basic-auth`). Idempotent:
# a stamp named after the lock file's hash skips the install when nothing changed, and a changed
# lock (a new pin, an added extra) rebuilds the venv from scratch, so nothing unpinned lingers.
# Prints the path of the mlflow executable.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${MLFLOW_VENV:-$root/.venv/mlflow}"
lock="$root/requirements/mlflow.lock.txt"
stamp="$venv/.installed-$(sha256sum "$lock" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # Several test runs or make targets may start at once after the lock changed: one rebuilds, the
  # others wait for it instead of deleting the venv under its feet (the lock file sits beside the
  # venv, since the venv itself is removed).
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.install-lock"
  flock 9
fi
if [ ! -f "$stamp" ]; then
  python="${PYTHON:-python3}"
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
    echo "MLflow needs Python >= 3.10 (found $("$python" --version 2>&1))" >&2
    exit 1
  }
  echo "installing MLflow into $venv (once per change of requirements/mlflow.lock.txt; about a minute)…" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check --quiet --requirement "$lock" >&2
  touch "$stamp"
fi
echo "$venv/bin/mlflow"
