#!/usr/bin/env bash
# `make api-fuzz`: installs the pinned Schemathesis (harness/venv.sh api-tests) while the network is
# there, then runs scripts/api/fuzz.ts in a network namespace with only a loopback interface (as
# root, or through a user namespace otherwise): the gateway fetches the image URLs the fuzzer
# invents, and none of them may leave this machine. Extra arguments go to `st run`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$(bash "$root/harness/venv.sh" api-tests)"
inner=(node --conditions=conveyor-source --import tsx "$root/scripts/api/fuzz.ts" --venv "$venv" -- "$@")
if [ "$(id -u)" -eq 0 ]; then ns=(unshare --net); else ns=(unshare --map-root-user --net); fi
if ! "${ns[@]}" true 2>/dev/null; then
  echo "api-fuzz needs a network namespace (unshare --net as root, or user namespaces): it will not let the gateway fetch invented URLs from the real network" >&2
  exit 1
fi
cd "$root"
# Without its loopback interface up, the namespace cannot even reach its own Redis: fail loudly.
exec "${ns[@]}" bash -c 'ip link set lo up || { echo "api-fuzz: cannot bring up lo in the namespace (iproute2 missing?)" >&2; exit 1; }; exec "$@"' fuzz "${inner[@]}"
