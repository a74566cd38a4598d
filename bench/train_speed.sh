#!/usr/bin/env bash
# Model-step training speed of the reference CNN, fused training op vs Burn's generic ops vs
# PyTorch, measured in one command so the ratios are comparable on a shared machine:
#   cargo bench --bench train_step (forward + backward + Adam on a fixed random batch, the fused
#   and Burn engines interleaved), and bench/torch_step.py (the same step of torch_model.py's
#   SmallCnn, NCHW, as torch_train.py runs it) before and after it, at 64 px and 28 px.
# Prints each figure, then RATIO lines: fused/torch (goals: >= 1.25 at 64 px, >= 1.0 at 28 px)
# and fused/burn. The load average is printed too: other work on the machine skews the figures.
# Env: REF_VENV (default /tmp/refvenv), FLORA_SHARED (default ../shared), STEPS (default 30),
#      BATCH (default 32), SIZES (default "64 28"), THREADS (default 2; both sides).
# Usage: bench/train_speed.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${REF_VENV:-/tmp/refvenv}
shared=${FLORA_SHARED:-$(cd .. && pwd)/shared}
steps=${STEPS:-30}
batch=${BATCH:-32}
threads=${THREADS:-2}
if [ ! -x "$venv/bin/python" ]; then
  echo "no PyTorch venv at $venv (set REF_VENV; see $shared/reference/README.md)" >&2
  exit 1
fi
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') | $(grep -o -w -E 'avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')| threads $threads"
cargo bench --quiet --bench train_step --no-run 2>/dev/null
torch_step() {
  "$venv/bin/python" bench/torch_step.py --reference "$shared/reference" --steps "$steps" \
    --size "$1" --batch "$batch" --threads "$threads" | grep '^BENCH'
}
ips() { sed -E 's/.*img_per_s=([0-9.]+).*/\1/' <<<"$1"; }
for size in ${SIZES:-64 28}; do
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  t1=$(torch_step "$size")
  echo "$t1"
  flora=$(RAYON_NUM_THREADS=$threads cargo bench --quiet --bench train_step -- "$steps" "$size" "$batch" train-only | grep -E '^(BENCH|PHASES|RATIO)')
  echo "$flora"
  t2=$(torch_step "$size")
  echo "$t2"
  torch_ips=$(echo "($(ips "$t1") + $(ips "$t2")) / 2" | bc -l)
  fused_ips=$(ips "$(grep 'engine=fused' <<<"$flora" | grep '^BENCH')")
  burn_ips=$(ips "$(grep 'engine=burn' <<<"$flora" | grep '^BENCH')")
  printf 'RATIO size=%s batch=%s fused_vs_torch=%.2f burn_vs_torch=%.2f fused_vs_burn=%.2f (torch mean of 2 runs: %.1f img/s)\n' \
    "$size" "$batch" "$(echo "$fused_ips / $torch_ips" | bc -l)" "$(echo "$burn_ips / $torch_ips" | bc -l)" \
    "$(echo "$fused_ips / $burn_ips" | bc -l)" "$torch_ips"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
