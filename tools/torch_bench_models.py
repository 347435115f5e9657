"""The models tools/torch_bench.py times: stock PyTorch modules for plain
training and evaluation, and for augmented dropout the way a framework user
writes it, a hand-written two-mask autograd Function (y = F ⊙ x, dx = B ⊙ dy)
plus a custom function for a convolution right after a site, so that its
weight gradient reads B ⊙ x.

Kept apart from tools/torch_check.py on purpose: the checker's models carry
read values beside forward values and run in float64 to judge dropjit's
gradients; a speed baseline must be PyTorch as a user would run it.

Where a site feeds an average pool (ConvNet-Quick's sites 2 and 3) the next
layer's weight gradient here reads F ⊙ x rather than pool(B ⊙ x): a little
less work than the contract asks of dropjit, so the comparison, if anything,
favours PyTorch.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


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


