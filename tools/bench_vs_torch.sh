#!/usr/bin/env bash
# dropjit against PyTorch on this machine, for docs/performance.md: each
# workload is measured in turn by dropjit, PyTorch tuned (channels_last model
# and input, glibc malloc that keeps its memory) and PyTorch default, and the
# whole sequence repeats ROUNDS times, so every pair is interleaved A B A B.
# Prints a Markdown table of images/s and ratios per round.
#
#   cargo build --release
#   PY=.venv/bin/python tools/bench_vs_torch.sh        # ROUNDS=2 STEPS=10 THREADS=2
#
# Needs a Python with torch (not a dependency of dropjit). Run it on an
# otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BIN=${BIN:-target/release/dropjit}
STEPS=${STEPS:-10}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
OUT=${OUT:-target/bench_vs_torch.jsonl}
TUNED=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184
mkdir -p "$(dirname "$OUT")"
: >"$OUT"

# tag ROUND ENGINE: prefix each JSON line with the round and engine.
tag() { sed "s/^{/{\"round\":$1,\"engine\":\"$2\",/" >>"$OUT"; }
jit() { "$BIN" bench --threads "$THREADS" --steps "$STEPS" --json "$@"; }
torch() { "$PY" tools/torch_bench.py --threads "$THREADS" --steps "$STEPS" --json "$@"; }

for round in $(seq "$ROUNDS"); do
  for cfg in "resnet20 128" "convnet_quick 100"; do
    set -- $cfg
    model=$1 batch=$2
    echo "round $round: $model" >&2
    jit --graph "models/$model.json" --batch "$batch" | tag "$round" dropjit
    GLIBC_TUNABLES=$TUNED torch --model "$model" --batch "$batch" --channels-last | tag "$round" torch-tuned
    torch --model "$model" --batch "$batch" | tag "$round" torch-default
    jit --graph "models/$model.json" --batch "$batch" --fwd 0.2 --bwd 0.0001 | tag "$round" dropjit
    GLIBC_TUNABLES=$TUNED torch --model "$model" --batch "$batch" --channels-last --fwd 0.2 --bwd 0.0001 | tag "$round" torch-tuned
    jit --graph "models/$model.json" --batch "$batch" --eval | tag "$round" dropjit
    GLIBC_TUNABLES=$TUNED torch --model "$model" --batch "$batch" --channels-last --eval | tag "$round" torch-tuned
    torch --model "$model" --batch "$batch" --eval | tag "$round" torch-default
  done
done
"$PY" tools/bench_summary.py "$OUT"
