"""The models tools/torch_bench.py times: stock PyTorch modules for plain
training and evaluation, and for augmented dropout the way a framework user
writes it, a hand-written two-mask autograd Function (y = F ⊙ x, dx = B ⊙ dy)
plus a custom function for a convolution right after a site, so that its
weight gradient reads B ⊙ x.

The layers (and so the parameters) are the checker's, tools/torch_check.py;
only the forward passes differ: the checker's carry read values beside
forward values to judge dropjit's gradients, while a speed baseline must be
PyTorch as a user would run it.

Where a site feeds an average pool (ConvNet-Quick's sites 2 and 3) the next
layer's weight gradient here reads F ⊙ x rather than pool(B ⊙ x): a little
less work than the contract asks of dropjit, so the comparison, if anything,
favours PyTorch.
"""

import torch
import torch.nn.functional as F

import torch_check


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


class ConvNetQuick(torch_check.ConvNetQuick):
    """Caffe cifar10_quick; dropout sites after each ReLU."""

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


def block(b, x, masks, site):
    """A residual block of the checker's ResNet-20 (`torch_check.Block`)."""
    h = F.relu(b.bn1(b.conv1(x)))
    h = b.bn2(site_conv(h, b.conv2, masks, site))
    sc = x
    if b.stride != 1 or b.pad:
        sc = F.pad(x[:, :, :: b.stride, :: b.stride], (0, 0, 0, 0, b.pad, b.pad))
    return F.relu(h + sc)


class ResNet20(torch_check.ResNet20):
    def forward(self, x, masks):
        x = F.relu(self.bn1(self.conv1(x)))
        site = 0
        for layer in (self.layer1, self.layer2, self.layer3):
            for b in layer:
                x = block(b, x, masks, site)
                site += 1
        return self.fc(x.mean((2, 3)))
