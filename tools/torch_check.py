#!/usr/bin/env python3
"""Check `dropjit grad` in every dropout mode against an independent PyTorch
implementation of the paper's per-layer equations.

Not a dependency of dropjit: run it from a virtual environment that has torch,
numpy and safetensors, e.g.

    python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors
    cargo build --release
    .venv/bin/python tools/torch_check.py --model resnet20 --dropout augmented --fwd 0.2 --bwd 0.1

It writes initial weights with `dropjit init` and a random batch, runs
`dropjit grad --masks-out`, then computes the loss and gradients with modules
written here from the published architectures (not from dropjit's graph or
backward graph), using the masks dropjit wrote (and checking them against its
own numpy re-derivation of the contract's hash).

The equations (shared/docs/dropout-semantics.md): every value carries the
value the forward pass computed and the value the backward pass reads. A site
computes `F ⊙ x` forward, passes `B ⊙ dy` back, and is read as `B ⊙ x`; a
parameter-free op after it (pooling, ReLU, add, shortcut, flatten) is read at
its inputs' read values, and its gradient is taken there; the first layer with
parameters (convolution, linear, batch norm) takes all its gradients at its
read input (batch norm with that input's own statistics) and ends the
substitution. Each op's gradient is PyTorch's own autograd of the op, evaluated
at the read values inside a custom autograd Function.

`--plant BUG` plants a known bug in this reference (wrong mask in a weight
gradient, max-pool routing by the forward input, batch norm with the forward
statistics, the substitution stopping at a site's direct consumers as dropjit
did before): the check must then fail, which shows it can.
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

PLANTS = ["none", "wrong-mask", "argmax-forward", "bn-forward-stats", "direct-consumers-only"]
PLANT = "none"

# ---- the contract's masks, re-derived (checked against --masks-out) ----------

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
    idx = np.arange(n, dtype=np.uint32)
    lo, hi = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
    bits = lowbias32(lowbias32(idx ^ lo) ^ hi)
    thr = int(round(p * 2147483648.0))
    return (bits >> np.uint32(1)).astype(np.int64) >= thr


def rederived(mode, pf, pb, seed, step, site, shape):
    """F and B of one site by the contract's table, as float32 arrays."""
    n = int(np.prod(shape))

    def build(factors):
        kept, scale = np.ones(n, dtype=bool), 1.0
        for stream, p in factors:
            kept &= keep(mask_key(seed, step, site, stream), n, p)
            scale *= 1.0 - p
        return np.where(kept, np.float32(1.0 / scale), np.float32(0.0)).reshape(shape)

    f_only = [(0, pf)] if pf > 0 else []
    g_only = [(1, pb)] if pb > 0 else []
    fw, bw = {
        "plain": ([], []),
        "standard": (f_only, f_only),
        "forward": (f_only, []),
        "backward": ([], g_only),
        "augmented": (f_only, f_only + g_only),
    }[mode]
    return build(fw), build(bw)


# ---- values as the forward pass computed them and the backward pass reads them


class V:
    """`fwd` carries autograd; `read` (detached) is what the backward pass reads,
    None where it is `fwd` itself."""

    def __init__(self, fwd, read=None):
        self.fwd, self.read = fwd, read

    def r(self):
        return self.fwd.detach() if self.read is None else self.read


class Site(torch.autograd.Function):
    """y = F ⊙ x forward; dx = B ⊙ dy."""

    @staticmethod
    def forward(ctx, x, fmask, bmask):
        ctx.save_for_backward(bmask)
        return x * fmask

    @staticmethod
    def backward(ctx, dy):
        (bmask,) = ctx.saved_tensors
        return dy * bmask, None, None


class AtRead(torch.autograd.Function):
    """`op(x, *params)` forward; every gradient is autograd's, taken at the read
    input `xr` instead of `x`."""

    @staticmethod
    def forward(ctx, op, x, xr, *params):
        ctx.op = op
        ctx.save_for_backward(xr, *params)
        with torch.no_grad():
            return op(x, *params)

    @staticmethod
    def backward(ctx, dy):
        xr, *params = ctx.saved_tensors
        with torch.enable_grad():
            xr = xr.detach().requires_grad_()
            ps = [p.detach().requires_grad_() for p in params]
            y = ctx.op(xr, *ps)
            grads = torch.autograd.grad(y, [xr] + ps, dy)
        return (None, grads[0], None) + tuple(grads[1:])


class Masks:
    def __init__(self, file, names, check):
        self.file, self.names, self.check = file, names, check
        self.index = 0

    def next(self, x):
        name = self.names[self.index]
        fm, bm = self.file[f"{name}.F"], self.file[f"{name}.B"]
        want_f, want_b = self.check(self.index, tuple(x.shape))
        assert fm.shape == tuple(x.shape), (name, fm.shape, x.shape)
        assert np.array_equal(fm, want_f) and np.array_equal(bm, want_b), (
            f"{name}: --masks-out differs from the contract's re-derivation"
        )
        self.index += 1
        return torch.tensor(fm, dtype=torch.float64), torch.tensor(bm, dtype=torch.float64)


def site(v, masks):
    fm, bm = masks.next(v.fwd)
    y = Site.apply(v.fwd, fm, bm)
    # The planted bug: weight gradients read F ⊙ x instead of B ⊙ x.
    read = v.r() * (fm if PLANT == "wrong-mask" else bm)
    return V(y, read)


def free(op, *vs):
    """A parameter-free op whose gradient does not depend on its input values
    (average pooling, flatten, add, shortcut): autograd as is."""
    y = op(*[v.fwd for v in vs])
    # The planted bug (dropjit's rule before issue 10): the substitution stops
    # at a site's direct consumers.
    if all(v.read is None for v in vs) or PLANT == "direct-consumers-only":
        return V(y)
    return V(y, op(*[v.r() for v in vs]).detach())


def at_read(op, v, *params):
    """An op whose gradient depends on its input: taken at the read value."""
    if v.read is None:
        return op(v.fwd, *params)
    return AtRead.apply(op, v.fwd, v.read, *params)


def relu(v):
    y = at_read(F.relu, v)
    return V(y) if v.read is None else V(y, F.relu(v.read))


def max_pool(v, k, s, ceil=False):
    op = lambda x: F.max_pool2d(x, k, s, ceil_mode=ceil)  # noqa: E731
    if v.read is None:
        return V(op(v.fwd))
    # The planted bug: route by the argmax of the forward input.
    xr = v.fwd.detach() if PLANT == "argmax-forward" else v.read
    return V(AtRead.apply(op, v.fwd, xr), op(v.read))


def layer(module, v):
    """A layer with parameters: gradients at the read input; its output is read
    as computed."""
    if v.read is None:
        return V(module(v.fwd))
    if isinstance(module, nn.BatchNorm2d):
        # Forward: batch statistics of the forward input, running stats updated.
        y = module(v.fwd)
        eps = module.eps

        def bn(x, gamma, beta, stats_of=None):
            src = x if stats_of is None else stats_of
            mean = src.mean((0, 2, 3), keepdim=True)
            var = src.var((0, 2, 3), unbiased=False, keepdim=True)
            return gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)

        if PLANT == "bn-forward-stats":
            fwd_x = v.fwd.detach()
            op = lambda x, g, b: bn(x, g, b, stats_of=fwd_x)  # noqa: E731
        else:
            op = bn
        grad_path = AtRead.apply(op, v.fwd, v.read, module.weight, module.bias)
        # Value of `y`, gradients of `grad_path`.
        return V(y.detach() + grad_path - grad_path.detach())
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    if isinstance(module, nn.Conv2d):
        st, pad = module.stride, module.padding
        op = lambda x, w, b=None: F.conv2d(x, w, b, st, pad)  # noqa: E731
    else:
        op = lambda x, w, b=None: F.linear(x, w, b)  # noqa: E731
    return V(AtRead.apply(op, v.fwd, v.read, *params))


# ---- the models, from the published architectures ----------------------------


class ConvNetQuick(nn.Module):
    """Caffe cifar10_quick; dropout sites after each ReLU."""

    sites = ["drop1", "drop2", "drop3"]
    image = (3, 32, 32)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.ip1 = nn.Linear(1024, 64)
        self.ip2 = nn.Linear(64, 10)

    def forward(self, x, masks):
        v = relu(max_pool(layer(self.conv1, V(x)), 3, 2, ceil=True))
        v = relu(layer(self.conv2, site(v, masks)))
        v = free(lambda t: F.avg_pool2d(t, 3, 2, ceil_mode=True), site(v, masks))
        v = relu(layer(self.conv3, v))
        v = free(lambda t: F.avg_pool2d(t, 3, 2, ceil_mode=True), site(v, masks))
        v = free(lambda t: t.flatten(1), v)
        return layer(self.ip2, layer(self.ip1, v)).fwd


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, v, masks):
        h = relu(layer(self.bn1, layer(self.conv1, v)))
        h = layer(self.bn2, layer(self.conv2, site(h, masks)))
        s, p = self.stride, self.pad
        sc = free(lambda t: F.pad(t[:, :, ::s, ::s], (0, 0, 0, 0, p, p)), v) if s != 1 or p else v
        return relu(free(torch.add, h, sc))


class ResNet20(nn.Module):
    sites = [f"layer{i}.{b}.drop" for i in (1, 2, 3) for b in range(3)]
    image = (3, 32, 32)

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
        v = relu(layer(self.bn1, layer(self.conv1, V(x))))
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                v = block(v, masks)
        return layer(self.fc, free(lambda t: t.mean((2, 3)), v)).fwd


class DropPoolBnAdd(nn.Module):
    """tests/fixtures/drop_pool_bn_add.json: sites before a max pool (whose
    output also feeds a residual add), before batch norm, and before an
    average pool -> flatten -> linear."""

    sites = ["drop1", "drop2", "drop3"]
    image = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(24, 10)

    def forward(self, x, masks):
        v = relu(layer(self.conv1, V(x)))
        pooled = max_pool(site(v, masks), 2, 2)
        h = layer(self.bn2, site(layer(self.conv2, pooled), masks))
        short = free(lambda t: F.pad(t, (0, 0, 0, 0, 1, 1)), pooled)
        v = relu(free(torch.add, h, short))
        v = free(lambda t: F.avg_pool2d(t, 2, 2).flatten(1), site(v, masks))
        return layer(self.fc, v).fwd


def ratio_flags(a):
    """The ratio flags the mode uses (dropjit refuses the others)."""
    uses = {"plain": (), "standard": ("fwd",), "forward": ("fwd",), "backward": ("bwd",),
            "augmented": ("fwd", "bwd")}[a.dropout]
    return [x for r in uses for x in (f"--{r}", str(getattr(a, r)))]


MODELS = {
    "convnet_quick": (ConvNetQuick, "models/convnet_quick.json"),
    "resnet20": (ResNet20, "models/resnet20.json"),
    "drop_pool_bn_add": (DropPoolBnAdd, "tests/fixtures/drop_pool_bn_add.json"),
}


def main():
    global PLANT
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--dropjit", default="target/release/dropjit")
    ap.add_argument("--dropout", default="plain")
    ap.add_argument("--fwd", type=float, default=0.0)
    ap.add_argument("--bwd", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--step", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--plant", choices=PLANTS, default="none")
    a = ap.parse_args()
    PLANT = a.plant
    torch.manual_seed(0)
    cls, graph = MODELS[a.model]
    model = cls()
    with tempfile.TemporaryDirectory() as tmp:
        w, b, g, m = (os.path.join(tmp, n) for n in ("w", "b", "g", "m"))
        run = lambda args: subprocess.run(args, check=True, stdout=subprocess.DEVNULL)  # noqa: E731
        run([a.dropjit, "init", "--graph", graph, "--out", w, "--seed", str(a.seed)])
        rng = np.random.default_rng(a.seed)
        images = rng.standard_normal((a.batch,) + cls.image).astype(np.float32)
        labels = rng.integers(0, 10, a.batch).astype(np.int64)
        save_file({"input": images, "label": labels}, b)
        run([a.dropjit, "grad", "--graph", graph, "--weights", w, "--batch-file", b, "--out", g,
             "--masks-out", m, "--seed", str(a.seed), "--step", str(a.step),
             "--dropout", a.dropout] + ratio_flags(a))
        state = {k: torch.tensor(v) for k, v in load_file(w).items()}
        model.load_state_dict(state, strict=True)
        ours, mask_file = load_file(g), load_file(m)
    model.train()
    model.double()
    check = lambda i, shape: rederived(a.dropout, a.fwd, a.bwd, a.seed, a.step, i, shape)  # noqa: E731
    masks = Masks(mask_file, cls.sites, check)
    logits = model(torch.tensor(images, dtype=torch.float64), masks)
    assert masks.index == len(cls.sites) and len(mask_file) == 2 * len(cls.sites)
    loss = F.cross_entropy(logits, torch.tensor(labels))
    loss.backward()
    worst = abs(float(ours["loss"]) - loss.item()) / abs(loss.item())
    print(f"{a.model} {a.dropout} fwd={a.fwd} bwd={a.bwd} plant={a.plant}: "
          f"{len(cls.sites)} sites' masks match the contract")
    print(f"loss: dropjit {float(ours['loss']):.7f}  torch {loss.item():.7f}  rel {worst:.2e}")
    print(f"{'tensor':<28} {'max|grad|':>10} {'rel err':>10}")
    for name, p in model.named_parameters():
        ref = p.grad.numpy()
        got = ours[name].astype(np.float64)
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
        worst = max(worst, err)
        print(f"{name:<28} {np.abs(ref).max():>10.3e} {err:>10.2e}")
    ok = worst < a.tolerance
    print(f"worst relative error {worst:.2e} (tolerance {a.tolerance:.0e}): {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
