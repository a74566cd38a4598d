#!/usr/bin/env bash
# Serving speed: `flora serve` against the FastAPI + PyTorch reference (../shared/reference/
# torch_serve.py), same machine, same run, same load: wrk posting one 28x28 Fashion-MNIST PNG as
# multipart (field `file`) through ../shared/reference/load.sh, for SECONDS (default 15) at each
# concurrency in CONCS (default "1 8 64") after a 3 s warm-up. Both run the reference CNN at 64 px
# and save every upload under collected_data/. Prints req/s, p50, p99 and server RSS per row, and
# flora/torch ratios.
# Needs: wrk (apt-get install -y wrk), python3 and dataset-fashion-mnist (apt-get install -y
# dataset-fashion-mnist) for the images. The PyTorch side runs only if a venv with torch,
# torchvision, fastapi, uvicorn and python-multipart exists at REF_VENV (default /tmp/refvenv);
# see ../shared/reference/README.md.
# The flora model is trained here (reference CNN, 64 px, 5 epochs on 800 images, ~1 min) and
# promoted into the blue slot.
# MODEL=mobilenet_v2 compares MobileNetV2 instead (WIDTH default 0.35, SIZE default 96): flora
# trains one for 1 epoch, torch serves torchvision's mobilenet_v2 at the same width and size
# through the same reference app (bench/torch_serve_mobilenet.py).
# Env: WORK (a folder to keep the trained models in between runs), REF_CKPT (a torch_train.py checkpoint; default: train one, 1 epoch), MAX_BATCH
# (serve.max_batch, default 16; 1 turns batching off), ENGINES (default "fused"; "fused burn"
# adds a row for flora with Burn's forward pass, FLORA_ENGINE=burn), SERVE_FLAGS (extra `flora serve` flags, e.g. --no-collect),
# TORCH_THREADS (torch_serve.py --threads; default torch's own, i.e. one per core: its OpenMP
# threads spin, and collapse when other processes hold a core), PORT (default 18700), CONCS,
# FLORA_SHARED.
# Usage: bench/serve.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
secs=${1:-15}
concs=${CONCS:-1 8 64}
port=${PORT:-18700}
shared=${FLORA_SHARED:-$(cd .. && pwd)/shared}
ref=$shared/reference
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
[ -d /tmp/flora-data/fmnist-ci ] || bench/make_fashion_mnist.py --train-out /tmp/flora-data/fmnist-ci/train \
    --test-out /tmp/flora-data/fmnist-ci/test --per-class 100 >/dev/null
img=/tmp/flora-data/fmnist-ci/test/bag/test_000469.png
cargo build --release --quiet
flora=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/flora
work=${WORK:-$(mktemp -d)} # WORK keeps (and reuses) the trained model and checkpoint
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; [ -n "${WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

# flora: a project with the trained run promoted into the blue slot and live.
model=${MODEL:-cnn}
mkdir -p "$work/flora"
if [ "$model" = mobilenet_v2 ]; then
  width=${WIDTH:-0.35} size=${SIZE:-96}
  printf '[data]\nimage_size = %s\n[train]\narch = "mobilenet_v2"\nwidth = %s\nepochs = 1\n' "$size" "$width" >"$work/flora/flora.toml"
else
  printf '[data]\nimage_size = 64\n[train]\nepochs = 5\n' >"$work/flora/flora.toml"
fi
printf '[serve]\nport = %s\nmax_batch = %s\n' "$port" "${MAX_BATCH:-16}" >>"$work/flora/flora.toml"
[ -d "$work/flora/runs" ] || (cd "$work/flora" && "$flora" train --data /tmp/flora-data/fmnist-ci/train --name bench64 >/dev/null 2>&1)
[ -e "$work/flora/models/blue" ] || (cd "$work/flora" && "$flora" promote bench64 --to blue --live >/dev/null)
rm -rf "$work/flora/collected_data" "$work/torch/collected_data"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
wait_health() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not come up" >&2; return 1
}
declare -A RPS P50 P99 RSS
load_all() { # name pid
  local name=$1 pid=$2
  "$ref/load.sh" "http://127.0.0.1:$port" "$img" 8 3 >/dev/null # warm-up
  RSS[$name,idle]=$(( $(rss_kb "$pid") / 1024 ))
  for c in $concs; do
    line=$("$ref/load.sh" "http://127.0.0.1:$port" "$img" "$c" "$secs" | grep '^LOAD')
    echo "$name C=$c $line"
    RPS[$name,$c]=$(sed -E 's/.*req_per_s=([0-9.]+).*/\1/' <<<"$line")
    P50[$name,$c]=$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$line")
    P99[$name,$c]=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$line")
    grep -q 'non2xx=0 socket_errors=0' <<<"$line" || echo "WARNING: $name had failed requests at C=$c" >&2
  done
  RSS[$name,peak]=$(( $(hwm_kb "$pid") / 1024 ))
}

# flora serve, once per engine in ENGINES (fused: the default; burn: FLORA_ENGINE=burn)
names=""
for engine in ${ENGINES:-fused}; do
  name=flora; [ "$engine" = fused ] || name=flora-$engine
  names="$names $name"
  (cd "$work/flora" && FLORA_ENGINE=$engine exec "$flora" serve --port "$port" ${SERVE_FLAGS:-} >"$work/$name.log" 2>&1) &
  server=$!
  wait_health
  load_all "$name" "$server"
  kill -TERM "$server"; wait "$server" || true; server=""
  rm -rf "$work/flora/collected_data"
done
have_torch=0

# PyTorch reference
venv=${REF_VENV:-/tmp/refvenv}
if [ -x "$venv/bin/python" ]; then
  have_torch=1
  mkdir -p "$work/torch"
  if [ "$model" = mobilenet_v2 ]; then
    (cd "$work/torch" && exec "$venv/bin/python" "$repo/bench/torch_serve_mobilenet.py" --width "$width" --size "$size" \
        --port "$port" --shared "$shared" ${TORCH_THREADS:+--threads "$TORCH_THREADS"} >"$work/torch.log" 2>&1) &
  else
    ckpt=${REF_CKPT:-$work/ref64.pt}
    [ -f "$ckpt" ] || "$venv/bin/python" "$ref/torch_train.py" --data /tmp/flora-data/fmnist-ci/train --epochs 1 \
        --size 64 --save "$ckpt" >/dev/null 2>&1
    (cd "$work/torch" && exec "$venv/bin/python" "$ref/torch_serve.py" --ckpt "$ckpt" --port "$port" \
        ${TORCH_THREADS:+--threads "$TORCH_THREADS"} >"$work/torch.log" 2>&1) &
  fi
  server=$!
  wait_health
  load_all torch "$server"
  kill -TERM "$server"; wait "$server" || true; server=""
else
  echo "no PyTorch venv at $venv: the reference is skipped" >&2
fi

echo
printf '%-6s %4s %10s %9s %9s\n' server C req/s p50_ms p99_ms
[ $have_torch = 1 ] && names="$names torch"
for name in $names; do
  for c in $concs; do
    printf '%-6s %4s %10s %9s %9s\n' "$name" "$c" "${RPS[$name,$c]}" "${P50[$name,$c]}" "${P99[$name,$c]}"
  done
  echo "$name RSS: idle ${RSS[$name,idle]} MB after warm-up, peak ${RSS[$name,peak]} MB"
done
if [[ " $names " == *" flora-burn "* && " $names " == *" flora "* ]]; then
  for c in $concs; do
    awk -v c="$c" -v f="${RPS[flora,$c]}" -v b="${RPS[flora-burn,$c]}" \
      'BEGIN { printf "RATIO C=%s req_per_s fused/burn engine=%.2f\n", c, f / b }'
  done
fi
if [[ $have_torch = 1 && " $names " == *" flora "* ]]; then
  for c in $concs; do
    awk -v c="$c" -v fr="${RPS[flora,$c]}" -v tr="${RPS[torch,$c]}" -v fp="${P99[flora,$c]}" -v tp="${P99[torch,$c]}" \
      'BEGIN { printf "RATIO C=%s req_per_s flora/torch=%.2f p99 flora/torch=%.2f\n", c, fr / tr, fp / tp }'
  done
  awk -v f="${RSS[flora,peak]}" -v t="${RSS[torch,peak]}" 'BEGIN { printf "RATIO peak_rss flora/torch=%.2f\n", f / t }'
fi
