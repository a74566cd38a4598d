#!/usr/bin/env bash
# flora's inference against ONNX Runtime on the same model, inputs and threads: for each model
# (the cnn at 64 px, MobileNetV2 w0.35 at 96 px and w1.0 at 224 px) benches/infer.rs writes a
# bundle and times flora's fused path, `flora export` writes it as ONNX, bench/ort_infer.py
# times ONNX Runtime (PyPI `onnxruntime`, all graph optimisations) on the export; prints img/s
# in batches and batch-1 latency, and flora / ORT.
# Env: THREADS (default 2), ORT_PYTHON (default /tmp/flora-onnx/bin/python, made if missing),
# FLORA_KERNELS to time another kernel build.
# Usage: bench/onnx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
py=${ORT_PYTHON:-/tmp/flora-onnx/bin/python}
if ! "$py" -c "import onnxruntime, numpy" 2>/dev/null; then
  python3 -m venv /tmp/flora-onnx && /tmp/flora-onnx/bin/pip install -q onnx onnxruntime numpy pillow
  py=/tmp/flora-onnx/bin/python
fi
cargo build --release --quiet --bin flora
flora=$PWD/target/release/flora
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); threads $threads"
echo "flora $($flora --version | grep kernels)"
printf '%-28s %10s %10s %6s %10s %10s %6s\n' model "flora/s" "ort/s" ratio "flora ms" "ort ms" ratio
for spec in "cnn 1.0 64 64" "mobilenet_v2 0.35 96 32" "mobilenet_v2 1.0 224 8"; do
  read -r arch width size batch <<<"$spec"
  f=$(cargo bench --quiet --bench infer -- "$arch" "$width" "$size" "$batch" "$threads" "$work/bundle" | grep '^BENCH flora')
  $flora export --model "$work/bundle" --out "$work/m.onnx" --force >/dev/null 2>&1
  o=$("$py" bench/ort_infer.py "$work/m.onnx" "$batch" "$threads")
  get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
  fi=$(get img_s "$f"); oi=$(get img_s "$o"); fm=$(get b1_ms "$f"); om=$(get b1_ms "$o")
  printf '%-28s %10s %10s %6.2f %10s %10s %6.2f\n' "$arch w$width ${size}px b$batch" "$fi" "$oi" \
    "$(echo "$fi / $oi" | bc -l)" "$fm" "$om" "$(echo "$om / $fm" | bc -l)"
done
echo "ratio: flora / ORT for img/s, ORT / flora for latency (above 1: flora faster)"
