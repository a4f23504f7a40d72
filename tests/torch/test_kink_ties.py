"""The kink recorder's patterns exactly on a kink match autograd's convention there.

The gradient check judges a probe that crosses a kink at both steps one-sided, on the side
whose pattern is the checked point's, against autograd's gradient there. That is sound only
if, at a tie, the pattern is the side autograd differentiates (a rectifier at 0: off;
``clamp`` at a bound: inside), or a state of its own (``abs`` at 0, a tie of ``maximum``).
For every call the recorder knows, at inputs exactly on its kinks: wherever θ±h·d keeps
θ's pattern, the one-sided difference must equal autograd's derivative along d."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402, N812

from trainwatch.torch.gradcheck import KinkRecorder  # noqa: E402

H = 1e-7
BASE = [0.7, -0.3, 1.3, -1.7, 0.2, 2.2, -2.5, 0.9]
OTHER = torch.tensor(BASE, dtype=torch.float64)
MINUS = -torch.ones(8, dtype=torch.float64)

# name -> (the call on x, the values placed at x's first entries: each on a kink)
CALLS = {
    "relu": (torch.relu, [0.0, 0.0]),
    "relu_": (lambda x: torch.relu_(x.clone()), [0.0, 0.0]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), [0.0]),
    "leaky_relu in place": (lambda x: F.leaky_relu(x.clone(), 0.1, inplace=True), [0.0]),
    "elu": (lambda x: F.elu(x, 2.0), [0.0]),
    "selu": (F.selu, [0.0]),
    "celu": (lambda x: F.celu(x, 2.0), [0.0]),
    "prelu": (lambda x: F.prelu(x, torch.tensor([0.25], dtype=torch.float64)), [0.0]),
    "rrelu": (lambda x: F.rrelu(x, training=False), [0.0]),
    "threshold": (lambda x: F.threshold(x, 0.5, 0.1), [0.5]),
    "threshold in place": (lambda x: F.threshold(x.clone(), 0.5, 0.9, inplace=True), [0.5]),
    "hardsigmoid in place": (lambda x: F.hardsigmoid(x.clone(), inplace=True), [3.0, -3.0]),
    "hardswish in place": (lambda x: F.hardswish(x.clone(), inplace=True), [3.0, -3.0]),
    "hardshrink": (lambda x: F.hardshrink(x, 0.5), [0.5, -0.5]),
    "softshrink": (lambda x: F.softshrink(x, 0.5), [0.5, -0.5]),
    "hardtanh": (F.hardtanh, [1.0, -1.0]),
    "hardtanh in place": (lambda x: F.hardtanh(x.clone(), inplace=True), [1.0, -1.0]),
    "relu6": (F.relu6, [0.0, 6.0]),
    "clamp": (lambda x: x.clamp(-0.5, 0.5), [0.5, -0.5]),
    "clamp_": (lambda x: x.clone().clamp_(-0.5, 0.5), [0.5, -0.5]),
    "clamp_min": (lambda x: torch.clamp_min(x, 0.0), [0.0]),
    "clamp_max": (lambda x: torch.clamp_max(x, 0.0), [0.0]),
    "clip": (lambda x: torch.clip(x, -0.5, 0.5), [0.5]),
    "hardsigmoid": (F.hardsigmoid, [3.0, -3.0]),
    "hardswish": (F.hardswish, [3.0, -3.0]),
    "abs": (torch.abs, [0.0]),
    "abs_": (lambda x: x.clone().abs_(), [0.0]),
    "maximum": (lambda x: torch.maximum(x, OTHER), [BASE[0]]),
    "minimum": (lambda x: torch.minimum(x, OTHER), [BASE[0]]),
    "fmax": (lambda x: torch.fmax(x, OTHER), [BASE[0]]),
    "max with other": (lambda x: torch.max(x, OTHER), [BASE[0]]),
    "max of all": (lambda x: x.max().reshape(1), [2.2]),
    "min of all": (lambda x: x.min().reshape(1), [-2.5]),
    "max along a dim": (lambda x: x.reshape(2, 4).max(1), [0.0, 0.0, 1.3, 1.3]),
    "amax": (lambda x: x.reshape(2, 4).amax(1), [1.3, -0.3, 1.3]),
    "sort": (torch.sort, [0.2]),
    "topk": (lambda x: torch.topk(x, 3), [2.2]),
    "cummax": (lambda x: torch.cummax(x, 0), [0.7, 0.7]),
    "max_pool1d": (lambda x: F.max_pool1d(x.reshape(1, 1, 8), 2), [-0.3]),
    "max_pool2d": (lambda x: F.max_pool2d(x.reshape(1, 1, 2, 4), 2), [2.2]),  # (ties x[5])
    "adaptive_max_pool1d": (lambda x: F.adaptive_max_pool1d(x.reshape(1, 1, 8), 3), [-0.3]),
    "amin": (lambda x: x.reshape(2, 4).amin(1), [-1.7, -0.3, -1.7]),
    "kthvalue": (lambda x: torch.kthvalue(x, 3), [-0.3]),
    "cummin": (lambda x: torch.cummin(x, 0), [-0.3]),
    "mode": (lambda x: torch.mode(x.reshape(2, 4), 1), [-0.3, -0.3]),
    "l1_loss": (lambda x: F.l1_loss(x, OTHER, reduction="none"), [BASE[0]]),
    "hinge_embedding_loss": (lambda x: F.hinge_embedding_loss(x, MINUS, reduction="none"),
                             [1.0]),
    "margin_ranking_loss": (lambda x: F.margin_ranking_loss(x, OTHER, MINUS,
                                                            reduction="none"), [BASE[0]]),
    "multi_margin_loss": (lambda x: F.multi_margin_loss(x.reshape(2, 4), torch.tensor([0, 1]),
                                                        reduction="none"),
                          [1.0, 0.0, -3.0, -4.0, 0.0]),
    "argsort": (lambda x: x.gather(0, torch.argsort(x)) * torch.arange(8.0), [0.2]),
    "median along a dim": (lambda x: torch.median(x.reshape(2, 4), 1), [-0.3, -0.3]),
    "median of all": (lambda x: torch.median(x).reshape(1), [0.2]),  # (ties x[4])
    "quantile": (lambda x: torch.quantile(x, 0.5).reshape(1), [0.2]),
    "norm": (lambda x: x.reshape(2, 4).norm(dim=1), [0.0, 0.0, 0.0, 0.0]),
    "vector_norm": (lambda x: torch.linalg.vector_norm(x.reshape(2, 4), dim=1),
                    [0.0, 0.0, 0.0, 0.0]),
    "grid_sample": (lambda x: F.grid_sample(IMAGE, x.reshape(1, 2, 2, 2), align_corners=False),
                    [0.25, -0.25, 0.75]),
    "grid_sample aligned": (lambda x: F.grid_sample(IMAGE, x.reshape(1, 2, 2, 2),
                                                    align_corners=True), [1 / 3, -1 / 3]),
    "grid_sample nearest": (lambda x: F.grid_sample(IMAGE, x.reshape(1, 2, 2, 2), "nearest",
                                                    align_corners=False), [0.5, 0.0]),
    "grid_sample border": (lambda x: F.grid_sample(IMAGE, 2 * x.reshape(1, 2, 2, 2),
                                                   padding_mode="border",
                                                   align_corners=False), [0.125]),
    "floor": (torch.floor, [1.0]),
    "round": (torch.round, [0.5]),
    "a comparison": (lambda x: (x > 0).double() * x, [0.0]),
}
#: calls whose gradient at a tie is neither side's (sign(0) = 0; a tie's gradient split)
TIE_STATES = {"abs", "abs_", "maximum", "minimum", "fmax", "max with other", "max of all",
              "min of all", "l1_loss", "median of all", "quantile", "norm", "vector_norm"}
IMAGE = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
WEIGHTS = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def weighted(call):
    """A scalar loss of the call's (first) output, smooth in x elsewhere."""
    def loss(x):
        out = call(x)
        out = (out[0] if isinstance(out, tuple) else out).reshape(-1).double()
        return (out * WEIGHTS[:out.numel()]).sum() + 0.1 * (x ** 2).sum()
    return loss


@pytest.mark.parametrize("name", list(CALLS))
def test_a_side_that_keeps_the_pattern_at_a_tie_is_the_side_autograd_differentiates(name):
    call, ties = CALLS[name]
    loss = weighted(call)
    x = torch.tensor(ties + BASE[len(ties):], dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(loss(xg), xg)[0]
    recorder = KinkRecorder(0)

    def evaluate(point):
        recorder.reset()
        with torch.no_grad(), recorder:
            value = loss(point)
        return recorder.read(value)

    j0, pattern = evaluate(x)
    assert pattern is not None, "no kink pattern recorded"
    tied = list(range(len(ties)))
    directions = [torch.eye(8, dtype=torch.float64)[i] for i in tied]
    directions.append(torch.eye(8, dtype=torch.float64)[tied].sum(0))
    judged = 0
    for d in directions:
        for side in (1.0, -1.0):
            j, moved = evaluate(x + side * H * d)
            if np.array_equal(moved, pattern):
                judged += 1
                one_sided, autograd = (j - j0) / (side * H), float(grad @ d)
                assert abs(one_sided - autograd) <= 1e-5 * max(1.0, abs(autograd)), (
                    f"θ{'+' if side > 0 else '-'}h keeps the pattern, but its one-sided "
                    f"derivative {one_sided:.6g} is not autograd's {autograd:.6g}")
    if name in TIE_STATES:  # autograd takes neither side there: the tie is a state of its own
        assert judged == 0
    else:
        assert judged, "no side kept the pattern: the test checked nothing"
