#!/usr/bin/env bash
# All the phone-photo benchmarks, one after the other, with their RATIO lines gathered at the end:
#   bench/phone/predict.sh   flora predict vs Pillow preprocessing (draft / full), 64 photos
#   bench/phone/serve.sh     flora serve vs FastAPI + torch and FastAPI + ORT + Pillow draft
#   bench/phone/train.sh     flora train's first epoch (cold / warm pixel cache) vs torch DataLoader
# --quick: small counts to check that everything works (~5 min on 2 idle cores, plus ~1 min to make
#   the photos the first time): predict on the 64 photos, 1 run; serve 5 s per concurrency;
#   train on 60 photos. Without it: 64 photos x 3 runs, 15 s, 500 photos (~25 min, plus ~10 min
#   to make the photos the first time).
# Builds flora first (`cargo build --release`) unless FLORA_BIN is set or --no-build is given.
# Every script's own env vars pass through (THREADS, PHONE_VENV, PHONE_DATA, FLORA_SHARED, ...);
# ONLY="predict serve" runs a subset. The full output goes to LOG (default /tmp/flora-phone-bench.log).
# Usage: bench/phone/run.sh [--quick] [--no-build]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
quick=0 build=1
for a in "$@"; do
  case $a in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    *) echo "usage: $0 [--quick] [--no-build]" >&2; exit 2 ;;
  esac
done
log=${LOG:-/tmp/flora-phone-bench.log}
: >"$log"
if [ $build = 1 ] && [ -z "${FLORA_BIN:-}" ]; then
  (cd "$here/../.." && cargo build --release --quiet)
fi
if [ $quick = 1 ]; then
  export COUNT_PREDICT=${COUNT_PREDICT:-64} RUNS=${RUNS:-1} SECONDS_PER=${SECONDS_PER:-5} COUNT_TRAIN=${COUNT_TRAIN:-60}
fi
status=0
for b in ${ONLY:-predict serve train}; do
  echo "=== bench/phone/$b.sh $(date -Is)" | tee -a "$log"
  case $b in
    predict) cmd=(env COUNT="${COUNT_PREDICT:-64}" "$here/predict.sh") ;;
    serve) cmd=("$here/serve.sh") ;;
    train) cmd=(env COUNT="${COUNT_TRAIN:-500}" "$here/train.sh") ;;
    *) echo "unknown benchmark $b" >&2; exit 2 ;;
  esac
  if ! "${cmd[@]}" 2>&1 | tee -a "$log"; then
    echo "FAILED: bench/phone/$b.sh (see $log)" | tee -a "$log"
    status=1
  fi
done
echo
echo "=== summary ($log)"
grep -E '^(CPU|RESULT|RATIO|FAILED)' "$log" | awk '!(/^CPU/ && seen++)'
exit $status
