#!/usr/bin/env bash
# Builds the v2 line of docker compose (the Go rewrite, released since 2025 as module
# github.com/docker/compose/v5) once into .tools/cli-plugins/docker-compose and prints its path.
# The binary works both ways: run directly it is a standalone `docker-compose` with the v2 command
# line; linked into a Docker CLI plugin folder it is `docker compose`. `scripts/compose-v2.sh
# --plugin` also links it into ${DOCKER_CONFIG:-~/.docker}/cli-plugins, so that `docker compose`
# works with the Docker CLI on PATH. Release binaries come from github.com, which this project's
# machines cannot reach; the Go module proxy serves the source. `go install module@version` refuses
# modules whose go.mod has replace directives (compose's has), so it is built inside a throwaway
# module that requires it as a tool (`go get -tool`), with the Go that scripts/ensure-go.sh finds.
# Pinned: v5.6.0, the newest that builds with Go 1.26 (newer ones want Go 1.27).
set -euo pipefail
cd "$(dirname "$0")/.."
version=v5.6.0
bin=.tools/cli-plugins/docker-compose
has_version() { "$1" version --short 2>/dev/null | grep -qx "${version#v}"; }
if [ ! -x "$bin" ] || ! has_version "$bin"; then
  go=$(scripts/ensure-go.sh)
  echo "docker compose: building $version into .tools/cli-plugins (once; several minutes)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p .tools/cli-plugins
  (
    cd "$work"
    "$go" mod init conveyor.local/compose-v2 >/dev/null 2>&1
    "$go" get -tool "github.com/docker/compose/v5/cmd@$version" >&2
    # Release builds set the version with -X; without it `version` prints nothing useful and the
    # check above could not recognise the binary next time.
    "$go" build -trimpath -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$version" \
      -o "$OLDPWD/$bin" github.com/docker/compose/v5/cmd
  )
  has_version "$bin" || { echo "docker compose: the binary built does not report version $version" >&2; exit 1; }
fi
if [ "${1:-}" = --plugin ]; then
  plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
  mkdir -p "$plugins"
  ln -sf "$PWD/$bin" "$plugins/docker-compose"
  echo "docker compose: linked into $plugins" >&2
fi
echo "$PWD/$bin"
