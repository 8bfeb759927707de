#!/usr/bin/env bash
# Prints the path of a Jaeger v2 binary (the pinned module in harness/jaeger), building it into
# .tools/bin once (about 4 min on 2 cores, ~0.5 GB of modules from the Go module proxy) with the Go
# that scripts/ensure-go.sh finds or fetches. Jaeger is the tests' real OTLP receiver: it takes
# OTLP/HTTP (JSON and protobuf), keeps traces in memory and answers them on its query API.
# (Its release binaries and images are on hosts this project's machines cannot reach; a binary
# built this way has no UI assets, only the API: docs/tracing.md renders traces itself.)
set -euo pipefail
cd "$(dirname "$0")/.."
version=v1.75.0
bin=.tools/bin/jaeger
stamp=.tools/bin/jaeger.version
want="$version $(sha256sum harness/jaeger/go.sum | cut -c1-16)"
if [ ! -x "$bin" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  go=$(scripts/ensure-go.sh)
  echo "jaeger: building $version into .tools/bin (once; a few minutes)" >&2
  mkdir -p .tools/bin
  (cd harness/jaeger && "$go" build -trimpath -o "../../$bin" github.com/jaegertracing/jaeger/cmd/jaeger)
  echo "$want" >"$stamp"
fi
echo "$PWD/$bin"
