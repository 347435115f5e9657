#!/usr/bin/env bash
# Measures dropjit and PyTorch on the same machine in one session, for
# docs/performance.md. Needs a virtual environment with torch (PY=...), and a
# release build. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BIN=target/release/dropjit
STEPS=${STEPS:-15}
run() { echo "$*" >&2; "$@"; }
for cfg in "resnet20 128" "convnet_quick 100"; do
  set -- $cfg
  model=$1 batch=$2
  run $BIN bench --graph models/$model.json --batch $batch --threads 2 --steps $STEPS --json
  run $BIN bench --graph models/$model.json --batch $batch --threads 2 --steps $STEPS --fwd 0.2 --bwd 0.0001 --json
  run $BIN bench --graph models/$model.json --batch $batch --threads 1 --steps $STEPS --json
  run $BIN bench --graph models/$model.json --batch $batch --threads 2 --steps $STEPS --eval --json
  run $PY tools/torch_bench.py --model $model --batch $batch --threads 2 --steps $STEPS --json
  run $PY tools/torch_bench.py --model $model --batch $batch --threads 2 --steps $STEPS --fwd 0.2 --bwd 0.0001 --json
  run $PY tools/torch_bench.py --model $model --batch $batch --threads 1 --steps $STEPS --json
done
