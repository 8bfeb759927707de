#!/usr/bin/env bash
# Prints the path of vegeta (pinned), the open-model load generator of the capacity curve and the
# scale-out run. Uses a vegeta already on PATH at the pinned version; otherwise builds it into
# .tools/bin from the Go module proxy on first use, with the Go that scripts/ensure-go.sh finds or
# fetches (as scripts/actionlint.sh does for actionlint). vegeta is MIT; k6 is ruled out here by its licence.
set -euo pipefail
cd "$(dirname "$0")/.."
version=12.13.0
bin=.tools/bin/vegeta
# `vegeta -version` prints "Version: 12.13.0" when built with the release's ldflags, and "Version: "
# plus the module version otherwise (go install stamps none), so a build of ours is recognised by the
# version recorded in its module information instead.
go=$(scripts/ensure-go.sh)
pinned() {
  [ -x "$1" ] && "$go" version -m "$1" 2>/dev/null | grep -q "github.com/tsenart/vegeta/v12[[:space:]]*v$version"
}
if command -v vegeta >/dev/null 2>&1 && pinned "$(command -v vegeta)"; then
  command -v vegeta
  exit 0
fi
if ! pinned "$bin"; then
  echo "building vegeta $version into .tools/bin (once)…" >&2
  GOBIN="$PWD/.tools/bin" GOFLAGS=-mod=mod "$go" install "github.com/tsenart/vegeta/v12@v$version" >&2
fi
echo "$PWD/$bin"
