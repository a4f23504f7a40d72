"""Torch models shared by the tests of several modules."""

import torch
from torch import nn


class ComplexMatmul(torch.autograd.Function):
    """x @ w for complex tensors; ``bug``: the weight's gradient conjugated."""

    @staticmethod
    def forward(ctx, x, w, bug):
        ctx.save_for_backward(x, w)
        ctx.bug = bug
        return x @ w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        grad_w = x.mH @ g
        return g @ w.mH, grad_w.conj() if ctx.bug else grad_w, None


class ComplexLayer(nn.Module):
    """A complex weight (as in Fourier neural operators), its output's magnitude read out."""

    def __init__(self, bug=False):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8, dtype=torch.cfloat) * 0.3)
        self.out = nn.Linear(8, 3)
        self.bug = bug

    def forward(self, x):
        return self.out(ComplexMatmul.apply(x.to(torch.cfloat), self.w, self.bug).abs())
