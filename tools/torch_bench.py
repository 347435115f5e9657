#!/usr/bin/env python3
"""PyTorch baseline for `dropjit bench`: the same models, batch and threads,
training steps per second with plain SGD, or with a hand-written two-mask
dropout (F in the forward pass; B = F ⊙ G for dx and for the next layer's
weight gradient), the way a framework user would write the paper's augmented
dropout. Not a dependency; run from a virtual environment with torch:

    .venv/bin/python tools/torch_bench.py --model resnet20 --batch 128 --threads 2 \
        [--fwd 0.2 --bwd 0.0001] [--channels-last] [--eval] [--json]

--channels-last puts the model and input in NHWC (PyTorch's fastest CPU
convolutions); --eval times inference (eval mode, no autograd) instead of a
training step.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from torch_bench_models import ConvNetQuick, ResNet20  # noqa: E402


class TorchMasks:
    """F and B = F ⊙ G drawn with torch's generator (augmented dropout)."""

    def __init__(self, pf, pb):
        self.pf, self.pb = pf, pb

    def masks(self, site, shape):
        if self.pf == 0 and self.pb == 0:
            return None, None
        f = (torch.rand(shape) >= self.pf).float() / (1 - self.pf)
        g = (torch.rand(shape) >= self.pb).float() / (1 - self.pb)
        return f, f * g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["convnet_quick", "resnet20"], required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--fwd", type=float, default=0.0)
    ap.add_argument("--bwd", type=float, default=0.0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = {"convnet_quick": ConvNetQuick, "resnet20": ResNet20}[a.model]()
    model.train(not a.eval)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch,))
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    masks = TorchMasks(a.fwd, a.bwd)
    times = []
    for i in range(a.steps + 2):
        t = time.perf_counter()
        if a.eval:
            with torch.no_grad():
                model(x, TorchMasks(0, 0))
        else:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x, masks), y)
            loss.backward()
            opt.step()
        if i >= 2:
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    med = times[len(times) // 2]
    res = {
        "model": a.model, "framework": f"torch {torch.__version__}", "batch": a.batch,
        "mode": "eval" if a.eval else "train", "channels_last": a.channels_last,
        "tuned_malloc": "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""),
        "threads": a.threads, "dropout": "plain" if a.fwd == a.bwd == 0 else f"two-mask {a.fwd}/{a.bwd}",
        "step_ms_median": med, "step_ms_min": times[0], "step_ms_max": times[-1],
        "images_per_second": a.batch / med * 1e3,
    }
    print(json.dumps(res) if a.json else
          f"{a.model} torch {res['dropout']} batch {a.batch} threads {a.threads}: "
          f"{med:.1f} ms/step, {res['images_per_second']:.0f} images/s")


if __name__ == "__main__":
    main()
