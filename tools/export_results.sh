#!/usr/bin/env bash
# Copies a sweep's small result files — sweep.json, and per run config.json,
# summary.json, metrics.jsonl (no checkpoints, no weights) — into
# results/<sweep name>/, then writes its report and plots there.
#   tools/export_results.sh runs/convnet_quick-cifar10-results [DROPJIT_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?sweep directory}
BIN=${2:-target/release/dropjit}
NAME=$(basename "$SRC")
DEST=results/$NAME
mkdir -p "$DEST/runs"
cp "$SRC/sweep.json" "$DEST/"
for run in "$SRC"/runs/*/; do
  r=$(basename "$run")
  mkdir -p "$DEST/runs/$r"
  for f in config.json summary.json metrics.jsonl; do
    if [ -f "$run/$f" ]; then cp "$run/$f" "$DEST/runs/$r/"; fi
  done
done
# A run copied before it finished has no summary.json; its metrics are kept
# (its curve so far) and the report counts it as unfinished.
"$BIN" report "$DEST" > /dev/null
echo "exported $(ls "$DEST/runs" | wc -l) runs to $DEST ($(ls "$DEST"/runs/*/summary.json 2>/dev/null | wc -l) finished)"
