#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint (pinned), installing it into .tools/bin with
# the Go toolchain on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
version=v1.7.12
bin=.tools/bin/actionlint
if [ ! -x "$bin" ] || ! "$bin" -version | grep -q "${version#v}"; then
  command -v go >/dev/null || { echo "actionlint needs Go to install (https://go.dev/dl) — or put actionlint on PATH" >&2; exit 1; }
  GOBIN="$PWD/.tools/bin" go install "github.com/rhysd/actionlint/cmd/actionlint@$version"
fi
"$bin" -color .github/workflows/*.yml
echo "actionlint: workflows OK"
