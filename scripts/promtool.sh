#!/usr/bin/env bash
# Checks the Prometheus configuration under ops/prometheus with promtool (pinned): the rules parse
# and their PromQL is valid (check rules), the alerts fire and stay quiet where rules.test.yml says
# (test rules), and the example scrape configuration loads with its rule files (check config).
# Uses a promtool already on PATH at the pinned version; otherwise builds it into .tools/bin on first
# use, from the Go module proxy, with the Go that scripts/ensure-go.sh finds or fetches. (Release
# binaries come from github.com, which this project's machines cannot reach; no registry ships one.)
# Prometheus' Go module is versioned v0.<major><minor>.<patch>: v0.316.0 is Prometheus 3.16.0.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.16.0
module_version=v0.316.0
bin=.tools/bin/promtool
has_version() { "$1" --version 2>&1 | head -n 1 | grep -q "version $version "; }
if command -v promtool >/dev/null 2>&1 && has_version "$(command -v promtool)"; then
  bin=$(command -v promtool)
elif [ ! -x "$bin" ] || ! has_version "$bin"; then
  go=$(scripts/ensure-go.sh)
  echo "promtool: building $version into .tools/bin (once; a few minutes)" >&2
  # go install leaves the version empty (release builds set it with -X); set it the same way, so
  # `promtool --version` names what was built and the check above recognises it next time.
  GOBIN="$PWD/.tools/bin" "$go" install \
    -ldflags "-X github.com/prometheus/common/version.Version=$version" \
    "github.com/prometheus/prometheus/cmd/promtool@$module_version"
fi
"$bin" check rules ops/prometheus/rules.yml
"$bin" test rules ops/prometheus/rules.test.yml
"$bin" check config ops/prometheus/prometheus.yml
"$bin" check config ops/prometheus/compose.yml
echo "promtool $version: rules, rule tests and config OK"
