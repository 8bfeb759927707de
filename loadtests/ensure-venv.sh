#!/usr/bin/env bash
# The load tests' venv (.venv/loadtests: Locust, PyYAML, matplotlib) from
# loadtests/requirements.lock.txt (`--relock` re-resolves requirements.in). Prints the venv's directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOADTEST_VENV:-$root/.venv/loadtests}"
bash "$root/harness/ensure-venv.sh" --what "Locust and matplotlib" --in "$root/loadtests/requirements.in" "$@" \
  "$venv" "$root/loadtests/requirements.lock.txt"
echo "$venv"
