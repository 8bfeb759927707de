#!/usr/bin/env bash
# The venv of one Python peer of bench/compare.bench.ts: .venv/bench-<peer> from
# bench/peers/<peer>/requirements.lock.txt. Prints the venv's directory.
#
#   bash bench/peers/ensure-venv.sh fastapi|bentoml
#   bash bench/peers/ensure-venv.sh --relock fastapi    # re-resolve requirements.in into the lock file
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
opts=()
if [ "${1:-}" = "--relock" ]; then
  opts=(--relock)
  shift
fi
peer="${1:?usage: ensure-venv.sh [--relock] fastapi|bentoml}"
dir="$root/bench/peers/$peer"
[ -f "$dir/requirements.in" ] || {
  echo "no peer named $peer (expected $dir/requirements.in)" >&2
  exit 1
}
venv="$root/.venv/bench-$peer"
bash "$root/harness/ensure-venv.sh" --what "the $peer peer" --in "$dir/requirements.in" "${opts[@]}" \
  "$venv" "$dir/requirements.lock.txt"
echo "$venv"
