#!/usr/bin/env bash
# `make k8s-validate`: renders both overlays of deploy/k8s with kustomize (pinned) and checks them
# offline with scripts/k8s/validate.py (kubernetes-validate for Kubernetes $K8S_VERSION, KEDA's
# pinned ScaledObject schema, the project's rules). kustomize is built once into .tools/bin from the
# Go module proxy with the Go that scripts/ensure-go.sh finds or fetches (its release binaries come
# from github.com, out of reach here); the Python checks run from .venv/k8s (requirements/k8s.lock.txt, harness/venv.sh k8s).
# The rendered manifests are left in data/k8s/<overlay>.yaml for a look.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=v5.8.1 # v5.8.2 and later need a newer Go than the pinned toolchain
k8s_version=${K8S_VERSION:-1.37.0}
bin=.tools/bin/kustomize
if [ ! -x "$bin" ] || [ "$("$bin" version 2>/dev/null)" != "$version" ]; then
  go=$(scripts/ensure-go.sh)
  echo "kustomize: building $version into .tools/bin (once; about a minute)" >&2
  # go install leaves the version unset (release builds set it with -X): set it the same way.
  GOBIN="$PWD/.tools/bin" "$go" install -ldflags "-X sigs.k8s.io/kustomize/api/provenance.version=$version" \
    "sigs.k8s.io/kustomize/kustomize/v5@$version"
fi
python="$(bash harness/venv.sh k8s)/bin/python"
mkdir -p data/k8s
for overlay in dev prod; do
  "$bin" build "deploy/k8s/overlays/$overlay" >"data/k8s/$overlay.yaml"
  external=()
  # prod's Secret is created outside the repository (deploy/k8s/overlays/prod/kustomization.yaml).
  [ "$overlay" = prod ] && external=(--external-secret conveyor-secrets)
  "$python" scripts/k8s/validate.py --kubernetes "$k8s_version" --keda-schema deploy/k8s/schemas/keda-scaledobject.json \
    "${external[@]}" "data/k8s/$overlay.yaml"
done
