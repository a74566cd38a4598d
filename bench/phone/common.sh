# Shared by the phone-photo benchmarks (bench/phone/*.sh); sourced, not run. Sets:
#   repo      the repository root (the scripts cd there)
#   here      bench/phone
#   flora     the flora binary: FLORA_BIN, else target/release/flora (CARGO_TARGET_DIR honoured)
#   venv, py  the Python venv (PHONE_VENV, else REF_VENV, else /tmp/phonebench-venv) and its python
#   shared    the folder holding reference/ (FLORA_SHARED, else ../shared, else ../../shared)
#   data      where the generated photos live (PHONE_DATA, default /tmp/flora-phone): kept between
#             runs, since making 12-MP JPEGs costs ~1 s each
#   threads   THREADS (default 2): rayon threads for flora, torch/ORT threads, Pillow workers
# and the helpers below.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/bench/phone
cd "$repo"
threads=${THREADS:-2}
data=${PHONE_DATA:-/tmp/flora-phone}
venv=${PHONE_VENV:-${REF_VENV:-/tmp/phonebench-venv}}
py=$venv/bin/python
if [ -n "${FLORA_SHARED:-}" ]; then shared=$FLORA_SHARED
elif [ -d "$repo/../shared/reference" ]; then shared=$(cd "$repo/../shared" && pwd)
else shared=$(cd "$repo/../.." && pwd)/shared # a worktree under wt/
fi
flora=${FLORA_BIN:-$(cd "${CARGO_TARGET_DIR:-$repo/target}" 2>/dev/null && pwd)/release/flora}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads

die() { echo "error: $*" >&2; exit 1; }

need_flora() {
  [ -x "$flora" ] || die "no flora binary at $flora: run 'cargo build --release' (or set FLORA_BIN)"
}

# need_venv module...: the venv exists and imports them (one line each in bench/phone/README.md)
need_venv() {
  [ -x "$py" ] || die "no Python venv at $venv (set PHONE_VENV; bench/phone/README.md says how to make it)"
  "$py" -c "import $(IFS=,; echo "$*")" 2>/dev/null \
    || die "the venv at $venv cannot import $* (bench/phone/README.md says what to install)"
}

need_shared() {
  [ -f "$shared/reference/torch_model.py" ] || die "no reference scripts at $shared/reference (set FLORA_SHARED)"
}

cpu_info() {
  local flags
  flags=$(grep -o -w -E 'avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
  echo "CPU $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //') | flags: ${flags:-none of avx2/avx512f} | cores $(nproc) | threads used $threads (flora, torch, ORT, Pillow workers)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# photos DIR COUNT [make_phone_photos.py options...]: make (or reuse) a set of phone photos
photos() {
  local dir=$1 count=$2; shift 2
  "$py" "$here/make_phone_photos.py" --out "$dir" --count "$count" --jobs "$threads" "$@" | grep -E '^(PHOTOS|note)' | sed "s|^|$(basename "$dir"): |"
}

now_ns() { date +%s%N; }
secs_since() { printf '%.3f' "$(echo "($(now_ns) - $1) / 1000000000" | bc -l)"; }
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; } # a/b, two decimals

# wait_port PORT PID: until GET /health answers (60 s), or fail if the server died
wait_health() {
  local port=$1 pid=$2
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "server (pid $pid) exited before answering on port $port" >&2; return 1; }
    sleep 0.1
  done
  echo "server did not answer on port $port within 60 s" >&2; return 1
}

# port_free PORT: fail if something already listens there (a stale server would be measured)
port_free() {
  if curl -s -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null; then
    die "port $1 is already in use: set PORT"
  fi
}

# tiny_model DIR SIZE [ARCH]: a bundle trained for one epoch on a few phone photos (2 classes), for
# the predict and serve benchmarks (speed does not depend on the weights). Prints the bundle folder.
tiny_model() {
  local work=$1 size=$2 arch=${3:-cnn}
  mkdir -p "$work"
  if ! ls -d "$work"/runs/*/*/artifacts/model/bundle.json >/dev/null 2>&1; then
    printf '[data]\nimage_size = %s\n[train]\narch = "%s"\nepochs = 1\nthreads = %s\n' "$size" "$arch" "$threads" >"$work/flora.toml"
    [ "$arch" = mobilenet_v2 ] && printf 'width = 0.35\n' >>"$work/flora.toml"
    photos "$data/tiny8" 8 --classes 2 --seed 1 >&2
    (cd "$work" && "$flora" train --data "$data/tiny8" --name "tiny$size" >"$work/train.log" 2>&1) \
      || { tail -20 "$work/train.log" >&2; die "flora train of the tiny model failed (log above)"; }
  fi
  dirname "$(ls -d "$work"/runs/*/*/artifacts/model/bundle.json | head -1)"
}
