#!/usr/bin/env bash
# The venv of the API's outside tests (.venv/api-tests: Schemathesis, pytest, httpx for the Python
# client) from requirements/api-tests.lock.txt (`--relock` re-resolves requirements/api-tests.in).
# Prints the venv's directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${API_TESTS_VENV:-$root/.venv/api-tests}"
bash "$root/harness/ensure-venv.sh" --python 3.11 --what "Schemathesis and the Python client's test tools" --in "$root/requirements/api-tests.in" "$@" \
  "$venv" "$root/requirements/api-tests.lock.txt"
echo "$venv"
