#!/usr/bin/env bash
# Class weighting on a real, imbalanced subset of Fashion-MNIST: every class keeps PER images
# except MINOR, cut to PER/10 (10:1). Trains the same recipe with train.class_weights = "none",
# "balanced" (power 1 and 0.5) and train.sampler = "balanced", then evaluates each on the same
# balanced slice of the official test set. Prints the small class's recall, accuracy and macro F1.
# Needs: apt-get install dataset-fashion-mnist. About 5 minutes on 2 cores with the defaults.
# Usage: bench/imbalance.sh [EPOCHS] [PER] [MINOR]     (not run in CI)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-8}
per=${2:-300}
minor=${3:-shirt}
size=${SIZE:-32}
shared=${FLORA_SHARED:-$(cd .. && pwd)/shared}
conv="$shared/datasets/make_fashion_mnist.py"
[ -x "$conv" ] || conv=bench/make_fashion_mnist.py
root=/tmp/flora-data/imbalance-$per
if [ ! -d "$root/test" ]; then
  "$conv" --train-out "$root/train" --test-out "$root/test" --per-class "$per" \
    --test-per-class 200 --clean >/dev/null
  # 10:1: keep the first PER/10 images (sorted by name) of the small class.
  ls "$root/train/$minor" | sort | tail -n +$((per / 10 + 1)) | sed "s|^|$root/train/$minor/|" | xargs rm -f
fi
echo "train: $(find "$root/train" -type f | wc -l) images, $minor: $(ls "$root/train/$minor" | wc -l); test: $(find "$root/test" -type f | wc -l)"
bin=${FLORA_BIN:-./target/release/flora}
[ -n "${FLORA_BIN:-}" ] || cargo build --release --quiet
work=${WORK:-$(mktemp -d)}
printf '[project]\nname = "imbalance"\n[data]\nimage_size = %s\nseed = 1\n[train]\npatience = 0\n' "$size" >"$work/flora.toml"
run() { # name, extra train flags...
  local name=$1; shift
  "$bin" --config "$work/flora.toml" train --data "$root/train" --epochs "$epochs" --name "$name" "$@" >"$work/$name.log" 2>&1
  "$bin" --config "$work/flora.toml" eval --run "$name" --data "$root/test" --json >"$work/$name.json" 2>/dev/null
  python3 - "$work/$name.json" "$name" "$minor" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); m = j["per_class"][sys.argv[3]]
print(f"BENCH imbalance {sys.argv[2]:<14} {sys.argv[3]}_recall={m['recall']:.3f} {sys.argv[3]}_f1={m['f1']:.3f} "
      f"accuracy={j['accuracy']:.4f} macro_f1={j['macro_f1']:.4f}")
PY
}
run none --class-weights none
run balanced --class-weights balanced
printf '[project]\nname = "imbalance"\n[data]\nimage_size = %s\nseed = 1\n[train]\npatience = 0\nclass_weights = "balanced"\nclass_weight_power = 0.5\n' "$size" >"$work/flora.toml"
run balanced-0.5
printf '[project]\nname = "imbalance"\n[data]\nimage_size = %s\nseed = 1\n[train]\npatience = 0\n' "$size" >"$work/flora.toml"
run sampler --sampler balanced
echo "runs and logs in $work"
