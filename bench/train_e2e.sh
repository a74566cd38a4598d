#!/usr/bin/env bash
# `flora train` end to end against ../shared/reference/torch_train.py, in one command: process
# start to finish (wall time as the shell sees it, Python's imports and flora's decoding
# included), EPOCHS epochs (default 5) at 64 px, batch 32, augmentation on both sides (flora's
# random resized crop + flip; torch_train.py's flip), and peak memory: flora's one process against
# torch's main process plus its DataLoader workers (--workers 2, the script's default).
# Prints each side, then RATIO lines: torch wall / flora wall (the goal is >= 1.5) and flora peak
# RSS / torch's (the goal is <= 0.25).
# Data: DATA (default /tmp/flora-data/fmnist-ci/train: 1,000 real Fashion-MNIST images, 800 of
# them trained on by both). Needs a venv with torch + torchvision at REF_VENV (default
# /tmp/refvenv), GNU time (/usr/bin/time, Debian package `time`) and bc.
# Env: FLORA_TRAIN_ENGINE (fused, the default, or burn), THREADS (both sides, default 2).
# Usage: bench/train_e2e.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-5}
threads=${THREADS:-2}
data=${DATA:-/tmp/flora-data/fmnist-ci/train}
shared=${FLORA_SHARED:-$(cd .. && pwd)/shared}
venv=${REF_VENV:-/tmp/refvenv}
[ -x /usr/bin/time ] || { echo "GNU time is missing: apt-get install -y time" >&2; exit 1; }
[ -x "$venv/bin/python" ] || { echo "no PyTorch venv at $venv (see ../shared/reference/README.md)" >&2; exit 1; }
[ -d "$data" ] || bench/make_fashion_mnist.py --train-out /tmp/flora-data/fmnist-ci/train \
    --test-out /tmp/flora-data/fmnist-ci/test --per-class 100 >/dev/null
cargo build --release --quiet
flora=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/flora
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
  "$(grep -qw avx512f /proc/cpuinfo && echo AVX-512 || (grep -qw avx2 /proc/cpuinfo && echo AVX2 || echo 'no AVX2'))"

printf '[project]\nname = "bench"\n[data]\nimage_size = 64\nval_fraction = 0.2\naugment = true\n[train]\nbatch_size = 32\npatience = 0\nthreads = %s\n' \
  "$threads" >"$work/flora.toml"
/usr/bin/time -f "%e %M" -o "$work/flora.time" \
  "$flora" --config "$work/flora.toml" train --data "$data" --epochs "$epochs" --name e2e >"$work/flora.log" 2>&1
read -r flora_s flora_kb <"$work/flora.time"
flora_acc=$(sed -nE 's/.*val accuracy +([0-9.]+%).*/\1/p' "$work/flora.log" | tail -1)
echo "BENCH flora engine=${FLORA_TRAIN_ENGINE:-fused} epochs=$epochs wall_s=$flora_s peak_rss_mb=$((flora_kb / 1024)) val_accuracy=${flora_acc:-?}"

/usr/bin/time -f "%e %M" -o "$work/torch.time" \
  "$venv/bin/python" "$shared/reference/torch_train.py" --data "$data" --epochs "$epochs" --size 64 \
  --threads "$threads" --workers 2 >"$work/torch.log" 2>&1
read -r torch_s _ <"$work/torch.time"
result=$(grep '^RESULT' "$work/torch.log")
main_mb=$(sed -E 's/.*peak_rss_mb=([0-9]+).*/\1/' <<<"$result")
worker_mb=$(sed -E 's/.*worker_peak_rss_mb=([0-9]+).*/\1/' <<<"$result")
torch_mb=$((main_mb + 2 * worker_mb))
echo "BENCH torch epochs=$epochs wall_s=$torch_s peak_rss_mb=$torch_mb (main $main_mb + 2 workers x $worker_mb)" \
  "best_val_acc=$(sed -E 's/.*best_val_acc=([0-9.]+).*/\1/' <<<"$result")"
echo "RATIO end_to_end speed flora/torch=$(echo "scale=2; $torch_s / $flora_s" | bc) (goal >= 1.5)"
echo "RATIO peak_rss flora/torch=$(echo "scale=3; $flora_kb / 1024 / $torch_mb" | bc) (goal <= 0.25;" \
  "against torch's main process alone: $(echo "scale=3; $flora_kb / 1024 / $main_mb" | bc), as forked workers share pages)"
