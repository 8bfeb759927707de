#!/bin/sh
# Keeps only the onnxruntime-node native binding the image can load: linux on the architecture the
# image is built for (BuildKit's TARGETARCH: amd64 or arm64, as `docker buildx build --platform`
# sets it), and deletes the other platforms' and architectures' (about 250 MB of macOS, Windows
# and the other Linux). Fails, rather than building an image whose workers cannot load a model,
# if that binding is not there afterwards.
#
#   docker/prune-onnxruntime.sh TARGETARCH [onnxruntime-node/bin folder]
set -eu
arch="${1:-}"
bin="${2:-node_modules/onnxruntime-node/bin}"
if [ -z "$arch" ]; then
  # The classic builder sets no TARGETARCH; it builds for the machine it runs on.
  arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
  echo "prune-onnxruntime: TARGETARCH not set, using this machine's architecture: $arch" >&2
fi
# TARGETARCH (Docker's, Go's names) → onnxruntime-node's folder names (Node's process.arch).
case "$arch" in
  amd64 | x86_64) keep=x64 ;;
  arm64 | aarch64) keep=arm64 ;;
  *)
    echo "prune-onnxruntime: onnxruntime-node ships no Linux binding for architecture '$arch' (amd64 and arm64 only)" >&2
    exit 1
    ;;
esac
[ -d "$bin" ] || { echo "prune-onnxruntime: $bin not found" >&2; exit 1; }
kept=0
for napi in "$bin"/napi-v*; do
  [ -d "$napi" ] || continue
  for platform in "$napi"/*; do
    [ "${platform##*/}" = linux ] || rm -rf "$platform"
  done
  for dir in "$napi"/linux/*; do
    [ "${dir##*/}" = "$keep" ] || rm -rf "$dir"
  done
  if [ -f "$napi/linux/$keep/onnxruntime_binding.node" ]; then kept=$((kept + 1)); fi
done
if [ "$kept" -eq 0 ]; then
  echo "prune-onnxruntime: no linux/$keep onnxruntime_binding.node under $bin" >&2
  exit 1
fi
echo "prune-onnxruntime: kept linux/$keep ($arch) in $bin"
