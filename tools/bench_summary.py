#!/usr/bin/env python3
"""Summarises tools/bench_vs_torch.sh's JSON lines as a Markdown table:
images/s per engine and round, and dropjit's ratio to each PyTorch baseline
measured in the same round. Standard library only."""

import json
import statistics
import sys
from collections import defaultdict


def workload(r):
    dropout = r["dropout"]
    if dropout.startswith("augmented") or dropout.startswith("two-mask"):
        dropout = "augmented 0.2/0.0001"
    return (r["model"], r.get("mode", "train"), dropout)


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    ips = defaultdict(dict)  # workload -> (engine, round) -> images/s
    for r in rows:
        ips[workload(r)][(r["engine"], r["round"])] = r["images_per_second"]
    rounds = sorted({r["round"] for r in rows})
    print("| model | pass | dropout | dropjit img/s | PyTorch tuned | PyTorch default "
          "| dropjit / tuned | dropjit / default |")
    print("|---|---|---|---|---|---|---|---|")

    def series(w, engine):
        return [ips[w].get((engine, k)) for k in rounds]

    def fmt(vals):
        return ", ".join("–" if v is None else f"{v:.0f}" for v in vals)

    def ratio(a, b):
        rs = [x / y for x, y in zip(a, b) if x and y]
        if not rs:
            return "–"
        return ", ".join(f"{r:.2f}×" for r in rs) + f" (median {statistics.median(rs):.2f}×)"

    for w in sorted(ips):
        j, t, d = series(w, "dropjit"), series(w, "torch-tuned"), series(w, "torch-default")
        print(f"| {w[0]} | {w[1]} | {w[2]} | {fmt(j)} | {fmt(t)} | {fmt(d)} "
              f"| {ratio(j, t)} | {ratio(j, d)} |")
    print()
    for model in sorted({w[0] for w in ips}):
        plain = series((model, "train", "plain"), "dropjit")
        aug = series((model, "train", "augmented 0.2/0.0001"), "dropjit")
        print(f"{model}: dropjit augmented / plain per round: {ratio(aug, plain)}")
    print(f"\n(each cell: one value per round, rounds {rounds[0]}..{rounds[-1]}; "
          "ratios pair runs of the same round)")


if __name__ == "__main__":
    main(sys.argv[1])
