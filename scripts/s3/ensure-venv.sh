#!/usr/bin/env bash
# The S3-compatible test server's venv (.venv/s3: moto's S3) from requirements/s3.lock.txt
# (`--relock` re-resolves requirements/s3.in). Prints the venv's python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${S3_VENV:-$root/.venv/s3}"
bash "$root/harness/ensure-venv.sh" --what "the S3 test server (moto)" --in "$root/requirements/s3.in" "$@" \
  "$venv" "$root/requirements/s3.lock.txt"
echo "$venv/bin/python"
