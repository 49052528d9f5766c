#!/usr/bin/env bash
# The figures BENCHMARKS.md asks of a GPU or TPU, in one process and under 8 minutes
# (benchmarks/device_check.py says what each part measures).
#
#   bash benchmarks/device_check.sh [--out DIR] [--smoke] [--parts a,b,c,d]
#
# Writes DIR/device_rows.md (rows in BENCHMARKS.md's columns) and DIR/device_check.log.
# Python: $PYTHON, else python3 (no virtual environment needed). Wheels in the repository's
# .whl/ folder (e.g. ml_collections on a machine without a network) are installed first
# into $SITE (default /tmp/site). Exit status: the driver's (1 if any part failed; the
# others still ran).
set -u

python="${PYTHON:-python3}"
out=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
out="${out:-device_check_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 1
cd "$(dirname "$0")/.." || exit 1

site="${SITE:-/tmp/site}"
if compgen -G ".whl/*.whl" > /dev/null; then
  echo "installing $(ls .whl/*.whl | tr '\n' ' ')into $site"
  if "$python" -m pip install -q --no-index --no-deps --upgrade --target "$site" .whl/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else  # no pip: a pure-Python wheel imports from the zip itself
    echo "warning: pip failed; putting the wheels themselves on PYTHONPATH"
    for whl in "$PWD"/.whl/*.whl; do export PYTHONPATH="$whl${PYTHONPATH:+:$PYTHONPATH}"; done
  fi
fi

export PYTHONUNBUFFERED=1
"$python" -m benchmarks.device_check --out "$out" ${args[@]+"${args[@]}"} 2>&1 \
  | tee "$out/device_check.log"
exit "${PIPESTATUS[0]}"
