#!/usr/bin/env bash
# Creates (or reuses) the project's own virtual environment with the pinned Prefect 3 (server,
# client, process worker): orchestration/requirements.lock.txt, every package at an exact version
# (regenerate it from orchestration/requirements.in with `pip install -r requirements.in && pip
# freeze` in a scratch venv). Idempotent: a stamp named after the lock file's hash skips the install
# when nothing changed, and a changed lock rebuilds the venv from scratch, so nothing unpinned
# lingers. Prints the path of the prefect executable.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${PREFECT_VENV:-$root/.venv/prefect}"
lock="$root/orchestration/requirements.lock.txt"
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
    echo "Prefect needs Python >= 3.10 (found $("$python" --version 2>&1))" >&2
    exit 1
  }
  echo "installing Prefect into $venv (once per change of orchestration/requirements.lock.txt; about a minute)…" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check --quiet --requirement "$lock" >&2
  touch "$stamp"
fi
echo "$venv/bin/prefect"
