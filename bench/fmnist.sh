#!/usr/bin/env bash
# Accuracy on the Fashion-MNIST official split: 10% of the training images held out for
# validation, EPOCHS epochs (default 10); then `flora eval` on the 10k test images. Prints the best
# val accuracy, the test accuracy and the wall time.
# Env: ARCH (cnn, the default recipe at 28 px; or mobilenet_v2), WIDTH (MobileNetV2 width,
# default 0.5), SIZE (input size; default 28 for cnn, 32 for mobilenet_v2), PER_CLASS (train on a
# stated subset: that many images per class, a seeded stable choice; default all 6,000), WORK.
# Needs: apt-get install dataset-fashion-mnist. The cnn recipe trains in about 6 minutes on 2 cores.
# Usage: bench/fmnist.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-10}
arch=${ARCH:-cnn}
root=/tmp/flora-data/fmnist
[ -d "$root/train" ] || bench/make_fashion_mnist.py --train-out "$root/train" --test-out "$root/test" >/dev/null
train=$root/train
if [ -n "${PER_CLASS:-}" ]; then
  train=/tmp/flora-data/fmnist-$PER_CLASS/train
  [ -d "$train" ] || bench/make_fashion_mnist.py --train-out "$train" --per-class "$PER_CLASS" >/dev/null
fi
cargo build --release --quiet
flora=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/flora
work=${WORK:-$(mktemp -d)}
if [ "$arch" = mobilenet_v2 ]; then
  size=${SIZE:-32} name=fmnist-mnv2-w${WIDTH:-0.5}-$size
  printf '[project]\nname = "fmnist"\n[data]\nimage_size = %s\nval_fraction = 0.1\n[train]\narch = "mobilenet_v2"\nwidth = %s\n' \
      "$size" "${WIDTH:-0.5}" >"$work/flora.toml"
else
  size=${SIZE:-28} name=fmnist$size
  printf '[project]\nname = "fmnist"\n[data]\nimage_size = %s\nval_fraction = 0.1\n' "$size" >"$work/flora.toml"
fi
s=$(date +%s)
"$flora" --config "$work/flora.toml" train --data "$train" --epochs "$epochs" --name "$name" | tee "$work/train.log"
e=$(date +%s)
"$flora" --config "$work/flora.toml" eval --run "$name" --data "$root/test" --json >"$work/test.json"
test_acc=$(python3 -c "import json,sys; print(json.load(open('$work/test.json'))['accuracy'])")
val_acc=$(grep 'val accuracy' "$work/train.log" | awk '{print $3}')
echo "BENCH $name epochs=$epochs train_images=$(find "$train" -type f | wc -l) best_val_accuracy=$val_acc test_accuracy=$test_acc train_wall_s=$((e - s))"
