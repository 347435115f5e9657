#!/usr/bin/env bash
# dropjit's augmented dropout (0.2 / 0.0001) against its plain step. Each run
# compiles both steps in one process and alternates them step by step
# (`bench --vs-plain`), so the VM's drift between runs cancels; the script
# repeats that ROUNDS times per model and prints each run's median ratio of
# images/s and the median of those.
#
#   cargo build --release && tools/bench_aug_vs_plain.sh     # ROUNDS=3 STEPS=30 THREADS=2
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-30}
. tools/bench_lib.sh
for model in "resnet20 128" "convnet_quick 100"; do
  set -- $model
  ratios=()
  for _ in $(seq "$ROUNDS"); do
    ratios+=("$("$BIN" bench --graph "models/$1.json" --batch "$2" --fwd 0.2 --bwd 0.0001 \
      --threads "$THREADS" --steps "$STEPS" --vs-plain --json |
      sed 's/.*"vs_plain_median":\([0-9.]*\).*/\1/' | xargs printf '%.3f')")
  done
  echo "$1: augmented / plain images/s, median of $STEPS alternating pairs per run: ${ratios[*]}; median $(median "${ratios[@]}")"
done
