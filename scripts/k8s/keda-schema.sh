#!/usr/bin/env bash
# Writes deploy/k8s/schemas/keda-scaledobject.json, the pinned copy of the openAPIV3Schema of KEDA's
# ScaledObject CRD that `make k8s-validate` checks the ScaledObjects against, from KEDA's own Go
# module (github.com/kedacore/keda/v2 on the Go module proxy: the module zip holds the generated
# CRDs under config/crd/bases/), after checking the CRD file's sha256. `--check` compares the
# committed copy with a fresh extraction instead of writing it. Not run by CI: the committed copy is
# what CI validates against, so the check stays offline and cannot drift by itself.
#   bash scripts/k8s/keda-schema.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/../.."
version=v2.20.2
crd=config/crd/bases/keda.sh_scaledobjects.yaml
sha256=af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80
out=deploy/k8s/schemas/keda-scaledobject.json
go=$(scripts/ensure-go.sh)
python="$(bash harness/venv.sh k8s)/bin/python"
dir=$(cd /tmp && GOFLAGS=-mod=mod "$go" mod download -json "github.com/kedacore/keda/v2@$version" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
echo "$sha256  $dir/$crd" | sha256sum -c --quiet -
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$python" - "$dir/$crd" "$version" "$sha256" "$crd" >"$tmp" <<'PY'
import json, sys
import yaml
path, version, sha256, crd_path = sys.argv[1:]
crd = yaml.safe_load(open(path, encoding="utf-8"))
(served,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
print(json.dumps({
    "group": crd["spec"]["group"],
    "version": served["name"],
    "kind": crd["spec"]["names"]["kind"],
    "source": {
        "module": "github.com/kedacore/keda/v2",
        "version": version,
        "path": crd_path,
        "sha256": sha256,
        "license": "Apache-2.0 (KEDA Authors)",
        "regenerate": "bash scripts/k8s/keda-schema.sh",
    },
    "openAPIV3Schema": served["schema"]["openAPIV3Schema"],
}, indent=1, sort_keys=False))
PY
if [ "${1:-}" = --check ]; then
  diff -q "$tmp" "$out" && echo "$out matches KEDA $version"
else
  mkdir -p "$(dirname "$out")"
  cp "$tmp" "$out"
  echo "wrote $out from KEDA $version ($crd)"
fi
