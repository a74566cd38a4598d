#!/usr/bin/env bash
# Prediction speed:
#   1. a cold `flora predict one.png` process (load bundle, decode, infer, print): median wall
#      time over RUNS runs (default 15), with the PyTorch one-shot torch_predict.py beside it when
#      a venv is given (REF_VENV, default /tmp/refvenv);
#   2. `flora predict` over a folder of 1,000 images at 64 px: images/s, with Burn's forward pass
#      (FLORA_ENGINE=burn) and the default fused one, and their ratio.
# Needs a 64 px reference-CNN model: MODEL (a bundle folder); without it one is trained quickly.
# Usage: bench/predict.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-15}
shared=${FLORA_SHARED:-$(cd .. && pwd)/shared}
[ -d /tmp/flora-data/fmnist-ci ] || bench/make_fashion_mnist.py --train-out /tmp/flora-data/fmnist-ci/train \
    --test-out /tmp/flora-data/fmnist-ci/test --per-class 100 >/dev/null
[ -d /tmp/flora-data/fmnist-1k ] || bench/make_fashion_mnist.py --train-out /tmp/flora-data/fmnist-1k \
    --per-class 100 --seed 3 >/dev/null
cargo build --release --quiet
flora=$PWD/target/release/flora
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=${MODEL:-}
if [ -z "$model" ]; then
  printf '[data]\nimage_size = 64\n[train]\nepochs = 2\n' >"$work/flora.toml"
  $flora --config "$work/flora.toml" train --data /tmp/flora-data/fmnist-ci/train >/dev/null 2>&1
  model=$(dirname "$(ls -d "$work"/runs/*/*/artifacts/model/bundle.json | head -1)")
fi
img=/tmp/flora-data/fmnist-ci/test/bag/test_000469.png

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
time_runs() { # command... -> median ms
  for _ in $(seq "$runs"); do
    s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))
  done | median
}
$flora predict --model "$model" "$img" >/dev/null 2>&1 # warm the page cache
flora_ms=$(time_runs "$flora" predict --model "$model" "$img")
echo "BENCH predict_cold flora median_ms=$flora_ms runs=$runs"
venv=${REF_VENV:-/tmp/refvenv}
if [ -x "$venv/bin/python" ]; then
  "$venv/bin/python" "$shared/reference/torch_train.py" --data /tmp/flora-data/fmnist-ci/train --epochs 1 --size 64 \
      --save "$work/ref.pt" >/dev/null 2>&1
  torch_ms=$(time_runs "$venv/bin/python" "$shared/reference/torch_predict.py" --ckpt "$work/ref.pt" "$img")
  echo "BENCH predict_cold torch median_ms=$torch_ms runs=$runs"
  echo "RATIO torch_over_flora_cold_predict=$(echo "scale=1; $torch_ms / $flora_ms" | bc)"
fi
n=$(find /tmp/flora-data/fmnist-1k -type f | wc -l)
declare -A RATE
folder() { # engine: Burn's forward pass or the fused one (FLORA_ENGINE), same images, same model
  local s e
  s=$(date +%s%N)
  FLORA_ENGINE=$1 $flora predict --model "$model" --json /tmp/flora-data/fmnist-1k >"$work/out.jsonl" 2>/dev/null
  e=$(date +%s%N)
  RATE[$1]=$(echo "scale=1; $n * 1000000000 / ($e - $s)" | bc)
  echo "BENCH predict_folder engine=$1 images=$n lines=$(wc -l <"$work/out.jsonl") seconds=$(echo "scale=3; ($e - $s)/1000000000" | bc) img_per_s=${RATE[$1]}"
}
folder burn
folder fused
echo "RATIO predict_folder fused_over_burn=$(echo "scale=2; ${RATE[fused]} / ${RATE[burn]}" | bc)"
