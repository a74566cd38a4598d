#!/usr/bin/env bash
# Phone photos, serving: one 12-MP phone-like JPEG (4032x3024 stored, EXIF Orientation 6, ~2.5 MB,
# from make_phone_photos.py) POSTed as multipart (field `file`) by wrk through
# ../shared/reference/load.sh, at each concurrency in CONCS (default "1 8") for SECONDS (default 15)
# after a 3 s warm-up, against three servers with the same contract (POST /predict, the same
# response shape, every upload saved under collected_data/), one after the other:
#   flora      `flora serve` (blue slot: the reference CNN at 64 px trained for one epoch on 8 phone
#              photos; the weights do not change the speed), RAYON_NUM_THREADS=THREADS
#   torch      the FastAPI + PyTorch reference, ../shared/reference/torch_serve.py --threads THREADS
#              (full decode, no EXIF orientation: what the seed project does)
#   ort_draft  bench/phone/ort_serve.py: FastAPI + ONNX Runtime + Pillow with draft() and
#              exif_transpose, the best Python server a user could write (--threads THREADS)
# Every server answers each request in full; flora saves an upload whose bytes it has already
# collected only once ("collection":"duplicate"), while both Python servers write all of them
# (~3.4 MB a request): part of the contract as each one implements it.
# torch and ort_draft run the same checkpoint (torch_train.py, one epoch on the same 8 photos;
# export_onnx.py turns it into ONNX and checks it against torch).
# Prints req/s, p50/p99 latency per server and concurrency, each server's RSS (idle after the
# warm-up; peak = VmHWM at the end), then
#   RATIO serve C=N req_per_s flora/torch=... (goal >= 4) flora/ort_draft=... (goal >= 1.5) ...
#   RATIO serve peak_rss flora/torch=... flora/ort_draft=...
# Env: SECONDS_PER (or the first argument; default 15), CONCS ("1 8"), PORT (18790), THREADS (2),
#   SERVERS ("flora torch ort_draft": a subset skips the others, and their ratios),
#   PHONE_VENV (default /tmp/phonebench-venv: torch, torchvision, fastapi, uvicorn, python-multipart,
#   onnxruntime, onnx; see bench/phone/README.md), FLORA_SHARED (the folder with reference/),
#   PHONE_DATA (/tmp/flora-phone), FLORA_BIN, WORK (keeps the models between runs), REF_CKPT
#   (a torch_train.py checkpoint at 64 px instead of training one), WRK_THREADS (load.sh; 1).
# Needs wrk and curl (apt-get install -y wrk curl). The load goes to 127.0.0.1 only.
# Usage: bench/phone/serve.sh [SECONDS]
set -euo pipefail
source "$(dirname "$0")/common.sh"
secs=${1:-${SECONDS_PER:-15}}
concs=${CONCS:-1 8}
port=${PORT:-18790}
servers=${SERVERS:-flora torch ort_draft}
command -v wrk >/dev/null || die "wrk is missing: apt-get install -y wrk"
command -v curl >/dev/null || die "curl is missing: apt-get install -y curl"
need_shared
[[ " $servers " == *" flora "* ]] && need_flora
need_venv PIL numpy
[[ " $servers " == *" torch "* ]] && need_venv torch torchvision fastapi uvicorn multipart
[[ " $servers " == *" ort_draft "* ]] && need_venv torch onnx onnxruntime fastapi uvicorn multipart
port_free "$port"
cpu_info

photos "$data/predict64" 64
# the upload: the first photo stored sideways with Orientation 6, as a phone held upright stores it
img=$("$py" -c "
import json, sys
m = json.load(open(sys.argv[1] + '/manifest.json'))
f = next(f for f in m['files'] if f['orientation'] == 6)
print(sys.argv[1] + '/' + f['path'])" "$data/predict64")
echo "upload: $img ($(stat -c %s "$img") bytes, EXIF Orientation 6)"

work=${WORK:-$(mktemp -d)}
server="" loader=""
cleanup() {
  if [ -n "$loader" ]; then kill -TERM "$loader" 2>/dev/null || true; fi
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"/*/collected_data
  [ -n "${WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A RPS P50 P99 RSS
load_all() { # name pid
  local name=$1 pid=$2 line c
  "$shared/reference/load.sh" "http://127.0.0.1:$port" "$img" 2 3 >"$work/$name.warmup" 2>&1 \
    || { cat "$work/$name.warmup" >&2; die "$name: the warm-up load failed"; }
  grep -q '^first response: 200' "$work/$name.warmup" || { grep 'first response' "$work/$name.warmup" >&2; die "$name: the warm-up got no 200"; }
  echo "$name $(grep '^first response' "$work/$name.warmup" | cut -c1-200)"
  RSS[$name,idle]=$(( $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") / 1024 ))
  for c in $concs; do
    # in the background + wait, so that a TERM/INT ends the run at once (and the trap stops wrk)
    "$shared/reference/load.sh" "http://127.0.0.1:$port" "$img" "$c" "$secs" >"$work/$name.load" 2>&1 &
    loader=$!
    wait "$loader" || { cat "$work/$name.load" >&2; die "$name: load.sh failed at C=$c"; }
    loader=""
    line=$(grep '^LOAD' "$work/$name.load") || die "$name: no LOAD line from load.sh at C=$c"
    echo "BENCH serve $name C=$c $line"
    RPS[$name,$c]=$(sed -E 's/.*req_per_s=([0-9.]+).*/\1/' <<<"$line")
    P50[$name,$c]=$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$line")
    P99[$name,$c]=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$line")
    grep -q 'non2xx=0 socket_errors=0' <<<"$line" || echo "WARNING: $name had failed requests at C=$c" >&2
  done
  RSS[$name,peak]=$(( $(awk '/^VmHWM/ {print $2}' "/proc/$pid/status") / 1024 ))
}
stop() {
  kill -TERM "$server"; wait "$server" 2>/dev/null || true; server=""
  rm -rf "$work"/*/collected_data
}

ckpt=""
if [[ " $servers " == *" torch "* || " $servers " == *" ort_draft "* ]]; then
  ckpt=${REF_CKPT:-$work/ref64.pt}
  if [ ! -f "$ckpt" ]; then
    photos "$data/tiny8" 8 --classes 2 --seed 1
    "$py" "$shared/reference/torch_train.py" --data "$data/tiny8" --epochs 1 --size 64 --workers "$threads" \
      --threads "$threads" --save "$ckpt" >"$work/torch_train.log" 2>&1 \
      || { tail "$work/torch_train.log" >&2; die "torch_train.py failed"; }
  fi
fi

for name in $servers; do
  mkdir -p "$work/$name"
  case $name in
    flora)
      model=$(tiny_model "$work/model64" 64)
      proj=$work/flora
      printf '[serve]\nport = %s\n' "$port" >"$proj/flora.toml"
      rm -rf "$proj/models" "$proj/runs"
      cp -r "$work/model64/runs" "$proj/runs"
      run=$(basename "$(dirname "$(dirname "$model")")")
      (cd "$proj" && "$flora" promote "$run" --to blue --live >"$work/promote.log" 2>&1) \
        || { cat "$work/promote.log" >&2; die "flora promote failed"; }
      (cd "$proj" && exec "$flora" serve --port "$port" >"$work/flora.log" 2>&1) &
      ;;
    torch)
      (cd "$work/torch" && exec "$py" "$shared/reference/torch_serve.py" --ckpt "$ckpt" --port "$port" \
        --threads "$threads" >"$work/torch.log" 2>&1) &
      ;;
    ort_draft)
      [ -f "$work/ref64.onnx" ] || "$py" "$here/export_onnx.py" --ckpt "$ckpt" --out "$work/ref64.onnx" --shared "$shared"
      (cd "$work/ort_draft" && exec "$py" "$here/ort_serve.py" --model "$work/ref64.onnx" --port "$port" \
        --threads "$threads" >"$work/ort_draft.log" 2>&1) &
      ;;
    *) die "unknown server $name (SERVERS: flora torch ort_draft)" ;;
  esac
  server=$!
  wait_health "$port" "$server" || { tail "$work/$name.log" >&2; die "$name did not start"; }
  load_all "$name" "$server"
  stop
done

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%-10s %4s %9s %9s %9s\n' server C req/s p50_ms p99_ms
for name in $servers; do
  for c in $concs; do
    printf '%-10s %4s %9s %9s %9s\n' "$name" "$c" "${RPS[$name,$c]}" "${P50[$name,$c]}" "${P99[$name,$c]}"
  done
  echo "$name RSS: idle ${RSS[$name,idle]} MB after the warm-up, peak ${RSS[$name,peak]} MB"
done
has() { [[ " $servers " == *" $1 "* ]]; }
if has flora; then
  for c in $concs; do
    line="RATIO serve C=$c req_per_s"
    has torch && line="$line flora/torch=$(ratio "${RPS[flora,$c]}" "${RPS[torch,$c]}") (goal >= 4)"
    has ort_draft && line="$line flora/ort_draft=$(ratio "${RPS[flora,$c]}" "${RPS[ort_draft,$c]}") (goal >= 1.5)"
    has torch && line="$line p99 flora/torch=$(ratio "${P99[flora,$c]}" "${P99[torch,$c]}")"
    has ort_draft && line="$line p99 flora/ort_draft=$(ratio "${P99[flora,$c]}" "${P99[ort_draft,$c]}")"
    echo "$line"
  done
  line="RATIO serve peak_rss"
  has torch && line="$line flora/torch=$(ratio "${RSS[flora,peak]}" "${RSS[torch,peak]}")"
  has ort_draft && line="$line flora/ort_draft=$(ratio "${RSS[flora,peak]}" "${RSS[ort_draft,peak]}")"
  echo "$line"
fi
