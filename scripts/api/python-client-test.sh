#!/usr/bin/env bash
# The Python client's own tests (clients/python/tests, pytest) against the gateway at CONVEYOR_URL,
# in the pinned venv of harness/venv.sh api-tests; the client is imported from its sources.
# test/e2e/python-client.e2e.test.ts starts a system and runs this. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$(bash "$root/harness/venv.sh" api-tests)"
cd "$root/clients/python"
PYTHONPATH="$root/clients/python/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
