#!/usr/bin/env bash
# The retraining cycle, as one command: fold the collected uploads into the dataset, train a new
# model, check it against a minimum accuracy, promote it through the gate (better than the live
# model on the same data), and optionally make it live.
#
#   deploy/retrain.sh [--accept-above P] [--min-accuracy X] [--live] [--name NAME] [-- TRAIN FLAGS]
#
# Run it from the project folder (the one with flora.toml), or pass --config FILE.
# Exits non-zero at the first step that fails, naming it; the live model changes only when every
# gate passed and --live was given. Exit codes: 0 promoted, 3 below the accuracy gate,
# 4 promote refused (worse than the live model) or failed, 1 anything else. FLORA names the
# binary (default: flora on PATH).
set -euo pipefail

flora=${FLORA:-flora}
accept_above=0.95
min_accuracy=0.8
live=""
name="retrain-$(date -u +%Y%m%d-%H%M%S)"
config=()
train_flags=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --accept-above) accept_above=$2; shift 2 ;;
    --min-accuracy) min_accuracy=$2; shift 2 ;;
    --live) live="--live"; shift ;;
    --name) name=$2; shift 2 ;;
    --config) config=(--config "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_flags=("$@"); break ;;
    *) echo "retrain.sh: unknown option $1 (see --help)" >&2; exit 1 ;;
  esac
done

step() { echo "==> $*" >&2; }
fail() { echo "retrain.sh: $1; the live model is unchanged" >&2; exit "$2"; }

step "1/4 merge: collected uploads into the dataset (confident ones above $accept_above into their class)"
"$flora" "${config[@]}" merge --accept-above "$accept_above" || fail "merge failed" 1

step "2/4 train: run '$name'"
"$flora" "${config[@]}" train --name "$name" "${train_flags[@]}" || fail "training failed" 1

step "3/4 eval: run '$name' must reach accuracy $min_accuracy"
set +e
"$flora" "${config[@]}" eval --run "$name" --min-accuracy "$min_accuracy"
code=$?
set -e
case $code in
  0) ;;
  3) fail "run '$name' is below --min-accuracy $min_accuracy" 3 ;;
  *) fail "eval failed" 1 ;;
esac

step "4/4 promote: run '$name' through the gate ${live:+(and make it live)}"
"$flora" "${config[@]}" promote "$name" $live || fail "the promote gate refused run '$name'" 4
"$flora" "${config[@]}" status >&2
step "done: run '$name' promoted${live:+ and live}"
