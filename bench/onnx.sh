#!/usr/bin/env bash
# flora's inference against ONNX Runtime on the same model, inputs and threads: for each model
# (the cnn at 64 px, MobileNetV2 w0.35 at 96 px and w1.0 at 224 px) benches/infer.rs writes a
# bundle and times flora's fused path, `flora export` writes it as ONNX, bench/ort_infer.py
# times ONNX Runtime (PyPI `onnxruntime`, all graph optimisations) on the export; prints img/s
# in batches and batch-1 latency, and flora / ORT.
# Each model is timed ROUNDS times (default 3), flora and ORT alternating, and the best of each
# is kept, so a busy machine slows both alike rather than whichever ran during the burst.
# Env: THREADS (default 2), ROUNDS, ORT_PYTHON (default /tmp/flora-onnx/bin/python, made if missing),
# FLORA_KERNELS to time another kernel build.
# Usage: bench/onnx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
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
echo "flora $($flora --version | grep kernels); $rounds rounds, best of each; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %10s %10s %6s %10s %10s %6s\n' model "flora/s" "ort/s" ratio "flora ms" "ort ms" ratio
for spec in "cnn 1.0 64 64" "mobilenet_v2 0.35 96 32" "mobilenet_v2 1.0 224 8"; do
  read -r arch width size batch <<<"$spec"
  cargo bench --quiet --bench infer -- "$arch" "$width" "$size" 1 1 "$work/bundle" >/dev/null
  $flora export --model "$work/bundle" --out "$work/m.onnx" --force >/dev/null 2>&1
  get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
  f_img=0 o_img=0 f_ms=1e9 o_ms=1e9
  for _ in $(seq "$rounds"); do
    f=$(cargo bench --quiet --bench infer -- "$arch" "$width" "$size" "$batch" "$threads" "$work/bundle" | grep '^BENCH flora')
    o=$("$py" bench/ort_infer.py "$work/m.onnx" "$batch" "$threads")
    f_img=$(echo "$f_img $(get img_s "$f")" | awk '{print ($2 > $1) ? $2 : $1}')
    o_img=$(echo "$o_img $(get img_s "$o")" | awk '{print ($2 > $1) ? $2 : $1}')
    f_ms=$(echo "$f_ms $(get b1_ms "$f")" | awk '{print ($2 < $1) ? $2 : $1}')
    o_ms=$(echo "$o_ms $(get b1_ms "$o")" | awk '{print ($2 < $1) ? $2 : $1}')
  done
  printf '%-28s %10s %10s %6.2f %10s %10s %6.2f\n' "$arch w$width ${size}px b$batch" "$f_img" "$o_img" \
    "$(echo "$f_img / $o_img" | bc -l)" "$f_ms" "$o_ms" "$(echo "$o_ms / $f_ms" | bc -l)"
done
echo "ratio: flora / ORT for img/s, ORT / flora for latency (above 1: flora faster)"
