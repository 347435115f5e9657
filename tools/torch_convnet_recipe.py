#!/usr/bin/env python3
"""PyTorch reference run of ConvNet-Quick's Caffe recipe on the same CIFAR-10
binary files, for docs/results.md. Not a dependency of dropjit:

    .venv/bin/python tools/torch_convnet_recipe.py --data DIR [--threads 2]

Batch 100, no shuffling (Caffe's LMDB order), per-pixel mean image subtracted
on the 0..255 scale, SGD momentum 0.9, weight decay 0.004 (biases too, as
Caffe's decay_mult 1), learning rate 0.001 for 4,000 iterations then 0.0001 for
1,000, biases at twice the learning rate, Caffe's Gaussian initialisation.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from torch_check import ConvNetQuick  # noqa: E402


class NoMasks:
    def masks(self, site, shape):
        return None, None


def read(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32), raw[:, 0].astype(np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d = os.path.join(a.data, "cifar-10-batches-bin")
    parts = [read(os.path.join(d, f"data_batch_{i}.bin")) for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read(os.path.join(d, "test_batch.bin"))
    mean = xtr.mean(axis=0, keepdims=True)
    xtr, xte = torch.tensor(xtr - mean), torch.tensor(xte - mean)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    m = ConvNetQuick()
    for name, std in [("conv1", 1e-4), ("conv2", 1e-2), ("conv3", 1e-2), ("ip1", 1e-1), ("ip2", 1e-1)]:
        layer = getattr(m, name)
        torch.nn.init.normal_(layer.weight, 0.0, std)
        torch.nn.init.zeros_(layer.bias)
    weights = [p for n, p in m.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in m.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "lr": 0.001}, {"params": biases, "lr": 0.002}],
        lr=0.001, momentum=0.9, weight_decay=0.004,
    )
    masks, t0, n = NoMasks(), time.time(), xtr.shape[0]
    m.train()
    for it in range(5000):
        if it == 4000:
            for g in opt.param_groups:
                g["lr"] /= 10
        s = (it * 100) % n
        loss = F.cross_entropy(m(xtr[s:s + 100], masks), ytr[s:s + 100])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % 500 == 0:
            print(f"iteration {it + 1}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    m.eval()
    with torch.no_grad():
        correct = sum((m(xte[i:i + 500], masks).argmax(1) == yte[i:i + 500]).sum().item() for i in range(0, 10000, 500))
    wall = time.time() - t0
    print(f"test accuracy {correct / 10000:.4f} after 5000 iterations, {wall:.0f} s, {500000 / wall:.0f} images/s")


if __name__ == "__main__":
    main()
