#!/usr/bin/env bash
# The GPU run as one command (see gpu_run.py for the steps and the files it writes).
#
#   bash benchmarks/gpu/run.sh --wheels .whl --out results/gpu      # on the GPU machine
#   bash benchmarks/gpu/run.sh --out /tmp/gpu-smoke --device cpu --small
#
# --wheels DIR installs the wheels fetch_wheels.sh put in DIR (for a machine with no package
# index) into a private folder first and puts it on PYTHONPATH; every other option goes to
# gpu_run.py. Run from anywhere; it works from the repository root.
set -uo pipefail
cd "$(dirname "$0")/../.."

wheels=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=$2; shift 2 ;;
    --wheels=*) wheels=${1#--wheels=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

py=${PYTHON:-python3}
if [ -n "$wheels" ]; then
  site=${TMPDIR:-/tmp}/vstain-site
  shopt -s nullglob
  set -- "$wheels"/*.whl
  if [ $# -eq 0 ]; then
    echo "run.sh: no wheels in $wheels (run benchmarks/gpu/fetch_wheels.sh first)" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$@" || { echo "run.sh: installing the wheels failed" >&2; exit 2; }
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$site/bin:$PATH"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$py" benchmarks/gpu/gpu_run.py "${args[@]}"
