#!/usr/bin/env bash
# Training throughput, measured in one run so the figures are comparable on a noisy machine:
#   1. the bare model step (cargo bench --bench train_step: forward+backward+Adam, no data), 64 px, batch 32;
#   2. `flora train` on real images at 64 px, batch 32: epoch 2+ img/s from the run store, and its
#      ratio to the bare step (the decode-once cache should keep it within 10%);
#   3. if a PyTorch venv is given (REF_VENV, default /tmp/refvenv), ../shared/reference/torch_train.py
#      on the same data with the same settings, and flora's ratio to it.
# Data: DATA (default /tmp/flora-data/fmnist-ci/train, made by make_fashion_mnist.py --per-class 100).
# Usage: bench/train.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-3}
data=${DATA:-/tmp/flora-data/fmnist-ci/train}
shared=${FLORA_SHARED:-$(cd .. && pwd)/shared}
if [ ! -d "$data" ]; then
  bench/make_fashion_mnist.py --train-out /tmp/flora-data/fmnist-ci/train \
    --test-out /tmp/flora-data/fmnist-ci/test --per-class 100 >/dev/null
fi
cargo build --release --quiet
step=$(cargo bench --quiet --bench train_step -- 40 64 32 | grep '^BENCH train_step')
echo "$step"
step_ips=$(sed -E 's/.*img_per_s=([0-9.]+).*/\1/' <<<"$step")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '[project]\nname = "bench"\n[data]\nimage_size = 64\naugment = false\n[train]\nbatch_size = 32\npatience = 0\n' >"$work/flora.toml"
start=$(date +%s.%N)
./target/release/flora --config "$work/flora.toml" train --data "$data" --epochs "$epochs" --name bench >"$work/train.log" 2>&1
end=$(date +%s.%N)
run_dir=$(dirname "$(ls -d "$work"/runs/*/*/meta.yaml | head -1)")
# images_per_second per epoch; epoch 1 includes nothing extra either (decoding happens before), but skip it as warm-up.
flora_ips=$(awk 'NR>1 {s+=$2; n++} END {if (n) printf "%.1f", s/n; else print 0}' "$run_dir/metrics/images_per_second")
echo "BENCH flora_train epochs=$epochs size=64 batch=32 epoch2plus_img_per_s=$flora_ips total_s=$(echo "$end - $start" | bc)"
echo "RATIO flora_epoch_vs_bare_step=$(echo "scale=3; $flora_ips / $step_ips" | bc)"

venv=${REF_VENV:-/tmp/refvenv}
if [ -x "$venv/bin/python" ]; then
  ref=$("$venv/bin/python" "$shared/reference/torch_train.py" --data "$data" --epochs "$epochs" --size 64 \
        --save "$work/ref.pt" 2>/dev/null | grep '^RESULT')
  echo "$ref"
  ref_ips=$(sed -E 's/.*train_img_per_s=([0-9.]+).*/\1/' <<<"$ref")
  echo "RATIO flora_vs_torch_train_img_per_s=$(echo "scale=2; $flora_ips / $ref_ips" | bc)"
else
  echo "(no PyTorch venv at $venv: see ../shared/reference/README.md to compare with torch_train.py)"
fi
