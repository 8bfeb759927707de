#!/usr/bin/env bash
# The one script behind the project's pinned Python virtual environments. Every environment NAME has
# its direct requirements in requirements/NAME.in, every package at an exact version in
# requirements/NAME.lock.txt (what gets installed: nothing unpinned ever is), and lives in .venv/NAME.
# Prints the venv's directory on stdout (everything else goes to stderr).
#
#   bash harness/venv.sh NAME             create or reuse .venv/NAME
#   bash harness/venv.sh --relock NAME    re-resolve requirements/NAME.in into requirements/NAME.lock.txt
#   bash harness/venv.sh --list           the names, with what each is for
#
# Idempotent: a stamp named after the hash of the lock's package lines (comments do not count) skips
# the install when nothing changed, and a changed lock rebuilds the venv from scratch, so nothing
# unpinned lingers. Several test runs or make targets may start at once after a lock changed: one
# rebuilds while the others wait on a file lock beside the venv (not in it: the venv is removed).
#
# A requirement marked `# no-deps` in the .in file is resolved without its dependencies, and an
# environment with such a line installs its lock with --no-deps (the lock then lists every package
# itself): the model converters take only the photos of scikit-image's wheel, not scipy & co.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# name | lowest Python | what it is (printed while installing)
table() {
  cat <<'TABLE'
api-tests|3.11|Schemathesis and the Python client's test tools (make api-fuzz, make test)
bench-bentoml|3.10|the BentoML peer of the benchmark (make bench BENTOML=1)
bench-fastapi|3.10|the FastAPI peer of the benchmark (make bench)
k8s|3.10|kubernetes-validate and jsonschema (make k8s-validate, make lint)
loadtests|3.10|Locust, PyYAML and matplotlib (the load tests and soaks)
mlflow|3.10|the MLflow tracking server (make mlflow, the trainer's tests)
models|3.11|the model converters' numpy, onnx and scikit-image photos (make model-moderation)
prefect|3.10|Prefect's server, client and process worker (make orchestrate, the flow's tests)
s3|3.10|moto's S3 server (the trainer's and the flow's tests)
TABLE
}

relock=false
case "${1:-}" in
  --list) table | awk -F'|' '{ printf "%-14s %s\n", $1, $3 }'; exit 0 ;;
  --relock) relock=true; shift ;;
esac
name="${1:?usage: harness/venv.sh [--relock] NAME   (harness/venv.sh --list for the names)}"
row="$(table | grep "^$name|" || true)"
[ -n "$row" ] || { echo "harness/venv.sh: no environment named $name (harness/venv.sh --list)" >&2; exit 2; }
IFS='|' read -r _ min what <<<"$row"
in="$root/requirements/$name.in"
lock="$root/requirements/$name.lock.txt"
venv="$root/.venv/$name"
python="${PYTHON:-python3}"
"$python" -c "import sys; sys.exit(0 if sys.version_info >= tuple(map(int, '$min'.split('.'))) else 1)" || {
  echo "$what needs Python >= $min (found $("$python" --version 2>&1))" >&2
  exit 1
}
nodeps=false
grep -qE '^[^#]+#.*\bno-deps\b' "$in" && nodeps=true
pip() { "$venv/bin/pip" --disable-pip-version-check --quiet "$@" >&2; }
stamp() { echo "$venv/.installed-$(grep -vE '^[[:space:]]*(#|$)' "$lock" | sha256sum | cut -c1-16)"; }
fresh() { rm -rf "$venv" && "$python" -m venv "$venv"; }

if $relock || [ ! -f "$(stamp)" ]; then
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.install-lock"
  flock 9
fi
if $relock; then
  echo "resolving requirements/$name.in into requirements/$name.lock.txt…" >&2
  fresh
  mapfile -t with < <(grep -vE '^[[:space:]]*(#|$)' "$in" | grep -vE '#.*\bno-deps\b' | sed 's/[[:space:]]*#.*//')
  mapfile -t without < <(grep -E '^[^#]+#.*\bno-deps\b' "$in" | sed 's/[[:space:]]*#.*//')
  [ ${#with[@]} -eq 0 ] || pip install "${with[@]}"
  [ ${#without[@]} -eq 0 ] || pip install --no-deps "${without[@]}"
  {
    echo "# requirements/$name.in resolved with $("$python" --version): every package at an exact version."
    echo "# Installed by harness/venv.sh $name$($nodeps && echo ' with --no-deps'); regenerate with harness/venv.sh --relock $name."
    "$venv/bin/pip" freeze --all --exclude pip --exclude setuptools --exclude wheel
  } >"$lock"
  touch "$(stamp)"
fi
if [ ! -f "$(stamp)" ]; then
  echo "installing $what into .venv/$name (once per change of requirements/$name.lock.txt)…" >&2
  fresh
  if $nodeps; then pip install --no-deps --requirement "$lock"; else pip install --requirement "$lock"; fi
  touch "$(stamp)"
fi
echo "$venv"
