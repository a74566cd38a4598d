#!/usr/bin/env bash
# Phone photos, training's first epoch: `flora train --epochs 1` on COUNT (default 500) phone-like
# 12-MP JPEGs in CLASSES (default 4) classes (make_phone_photos.py --classes: one class per source
# photo), 64 px, batch 32, THREADS (2) threads, against torch's DataLoader with THREADS worker
# processes running the reference CNN (../shared/reference/torch_train.py) for one epoch on the
# same photos. Every figure is the wall time of the whole command (process start to exit: scan,
# decode, one training pass over 80%, one validation pass over the other 20%, saving), the
# same split on both sides.
#   flora_cold   the project's pixel cache emptied first (rm -rf CACHE_DIR, default
#                PROJECT/.flora/cache, and `flora cache clear` when the binary has that command):
#                every photo is decoded, and the cache filled
#   flora_warm   the same command again: the decoded pixels come from the cache
#   flora_nocache  with `--no-cache` (and FLORA_PIXEL_CACHE=off), only when `flora train --help`
#                lists the flag: the cost of writing the cache is cold - nocache
#   torch_full   torch_train.py: torchvision's ImageFolder loader (PIL open + convert: the whole
#                12-MP image decoded, every epoch; EXIF orientation ignored), as a typical user has it
#   torch_draft  bench/phone/torch_train_draft.py: the same with draft() + exif_transpose in the
#                loader (TORCH_DRAFT=0 skips it)
# A binary without a pixel cache gives warm = cold (the script says so). The photos are read
# once before the runs so that the OS page cache holds them for every side alike.
# Prints each run, the cache's size on disk, then
#   RATIO train_epoch1 speed flora_cold/torch_full=... flora_warm/torch_full=... (> 1: flora faster)
# Env: COUNT (500), CLASSES (4), THREADS (2), TORCH_DRAFT (1), CACHE_DIR, PHONE_VENV (torch,
#   torchvision, pillow; default /tmp/phonebench-venv, see bench/phone/README.md), FLORA_SHARED,
#   PHONE_DATA (/tmp/flora-phone: the photos, kept; 500 photos are ~1.3 GB and take ~8 min to make
#   on 2 cores), FLORA_BIN, WORK.
# Usage: bench/phone/train.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
count=${COUNT:-500}
classes=${CLASSES:-4}
need_flora
need_shared
need_venv PIL numpy torch torchvision
cpu_info
folder=$data/train${count}c$classes
photos "$folder" "$count" --classes "$classes" --seed 2
work=${WORK:-$(mktemp -d)}
trap '[ -n "${WORK:-}" ] || rm -rf "$work"' EXIT
proj=$work/flora
mkdir -p "$proj"
printf '[data]\nimage_size = 64\n[train]\nepochs = 1\nbatch_size = 32\nthreads = %s\n' "$threads" >"$proj/flora.toml"
cache_dir=${CACHE_DIR:-$proj/.flora/cache}
has_cache_cmd=0; "$flora" cache --help >/dev/null 2>&1 && has_cache_cmd=1
has_no_cache=0; "$flora" train --help 2>/dev/null | grep -q -- '--no-cache' && has_no_cache=1
echo "flora: $flora ($(stat -c %y "$flora" | cut -d. -f1)); pixel cache: $([ $has_cache_cmd = 1 ] && echo "\`flora cache\` present" || echo "no \`flora cache\` command"), --no-cache $([ $has_no_cache = 1 ] && echo present || echo absent)"
cat $(find "$folder" -name '*.jpg') >/dev/null # the page cache holds the photos for every run

declare -A WALL
timed() { # name command...: whole-command wall time and peak RSS (GNU time: the largest process)
  local name=$1; shift
  local s t
  s=$(now_ns)
  /usr/bin/time -f 'maxrss_kb=%M' -o "$work/$name.time" "$@" >"$work/$name.log" 2>&1 \
    || { tail -20 "$work/$name.log" >&2; die "$name failed (log above)"; }
  t=$(secs_since "$s")
  WALL[$name]=$t
  echo "BENCH train_epoch1 $name images=$count seconds=$t img_per_s=$(echo "scale=2; $count / $t" | bc) $(cat "$work/$name.time")"
}
flora_train=(env -C "$proj" "$flora" train --data "$folder" --epochs 1) # env -C: /usr/bin/time runs it in the project

# flora, cold pixel cache
rm -rf "$cache_dir"
[ $has_cache_cmd = 1 ] && (cd "$proj" && "$flora" cache clear >/dev/null 2>&1 || true)
timed flora_cold "${flora_train[@]}" --name cold
if [ -d "$cache_dir" ]; then
  echo "pixel cache after the cold run: $(du -sh "$cache_dir" | cut -f1) in $(find "$cache_dir" -type f | wc -l) files ($cache_dir)"
else
  echo "note: no pixel cache at $cache_dir after the cold run: flora_warm decodes again (set CACHE_DIR if it lives elsewhere)"
fi
# flora, warm pixel cache
timed flora_warm "${flora_train[@]}" --name warm
if [ $has_no_cache = 1 ]; then
  timed flora_nocache env FLORA_PIXEL_CACHE=off "${flora_train[@]}" --name nocache --no-cache
fi
# torch
timed torch_full "$py" "$shared/reference/torch_train.py" --data "$folder" --epochs 1 --size 64 \
  --workers "$threads" --threads "$threads"
grep '^epoch\|^RESULT' "$work/torch_full.log" | sed 's/^/  torch_full: /'
if [ "${TORCH_DRAFT:-1}" = 1 ]; then
  timed torch_draft "$py" "$here/torch_train_draft.py" --shared "$shared" --data "$folder" --epochs 1 \
    --size 64 --workers "$threads" --threads "$threads"
  grep '^epoch\|^RESULT' "$work/torch_draft.log" | sed 's/^/  torch_draft: /'
fi
grep -i -E 'epoch|decod|cache' "$work/flora_warm.log" | tail -5 | sed 's/^/  flora_warm: /' || true
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# speed ratios = inverse ratios of the wall times
line="RATIO train_epoch1 speed"
for f in flora_cold flora_warm; do
  line="$line $f/torch_full=$(ratio "${WALL[torch_full]}" "${WALL[$f]}")"
  [ -n "${WALL[torch_draft]:-}" ] && line="$line $f/torch_draft=$(ratio "${WALL[torch_draft]}" "${WALL[$f]}")"
done
echo "$line (> 1: flora faster)"
echo "RATIO train_epoch1 flora cold/warm time=$(ratio "${WALL[flora_cold]}" "${WALL[flora_warm]}")$([ -n "${WALL[flora_nocache]:-}" ] && echo " cold/nocache time=$(ratio "${WALL[flora_cold]}" "${WALL[flora_nocache]}")")"
