#!/usr/bin/env python3
"""Check `dropjit grad` against an independent PyTorch implementation.

Not a dependency of dropjit: run it from a virtual environment that has torch,
numpy and safetensors, e.g.

    python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors
    cargo build --release
    .venv/bin/python tools/torch_check.py --model resnet20 --dropout augmented --fwd 0.2 --bwd 0.1

It writes initial weights with `dropjit init`, a random batch, runs `dropjit
grad`, then computes the same loss and gradients with torch.nn modules written
here from the published architectures (not from dropjit's graph), with the
dropout masks re-derived in numpy from the contract in
shared/docs/dropout-semantics.md (same hash), applied through a two-mask
autograd Function. It prints the worst relative error per tensor and exits
non-zero above the tolerance.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

M64 = (1 << 64) - 1


def splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mask_key(seed, step, site, stream):
    a = splitmix64(seed)
    b = splitmix64(a ^ step)
    c = splitmix64(b ^ ((site << 1) | stream))
    return splitmix64(c)


def lowbias32(x):
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x = (x * np.uint32(0x7FEB352D)).astype(np.uint32)
    x ^= x >> np.uint32(15)
    x = (x * np.uint32(0x846CA68B)).astype(np.uint32)
    x ^= x >> np.uint32(16)
    return x


def keep(key, n, p):
    """Boolean keep-mask of n elements: the contract's counter-based Bernoulli."""
    idx = np.arange(n, dtype=np.uint32)
    lo, hi = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
    bits = lowbias32(lowbias32(idx ^ lo) ^ hi)
    thr = int(round(p * 2147483648.0))
    return (bits >> np.uint32(1)).astype(np.int64) >= thr


class Masks:
    """F and B of every site for one (seed, step), by the table of the contract."""

    def __init__(self, mode, pf, pb, seed, step):
        self.mode, self.pf, self.pb, self.seed, self.step = mode, pf, pb, seed, step

    def factor(self, site, stream, p, shape):
        n = int(np.prod(shape))
        kept = keep(mask_key(self.seed, self.step, site, stream), n, p)
        return kept.reshape(shape), p

    def masks(self, site, shape):
        def build(factors):
            if not factors:
                return None
            kept = np.ones(shape, dtype=bool)
            scale = 1.0
            for stream, p in factors:
                k, _ = self.factor(site, stream, p, shape)
                kept &= k
                scale *= 1.0 - p
            return torch.tensor(np.where(kept, np.float32(1.0 / scale), np.float32(0.0)))

        pf, pb = self.pf, self.pb
        f_only = [(0, pf)] if pf > 0 else []
        table = {
            "plain": ([], []),
            "standard": (f_only, f_only),
            "forward": (f_only, []),
            "backward": ([], [(1, pb)] if pb > 0 else []),
            "augmented": (f_only, f_only + ([(1, pb)] if pb > 0 else [])),
        }
        fw, bw = table[self.mode]
        return build(fw), build(bw)


class TwoMaskDropout(torch.autograd.Function):
    """y = F ⊙ x; dx = B ⊙ dy. The saved-activation rule (the next layer's dW
    reads B ⊙ x) is applied by the caller through `saved_input`."""

    @staticmethod
    def forward(ctx, x, fmask, bmask):
        ctx.save_for_backward(bmask)
        return x * fmask

    @staticmethod
    def backward(ctx, dy):
        (bmask,) = ctx.saved_tensors
        return dy * bmask, None, None


class SiteThenLayer(torch.autograd.Function):
    """A dropout site followed by a linear map `layer(y)` whose weight gradient must
    read B ⊙ x instead of y: forward uses F ⊙ x, backward is written out."""

    @staticmethod
    def forward(ctx, x, weight, fmask, bmask, conv_args):
        ctx.conv_args = conv_args
        ctx.save_for_backward(x, weight, bmask)
        y = x * fmask
        if conv_args is None:
            return y @ weight.t()
        stride, padding = conv_args
        return F.conv2d(y, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, dz):
        x, weight, bmask = ctx.saved_tensors
        saved = x * bmask
        if ctx.conv_args is None:
            dw = dz.t() @ saved
            dy = dz @ weight
        else:
            stride, padding = ctx.conv_args
            dw = torch.nn.grad.conv2d_weight(saved, weight.shape, dz, stride, padding)
            dy = torch.nn.grad.conv2d_input(x.shape, weight, dz, stride, padding)
        return dy * bmask, dw, None, None, None


def site_conv(x, conv, masks, site, stride=1, padding=None):
    fm, bm = masks.masks(site, tuple(x.shape))
    if fm is None and bm is None:
        return conv(x)  # plain: the stock module
    ones = torch.ones_like(x)
    fm = ones if fm is None else fm
    bm = ones if bm is None else bm
    pad = conv.padding[0] if padding is None else padding
    out = SiteThenLayer.apply(x, conv.weight, fm, bm, (conv.stride[0], pad))
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1, 1)
    return out


def site_only(x, masks, site):
    fm, bm = masks.masks(site, tuple(x.shape))
    if fm is None and bm is None:
        return x
    ones = torch.ones_like(x)
    return TwoMaskDropout.apply(x, ones if fm is None else fm, ones if bm is None else bm)


class ConvNetQuick(nn.Module):
    """Caffe cifar10_quick; dropout sites after each ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.ip1 = nn.Linear(1024, 64)
        self.ip2 = nn.Linear(64, 10)

    def forward(self, x, masks):
        x = F.relu(F.max_pool2d(self.conv1(x), 3, 2, ceil_mode=True))
        x = site_conv(x, self.conv2, masks, 0)  # drop1 then conv2
        x = F.relu(x)
        x = site_only(x, masks, 1)  # drop2, read by an average pool
        x = F.avg_pool2d(x, 3, 2, ceil_mode=True)
        x = F.relu(self.conv3(x))
        x = site_only(x, masks, 2)  # drop3
        x = F.avg_pool2d(x, 3, 2, ceil_mode=True)
        return self.ip2(self.ip1(x.flatten(1)))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x, masks, site):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(site_conv(h, self.conv2, masks, site))
        sc = x
        if self.stride != 1 or self.pad:
            sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(h + sc)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, layers = 16, []
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = []
            for b in range(3):
                blocks.append(Block(cin, cout, stride if b == 0 else 1))
                cin = cout
            layers.append(nn.ModuleList(blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, 10)

    def forward(self, x, masks):
        x = F.relu(self.bn1(self.conv1(x)))
        site = 0
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                x = block(x, masks, site)
                site += 1
        return self.fc(x.mean((2, 3)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["convnet_quick", "resnet20"], required=True)
    ap.add_argument("--dropjit", default="target/release/dropjit")
    ap.add_argument("--dropout", default="plain")
    ap.add_argument("--fwd", type=float, default=0.0)
    ap.add_argument("--bwd", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--step", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = {"convnet_quick": ConvNetQuick, "resnet20": ResNet20}[a.model]()
    with tempfile.TemporaryDirectory() as tmp:
        w, b, g = (os.path.join(tmp, n) for n in ("w.safetensors", "b.safetensors", "g.safetensors"))
        graph = f"models/{a.model}.json"
        subprocess.run([a.dropjit, "init", "--graph", graph, "--out", w, "--seed", str(a.seed)], check=True)
        rng = np.random.default_rng(a.seed)
        images = rng.standard_normal((a.batch, 3, 32, 32)).astype(np.float32)
        labels = rng.integers(0, 10, a.batch).astype(np.int64)
        save_file({"input": images, "label": labels}, b)
        flags = ["--dropout", a.dropout, "--fwd", str(a.fwd), "--bwd", str(a.bwd)]
        subprocess.run(
            [a.dropjit, "grad", "--graph", graph, "--weights", w, "--batch", b, "--out", g,
             "--seed", str(a.seed), "--step", str(a.step)] + flags,
            check=True,
        )
        state = {k: torch.tensor(v) for k, v in load_file(w).items()}
        model.load_state_dict(state, strict=True)
        model.train()
        masks = Masks(a.dropout, a.fwd, a.bwd, a.seed, a.step)
        model.double()
        logits = model(torch.tensor(images, dtype=torch.float64), masks)
        loss = F.cross_entropy(logits, torch.tensor(labels))
        loss.backward()
        ours = load_file(g)
    worst = abs(float(ours["loss"]) - loss.item()) / abs(loss.item())
    print(f"loss: dropjit {float(ours['loss']):.7f}  torch {loss.item():.7f}  rel {worst:.2e}")
    print(f"{'tensor':<28} {'max|grad|':>10} {'rel err':>10}")
    for name, p in model.named_parameters():
        ref = p.grad.numpy()
        got = ours[name].astype(np.float64)
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
        worst = max(worst, err)
        print(f"{name:<28} {np.abs(ref).max():>10.3e} {err:>10.2e}")
    print(f"worst relative error {worst:.2e} (tolerance {a.tolerance:.0e}): {'PASS' if worst < a.tolerance else 'FAIL'}")
    sys.exit(0 if worst < a.tolerance else 1)


if __name__ == "__main__":
    main()
