"""TorchBackend: the seam every callback uses, on real torch models."""

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from trainwatch import HistogramData, LayerInfo, Monitor, Trainer  # noqa: E402
from trainwatch.core.monitor import as_backend  # noqa: E402
from trainwatch.data import load_digits, train_val_split  # noqa: E402
from trainwatch.torch import TorchBackend  # noqa: E402
from trainwatch.torch import backend as backend_module  # noqa: E402


def cnn(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10),
    ).to(dtype)


def batch(n=16, seed=0):
    x, y = load_digits(images=True)
    return x[seed:seed + n], y[seed:seed + n]


def make(seed=0, dtype=torch.float32):
    model = cnn(seed, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, TorchBackend(model, nn.CrossEntropyLoss(), opt), opt


def train_step(backend, x, y):
    out = backend.forward(x)
    backend.loss(out, y)
    backend.backward()
    return out


def test_layers_kinds_and_names():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.LeakyReLU(), nn.Sigmoid(), nn.Tanh(), nn.MaxPool2d(2),
        nn.Dropout(), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.GELU(),
    )
    kinds = [info.kind for info in TorchBackend(model).layers()]
    assert kinds == ["conv2d", "leaky_relu", "sigmoid", "tanh", "maxpool", "dropout",
                     "batchnorm", "flatten", "dense", "relu", "other"]
    assert [i.kind for i in TorchBackend(nn.Sequential(nn.Embedding(5, 2))).layers()] == [
        "embedding"]
    inner = torch.compile(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), backend="eager")
    assert TorchBackend(nn.Sequential(nn.Linear(2, 2), inner)).layers() == [
        LayerInfo("0", "dense"), LayerInfo("1._orig_mod.0", "dense", captured=False),
        LayerInfo("1._orig_mod.1", "tanh", captured=False)]
    assert TorchBackend(model).layers()[0] == LayerInfo("0", "conv2d")
    # a leaf root is listed under its class name
    assert TorchBackend(nn.Linear(2, 3)).layers() == [LayerInfo("linear", "dense")]


def test_the_trainer_path_validates_loss_and_optimizer():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="loss_fn: expected a callable"):
        TorchBackend(model, "mse")
    with pytest.raises(TypeError, match=r"optimizer: expected a torch.optim.Optimizer \(or"):
        TorchBackend(model, nn.MSELoss(), "sgd")
    with pytest.raises(ValueError, match="optimizer: trains none of the model's parameters"):
        TorchBackend(model, nn.MSELoss(), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1))


@pytest.mark.parametrize("loss, kind", [
    (nn.CrossEntropyLoss(), "softmax_cross_entropy"), (nn.MultiMarginLoss(), "multiclass_svm"),
    (nn.BCEWithLogitsLoss(), "sigmoid_bce"), (nn.MSELoss(), "mse"), (nn.L1Loss(), None),
    (None, None),
])
def test_loss_kind(loss, kind):
    assert TorchBackend(nn.Linear(2, 2), loss).loss_kind == kind


def test_parameters_gradients_and_norms_match_torch():
    model, backend, _ = make()
    frozen = model[1].bias
    frozen.requires_grad_(False)
    backend = TorchBackend(model, nn.CrossEntropyLoss(), None)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert backend.parameter_names() == names
    # before any backward every gradient is None: zeros, norm 0
    assert all(np.all(g == 0) for g in backend.gradients().values())
    assert all(n.grad == 0.0 for n in backend.norms().values())
    x, y = batch()
    train_step(backend, x, y)
    params, grads, norms = backend.parameters(), backend.gradients(), backend.norms()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert name not in params
            continue
        np.testing.assert_array_equal(params[name], p.detach().numpy())
        np.testing.assert_array_equal(grads[name], p.grad.numpy())
        assert norms[name].weight == pytest.approx(float(p.detach().norm()), rel=1e-6)
        assert norms[name].grad == pytest.approx(float(p.grad.norm()), rel=1e-6)
        assert math.isnan(norms[name].update)
    # host copies, not views of the live tensors
    params[names[0]][...] = 123.0
    assert not torch.any(model[0].weight == 123.0)


def test_update_norms_are_the_applied_change():
    model, backend, opt = make()
    x, y = batch()
    with pytest.raises(RuntimeError):
        backend.end_update()
    for _ in range(3):
        train_step(backend, x, y)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        backend.begin_update()
        opt.step()
        result = backend.end_update()
        for name, p in model.named_parameters():
            change = float((p.detach() - before[name]).norm())
            assert result[name].update == pytest.approx(change, rel=1e-5, abs=1e-12)
            assert result[name].weight == pytest.approx(float(p.detach().norm()), rel=1e-6)
            assert result[name].grad == pytest.approx(float(p.grad.norm()), rel=1e-6)
    # a second monitor of the step gets the same measurement; a second begin_update before
    # the step's end keeps the first snapshot
    assert backend.end_update() == result
    backend.begin_update()
    backend.begin_update()
    opt.step()
    assert backend.end_update() == backend.end_update() != result


def test_first_nonfinite_names_the_tensor():
    model, backend, _ = make()
    x, y = batch()
    train_step(backend, x, y)
    assert backend.first_nonfinite() is None
    with torch.no_grad():
        model[6].bias[0] = 1e30  # finite, but its float32 norm overflows: not flagged
    assert backend.first_nonfinite() is None
    model[8].weight.grad[1, 2] = float("inf")
    assert backend.first_nonfinite() == "8.weight (gradient)"
    with torch.no_grad():
        model[6].weight[0, 0] = float("nan")
    assert backend.first_nonfinite() == "6.weight"


def test_parameters_by_name_and_shapes_without_reading_data():
    from trainwatch.torch.host_reads import count_host_reads

    model, backend, _ = make()
    with count_host_reads() as log:
        shapes = backend.parameter_shapes()
    assert log == []  # shapes read no data
    assert list(shapes) == backend.parameter_names()
    assert shapes["0.weight"] == (4, 1, 3, 3) and shapes["6.bias"] == (16,)
    some = backend.parameters(names=["6.bias", "0.weight"])
    assert list(some) == ["0.weight", "6.bias"]  # layer order
    np.testing.assert_array_equal(some["0.weight"], model[0].weight.detach().numpy())


def test_activation_stats_are_reduced_on_the_device_like_the_host_ones():
    """The saturated fraction and the alive-units masks equal those computed from host copies
    of the outputs (the Backend default), in one transfer and without copying the outputs."""
    from trainwatch.core.backend import Backend
    from trainwatch.torch.host_reads import count_host_reads

    model, backend, _ = make()
    x, y = batch()
    with torch.no_grad():  # channel 0 after BatchNorm is -1 everywhere: a dead ReLU unit
        model[1].weight[0] = 0.0
        model[1].bias[0] = -1.0
    backend.capture_activations(True)
    train_step(backend, x, y)
    kinds = {"2": "relu", "7": "tanh"}  # conv channels after BatchNorm+ReLU, dense tanh
    host = Backend.activation_stats(backend, kinds, 0.5)
    with count_host_reads() as log:
        device = backend.activation_stats(kinds, 0.5)
    assert len(log) == 1
    assert set(device) == set(host) == {"2", "7"}
    assert device["7"].saturated == pytest.approx(host["7"].saturated)
    assert 0 < device["7"].saturated < 1 and device["7"].alive is None
    np.testing.assert_array_equal(device["2"].alive, host["2"].alive)
    assert device["2"].alive.tolist() == [False, True, True, True]
    assert device["2"].alive.shape == (4,) and device["2"].examples == 16
    assert math.isnan(device["2"].saturated)
    backend.capture_activations(False)


@pytest.mark.parametrize("short_path", [True, False])
def test_distributions_equal_the_separate_calls_in_one_transfer(monkeypatch, short_path):
    """A histogram step's histograms of every kind and its activation statistics come in
    one transfer, equal to what the separate calls give."""
    from trainwatch.torch.host_reads import count_host_reads

    monkeypatch.setattr(backend_module, "CPU_SHORT_PATH", short_path)
    model, backend, _ = make()
    x, y = batch()
    backend.capture_activations(True)
    train_step(backend, x, y)
    which = ["weights", "gradients", "activations", "activation_gradients"]
    kinds = {"2": "relu", "7": "tanh"}
    with count_host_reads() as log:
        hists, stats = backend.distributions(which, 16, kinds, 0.5)
    if not short_path:  # the CPU short path reads each tensor's range on the host
        assert len(log) == 1
    assert list(hists) == which
    for w in which:
        separate = backend.histograms(w, 16)
        assert list(hists[w]) == list(separate) and separate
        for name, h in hists[w].items():
            np.testing.assert_array_equal(h.counts, separate[name].counts)
            assert (h.num, h.min, h.max, h.sum) == (separate[name].num, separate[name].min,
                                                   separate[name].max, separate[name].sum)
    alone = backend.activation_stats(kinds, 0.5)
    assert set(stats) == set(alone) == {"2", "7"}
    assert stats["7"].saturated == alone["7"].saturated
    np.testing.assert_array_equal(stats["2"].alive, alone["2"].alive)
    assert backend.distributions(["weights"], 8)[1] == {}  # no kinds: no statistics
    backend.capture_activations(False)


def test_histograms_match_host_histograms_and_skip_nonfinite():
    model, backend, _ = make(dtype=torch.float64)
    x, y = batch()
    train_step(backend, x, y)
    for which, source in (("weights", backend.parameters()), ("gradients", backend.gradients())):
        hists = backend.histograms(which, bins=16)
        assert list(hists) == backend.parameter_names()
        for name, h in hists.items():
            ref = HistogramData.from_values(source[name], 16)
            assert isinstance(h, HistogramData) and h.counts.shape == (16,)
            np.testing.assert_array_equal(h.counts, ref.counts)
            np.testing.assert_allclose(h.edges, ref.edges, rtol=1e-12)
            assert (h.num, h.min, h.max) == (ref.num, ref.min, ref.max)
            assert h.sum == pytest.approx(ref.sum, abs=1e-9)
            assert h.sum_squares == pytest.approx(ref.sum_squares, rel=1e-9)
    with torch.no_grad():
        model[8].bias[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        model[6].bias[:] = float("nan")
        model[1].weight[:] = 0.5
    hists = backend.histograms("weights", bins=8)
    h = hists["8.bias"]
    finite = model[8].bias.detach().numpy()[3:]
    assert h.num == 7 and h.counts.sum() == 7
    assert (h.min, h.max) == (finite.min(), finite.max())
    assert hists["6.bias"].num == 1 and hists["6.bias"].counts.sum() == 1  # nothing finite
    assert hists["1.weight"].counts[0] == 4 and hists["1.weight"].min == 0.5  # constant
    with pytest.raises(ValueError, match="which"):
        backend.histograms("biases")
    with pytest.raises(ValueError, match="bins"):
        backend.histograms("weights", bins=0)


def test_activation_capture_is_off_until_asked_and_matches_autograd():
    model, backend, _ = make()
    x, y = batch()
    train_step(backend, x, y)
    assert backend.activations() == {} and backend.activation_gradients() == {}
    assert all(not m._forward_hooks for m in model.modules())  # nothing registered yet

    backend.capture_activations(True)
    xt = torch.as_tensor(x, dtype=torch.float32)
    torch.manual_seed(5)
    out = backend.forward(x)
    loss, _ = backend.loss(out, y)
    backend.backward()
    backend.capture_activations(False)
    acts, grads = backend.activations(), backend.activation_gradients()
    assert list(acts) == [info.name for info in backend.layers()]
    assert list(grads) == list(acts)

    # the same forward by hand, with the outputs' gradients from autograd
    backend.remove_hooks()
    outputs = []
    h = xt
    torch.manual_seed(5)
    for module in model:
        h = module(h)
        h.retain_grad()
        outputs.append(h)
    nn.CrossEntropyLoss()(h, torch.as_tensor(y)).backward()
    for (name, a), o in zip(acts.items(), outputs):
        np.testing.assert_allclose(a, o.detach().numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(grads[name], o.grad.numpy(), rtol=1e-5, atol=1e-8)

    # capture off: no hook is left on the model and another step records nothing new
    backend.capture_activations(True)
    assert all(m._forward_hooks for m in model)
    backend.capture_activations(False)
    assert all(not m._forward_hooks for m in model.modules())
    train_step(backend, x, y)
    assert backend.activations() == {}


def test_captured_activation_survives_an_inplace_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    backend = TorchBackend(model, nn.CrossEntropyLoss(), None)
    backend.capture_activations(True)
    x = torch.randn(5, 4)
    backend.loss(backend.forward(x), np.array([0, 1, 0, 1, 1]))
    backend.backward()
    pre = (x @ model[0].weight.T + model[0].bias).detach().numpy()
    acts = backend.activations()
    assert (acts["0"] < 0).any()  # not overwritten by the in-place ReLU
    np.testing.assert_allclose(acts["0"], pre, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(acts["1"], np.maximum(pre, 0).astype(np.float32))


def test_evaluate_touches_nothing():
    model, backend, opt = make()
    x, y = batch(64)
    train_step(backend, x, y)
    opt.step()
    model[1].eval()  # a frozen BatchNorm inside a model in training mode
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    backend.capture_activations(True)
    loss, acc = backend.evaluate(x, y, batch_size=24)
    assert model.training and not model[1].training and model[5].training
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n])
    assert backend.activations() == {}  # evaluation is not captured
    backend.capture_activations(False)
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(x, dtype=torch.float32))
        ref_loss = float(nn.CrossEntropyLoss()(out, torch.as_tensor(y)))
        ref_acc = float((out.argmax(1) == torch.as_tensor(y)).float().mean())
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert acc == pytest.approx(ref_acc)
    assert math.isnan(TorchBackend(model).evaluate(x, y)[0])  # no loss function


@pytest.mark.parametrize("shape", ["(1,)", "per example"])
def test_evaluate_takes_a_loss_of_one_element_or_one_per_example(shape):
    """A loss of shape (1,) (``.view(1)``), or per example (reduction="none"), is the batch's
    mean loss (the (1,) one raised a broadcast error before)."""
    model = cnn()
    x, y = batch(40)
    ce = nn.CrossEntropyLoss(reduction="mean" if shape == "(1,)" else "none")
    backend = TorchBackend(model, lambda out, t: ce(out, t).reshape(-1))
    reference = TorchBackend(model, nn.CrossEntropyLoss())
    loss, acc = backend.evaluate(x, y, batch_size=16)
    assert (loss, acc) == pytest.approx(reference.evaluate(x, y, batch_size=16), rel=1e-6)


def test_state_dict_round_trip_restores_training_exactly():
    model, backend, opt = make()
    x, y = batch(32)
    for _ in range(2):
        train_step(backend, x, y)
        backend.step()
    saved = backend.state_dict()

    def run():
        losses = []
        for _ in range(3):
            out = backend.forward(x)
            losses.append(float(backend.loss(out, y)[0]))
            backend.backward()
            backend.step()
        return losses, {k: v.clone() for k, v in model.state_dict().items()}

    first, state_a = run()
    backend.load_state_dict(saved)
    second, state_b = run()
    assert first == second
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    # the snapshot is a deep copy: training did not change it
    backend.load_state_dict(saved)
    assert torch.equal(model[0].weight, saved["model"]["0.weight"])


def test_trainer_primitives_convert_numpy_batches():
    model, backend, _ = make()
    x, y = batch()
    out = backend.forward(x)  # float64 numpy -> float32 tensor
    assert out.dtype == torch.float32 and out.requires_grad
    loss, reg = backend.loss(out, y)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and reg == 0.0
    assert not loss.requires_grad  # float() on it neither warns nor keeps the graph
    backend.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert 0.0 <= backend.accuracy(out, y) <= 1.0
    with pytest.raises(RuntimeError):
        backend.backward()  # the loss was consumed


def test_monitor_picks_the_torch_backend():
    model = cnn()
    assert isinstance(as_backend(model, nn.CrossEntropyLoss()), TorchBackend)
    mon = Monitor(model, loss=nn.CrossEntropyLoss(), callbacks=[], progress=False)
    assert mon.backend.framework == "torch"


def test_trainer_fits_a_torch_model():
    x, y = load_digits(images=True)
    (xt, yt), (xv, yv) = train_val_split(x, y, val_fraction=0.25, seed=0)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, callbacks=[], progress=False)
    history = trainer.fit(xt[:600], yt[:600], epochs=3, batch_size=32,
                          validation_data=(xv[:200], yv[:200]), seed=0)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_accuracy"][-1] > 0.6
    assert model.training  # evaluation restored the mode


def test_importing_trainwatch_does_not_need_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import trainwatch, trainwatch.callbacks, trainwatch.outputs, trainwatch.nn\n"
            "from trainwatch.data import load_digits\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_scalars_to_host_reads_many_losses_at_once():
    backend = TorchBackend(nn.Linear(2, 2))
    values = [torch.tensor(1.5), 2, torch.tensor(0.25, dtype=torch.float64), torch.tensor([3.0])]
    assert backend.scalars_to_host(values) == [1.5, 2.0, 0.25, 3.0]
    assert backend.scalars_to_host([]) == []


def test_device_and_host_histogram_paths_agree():
    # the masked path (no host read: what runs on a GPU) and the CPU short path
    from trainwatch.torch.backend import _histogram_row, _histogram_row_host

    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(5000, generator=g), torch.rand(3, 7, generator=g, dtype=torch.float64),
             torch.full((4, 4), -2.5), torch.tensor([1.0, float("nan"), -3.0, float("inf")])]
    for t in cases:
        fast, masked = _histogram_row_host(t, 16), _histogram_row(t, 16)
        assert torch.equal(fast[5:], masked[5:]), t
        torch.testing.assert_close(fast[:5], masked[:5], rtol=1e-5, atol=1e-4)


def test_capture_requests_are_counted_and_hooks_go_with_the_last():
    """Recording (and the leaf modules' hooks) stay while any capture request is open."""
    model, backend, _ = make()
    x, y = batch(4)
    leaves = [m for m in model.modules() if not list(m.children())]
    backend.capture_activations(True)
    backend.capture_activations(True)
    backend.capture_activations(False)
    train_step(backend, x, y)
    assert backend.activations() and backend.activation_gradients()
    assert any(m._forward_hooks for m in leaves)
    backend.capture_activations(False)
    assert not any(m._forward_hooks for m in leaves)
    backend.capture_activations(False)  # nothing open: stays off, no error
    backend.capture_activations(True)
    assert backend.activations() == {}  # on again: afresh
    backend.remove_hooks()
    backend.capture_activations(True)  # remove_hooks closed every request: one opens it
    backend.capture_activations(False)
    assert not any(m._forward_hooks for m in leaves)


def _layouts():
    """(name, outputs, targets, expected accuracy; NaN: no classification)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    by_row = (scores.argmax(1) == labels).float().mean().item()
    tokens = torch.randn(4, 3, 5, generator=g)  # (N, T, C)
    token_labels = torch.randint(0, 5, (4, 3), generator=g)
    token_labels[0, 2] = -100  # ignore_index: no label
    kept = token_labels >= 0
    by_token = ((tokens.argmax(-1) == token_labels) & kept).sum().item() / kept.sum().item()
    pixels = torch.randn(4, 5, 3, 3, generator=g)  # (N, C, H, W): segmentation
    pixel_labels = torch.randint(0, 5, (4, 3, 3), generator=g)
    by_pixel = (pixels.argmax(1) == pixel_labels).float().mean().item()
    logits = torch.randn(8, 1, generator=g)
    binary = (torch.rand(8, 1, generator=g) > 0.5).float()
    by_logit = ((logits > 0).float() == binary).float().mean().item()
    soft = torch.softmax(torch.randn(6, 5, generator=g), 1)
    by_soft = (scores.argmax(1) == soft.argmax(1)).float().mean().item()
    images = torch.randn(4, 1, 8, 8, generator=g)
    return [
        ("class indices", scores, labels, by_row),
        ("one-hot rows", scores, nn.functional.one_hot(labels, 5).float(), by_row),
        ("soft labels", scores, soft, by_soft),
        ("tokens (N, T, C), ignore_index", tokens, token_labels, by_token),
        ("pixels (N, C, H, W)", pixels, pixel_labels, by_pixel),
        ("binary logits", logits, binary, by_logit),
        ("a regression's values", logits, torch.randn(8, 1, generator=g), math.nan),
        ("an autoencoder's images", images, images + 0.1, math.nan),
        ("no class layout (N, 8) vs (N, 1)", torch.randn(4, 8, generator=g),
         torch.ones(4, 1), math.nan),
    ]


@pytest.mark.parametrize("case", _layouts(), ids=lambda c: c[0])
def test_accuracy_counts_a_classifications_labels_and_nothing_else(case):
    """Accuracy is the fraction of labels classified right, whatever the class layout
    (token and pixel labels were counted per example: 300% for a 3-token sequence); targets
    that are no labels (a regression's values, an autoencoder's images) have no accuracy
    (they got one, meaningless)."""
    _, out, targets, expected = case
    acc = TorchBackend.accuracy(out, targets)
    if math.isnan(expected):
        assert math.isnan(acc)
    else:
        assert acc == pytest.approx(expected) and 0.0 <= acc <= 1.0


def test_trainer_fits_a_regression_without_an_accuracy():
    """A regression (MSE, real-valued targets) has no accuracy: the Trainer's history and
    logs leave it out, and the default callbacks raise nothing about it (a threshold rule
    made up an accuracy near 50%, and an underfitting alert could follow)."""
    from trainwatch import default_callbacks
    from trainwatch.outputs import MemoryOutput

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = x @ np.ones((4, 1), dtype=np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    mem = MemoryOutput()
    trainer = Trainer(model, nn.MSELoss(), torch.optim.Adam(model.parameters(), 1e-2),
                      callbacks=default_callbacks(), outputs=[mem], progress=False)
    history = trainer.fit(x, y, epochs=3, batch_size=32, validation_data=(x[:64], y[:64]))
    assert set(history) == {"train_loss", "val_loss"} and history["val_loss"][-1] < 3.0
    assert not [k for k in mem.scalars_log if "accuracy" in k]
    assert [a.code for a in trainer.monitor.alerts.history] == [], trainer.monitor.summary()
