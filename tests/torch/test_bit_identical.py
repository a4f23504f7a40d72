"""The guard of non-negotiable 1 for torch: watching never changes training.

The same seeded run (a CNN with Dropout and BatchNorm, Adam) with every callback switched on
and scheduled often, and with none: every parameter, buffer and optimizer state tensor, and
the random state, must be bitwise equal.
"""


import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tests.helpers import all_callbacks  # noqa: E402
from trainwatch import SetupCheck, Trainer  # noqa: E402
from trainwatch.data import load_digits, train_val_split  # noqa: E402
from trainwatch.outputs import MemoryOutput  # noqa: E402
from trainwatch.torch import watch  # noqa: E402


def data():
    x, y = load_digits(images=True)
    (xt, yt), (xv, yv) = train_val_split(x, y, val_fraction=0.25, seed=0)
    return (xt[:256].astype(np.float32), yt[:256]), (xv[:128].astype(np.float32), yv[:128])


def make(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout2d(0.1), nn.Flatten(), nn.Linear(96, 32), nn.BatchNorm1d(32), nn.Tanh(),
        nn.Dropout(0.3), nn.Linear(32, 10),
    )
    return model, torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)


def everything(model, opt):
    """Parameters, buffers, optimizer state and the global random state, as copies."""
    opt_state = opt.state_dict()["state"]
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "optimizer": {(i, k): _copied(v) for i, s in opt_state.items() for k, v in s.items()},
        "grads": {k: v.grad.clone() for k, v in model.named_parameters()},
        "rng": torch.get_rng_state(),
        "training": model.training,
    }


def _copied(value):
    """A copy of an optimizer state entry: a tensor, a list of tensors (LBFGS's history)
    or a number."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in ("params", "buffers", "optimizer", "grads"):
        assert a[key].keys() == b[key].keys()
        assert a[key], key
        for name in a[key]:
            assert _same(a[key][name], b[key][name]), (key, name)
    assert torch.equal(a["rng"], b["rng"])
    assert a["training"] == b["training"]


def train_step(model, opt, criterion, watcher, xb, yb):
    """One step of a conventional loop, reporting the loss to ``watcher`` (None: bare)."""
    loss = criterion(model(xb), yb)
    if watcher is not None:
        watcher.loss(loss, yb)
    opt.zero_grad()
    loss.backward()
    opt.step()


def closure_step(model, opt, criterion, watcher, xb, yb):
    """One ``optimizer.step(closure)`` (LBFGS re-evaluates the closure at moved
    parameters), the loss reported inside the closure."""
    def closure():
        opt.zero_grad()
        loss = criterion(model(xb), yb)
        if watcher is not None:
            watcher.loss(loss, yb)
        loss.backward()
        return loss

    opt.step(closure)


def existing_loop(watched: bool, epochs=2, lbfgs=False):
    (xt, yt), (xv, yv) = data()
    model, opt = make()
    step = train_step
    if lbfgs:
        opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3, history_size=4)
        step = closure_step
    criterion = nn.CrossEntropyLoss()
    xt, yt = torch.as_tensor(xt), torch.as_tensor(yt)
    xv_t, yv_t = torch.as_tensor(xv), torch.as_tensor(yv)
    mem = MemoryOutput()
    w = None
    callbacks = all_callbacks((xv, yv)) if watched else []
    if watched:
        w = watch(model, opt, criterion, callbacks=callbacks, outputs=[mem],
                  progress=False, raise_errors=True)
    torch.manual_seed(1)
    order = np.random.default_rng(2)
    for _ in range(epochs):
        model.train()
        for idx in np.array_split(order.permutation(len(xt)), 8):
            idx = torch.as_tensor(idx)
            step(model, opt, criterion, w, xt[idx], yt[idx])
        model.eval()
        with torch.no_grad():
            val_acc = float((model(xv_t).argmax(1) == yv_t).float().mean())
        model.train()
        if w is not None:
            w.epoch_end({"val_accuracy": val_acc})
    if w is not None:
        w.close()
    return everything(model, opt), mem, callbacks


def test_watched_existing_loop_is_bit_identical_to_the_bare_loop():
    # (3 epochs of 8 steps: past SetupCheck's ORDER_STEPS, so it judges the data's order too)
    bare, _, _ = existing_loop(watched=False, epochs=3)
    watched, mem, callbacks = existing_loop(watched=True, epochs=3)
    (setup,) = [cb for cb in callbacks if isinstance(cb, SetupCheck)]
    assert setup._order is None  # (followed the first 20 steps' targets and judged them)
    stopped = [cb for cb in callbacks if getattr(cb, "time_limit", None) == 1e-6]
    assert len(stopped) == 1 and stopped[0].deferred >= 1  # a check stopped part-way too
    # every callback really ran (and measured) in the watched run
    assert mem.scalars_log["gradcheck/passed"] and mem.histograms["activations/2"]
    assert mem.images and mem.scalars_log["update_ratio_norms/0.weight/update"]
    assert mem.scalars_log["accuracy/val_subset"] and mem.figures
    assert_bitwise_equal(watched, bare)


def test_a_watched_lbfgs_closure_loop_is_bit_identical_to_the_bare_one():
    """``optimizer.step(closure)``: the watcher wraps the closure to announce the step when
    it first returns; the closure, its re-evaluations and the optimizer's history are
    untouched, and every callback measured."""
    bare, _, _ = existing_loop(watched=False, lbfgs=True)
    watched, mem, _ = existing_loop(watched=True, lbfgs=True)
    assert mem.scalars_log["gradcheck/passed"] and mem.histograms["activations/2"]
    assert mem.scalars_log["update_ratio_norms/0.weight/update"]
    assert_bitwise_equal(watched, bare)


def test_trainer_on_a_torch_model_is_bit_identical_with_and_without_callbacks():
    (xt, yt), (xv, yv) = data()
    runs = []
    for callbacks in (all_callbacks((xv, yv)), []):
        model, opt = make()
        mem = MemoryOutput()
        torch.manual_seed(1)
        trainer = Trainer(model, nn.CrossEntropyLoss(), opt, callbacks=callbacks,
                          outputs=[mem], progress=False, raise_errors=True)
        history = trainer.fit(xt, yt, epochs=2, batch_size=32, validation_data=(xv, yv),
                              seed=3)
        runs.append((everything(model, opt), history, mem))
    (full, h_full, mem_full), (bare, h_bare, _) = runs
    assert mem_full.scalars_log["gradcheck/passed"]
    assert mem_full.histograms["gradients/activations/8"]
    assert h_full == h_bare
    assert_bitwise_equal(full, bare)


class RandomEverywhere(nn.Module):
    """A forward that draws from numpy, Python's random and its own torch.Generator (also
    in eval mode), and writes its embedding in place (max_norm renormalises looked-up rows,
    also under no_grad): trainwatch's extra forwards (the accuracy-gap subsets) must leave
    all of it as training left it."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8, max_norm=1.0)
        self.l1, self.norm, self.l2 = nn.Linear(8, 12), nn.BatchNorm1d(12), nn.Linear(12, 4)
        self.gen = torch.Generator().manual_seed(5)

    def forward(self, ids):
        import random

        h = self.norm(self.l1(self.emb(ids).mean(1)))
        noise = torch.as_tensor(np.random.randn(*h.shape), dtype=h.dtype) * 0.05
        mask = (torch.rand(h.shape, generator=self.gen) > 0.2).to(h.dtype)
        return self.l2(torch.tanh(h + noise + 0.01 * random.random()) * mask)


def test_extra_forwards_leave_every_random_state_and_in_place_writes_as_training_left_them():
    import random

    g = torch.Generator().manual_seed(0)
    ids, y = torch.randint(0, 16, (72, 5), generator=g), torch.randint(0, 4, (72,), generator=g)
    (xt, yt), (xv, yv) = (ids[:48], y[:48]), (ids[48:], y[48:])
    runs = []
    for watched in (True, False):
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        model = RandomEverywhere()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        criterion = nn.CrossEntropyLoss()
        callbacks = all_callbacks((xv.numpy(), yv.numpy())) if watched else []
        w = watch(model, opt, criterion, callbacks=callbacks, progress=False,
                  raise_errors=True) if watched else None
        for _ in range(3):
            for idx in torch.arange(48).split(8):
                train_step(model, opt, criterion, w, xt[idx], yt[idx])
            if w is not None:
                w.epoch_end()
        if w is not None:
            w.close()
        runs.append((everything(model, opt), np.random.get_state()[1].copy(),
                     random.getstate(), model.gen.get_state()))
    (watched, np_w, py_w, gen_w), (bare, np_b, py_b, gen_b) = runs
    assert_bitwise_equal(watched, bare)
    assert np.array_equal(np_w, np_b) and py_w == py_b and torch.equal(gen_w, gen_b)
