"""check_module: planted backward bugs are caught and pinned; correct modules pass; the model
comes back untouched."""

import random
import sys
import time
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tests.torch.models import ComplexLayer  # noqa: E402
from trainwatch.data import load_digits  # noqa: E402
from trainwatch.gradcheck import GradCheckReport  # noqa: E402
from trainwatch.torch import ForwardInputs, TorchBackend, check_module  # noqa: E402

# -- custom autograd Functions, with and without planted bugs -----------------------------------


class LinearFn(torch.autograd.Function):
    """y = x Wᵀ + b with a selectable backward bug (a name, or the index of one weight entry
    whose gradient is 3x too large)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bug):
        ctx.save_for_backward(x, weight)
        ctx.bug = bug
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_w = grad.T @ x
        if ctx.bug == "factor2":
            grad_w = 2 * grad_w
        elif ctx.bug == "transpose":  # square weight: right shape, wrong entries
            grad_w = x.T @ grad
        elif isinstance(ctx.bug, tuple):
            grad_w[ctx.bug] *= 3.0
        grad_b = grad.sum(0)
        if ctx.bug == "bias_missing":
            grad_b = torch.zeros_like(grad_b)
        return grad @ weight, grad_w, grad_b, None


class CustomLinear(nn.Linear):
    def __init__(self, n_in, n_out, bug=None):
        super().__init__(n_in, n_out)
        self.bug = bug

    def forward(self, x):
        return LinearFn.apply(x, self.weight, self.bias, self.bug)


class SigmoidFn(torch.autograd.Function):
    """sigmoid whose backward may apply s'(a) = a(1-a) to the pre-activation z (the classic bug)."""

    @staticmethod
    def forward(ctx, z, bug):
        a = torch.sigmoid(z)
        ctx.save_for_backward(z, a)
        ctx.bug = bug
        return a

    @staticmethod
    def backward(ctx, grad):
        z, a = ctx.saved_tensors
        wrt = z if ctx.bug else a
        return grad * wrt * (1 - wrt), None


class CustomSigmoid(nn.Module):
    def __init__(self, bug=False):
        super().__init__()
        self.bug = bug

    def forward(self, z):
        return SigmoidFn.apply(z, self.bug)


class DropoutFn(torch.autograd.Function):
    """Inverted dropout with a mask from the global generator; the bug forgets the mask."""

    @staticmethod
    def forward(ctx, x, p, bug):
        mask = (torch.rand_like(x) >= p).to(x.dtype) / (1 - p)
        ctx.save_for_backward(mask)
        ctx.bug = bug
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (grad if ctx.bug else grad * mask), None, None


class CustomDropout(nn.Module):
    def __init__(self, p=0.5, bug=False):
        super().__init__()
        self.p, self.bug = p, bug

    def forward(self, x):
        return DropoutFn.apply(x, self.p, self.bug) if self.training else x


def mlp(bug=None, sigmoid_bug=False, dropout_bug=False, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 12), nn.Tanh(),                          # 0
        CustomLinear(12, 12, bug=bug), CustomSigmoid(sigmoid_bug),  # 2
        CustomDropout(0.3, bug=dropout_bug),
        nn.Linear(12, 10),                                     # 5
    )


def digits(n=4, images=False, dtype=torch.float64):
    x, y = load_digits(images=images)
    return torch.as_tensor(x[10:10 + n], dtype=dtype), torch.as_tensor(y[10:10 + n])


def check(model, loss=None, n=4, images=False, **kwargs):
    x, y = digits(n, images)
    return check_module(model, loss or nn.CrossEntropyLoss(), x, y, **kwargs)


def verdicts(report):
    return {name: c.verdict for name, c in report.params.items()}


# -- planted bugs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bug", ["factor2", "transpose"])
def test_wrong_weight_gradient_is_pinned_to_that_weight(bug):
    report = check(mlp(bug=bug))
    assert isinstance(report, GradCheckReport)
    assert not report.passed and not report.nondeterministic
    assert report.failed == ["2.weight"]
    assert report.params["2.weight"].verdict == "wrong"
    assert list(report.params) == ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight",
                                   "5.bias"]
    if bug == "factor2":
        assert report.params["2.weight"].worst_analytic == pytest.approx(
            2 * report.params["2.weight"].worst_numerical, rel=1e-6)


def test_a_compiled_model_is_checked_eagerly_under_its_own_parameter_names():
    """torch.compile's wrapper: the check runs the module it wraps eagerly (dynamo compiles
    nothing for it: a float64 forward under the kink recorder would be compiled anew), and
    the report keeps the wrapper's ``named_parameters()`` names."""
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()  # (no code compiled by earlier tests)
    model = mlp(bug="factor2")
    compiled = torch.compile(model, backend="eager")
    x, y = digits(4)
    compiled(x.float())  # compiled once, as training would
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    report = check_module(compiled, nn.CrossEntropyLoss(), x, y)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs
    assert list(report.params) == [n for n, _ in compiled.named_parameters()]
    assert report.failed == ["_orig_mod.2.weight"]
    assert report.params["_orig_mod.2.weight"].worst_analytic == pytest.approx(
        2 * report.params["_orig_mod.2.weight"].worst_numerical, rel=1e-6)


class Checkpointed(nn.Module):
    """The mlp's middle layers (a planted bug in CustomLinear, dropout) recomputed in the
    backward by torch.utils.checkpoint."""

    def __init__(self, bug, reentrant):
        super().__init__()
        self.inner, self.reentrant = mlp(bug=bug), reentrant

    def forward(self, x):
        first, middle, last = self.inner[:2], self.inner[2:5], self.inner[5:]
        h = torch.utils.checkpoint.checkpoint(middle, first(x), use_reentrant=self.reentrant)
        return last(h)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("bug", [None, "factor2"])
def test_activation_checkpointing_is_checked_and_the_bug_inside_pinned(reentrant, bug):
    """Reentrant checkpointing differentiates through .backward() only (autograd.grad
    raises), non-reentrant through both; the recomputation draws the same dropout masks."""
    model = Checkpointed(bug, reentrant)
    model.inner[0].weight.grad = torch.ones_like(model.inner[0].weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (none from the check's gradient-free passes)
        report = check(model)
    assert report.failed == ([] if bug is None else ["inner.2.weight"])
    assert report.passed == (bug is None)
    assert torch.equal(model.inner[0].weight.grad, torch.ones_like(model.inner[0].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "inner.0.weight")


class CompiledInside(nn.Module):
    """The mlp's middle (a planted bug in CustomLinear) as a torch.compile'd submodule."""

    def __init__(self, bug):
        super().__init__()
        inner = mlp(bug=bug)
        self.first, self.last = inner[:2], inner[5:]
        self.middle = torch.compile(inner[2:5], backend="eager")

    def forward(self, x):
        return self.last(self.middle(self.first(x)))


@pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"), reason="torch < 2.6")
def test_compiled_code_inside_a_model_runs_eagerly_in_the_check_and_compiled_after_it():
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    model = CompiledInside("factor2")
    x, y = digits(4)
    model(x.float())
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    report = check_module(model, nn.CrossEntropyLoss(), x, y)
    assert report.failed == ["middle._orig_mod.2.weight"]
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs
    model(x[:3].float())  # (the stance is back: a new batch size compiles again)
    assert dynamo_utils.counters["stats"]["unique_graphs"] > graphs


@pytest.mark.parametrize("bug", [False, True])
def test_a_complex_parameter_is_checked_as_real_and_imaginary_parts(bug):
    torch.manual_seed(0)
    model = ComplexLayer(bug)
    before = model.w.detach().clone()
    report = check_module(model, nn.CrossEntropyLoss(), torch.randn(5, 4),
                          torch.randint(0, 3, (5,)))
    assert report.failed == (["w"] if bug else [])
    assert report.params["w"].verdict == ("wrong" if bug else "correct")
    assert any(note.startswith("w: complex, checked as its (real, imaginary) pairs")
               for note in report.notes)
    assert torch.equal(model.w.detach(), before) and model.w.dtype == torch.cfloat


def test_missing_bias_gradient_is_pinned_to_the_bias():
    report = check(mlp(bug="bias_missing"))
    assert report.failed == ["2.bias"]


def test_sigmoid_derivative_on_the_preactivation_blames_the_tensors_before_it():
    report = check(mlp(sigmoid_bug=True))
    assert not report.passed
    assert set(report.failed) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert verdicts(report)["5.weight"] in ("correct", "acceptable")
    assert verdicts(report)["5.bias"] in ("correct", "acceptable")


def test_dropout_backward_is_checked_with_the_same_masks():
    good = check(mlp(), seed=3)
    assert good.passed and not good.nondeterministic, str(good)
    bad = check(mlp(dropout_bug=True), seed=3)
    assert not bad.nondeterministic
    assert set(bad.failed) == {"0.weight", "0.bias", "2.weight", "2.bias"}


# -- correct models pass ------------------------------------------------------------------------


def cnn(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(24, 10),
    ).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_maxpool_batchnorm_dropout_cnn_passes(dtype):
    # real digits: blank borders give exact max-pool ties and ReLU zeros (kinks)
    report = check(cnn(dtype), n=3, images=True, seed=1)
    assert report.passed, str(report)
    assert report.precision == "float64"
    assert list(report.params) == [n for n, _ in cnn().named_parameters()]


def test_bias_in_front_of_a_normalisation_has_zero_gradient_and_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 10))
    report = check(model, n=5)
    assert report.passed, str(report)
    # BatchNorm removes each feature's shift: the bias before it has a zero true gradient
    assert abs(report.params["0.bias"].worst_analytic) < 1e-12
    assert report.params["0.bias"].verdict == "correct"
    # LayerNorm removes only the mean over features: that bias's gradient sums to zero
    x, y = digits(5)
    with torch.no_grad():
        h = model[2](model[1](model[0](x.float())))
    b = model[3].bias.detach().clone().requires_grad_(True)
    z = model[4](h @ model[3].weight.detach().T + b)
    nn.CrossEntropyLoss()(model[6](model[5](z)), y).backward()
    assert abs(float(b.grad.sum())) < 1e-6 < float(b.grad.abs().max())


def test_eval_mode_batchnorm_uses_running_statistics_and_passes():
    model = cnn()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    report = check(model, n=3, images=True)
    assert report.passed, str(report)


def test_hinge_loss_kinks_are_set_aside():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        model[2].weight.mul_(0.05)  # scores near 0: many hinge terms near their kink
    report = check(model, loss=nn.MultiMarginLoss(), n=6)
    assert report.passed, str(report)


def test_nested_names_frozen_parameters_and_unused_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Linear(64, 8), nn.ReLU())
            self.head = nn.Linear(8, 10)
            self.unused = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.head(self.features(x))

    torch.manual_seed(0)
    model = Net()
    model.features[0].bias.requires_grad_(False)
    report = check(model)
    # named_parameters() order: a module's own parameters before its children's
    assert list(report.params) == ["unused", "features.0.weight", "head.weight", "head.bias"]
    assert report.passed, str(report)


# -- the model comes back untouched ---------------------------------------------------------------


def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else (p.grad, p.grad.clone())
                  for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
        "np": np.random.get_state(),
        "py": random.getstate(),
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    }


def assert_untouched(model, before):
    after = snapshot(model)
    for k, v in before["state"].items():
        assert v.dtype == after["state"][k].dtype and torch.equal(v, after["state"][k]), k
    for n, p in model.named_parameters():
        if before["grads"][n] is None:
            assert p.grad is None, n
        else:
            obj, values = before["grads"][n]
            assert p.grad is obj and torch.equal(p.grad, values), n
    assert after["training"] == before["training"]
    assert torch.equal(after["rng"], before["rng"])
    b, a = before["np"], after["np"]
    assert b[0] == a[0] and np.array_equal(b[1], a[1]) and b[2:] == a[2:]
    assert after["py"] == before["py"]
    assert after["hooks"] == before["hooks"]


def test_model_untouched_float32_cnn_without_grads():
    model = cnn(torch.float32)
    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    before = snapshot(model)
    report = check(model, n=3, images=True)
    assert report.passed
    assert_untouched(model, before)
    assert model[1].num_batches_tracked.item() == 0  # running stats never updated


def test_model_untouched_with_grads_set_and_a_watching_backend():
    model = cnn(torch.float32)
    x, y = digits(8, images=True, dtype=torch.float32)
    nn.CrossEntropyLoss()(model(x), y).backward()
    model[4].weight.grad = None  # one None among set gradients
    backend = TorchBackend(model, nn.CrossEntropyLoss(), None)
    backend.capture_activations(True)  # hooks registered, capture on
    acts = backend.activations()
    before = snapshot(model)
    report = backend.check_gradients(x[:3], y[:3], seed=4)
    assert report.passed
    assert_untouched(model, before)
    assert backend.activations() == acts  # the check's forwards were not captured


def test_small_cpu_model_is_checked_single_threaded_and_the_thread_count_restored():
    """Small CPU models are checked with one intra-op thread (worker wake-ups dominated their
    tiny float64 ops); the user's setting comes back, also when loss_fn raises."""
    seen = []

    def loss_fn(out, y):
        seen.append(torch.get_num_threads())
        return nn.functional.cross_entropy(out, y)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        report = check_module(cnn(), loss_fn, *digits(3, images=True))
        assert report.passed and set(seen) == {1}
        assert torch.get_num_threads() == 2

        def broken(out, y):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            check_module(cnn(), broken, *digits(3, images=True))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_same_seed_same_report():
    a = check(cnn(), n=3, images=True, seed=5).to_dict()
    b = check(cnn(), n=3, images=True, seed=5).to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_numpy_inputs_and_options_are_passed_to_the_engine():
    x, y = load_digits()
    report = check_module(mlp(), nn.CrossEntropyLoss(), x[:3], y[:3], coordinates=2,
                          directions=1)
    assert report.passed
    assert all(c.directions <= 1 for c in report.params.values())
    with pytest.raises(TypeError, match="coordinatez"):
        check_module(mlp(), nn.CrossEntropyLoss(), x[:3], y[:3], coordinatez=2)
    with pytest.raises(TypeError, match="model"):
        check_module(lambda v: v, nn.CrossEntropyLoss(), x[:3], y[:3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_is_checked_and_untouched():
    model = cnn(torch.float32).cuda()
    cuda_rng = torch.cuda.get_rng_state()
    before = snapshot(model)
    x, y = digits(3, images=True, dtype=torch.float32)
    report = check_module(model, nn.CrossEntropyLoss(), x.cuda(), y.cuda(), seed=1)
    assert report.passed, str(report)
    assert_untouched(model, before)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    bad = mlp(bug="factor2").cuda()
    xm, ym = digits(4)
    assert check_module(bad, nn.CrossEntropyLoss(), xm.cuda(), ym.cuda()).failed == ["2.weight"]


def judged_one_sided(check) -> bool:
    """Whether some probe of a tensor sat on a kink at the checked point and was judged on
    the side whose kink pattern is the point's."""
    return any("sat on a kink at the checked point" in note for note in check.notes)


def test_relu_exactly_at_its_kink_is_judged_one_sided():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10)).double()
    x, y = digits(3)
    with torch.no_grad():  # unit 2's pre-activation is exactly 0 on example 0
        model[0].bias[2] = 0.0
        model[0].bias[2] = -model[0](x[:1])[0, 2]
    report = check_module(model, nn.CrossEntropyLoss(), x, y, kink_detection=False)
    assert report.passed, str(report)
    check = report.params["0.bias"]
    assert check.verdict == "correct" and check.kinks == 0 and judged_one_sided(check), check


class ShiftedBias(torch.autograd.Function):
    """``x + b`` whose bias gradient is ``sign`` times the right one."""

    @staticmethod
    def forward(ctx, x, b, sign):
        ctx.sign = sign
        return x + b

    @staticmethod
    def backward(ctx, g):
        return g, ctx.sign * g.sum(0), None


class BiasOnKink(nn.Module):
    def __init__(self, sign):
        super().__init__()
        self.l0 = nn.Linear(4, 6, bias=False)
        self.b0 = nn.Parameter(torch.zeros(6))
        self.l2 = nn.Linear(6, 2)
        self.sign = sign

    def forward(self, x):
        return self.l2(torch.relu(ShiftedBias.apply(self.l0(x), self.b0, self.sign)))


@pytest.mark.parametrize("sign, verdict", [(1.0, "correct"), (-1.0, "wrong")])
def test_a_bias_whose_every_probe_sits_on_a_kink_is_judged_one_sided(sign, verdict):
    """A zero bias under a ReLU fed an all-zero row: every unit of that row sits exactly on
    the kink, so every probe of the bias crosses it at every step. The side whose kink
    pattern is the checked point's (θ-h: the units stay off, as autograd takes them at 0)
    is judged one-sided: a bias gradient of the wrong sign is caught (it was set aside as a
    kink, and the check passed) and the right one is correct."""
    torch.manual_seed(0)
    model, x = BiasOnKink(sign), torch.randn(4, 4)
    x[0] = 0.0
    report = check_module(model, nn.functional.mse_loss, x, torch.randn(4, 2))
    check = report.params["b0"]
    assert check.verdict == verdict and judged_one_sided(check), str(report)
    assert report.failed == ([] if verdict == "correct" else ["b0"])


def test_maxpool_tie_is_judged_one_sided():
    # two channels mixed by a 1x1 conv with equal weights: the pool's two candidates tie,
    # and perturbing either weight changes the winner
    model = nn.Sequential(nn.Conv2d(2, 1, 1, bias=False), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(1, 3)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[3].weight.copy_(torch.tensor([[1.0], [-2.0], [0.5]]))
    x = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    x[0, 0, 0, 0] = x[0, 1, 0, 1] = 1.0
    report = check_module(model, nn.CrossEntropyLoss(), x, torch.tensor([1]),
                          kink_detection=False)
    assert report.passed, str(report)
    assert judged_one_sided(report.params["0.weight"])


class FunctionalNet(nn.Module):
    """Kinks in functional code: F.relu, a clamp, a maxout (torch.max over a dim)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 8)
        self.fc2 = nn.Linear(8, 12)
        self.out = nn.Linear(6, 10)

    def forward(self, x):
        h = torch.nn.functional.relu(self.fc1(x)).clamp(max=3.0)
        return self.out(self.fc2(h).view(-1, 6, 2).max(dim=2).values)


@pytest.mark.parametrize("where", ["relu", "clamp", "maxout"])
def test_kinks_in_functional_code_are_seen(where):
    """Exactly on a kink of functional code (its pattern seen by the recorder): judged
    one-sided, where a centered difference across the kink reads as wrong."""
    torch.manual_seed(1)
    model = FunctionalNet().double()
    x, y = digits(3)
    with torch.no_grad():
        h = model.fc1(x[:1])[0]
        if where == "relu":  # unit 2 exactly at 0 on example 0
            model.fc1.bias[2] -= h[2]
        elif where == "clamp":  # unit 5 exactly at the clamp's bound
            model.fc1.bias[5] += 3.0 - h[5]
        else:  # the two candidates of maxout unit 1 tie on example 0
            z = model.fc2(torch.relu(model.fc1(x[:1])).clamp(max=3.0))[0]
            model.fc2.bias[3] += z[2] - z[3]
    report = check_module(model, nn.CrossEntropyLoss(), x, y, kink_detection=False)
    assert report.passed, str(report)
    assert any(judged_one_sided(c) for c in report.params.values()), str(report)


def test_kink_patterns_of_torch_calls():
    from trainwatch.torch.gradcheck import KinkRecorder

    x = torch.tensor([[-1.0, 0.5, 2.0, 7.0]])
    rec = KinkRecorder(0)
    with rec:
        torch.relu(x)
        nn.functional.leaky_relu(x.clone(), 0.1, True)  # in place
        nn.functional.hardtanh(x)
        x.clamp(min=0.0, max=2.0)  # (2.0 on its bound: inside, where its gradient passes)
        torch.abs(x)
        torch.maximum(x, torch.zeros_like(x))
        x.max(dim=1)
        torch.topk(x, 2)
        _ = x > 1
        nn.functional.max_pool1d(x.view(1, 1, 4), 2)
        nn.functional.multi_margin_loss(x, torch.tensor([1]))
        torch.tanh(x)  # smooth: nothing recorded
    parts = [p.tolist() for p in rec.parts]
    assert parts == [
        [[False, True, True, True]], [[False, True, True, True]],
        [[1, 0, 2, 2]], [[1, 0, 0, 2]], [[-1.0, 1.0, 1.0, 1.0]],
        [[-1.0, 1.0, 1.0, 1.0]], [3], [[3, 2]], [[False, False, True, True]],
        [[[1, 3]]], [[False, True, True, True]],
    ]
    fingerprint = rec.fingerprint()
    assert fingerprint.dtype == torch.float64 and fingerprint.dim() == 0
    again = KinkRecorder(0)
    again.parts = list(rec.parts)
    assert float(again.fingerprint()) == float(fingerprint)
    again.parts[0] = torch.tensor([[False, False, True, True]])  # one rectifier flipped
    assert abs(float(again.fingerprint()) - float(fingerprint)) >= 0.5
    again.parts = list(rec.parts)
    again.parts[2] = torch.tensor([[1, 0, 2, 3]])  # another winner
    assert float(again.fingerprint()) != float(fingerprint)
    assert KinkRecorder(0).fingerprint() is None  # nothing recorded
    # read(): the loss and, on the CPU, an exact fingerprint (a hash of the patterns)
    loss = torch.tensor(0.25, dtype=torch.float64)
    value, exact = rec.read(loss)
    assert value == 0.25 and exact.shape == (1,)
    again.parts = [p.clone() for p in rec.parts]
    assert np.array_equal(again.read(loss)[1], exact)
    again.parts[-1] = torch.tensor([[False, True, True, False]])
    assert not np.array_equal(again.read(loss)[1], exact)
    assert KinkRecorder(0).read(loss)[1] is None  # (no signature: the engine's own kink test)


def test_max_pool_asked_for_indices_still_gets_them_under_the_recorder():
    from trainwatch.torch.gradcheck import KinkRecorder

    x = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]])
    rec = KinkRecorder(0)
    with rec:
        values, indices = nn.functional.max_pool1d(x, 2, return_indices=True)
        plain = nn.functional.max_pool1d(x, 2)
        adaptive = nn.functional.adaptive_max_pool1d(x, 1)
    assert values.tolist() == [[[3.0, 2.0]]] and indices.tolist() == [[[1, 2]]]
    assert isinstance(plain, torch.Tensor) and plain.tolist() == [[[3.0, 2.0]]]
    assert isinstance(adaptive, torch.Tensor) and adaptive.tolist() == [[[3.0]]]
    assert [p.tolist() for p in rec.parts] == [[[[1, 2]]], [[[1, 2]]], [[[1]]]]


class CountingNet(nn.Module):
    """Reassigns a buffer in every forward (not in place) and uses it: the check must see the
    same buffer at every evaluation, and the model's own buffer must stay as it was."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls = self.calls + 1
        return self.fc(x) * self.calls


class NumpyNoiseNet(nn.Module):
    """Draws from numpy's global generator in its forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        noise = torch.as_tensor(np.random.uniform(0.9, 1.1, size=x.shape), dtype=x.dtype)
        return self.fc(x * noise)


@pytest.mark.parametrize("net", [CountingNet, NumpyNoiseNet])
def test_forward_state_is_reset_before_every_evaluation(net):
    torch.manual_seed(0)
    np.random.seed(3)
    model = net().double()
    x, y = digits(3)
    before = snapshot(model)
    report = check_module(model, nn.CrossEntropyLoss(), x, y)
    assert not report.nondeterministic and report.passed, str(report)
    assert_untouched(model, before)
    if net is CountingNet:
        assert model.calls.item() == 0


# -- forwards that take several arguments ---------------------------------------------------------


class GatedNet(nn.Module):
    """forward(x, gate, *, scale): two tensor inputs and a keyword; the gate's branch goes
    through a custom linear that may carry a planted bug."""

    def __init__(self, bug=None):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(64, 10)
        self.gate = CustomLinear(4, 10, bug=bug)

    def forward(self, x, gate, *, scale=1.0):
        return self.body(x) * scale + torch.tanh(self.gate(gate))


def gated_inputs(n=4):
    x, y = digits(n)
    gate = torch.linspace(-1, 1, 4 * n, dtype=torch.float64).reshape(n, 4)
    return ForwardInputs((x, gate), {"scale": 0.5}), y


def test_a_forward_with_several_arguments_is_checked_through_forward_inputs():
    inputs, y = gated_inputs()
    report = check_module(GatedNet(), nn.CrossEntropyLoss(), inputs, y)
    assert report.passed and list(report.params) == ["body.weight", "body.bias", "gate.weight",
                                                     "gate.bias"]
    buggy = check_module(GatedNet(bug="factor2"), nn.CrossEntropyLoss(), inputs, y)
    assert verdicts(buggy) == {"body.weight": "correct", "body.bias": "correct",
                               "gate.weight": "wrong", "gate.bias": "correct"}


# -- common modules pass; one wrong entry is found -----------------------------------------------


class TiedEmbedding(nn.Module):
    """An embedding whose weight is also the output layer's (one tensor, two uses)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.tanh(self.emb(x)).mean(1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(4, 6, num_layers=2, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        out = self.rnn(x)[0]
        return self.fc(out[:, -1])


class Encoder(nn.Module):
    """A transformer encoder layer, in training mode: its dropouts are seeded by the check."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


MODULES = {
    "layernorm_gelu": (lambda: nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.GELU(),
                                             nn.Linear(8, 3)), (3, 5)),
    "conv1d_groupnorm_silu": (lambda: nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.SiLU(), nn.Flatten(), nn.Linear(24, 3)),
        (3, 2, 8)),
    "lstm": (lambda: Recurrent(nn.LSTM), (3, 5, 4)),
    "gru": (lambda: Recurrent(nn.GRU), (3, 5, 4)),
    "transformer_encoder_dropout": (Encoder, (3, 4, 8)),
    "tied_embedding": (TiedEmbedding, None),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_common_modules_pass(name):
    make, shape = MODULES[name]
    torch.manual_seed(0)
    model = make()
    x = torch.randint(0, 20, (3, 4)) if shape is None else torch.randn(*shape)
    report = check_module(model, nn.CrossEntropyLoss(), x, torch.tensor([0, 1, 2]))
    assert report.passed and not report.nondeterministic, report
    assert list(report.params) == [n for n, p in model.named_parameters()]


@pytest.mark.parametrize("where", [(0, 0), (5, 7), (31, 63)])
def test_one_wrong_entry_of_a_large_tensor_is_located(where):
    """One wrong entry of 2048, anywhere: the directions cover every entry and bisection
    pins it, with the engine's defaults and with GradientCheck's periodic probes alike."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), CustomLinear(64, 32, bug=where),
                          nn.Tanh(), nn.Linear(32, 4))
    x, y = torch.randn(3, 10), torch.tensor([0, 1, 2])
    for options in ({}, {"coordinates": 1, "directions": 1}):
        report = check_module(model, nn.CrossEntropyLoss(), x, y, **options)
        assert report.failed == ["2.weight"], (options, report)
        assert report.params["2.weight"].worst_index == where


class PaddedTied(nn.Module):
    """Token embeddings with a padding row, tied to the output layer (as language models do):
    the padding row gets a gradient from the output layer only."""

    def __init__(self, bug=None):
        super().__init__()
        self.emb = nn.Embedding(12, 6, padding_idx=0)
        self.mix = CustomLinear(6, 6, bug=bug)
        self.out = nn.Linear(6, 12, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mix(self.emb(tokens).mean(1))))


@pytest.mark.parametrize("tied", [False, True])
def test_an_embedding_padding_row_is_held_as_pytorch_defines_it(tied):
    """nn.Embedding(padding_idx=p) gives row p no gradient from the lookup: that is PyTorch's
    definition, not a bug, so the check holds the row in the lookups (and only there: a tied
    output layer's use of it is checked). A planted bug elsewhere is still found."""
    torch.manual_seed(0)
    tokens = torch.tensor([[0, 3, 5], [2, 0, 0], [7, 1, 0]])  # 0: the padding token
    model = PaddedTied() if tied else nn.Sequential(nn.Embedding(12, 6, padding_idx=0),
                                                    nn.Flatten(), nn.Linear(18, 12))
    report = check_module(model, nn.CrossEntropyLoss(), tokens, torch.tensor([1, 4, 9]))
    assert report.passed, report
    assert any("padding_idx" in note for note in report.notes)
    if tied:
        torch.manual_seed(0)
        buggy = check_module(PaddedTied(bug="factor2"), nn.CrossEntropyLoss(), tokens,
                             torch.tensor([1, 4, 9]))
        assert "mix.weight" in buggy.failed and "emb.weight" not in buggy.failed


def test_an_embedding_with_max_norm_is_checked_where_its_renormalisation_leaves_it():
    """max_norm renormalises the looked-up rows in place, outside autograd: the check runs
    at the renormalised point without renormalising again, and the model keeps its rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, max_norm=1.0), nn.Flatten(), nn.Linear(8, 3))
    before = model[0].weight.detach().clone()
    tokens = torch.tensor([[1, 2], [3, 4], [5, 1]])
    assert (before[tokens.unique()].norm(dim=1) > 1.0).all()  # every looked-up row renormed
    report = check_module(model, nn.CrossEntropyLoss(), tokens, torch.tensor([0, 1, 2]))
    assert report.passed, report
    assert any("max_norm" in note for note in report.notes)
    assert torch.equal(model[0].weight, before)


KINKED = {
    "hardswish": lambda: nn.Hardswish(), "hardtanh": lambda: nn.Hardtanh(),
    "relu6": lambda: nn.ReLU6(), "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": lambda: nn.PReLU(), "rrelu_training": lambda: nn.RReLU(),
    "softshrink": lambda: nn.Softshrink(0.1), "threshold": lambda: nn.Threshold(0.1, 0.0),
}
POOLS = {
    "adaptive_max": lambda: nn.AdaptiveMaxPool2d(2), "lp_pool": lambda: nn.LPPool2d(2, 2),
    "fractional_max_training": lambda: nn.FractionalMaxPool2d(2, output_size=2),
}


@pytest.mark.parametrize("name", list(KINKED) + list(POOLS))
def test_kinked_activations_and_pools_pass(name):
    """Activations with kinks (random slopes too: RReLU in training mode draws them, seeded
    like dropout) and max-like pools (FractionalMaxPool2d draws its regions) give no false
    alarm."""
    torch.manual_seed(0)
    if name in KINKED:
        model, x = nn.Sequential(nn.Linear(6, 8), KINKED[name](), nn.Linear(8, 3)), (3, 6)
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), POOLS[name](), nn.Flatten(), nn.Linear(8, 3))
        x = (3, 1, 6, 6)
    report = check_module(model, nn.CrossEntropyLoss(), torch.randn(*x), torch.tensor([0, 1, 2]))
    assert report.passed and not report.nondeterministic, report


@pytest.mark.parametrize("style", ["parametrization", "hook"])
def test_spectral_norm_is_checked_with_its_power_iteration_held(style):
    """Spectral normalisation's power iteration updates u and v in place, outside autograd:
    the finite differences hold them at the analytic pass's values, so a correct layer passes
    (un-held, it read as wrong: 0.25 relative error with the hook-based form), a planted bug
    below it is still found, and the model keeps its u, v and training flags."""
    torch.manual_seed(0)
    wrap = (nn.utils.parametrizations.spectral_norm if style == "parametrization"
            else nn.utils.spectral_norm)
    model = nn.Sequential(wrap(nn.Linear(6, 5)), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    before = snapshot(model)
    report = check_module(model, nn.CrossEntropyLoss(), x, y)
    assert report.passed, report
    assert any("power iteration" in note for note in report.notes)
    assert_untouched(model, before)
    torch.manual_seed(0)
    buggy = nn.Sequential(CustomLinear(6, 6, bug="factor2"), wrap(nn.Linear(6, 5)), nn.Tanh(),
                          nn.Linear(5, 3))
    assert check_module(buggy, nn.CrossEntropyLoss(), x, y).failed[:1] == ["0.weight"]


class PrivateNoise(nn.Module):
    """Draws noise from a generator it owns, and makes its initial state with the default
    dtype (float32), as recurrent models do."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.out = nn.Linear(4, 2)
        self.generator = torch.Generator().manual_seed(1)

    def forward(self, x):
        h0 = torch.zeros(1, x.shape[0], 4)
        noise = 0.1 * torch.randn(x.shape, generator=self.generator)
        return self.out(self.rnn(x + noise, h0)[1][0])


def test_a_model_generator_is_reset_before_every_evaluation_and_default_dtype_tensors_match():
    torch.manual_seed(0)
    model = PrivateNoise()
    state = model.generator.get_state()
    dtype = torch.get_default_dtype()
    report = check_module(model, nn.MSELoss(), torch.randn(4, 5, 3), torch.randn(4, 2))
    assert report.passed and not report.nondeterministic, report
    assert torch.equal(model.generator.get_state(), state)  # left where it was
    assert torch.get_default_dtype() == dtype


@pytest.mark.parametrize("flag", ["sparse", "scale_grad_by_freq"])
def test_embedding_gradient_options(flag):
    """Sparse gradients are checked dense; scale_grad_by_freq (rows' gradients divided by
    their counts, by definition not the loss's gradient) is switched off for the check, and
    said so. The module keeps its flag."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 3, **{flag: True}), nn.Flatten(), nn.Linear(6, 2))
    tokens = torch.tensor([[1, 1], [1, 2], [3, 1], [4, 5]])  # token 1 four times
    report = check_module(model, nn.MSELoss(), tokens, torch.randn(4, 2))
    assert report.passed, report
    assert getattr(model[0], flag) is True
    assert any("scale_grad_by_freq" in note for note in report.notes) == (
        flag == "scale_grad_by_freq")


def test_a_loss_function_that_fails_on_the_outputs_is_named_with_their_shapes():
    """CrossEntropyLoss given (N, T, C) sequence scores (it wants (N, C, T)), and a loss
    that is no scalar: the loss function's own exception (noted with the shapes involved)
    and a ValueError; the callers inside trainwatch get a LossFunctionError instead."""
    from trainwatch.gradcheck import LossFunctionError
    from trainwatch.torch.gradcheck import _check_module

    model = nn.Linear(4, 5)  # (N, T, 4) -> (N, T, 5): five classes at each of T steps
    x, y = torch.randn(2, 3, 4), torch.randint(0, 5, (2, 3))
    with pytest.raises(RuntimeError, match="Expected target size") as raised:
        check_module(model, nn.CrossEntropyLoss(), x, y)
    if sys.version_info >= (3, 11):
        assert "(outputs (2, 3, 5), targets (2, 3))" in raised.value.__notes__[0]
    with pytest.raises(LossFunctionError, match=r"raised RuntimeError: .*\(outputs "
                                                r"\(2, 3, 5\), targets \(2, 3\)\)"):
        _check_module(model, nn.CrossEntropyLoss(), x, y)
    per_example = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match=r"must return a scalar tensor, returned \(2, 3\)"):
        check_module(model, lambda out, t: per_example(out.transpose(1, 2), t), x, y)
    report = check_module(model, lambda out, t: nn.functional.cross_entropy(
        out.transpose(1, 2), t), x, y)
    assert report.passed


def test_missing_inputs_or_targets_are_refused_naming_the_argument():
    with pytest.raises(TypeError, match="inputs: expected a few examples"):
        check_module(nn.Linear(3, 2), nn.MSELoss(), None, torch.randn(2, 2))
    with pytest.raises(TypeError, match="targets: expected a few examples"):
        check_module(nn.Linear(3, 2), nn.MSELoss(), torch.randn(2, 3), None)


def test_an_uninitialised_lazy_module_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="model: .*lazy.*forward pass"):
        check_module(nn.Sequential(nn.LazyLinear(3)), nn.MSELoss(), torch.randn(2, 4),
                     torch.randn(2, 3))


class StopGradient(nn.Module):
    """A straight-through estimator (``h + (round(h) - h).detach()``) and a detached
    penalty: autograd treats both detached values as constants."""

    def __init__(self, bug=None):
        super().__init__()
        self.a = CustomLinear(4, 4, bug=bug)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        quantised = h + (torch.round(h * 4) / 4 - h).detach()
        return self.b(quantised) + (h.detach() ** 2).sum(1, keepdim=True)


def test_stop_gradients_are_held_as_autograd_holds_them():
    """Without holding the detached values, the finite differences see through them and
    a.weight/a.bias read as wrong; held, the module passes and a planted bug in `a` is still
    found."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    report = check_module(StopGradient(), nn.MSELoss(), x, y)
    assert report.passed, report
    assert any("2 detach() result(s)" in note for note in report.notes), report.notes
    torch.manual_seed(0)
    buggy = check_module(StopGradient(bug="factor2"), nn.MSELoss(), x, y)
    assert buggy.failed == ["a.weight"], buggy


class SlowForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        time.sleep(0.01)
        return self.a(x)


def test_a_check_that_cannot_fit_its_time_limit_stops_after_the_analytic_pass():
    """The analytic pass (a forward and a backward) tells how long an evaluation takes at
    least: a check whose evaluations cannot fit max_seconds stops before any of them, with
    an estimate of its whole length; the model comes back untouched."""
    from trainwatch.gradcheck import CheckTimeout

    model = SlowForward()
    x, y = torch.randn(3, 4), torch.randn(3, 2)
    before = snapshot(model)
    with pytest.raises(CheckTimeout) as stopped:
        check_module(model, nn.MSELoss(), x, y, max_seconds=0.05)
    assert model.forwards == 1 and stopped.value.evaluations == 0
    assert stopped.value.estimated_seconds > 0.05
    assert_untouched(model, before)
    assert check_module(model, nn.MSELoss(), x, y, max_seconds=30.0).passed


# -- forwards written in the ways real models are: casts, stray tensors, composite calls ----------


class RMSNorm(nn.Module):
    """LLaMA-style: the normalisation computed in float32 (``x.float() ... .type_as(x)``)."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(d))

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * h.type_as(x)


def test_casts_to_float32_inside_the_forward_keep_float64():
    """float32's round-off inside the forward would swamp the finite differences (the
    layer before the norm read as wrong at h=1e-5); the casts are held at float64, and a
    planted bug before the norm is still caught."""
    torch.manual_seed(1000)
    x, y = torch.randn(3, 5), torch.randint(0, 3, (3,))
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(5, 6), RMSNorm(6), nn.Tanh(), nn.Linear(6, 3))
        report = check_module(model, nn.CrossEntropyLoss(), x, y, seed=seed)
        assert report.passed and report.precision == "float64", report
        assert any("1 cast(s)" in note for note in report.notes), report.notes
    torch.manual_seed(0)
    buggy = nn.Sequential(CustomLinear(5, 6, bug="factor2"), RMSNorm(6), nn.Tanh(),
                          nn.Linear(6, 3))
    assert check_module(buggy, nn.CrossEntropyLoss(), x, y).failed == ["0.weight"]


def test_casts_of_every_form_stay_float64():
    from trainwatch.torch.gradcheck import KinkRecorder

    x = torch.randn(3, dtype=torch.float64)
    ref32 = torch.zeros(1)
    with KinkRecorder(0) as recorder:
        casts = [x.float(), x.half(), x.bfloat16(), x.to(torch.float32),
                 x.to("cpu", torch.float16), x.to(dtype=torch.bfloat16), x.to(ref32),
                 x.type(torch.float32), x.type("torch.FloatTensor"), x.type_as(ref32)]
        kept = [x.to(torch.int64), x.type_as(torch.zeros(1, dtype=torch.int32))]
    assert [c.dtype for c in casts] == [torch.float64] * len(casts)
    assert all(torch.equal(c, x) for c in casts)
    assert [k.dtype for k in kept] == [torch.int64, torch.int32]
    assert recorder.casts == 0  # (counted in the analytic pass only)


class StrayTensor(nn.Module):
    """A float32 tensor kept as a plain attribute (not a registered buffer)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 6)
        self.proj = torch.randn(6, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.l1(x) @ self.proj))


def test_float32_tensors_the_check_does_not_copy_are_widened_to_float64():
    """A plain tensor attribute and a loss closure's class weights stay float32 (the check
    copies parameters, buffers and loss modules only): the calls that mix them with the
    float64 stand-ins run again with them in float64, instead of raising."""
    torch.manual_seed(0)
    model = StrayTensor()
    x, y = torch.randn(3, 5), torch.randint(0, 3, (3,))
    before = snapshot(model)
    report = check_module(model, nn.CrossEntropyLoss(), x, y)
    assert report.passed, report
    assert any("widened to float64" in note for note in report.notes), report.notes
    assert model.proj.dtype == torch.float32
    assert_untouched(model, before)
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 3.0]))
    plain = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    assert check_module(plain, lambda out, t: weighted(out, t), x, y).passed
    buggy = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), CustomLinear(6, 3, bug="factor2"))
    assert check_module(buggy, lambda out, t: weighted(out, t), x, y).failed == ["2.weight"]


class GumbelHard(nn.Module):
    def __init__(self, bug=None):
        super().__init__()
        self.l1, self.l2 = CustomLinear(5, 4, bug=bug), nn.Linear(4, 3)

    def forward(self, x):
        return self.l2(torch.nn.functional.gumbel_softmax(self.l1(x), tau=0.7, hard=True))


def test_gumbel_softmax_straight_through_is_held_as_autograd_holds_it():
    """torch runs F.gumbel_softmax as one call, which hid its straight-through detach()
    from the recorder (l1 read as wrong: the hard sample does not move)."""
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    for seed in range(3):
        torch.manual_seed(seed)
        report = check_module(GumbelHard(), nn.CrossEntropyLoss(), x, y, seed=seed)
        assert report.passed, report
        assert any("1 detach() result(s)" in note for note in report.notes), report.notes
    torch.manual_seed(0)
    buggy = check_module(GumbelHard(bug="factor2"), nn.CrossEntropyLoss(), x, y)
    assert buggy.failed == ["l1.weight"], buggy


def test_a_straight_through_estimator_written_with_data_is_held():
    class DataST(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(5, 4), nn.Linear(4, 3)

        def forward(self, x):
            y = torch.softmax(self.l1(x), 1)
            hard = nn.functional.one_hot(y.argmax(1), 4).to(y.dtype)
            return self.l2(y + (hard - y).data)

    torch.manual_seed(0)
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    report = check_module(DataST(), nn.CrossEntropyLoss(), x, y)
    assert report.passed, report


def test_threshold_at_its_kink_is_seen_by_the_signature():
    """F.threshold's function is named ``_threshold``: its kink is tracked like ReLU's (the
    probes exactly on it judged one-sided, not across it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Threshold(0.0, 0.0), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].bias.zero_()
    x = torch.zeros(2, 5, dtype=torch.float64)  # every pre-activation exactly at 0
    x[1] = torch.randn(5)
    report = check_module(model, nn.CrossEntropyLoss(), x, torch.tensor([0, 2]),
                          kink_detection=False)
    assert report.passed, report
    assert judged_one_sided(report.params["0.bias"])


def test_a_kink_inside_a_loss_computed_in_cpp_is_set_aside_by_the_one_sided_test():
    """TripletMarginLoss's hinge runs inside one C++ call the recorder cannot see into: with
    no pattern recorded there is no signature, and the engine's one-sided test sets the
    probes that cross the hinge aside (they read as wrong before); a planted bug still
    fails."""
    class Embed(nn.Module):
        def __init__(self, bug=None):
            super().__init__()
            self.l1 = CustomLinear(4, 3, bug=bug)

        def forward(self, x):
            return torch.tanh(self.l1(x))

    def triplet_at_its_hinge(model, x):
        with torch.no_grad():  # the margin that puts the hinge exactly at 0
            a, p, n = model(x).chunk(3)
            gap = float((a - n).norm() - (a - p).norm())
        loss = nn.TripletMarginLoss(margin=abs(gap), eps=0.0)
        order = (0, 1, 2) if gap > 0 else (0, 2, 1)  # (the nearer one as the positive)
        return lambda out, _: loss(*(out.chunk(3)[i] for i in order))

    torch.manual_seed(3)
    x = torch.randn(3, 4, dtype=torch.float64)
    model = Embed().double()
    report = check_module(model, triplet_at_its_hinge(model, x), x, torch.zeros(3))
    assert report.passed, report
    assert sum(c.kinks for c in report.params.values()) >= 1, report
    torch.manual_seed(3)
    buggy = Embed(bug="factor2").double()
    assert not check_module(buggy, triplet_at_its_hinge(buggy, x), x, torch.zeros(3)).passed


class BufferWrites(nn.Module):
    """A float32 buffer made in the forward and written in place (return value unused)."""

    def __init__(self, how, bug=None):
        super().__init__()
        self.l1, self.l2, self.how = CustomLinear(5, 4, bug=bug), nn.Linear(6, 3), how

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        buf = torch.zeros(x.shape[0], 6, dtype=torch.float32)
        if self.how == "setitem":
            buf[:, torch.tensor([0, 2, 3, 5])] = h
        else:
            buf.index_add_(1, torch.tensor([0, 2, 2, 5]), h)
        return self.l2(buf)


@pytest.mark.parametrize("how", ["setitem", "index_add_"])
def test_a_float32_buffer_made_in_the_forward_is_made_float64(how):
    """``dtype=torch.float32`` in a factory call is held at float64 like a cast: the writes
    land in the buffer the forward reads (a widened copy would take them: every gradient
    before it 0 on both sides), and the check's loss is the model's."""
    torch.manual_seed(0)
    model = BufferWrites(how)
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    plain = nn.functional.cross_entropy(model(x).double(), y).item()
    report = check_module(model, nn.CrossEntropyLoss(), x, y)
    assert report.passed, report
    assert report.loss == pytest.approx(plain, rel=1e-6)
    assert report.params["l1.weight"].worst_analytic != 0
    torch.manual_seed(0)
    buggy = check_module(BufferWrites(how, bug="factor2"), nn.CrossEntropyLoss(), x, y)
    assert buggy.failed == ["l1.weight"], buggy


def test_the_bits_of_a_held_cast_are_the_ones_the_forward_meant():
    """``h.to(torch.float32).view(torch.int32)`` (the sign bit): the held float64 cast is
    viewed as the float32 the forward asked for, not as twice as many int32 words."""
    class BitSign(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = self.l1(x)
            negative = h.detach().to(torch.float32).view(torch.int32) < 0
            return self.l2(torch.tanh(torch.where(negative, 0.1 * h, h)))

    torch.manual_seed(0)
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    assert check_module(BitSign(), nn.CrossEntropyLoss(), x, y).passed


def test_a_float_cast_to_an_integer_type_is_a_step():
    """torch's householder orthogonal map multiplies by ``X.diagonal().int()``, a diagonal
    sitting exactly at ±1: truncation is tracked as a kink (like floor), so the probes and
    the noise probe that cross it are set aside instead of inflating the noise to
    float32's (which let a wrong backward elsewhere pass)."""
    class Orthogonal(nn.Module):
        def __init__(self, bug=None):
            super().__init__()
            self.l1 = nn.utils.parametrizations.orthogonal(nn.Linear(5, 6))
            self.l2, self.l3 = CustomLinear(6, 6, bug=bug), nn.Linear(6, 3)

        def forward(self, x):
            return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))

    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    torch.manual_seed(1000)
    report = check_module(Orthogonal(), nn.CrossEntropyLoss(), x, y)
    assert report.passed and report.precision == "float64", report
    torch.manual_seed(1000)
    buggy = check_module(Orthogonal(bug="factor2"), nn.CrossEntropyLoss(), x, y)
    assert buggy.precision == "float64" and "l2.weight" in buggy.failed, buggy


class GradientFree(nn.Module):
    """Values computed with gradients off inside the forward: constants for autograd."""

    def __init__(self, how, bug=None):
        super().__init__()
        self.l1, self.l2, self.how = CustomLinear(5, 6, bug=bug), nn.Linear(6, 3), how

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        if self.how == "no_grad":  # a scale
            with torch.no_grad():
                scale = h.abs().amax(1, keepdim=True)
            h = h / scale
        elif self.how == "inference_mode":
            with torch.inference_mode():
                scale = h.abs().amax(1, keepdim=True)
            h = h / scale.clone()
        elif self.how == "target":  # a target from the model itself (self-distillation)
            with torch.no_grad():
                target = torch.tanh(2 * self.l2(h))
            return self.l2(h), target
        else:  # a straight-through rounding through a tensor detached in place
            t = h * 1.0
            t.detach_()
            h = h + (torch.round(t * 4) / 4 - t)
        return self.l2(h)


def _distillation_loss(out, targets):
    if isinstance(out, tuple):
        return (nn.functional.cross_entropy(out[0], targets)
                + nn.functional.mse_loss(torch.tanh(out[0]), out[1]))
    return nn.functional.cross_entropy(out, targets)


@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "target", "detach_"])
def test_values_computed_with_gradients_off_are_held_as_autograd_holds_them(how):
    """torch.no_grad(), inference_mode() and detach_() make constants for autograd; the
    finite differences moved them (l1 read as wrong). Held, the model passes, a planted bug
    is still found, and a custom Function's forward (which autograd runs with gradients
    off too) is no stop-gradient."""
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    torch.manual_seed(1000)
    report = check_module(GradientFree(how), _distillation_loss, x, y)
    assert report.passed, report
    torch.manual_seed(1000)
    buggy = check_module(GradientFree(how, bug="factor2"), _distillation_loss, x, y)
    assert buggy.failed == ["l1.weight"], buggy


def test_tensors_a_forward_rebinds_as_attributes_are_put_back():
    """The hook-based spectral_norm sets the computed weight as a plain attribute at every
    forward: after the check the attribute is the one from before (not a float64 tensor of
    the check's graph, which copy.deepcopy refuses)."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.spectral_norm(nn.Linear(5, 6)), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with torch.no_grad():
        model(x)
    weight = model[0].weight
    assert check_module(model, nn.CrossEntropyLoss(), x, y).passed
    assert model[0].weight is weight
    copy.deepcopy(model)


class QuantisationAware(nn.Module):
    """A fake-quantised activation (quantisation-aware training), per tensor or per channel."""

    def __init__(self, per_channel, bug=None):
        import torch.ao.quantization as tq

        super().__init__()
        self.l1, self.l2 = CustomLinear(5, 6, bug=bug), nn.Linear(6, 3)
        self.quant = (tq.FakeQuantize(observer=tq.MovingAveragePerChannelMinMaxObserver,
                                      quant_min=-128, quant_max=127, dtype=torch.qint8,
                                      qscheme=torch.per_channel_symmetric, ch_axis=1)
                      if per_channel else tq.FakeQuantize())

    def forward(self, x):
        return self.l2(self.quant(torch.tanh(self.l1(x))))


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantisation_is_checked_straight_through(per_channel):
    """torch differentiates fake quantisation straight through (1 inside the range, 0
    outside); the finite differences of the step function itself are 0 (l1 read as wrong),
    and torch's per-channel kernel refuses float64 scales. Held as autograd sees it, the
    model passes and a planted bug before the quantiser is still found."""
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    for bug in (None, "factor2"):
        torch.manual_seed(0)
        model = QuantisationAware(per_channel, bug=bug)
        model(x)  # (a training forward first: the observers learn their ranges)
        report = check_module(model, nn.CrossEntropyLoss(), x, y)
        if bug is None:
            assert report.passed, report
            assert any("1 fake quantisation" in note for note in report.notes), report.notes
        else:
            assert report.failed == ["l1.weight"], report


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Please use quant_min")
def test_a_model_prepared_for_quantisation_aware_training_is_checked():
    """torch.ao.quantization.prepare_qat with the default QAT qconfig: fused observer and
    fake quantiser on activations and (per channel) on weights, whose kernel takes float32
    only (it raised on the float64 copies); checked straight through, a planted bug found."""
    import torch.ao.quantization as tq

    class Net(nn.Module):
        def __init__(self, bug=False):
            super().__init__()
            self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
            self.l1, self.l2 = nn.Linear(5, 6), nn.Linear(6, 3)
            self.act = CustomSigmoid(bug)

        def forward(self, x):
            return self.dequant(self.l2(self.act(self.l1(self.quant(x)))))

    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    for bug in (False, True):
        torch.manual_seed(0)
        model = Net(bug)
        model.qconfig = tq.get_default_qat_qconfig("x86")
        model = tq.prepare_qat(model.train())
        model(x)  # (the observers learn their ranges)
        report = check_module(model, nn.CrossEntropyLoss(), x, y)
        if not bug:
            assert report.passed, report
            assert any("fake quantisation" in note for note in report.notes), report.notes
        else:
            assert report.failed == ["l1.weight", "l1.bias"], report


def test_a_kink_the_recorder_cannot_see_is_set_aside_beside_kinks_it_records():
    """cosine_embedding_loss's hinge runs in one C++ call the recorder cannot look into,
    exactly at its margin on row 0; a ReLU elsewhere gives the check a kink signature. The
    engine's own one-sided test runs beside a signature too, so the probes across the unseen
    hinge are set aside (they read as wrong before) and the check passes."""
    torch.manual_seed(0)
    head = nn.Linear(4, 4).double()
    with torch.no_grad():
        head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    x = torch.randn(3, 4, dtype=torch.float64)
    x[0] = 0.0  # row 0's outputs are the bias: cosine exactly 0, the margin

    def loss_fn(out, t):
        hinge = nn.functional.cosine_embedding_loss(out[:, :2], out[:, 2:], t, margin=0.0)
        return hinge + 1e-3 * torch.relu(out + 10.0).sum()

    for seed in (0, 1):
        report = check_module(head, loss_fn, x, torch.tensor([-1.0, -1.0, 1.0]), seed=seed)
        assert report.passed, str(report)


class ResizedCache(nn.Module):
    """Keeps its last outputs in a buffer it resizes in place to the batch."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 3)
        self.register_buffer("last", torch.zeros(64, 3))

    def forward(self, x):
        y = self.l(x)
        self.last.resize_(y.shape).copy_(y.detach())
        return y


def test_a_buffer_the_forward_resizes_is_reset_before_every_evaluation():
    """A forward that resizes a buffer in place to its batch (64 rows in training, 3 in the
    check): every evaluation starts from the buffer as it was (resetting it raised a size
    mismatch), and the model's own buffer comes back untouched."""
    torch.manual_seed(0)
    model = ResizedCache()
    model(torch.randn(64, 4))
    before = model.last.clone()
    report = check_module(model, nn.CrossEntropyLoss(), torch.randn(3, 4),
                          torch.tensor([0, 1, 2]))
    assert report.passed, str(report)
    assert torch.equal(model.last, before)
