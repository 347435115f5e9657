#!/usr/bin/env bash
# One column of the paper's ConvNet-Quick / CIFAR-10 table: trains the model
# file's Caffe recipe (full data) once per dropout mode at ratio R, then prints
# each run's final test accuracy. Runs that already finished are not redone.
#   tools/convnet_table.sh 0.1 [DATA_DIR] [MODES...]
# MODES: standard forward backward augmented (default: all four; augmented
# uses R / 0.0002, as the paper's augmented-vs-standard table does).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:?ratio}
DATA=${2:-${DROPJIT_DATA:-data}}
shift $(( $# < 2 ? $# : 2 ))
MODES=${*:-standard forward backward augmented}
BIN=target/release/dropjit
for mode in $MODES; do
  case $mode in
    standard)  flags=(--dropout standard --fwd "$R") ;;
    forward)   flags=(--dropout forward --fwd "$R") ;;
    backward)  flags=(--dropout backward --bwd "$R") ;;
    augmented) flags=(--fwd "$R" --bwd 0.0002) ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  out=runs/convnet_quick-cifar10-$mode-$R
  if [ ! -f "$out/summary.json" ]; then
    $BIN train --graph models/convnet_quick.json --data "$DATA" "${flags[@]}" --out "$out"
  fi
done
for mode in $MODES; do
  out=runs/convnet_quick-cifar10-$mode-$R
  acc=$(grep -o '"final_test_accuracy": *[0-9.]*' "$out/summary.json" | grep -o '[0-9.]*$')
  echo "$mode $R: final test accuracy $acc ($out)"
done
