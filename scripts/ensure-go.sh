#!/usr/bin/env bash
# Prints the path of a Go toolchain (>= 1.22) for building the project's pinned Go tools
# (actionlint, promtool, vegeta) into .tools/bin. Uses `go` on PATH or /usr/local/go when new
# enough; otherwise unpacks a pinned Go release into .tools/go, fetched from the Go module proxy as
# the module golang.org/toolchain (the same archive `GOTOOLCHAIN=auto` downloads), checked against
# the sha256 recorded here. So a bare machine needs no Go installed and no host but the proxy.
# (Debian 12's golang-go is Go 1.19, too old for these tools.)
set -euo pipefail
cd "$(dirname "$0")/.."

version=go1.26.8
declare -A sha256=(
  [amd64]=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
  [arm64]=02b36b6787b3ac767668f630e2998df45a3b1f9ffee08d1bf3ef6487cd658d99
)

new_enough() { # a `go` binary whose version is >= 1.22
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  minor=${minor%%[!0-9]*}
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "${minor:-0}" -ge 22 ]; }
}

for candidate in "$(command -v go || true)" /usr/local/go/bin/go "$PWD/.tools/go/bin/go"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && new_enough "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *)
    echo "ensure-go: no Go >= 1.22 installed and no pinned toolchain for $(uname -m); install Go (https://go.dev/dl)" >&2
    exit 1
    ;;
esac
proxy=${GOPROXY:-https://proxy.golang.org}
proxy=${proxy%%,*}
[ "$proxy" != direct ] && [ "$proxy" != off ] || proxy=https://proxy.golang.org
module="golang.org/toolchain@v0.0.1-$version.linux-$arch"
url="$proxy/golang.org/toolchain/@v/v0.0.1-$version.linux-$arch.zip"

echo "ensure-go: fetching Go $version ($arch) from the module proxy into .tools/go" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 3 -o "$tmp/go.zip" "$url"
echo "${sha256[$arch]}  $tmp/go.zip" | sha256sum -c --quiet - >&2
# Python's zipfile, not unzip: python3 is on every machine this project runs on, unzip is not.
python3 - "$tmp/go.zip" "$tmp/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
# Module zips carry no file modes: the binaries have to be made executable again.
chmod +x "$tmp/x/$module/bin/"* "$tmp/x/$module/pkg/tool/"*/*
rm -rf .tools/go
mkdir -p .tools
mv "$tmp/x/$module" .tools/go
new_enough .tools/go/bin/go || { echo "ensure-go: the unpacked toolchain does not run" >&2; exit 1; }
echo "$PWD/.tools/go/bin/go"
