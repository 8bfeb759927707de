#!/usr/bin/env bash
# The manifest checks' venv (.venv/k8s: kubernetes-validate, which bundles the Kubernetes schemas,
# and jsonschema) from requirements/k8s.lock.txt (`--relock` re-resolves requirements/k8s.in).
# Prints the venv's python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${K8S_VENV:-$root/.venv/k8s}"
bash "$root/harness/ensure-venv.sh" --what "kubernetes-validate and jsonschema" --in "$root/requirements/k8s.in" "$@" \
  "$venv" "$root/requirements/k8s.lock.txt"
echo "$venv/bin/python"
