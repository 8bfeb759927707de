#!/usr/bin/env bash
# The pinned Prefect 3 venv (server, client, process worker: .venv/prefect) from
# orchestration/requirements.lock.txt (`--relock` re-resolves orchestration/requirements.in).
# Prints the path of the prefect executable.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${PREFECT_VENV:-$root/.venv/prefect}"
bash "$root/harness/ensure-venv.sh" --what Prefect --in "$root/orchestration/requirements.in" "$@" \
  "$venv" "$root/orchestration/requirements.lock.txt"
echo "$venv/bin/prefect"
