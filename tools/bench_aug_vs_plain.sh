#!/usr/bin/env bash
# dropjit's augmented dropout (0.2 / 0.0001) against its plain step, the two
# alternated ROUNDS times back to back (the VM drifts too much between the
# rounds of bench_vs_torch.sh to resolve a few percent). Prints each pair's
# ratio and their median.
#
#   cargo build --release && tools/bench_aug_vs_plain.sh     # ROUNDS=6 STEPS=8 THREADS=2
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
STEPS=${STEPS:-8}
. tools/bench_lib.sh
for model in "resnet20 128" "convnet_quick 100"; do
  set -- $model
  ratios=()
  for _ in $(seq "$ROUNDS"); do
    plain=$(ips --graph "models/$1.json" --batch "$2")
    aug=$(ips --graph "models/$1.json" --batch "$2" --fwd 0.2 --bwd 0.0001)
    ratios+=("$(awk -v a="$aug" -v p="$plain" 'BEGIN { printf "%.3f", a / p }')")
  done
  median=$(median "${ratios[@]}")
  echo "$1: augmented / plain images/s per pair: ${ratios[*]}; median $median"
done
