#!/usr/bin/env bash
# Phone photos, decode + predict: `flora predict` over a folder of COUNT (default 64) phone-like
# 12-MP JPEGs (make_phone_photos.py: 4032x3024, quality 90, half of them stored turned with an EXIF
# Orientation tag) against Pillow's preprocessing of the same folder in THREADS (2) worker
# processes (pillow_preprocess.py: open, [draft], exif_transpose, RGB, resize the shorter side,
# centre crop, float CHW normalised; no model, so a lower bound for any Python pipeline):
#   - with draft("RGB", (S, S)): libjpeg's DCT scaling decodes at 1/8 of the size here;
#   - without draft: the whole 12-MP image is decoded, as torchvision's loader does.
# flora: the wall time of the whole `flora predict --json FOLDER` command (process start, model
# load, decode, inference, output: nothing subtracted), RAYON_NUM_THREADS=THREADS; its model is
# the reference CNN at S=64 trained for one epoch on 8 phone photos (the weights do not change the
# speed). Pillow: from before its pool starts to the last array received. Each side runs RUNS times
# (default 3), interleaved, and the best run counts.
# Prints the CPU, each run, then
#   RATIO predict size=64 flora/pillow_draft=... (goal >= 1.0)  flora/pillow_full=...
# SIZES="64 224" adds a MobileNetV2 (width 0.35) at 224 px, trained the same way (~1 min more).
# Env: COUNT (64), RUNS (3), SIZES ("64"), THREADS (2), PHONE_VENV (the venv with pillow + numpy;
#   default /tmp/phonebench-venv, see bench/phone/README.md), PHONE_DATA (/tmp/flora-phone: the
#   photos, kept), FLORA_BIN (default target/release/flora), WORK (a folder that keeps the trained
#   models between runs; default a temporary one).
# Usage: bench/phone/predict.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
count=${COUNT:-64}
runs=${RUNS:-3}
need_flora
need_venv PIL numpy
cpu_info
photos "$data/predict$count" "$count"
folder=$data/predict$count
work=${WORK:-$(mktemp -d)}
trap '[ -n "${WORK:-}" ] || rm -rf "$work"' EXIT

declare -A BEST
best() { # key seconds: keep the smaller
  if [ -z "${BEST[$1]:-}" ] || (( $(echo "$2 < ${BEST[$1]}" | bc) )); then BEST[$1]=$2; fi
}
for size in ${SIZES:-64}; do
  arch=cnn; [ "$size" -ge 160 ] && arch=mobilenet_v2
  model=$(tiny_model "$work/model$size" "$size" "$arch")
  "$flora" predict --model "$model" --json "$folder" >/dev/null 2>&1 || true # warm the page cache
  for r in $(seq "$runs"); do
    s=$(now_ns)
    "$flora" predict --model "$model" --json "$folder" >"$work/out.jsonl" 2>"$work/predict.err" \
      || { tail "$work/predict.err" >&2; die "flora predict failed"; }
    t=$(secs_since "$s")
    lines=$(wc -l <"$work/out.jsonl")
    [ "$lines" -eq "$count" ] || die "flora predict printed $lines lines for $count photos (see $work/out.jsonl)"
    echo "BENCH predict size=$size arch=$arch run=$r flora images=$count seconds=$t img_per_s=$(echo "scale=2; $count / $t" | bc)"
    best "flora,$size" "$t"
    for mode in draft full; do
      flag=""; [ $mode = draft ] && flag=--draft
      line=$("$py" "$here/pillow_preprocess.py" --size "$size" --workers "$threads" $flag "$folder")
      echo "BENCH predict size=$size run=$r pillow_$mode ${line#PILLOW }"
      best "$mode,$size" "$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<<"$line")"
    done
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for size in ${SIZES:-64}; do
  f=${BEST[flora,$size]} d=${BEST[draft,$size]} u=${BEST[full,$size]}
  printf 'RESULT predict size=%s images=%s best of %s: flora %.1f img/s, pillow_draft %.1f img/s, pillow_full %.1f img/s\n' \
    "$size" "$count" "$runs" "$(echo "$count / $f" | bc -l)" "$(echo "$count / $d" | bc -l)" "$(echo "$count / $u" | bc -l)"
  # img/s ratio = inverse ratio of the times
  echo "RATIO predict size=$size flora/pillow_draft=$(ratio "$d" "$f") (goal >= 1.0) flora/pillow_full=$(ratio "$u" "$f")"
done
