#!/usr/bin/env bash
# dropjit's step with its Winograd convolutions against the same step with
# every convolution on the direct kernels (DROPJIT_WINOGRAD=off), the two
# alternated ROUNDS times back to back, training and evaluation of both
# models. Prints each pair's ratio and their median.
#
#   cargo build --release && tools/bench_winograd.sh     # ROUNDS=6 STEPS=10 THREADS=2
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
STEPS=${STEPS:-10}
. tools/bench_lib.sh
for run in "resnet20 128 train" "resnet20 128 eval" "convnet_quick 100 train" "convnet_quick 100 eval"; do
  set -- $run
  pass=()
  [ "$3" = eval ] && pass=(--eval)
  ratios=()
  for _ in $(seq "$ROUNDS"); do
    direct=$(DROPJIT_WINOGRAD=off ips --graph "models/$1.json" --batch "$2" "${pass[@]}")
    winograd=$(ips --graph "models/$1.json" --batch "$2" "${pass[@]}")
    ratios+=("$(awk -v w="$winograd" -v d="$direct" 'BEGIN { printf "%.3f", w / d }')")
    echo "$1 $3: direct $direct, winograd $winograd images/s" >&2
  done
  median=$(median "${ratios[@]}")
  echo "$1 $3: winograd / direct images/s per pair: ${ratios[*]}; median $median"
done
