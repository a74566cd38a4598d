#!/usr/bin/env bash
# MobileNetV2 w0.35 at 96 px, batch 32, flora against torchvision under torch, in one command:
# training img/s (flora's fused training ops and Burn's generic ops), inference img/s and batch-1
# latency, then the ratios flora / torch and fused / Burn. FLORA_PHASES=1 adds a profile of the
# fused training step.
# Both run on 2 threads (FLORA: RAYON_NUM_THREADS; torch: set_num_threads).
# Usage: bench/mobilenet.sh [STEPS] (default 10); REF_VENV (default /tmp/refvenv) has torch.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-10}
threads=${THREADS:-2}
venv=${REF_VENV:-/tmp/refvenv}
lscpu | grep -E 'Model name' || true
lscpu | grep -oE 'avx512f|avx2' | sort -u | tr '\n' ' '; echo
out=$(mktemp)
trap 'rm -f "$out"' EXIT
RAYON_NUM_THREADS=$threads cargo test --release --quiet --bench mobilenet -- "$steps" 96 32 35 | tee "$out"
"$venv/bin/python" bench/torch_mobilenet.py "$steps" 96 32 0.35 "$threads" | tee -a "$out"
val() { grep "$1" "$out" | grep -oE "$2=[0-9.]+" | cut -d= -f2; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ft=$(val 'train engine=fused' img_per_s); bt=$(val 'train engine=burn' img_per_s)
tt=$(val 'train width' img_per_s)
fi=$(val 'infer engine=fused' img_per_s); ti=$(val 'infer engine=torch' img_per_s)
fl=$(val 'latency engine=fused' ms); tl=$(val 'latency engine=torch' ms)
echo "RATIO training    flora $ft img/s  torch $tt img/s  flora/torch $(ratio "$ft" "$tt")"
echo "RATIO training    fused $ft img/s  burn $bt img/s  fused/burn $(ratio "$ft" "$bt")  burn/torch $(ratio "$bt" "$tt")"
echo "RATIO inference   flora $fi img/s  torch $ti img/s  flora/torch $(ratio "$fi" "$ti")"
echo "RATIO batch-1     flora $fl ms  torch $tl ms  torch/flora $(ratio "$tl" "$fl") (higher: flora faster)"
