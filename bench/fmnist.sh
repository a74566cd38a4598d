#!/usr/bin/env bash
# Accuracy of the default recipe on the full Fashion-MNIST official split: image size 28, 10% of
# the 60k training images held out for validation, 10 epochs; then `flora eval` on the 10k test
# images. Prints the best val accuracy, the test accuracy and the wall time.
# Needs: apt-get install dataset-fashion-mnist. Takes about 15 minutes on 2 cores.
# Usage: bench/fmnist.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-10}
shared=${FLORA_SHARED:-$(cd .. && pwd)/shared}
root=/tmp/flora-data/fmnist
[ -d "$root/train" ] || bench/make_fashion_mnist.py --train-out "$root/train" --test-out "$root/test" >/dev/null
cargo build --release --quiet
work=${WORK:-$(mktemp -d)}
printf '[project]\nname = "fmnist"\n[data]\nimage_size = 28\nval_fraction = 0.1\n' >"$work/flora.toml"
s=$(date +%s)
./target/release/flora --config "$work/flora.toml" train --data "$root/train" --epochs "$epochs" --name fmnist28 | tee "$work/train.log"
e=$(date +%s)
./target/release/flora --config "$work/flora.toml" eval --run fmnist28 --data "$root/test" --json >"$work/test.json"
test_acc=$(python3 -c "import json,sys; print(json.load(open('$work/test.json'))['accuracy'])")
val_acc=$(grep 'val accuracy' "$work/train.log" | awk '{print $3}')
echo "BENCH fmnist28 epochs=$epochs best_val_accuracy=$val_acc test_accuracy=$test_acc train_wall_s=$((e - s))"
