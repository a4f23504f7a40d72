"""watch(): a conventional PyTorch loop, instrumented with a few lines, writes the dashboard;
hooks are idle between scheduled steps and all removed on close."""

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from torch import nn  # noqa: E402

from tests.torch.models import ComplexLayer  # noqa: E402
from trainwatch import Callback, LossMonitor, MetricLogger, SetupCheck  # noqa: E402
from trainwatch.callbacks.accuracy_gap import AccuracyGapMonitor  # noqa: E402
from trainwatch.callbacks.filter_images import FilterImages  # noqa: E402
from trainwatch.callbacks.gradient_check import GradientCheck  # noqa: E402
from trainwatch.callbacks.histograms import HistogramMonitor  # noqa: E402
from trainwatch.callbacks.update_ratio import UpdateRatioMonitor  # noqa: E402
from trainwatch.data import load_digits, train_val_split  # noqa: E402
from trainwatch.outputs import MemoryOutput  # noqa: E402
from trainwatch.torch import ForwardInputs, TorchBackend, Watcher, watch  # noqa: E402
from trainwatch.torch import backend as backend_module  # noqa: E402
from trainwatch.torch.host_reads import count_host_reads  # noqa: E402

SIZE = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}


def data(n_train=512, n_val=256):
    x, y = load_digits(images=True)
    (xt, yt), (xv, yv) = train_val_split(x, y, val_fraction=0.25, seed=0)
    as_t = lambda a, d: torch.as_tensor(a, dtype=d)  # noqa: E731
    return ((as_t(xt[:n_train], torch.float32), as_t(yt[:n_train], torch.int64)),
            (as_t(xv[:n_val], torch.float32), as_t(yv[:n_val], torch.int64)))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 32), nn.Tanh(), nn.Linear(32, 10),
    )


def fit_watched(model, opt, criterion, x, y, *, batch, epochs=1, **watch_options):
    """Train on (x, y) in order, batches of ``batch``, watched with a MemoryOutput: the
    (closed) watcher and the output."""
    mem = MemoryOutput()
    with watch(model, opt, criterion, progress=False, outputs=[mem], **watch_options) as w:
        for _ in range(epochs):
            for i in range(0, len(x), batch):
                loss = criterion(model(x[i:i + batch]), y[i:i + batch])
                w.loss(loss, y[i:i + batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return w, mem


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def loop(model, opt, watcher, *, epochs=2, batch=64, seed=0, on_batch=None):
    """A conventional loop; the lines marked `# trainwatch` are the only additions."""
    (xt, yt), (xv, yv) = data()
    criterion = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=order)
        for start in range(0, len(xt), batch):
            idx = perm[start:start + batch]
            xb, yb = xt[idx], yt[idx]
            if on_batch is not None:
                on_batch()
            loss = criterion(model(xb), yb)
            watcher.loss(loss, yb)  # trainwatch
            opt.zero_grad()
            loss.backward()
            opt.step()
        watcher.epoch_end({"train_accuracy": accuracy(model, xt, yt),  # trainwatch
                           "val_accuracy": accuracy(model, xv, yv)})


def frequent_callbacks():
    return [MetricLogger(every=2), UpdateRatioMonitor(budget=None, every=2),
            HistogramMonitor(budget=None, every=4, figure_every=None),
            GradientCheck(every=6, warmup_steps=3, budget=None),
            FilterImages(every=4), AccuracyGapMonitor()]


def test_instrumented_loop_writes_the_dashboard(tmp_path):
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with watch(model, opt, nn.CrossEntropyLoss(), logdir=tmp_path,  # trainwatch
               callbacks=frequent_callbacks(), progress=False, raise_errors=True) as w:
        loop(model, opt, w)
        assert w.step == 16  # 2 epochs of 8 batches
    ea = EventAccumulator(str(tmp_path), size_guidance=SIZE)
    ea.Reload()
    tags = ea.Tags()
    scalars = set(tags["scalars"])
    names = [n for n, _ in model.named_parameters()]
    for name in names:
        assert f"update_ratio_norms/{name}/update" in scalars
    assert {f"update_ratio/{n}" for n in names if n.endswith("weight")} <= scalars
    assert {"loss/train", "loss/train_epoch", "accuracy/train", "accuracy/val",
            "accuracy/gap", "gradcheck/passed"} <= scalars
    loss_steps = [e.step for e in ea.Scalars("loss/train")]
    assert loss_steps == list(range(0, 16, 2))
    assert all(e.value == 1.0 for e in ea.Scalars("gradcheck/passed"))
    assert [e.step for e in ea.Scalars("gradcheck/passed")] == [3, 9, 15]
    hists = set(tags["histograms"])
    assert {"weights/0.weight", "gradients/8.weight", "activations/2",
            "gradients/activations/7"} <= hists
    assert {"activations/2/dead_fraction", "activations/7/saturated_fraction"} <= scalars
    assert any(t.startswith("filters/0.weight") for t in tags["images"])
    epoch_loss = [e.value for e in ea.Scalars("loss/train_epoch")]
    assert len(epoch_loss) == 2 and epoch_loss[1] < epoch_loss[0]
    assert [e.value for e in ea.Scalars("epoch")] == [0, 1]
    alerts = (tmp_path / "alerts.jsonl")
    codes = [json.loads(line)["code"] for line in alerts.read_text().splitlines()] \
        if alerts.exists() else []
    assert "callback.error" not in codes


def all_hooks(model, opt):
    return ([(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in model.modules()],
            (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)))


def test_close_removes_every_hook_and_stops_watching():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    bare = all_hooks(model, opt)
    mem = MemoryOutput()
    w = watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
              callbacks=[MetricLogger(every=1),
                         HistogramMonitor(budget=None, every=1, figure_every=None)])
    assert all_hooks(model, opt) != bare
    loop(model, opt, w, epochs=1)
    assert w.step == 8 and "activations/2" in mem.histograms
    w.close()
    assert all_hooks(model, opt) == bare
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert mem.closed
    written = len(mem.scalars_log["loss/train"])
    loop(model, opt, w, epochs=1)  # training goes on, unwatched
    assert w.step == 8 and len(mem.scalars_log["loss/train"]) == written
    w.close()  # idempotent


def test_context_manager_closes_on_error_and_reports_it():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []

    class End(Callback):
        def on_train_end(self, state):
            seen.append(state.exception)

    with pytest.raises(RuntimeError, match="boom"), \
            watch(model, opt, callbacks=[End()], progress=False):
        raise RuntimeError("boom")
    assert isinstance(seen[0], RuntimeError)
    assert not opt._optimizer_step_pre_hooks and not model._forward_pre_hooks


class Recorder(Callback):
    """Records the hook sequence (and what the batch hooks saw)."""

    def __init__(self):
        self.events = []

    def on_epoch_begin(self, s):
        self.events.append(("epoch_begin", s.epoch))

    def on_batch_begin(self, s):
        self.events.append(("batch", s.step, None if s.inputs is None else tuple(s.inputs.shape)))

    def on_loss_computed(self, s):
        # (on the CPU the loss comes read, as a float: one read a step, shared)
        self.events.append(("loss", s.step, type(s.loss).__name__, round(s.loss, 6),
                            tuple(s.predictions.shape), s.predictions.requires_grad))

    def on_backward_end(self, s):
        grads = all(p.grad is not None for p in s.backend.model.parameters())
        self.events.append(("backward", s.step, grads))

    def on_step_begin(self, s):
        self.events.append(("step_begin", s.step))

    def on_step_end(self, s):
        self.events.append(("step_end", s.step))

    def on_validation_end(self, s):
        self.events.append(("validation", dict(s.metrics)))

    def on_epoch_end(self, s):
        self.events.append(("epoch_end", s.epoch, round(s.metrics["train_loss"], 6)))


def test_hook_sequence_with_accumulation_eval_and_no_grad_forwards():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    w = watch(model, opt, callbacks=[rec], progress=False)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    losses = []
    for _ in range(2):
        opt.zero_grad()
        for half in (slice(0, 3), slice(3, 6)):  # gradient accumulation: 2 forwards per step
            loss = criterion(model(x[half]), y[half])
            w.loss(loss)
            loss.backward()
            losses.append(loss.item())
        with torch.no_grad():
            model(x)  # a no-grad pass inside the step: not a batch
        opt.step()
    model.eval()
    model(x)  # validation forward in eval mode: not a batch
    model.train()
    w.epoch_end({"val_accuracy": 0.5})
    w.close()
    mean = round(float(np.mean(losses)), 6)
    seen = [round(v, 6) for v in losses]
    assert rec.events == [
        ("epoch_begin", 0),
        # the predictions are the outputs of the step's first forward, detached
        ("batch", 0, (3, 4)), ("loss", 0, "float", seen[0], (3, 3), False),
        ("loss", 0, "float", seen[1], (3, 3), False),
        ("backward", 0, True), ("step_begin", 0), ("step_end", 0),
        ("batch", 1, (3, 4)), ("loss", 1, "float", seen[2], (3, 3), False),
        ("loss", 1, "float", seen[3], (3, 3), False),
        ("backward", 1, True), ("step_begin", 1), ("step_end", 1),
        ("validation", {"val_accuracy": 0.5, "train_loss": pytest.approx(mean, abs=1e-6)}),
        ("epoch_end", 0, mean),
    ]
    assert w.step == 2


def test_on_an_accelerator_callbacks_see_the_loss_as_a_detached_tensor(monkeypatch):
    """Where a read is a device sync, the loss reaches the callbacks unread (a detached 0-d
    tensor) and the epoch's mean is the one read."""
    monkeypatch.setattr(backend_module.TorchBackend, "host_reads_cheap",
                        property(lambda self: False))
    seen = []

    class LossType(Callback):
        def on_loss_computed(self, s):
            seen.append((type(s.loss).__name__, s.loss.requires_grad, float(s.loss)))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = watch(model, opt, callbacks=[LossType()], progress=False)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = nn.functional.cross_entropy(model(x), y)
    w.loss(loss)
    loss.backward()
    opt.step()
    w.epoch_end({})
    w.close()
    assert seen == [("Tensor", False, pytest.approx(loss.item()))]
    assert w.monitor.state.metrics["train_loss"] == pytest.approx(loss.item())


def train_compiled(model, callbacks, *, wrap=True, fullgraph=False, after_watch=False,
                   steps=6):
    """``steps`` steps of ``torch.compile(model)`` (``wrap``; else ``model`` as it is,
    compiled inside) on random batches of 8 examples, 4 features, 3 classes, watched with
    ``callbacks`` (None: not watched; ``after_watch``: ``watch(model)``, compiled after);
    dynamo runs with no code generation. Returns (what was written, the run's alerts)."""
    torch.manual_seed(1)

    def compiled():
        return torch.compile(model, backend="eager", fullgraph=fullgraph) if wrap else model

    run = None if after_watch else compiled()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    mem = MemoryOutput()
    w = None
    if callbacks is not None:
        w = watch(model if after_watch else run, opt, criterion, outputs=[mem],
                  progress=False, raise_errors=True, callbacks=callbacks)
    run = run or compiled()
    for _ in range(steps):
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        loss = criterion(run(x), y)
        if w is not None:
            w.loss(loss, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if w is None:
        return mem, []
    w.close()
    return mem, w.monitor.alerts.history


def test_a_compiled_model_is_watched_under_its_own_names():
    """torch.compile's wrapper: tags, layers and gradient-check reports use the compiled
    module's names (no ``_orig_mod.`` prefix); the check runs that module eagerly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    check = GradientCheck(every=4, warmup_steps=2, budget=None)
    mem, _ = train_compiled(model, [UpdateRatioMonitor(budget=None, every=2), check,
                                    HistogramMonitor(budget=None, every=3, figure_every=None)])
    tags = set(mem.scalars_log) | set(mem.histograms)
    assert not any("_orig_mod" in t for t in tags)
    assert {"update_ratio/0.weight", "gradients/2.bias"} <= tags
    assert [s for s, _ in check.reports] == [2]
    assert check.reports[0][1].passed
    assert list(check.reports[0][1].params) == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize("compiled", ["wrapper", "wrapper, fullgraph", "inner block"])
def test_layers_inside_compiled_code_keep_no_hooks(compiled):
    """Hooks on layers inside torch.compile'd code would be traced by dynamo: the graph broken
    there (compiled again, in pieces with other kernels) or a fullgraph=True compile failed
    (training stopped at the first histogram step). Those layers are left out of the
    activation statistics, said once; dynamo compiles the graphs a bare run compiles."""
    import torch._dynamo.utils as dynamo_utils

    def run(watched):
        torch._dynamo.reset()  # (no code compiled by earlier runs)
        torch.manual_seed(0)
        block = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        if compiled == "inner block":
            block = torch.compile(block, backend="eager", fullgraph=True)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), block, nn.Linear(8, 3))
        graphs = dynamo_utils.counters["stats"]["unique_graphs"]
        mem = train_compiled(model, [HistogramMonitor(budget=None, every=2, figure_every=None)]
                             if watched else None, wrap=compiled != "inner block",
                             fullgraph=compiled == "wrapper, fullgraph")
        return mem, dynamo_utils.counters["stats"]["unique_graphs"] - graphs

    (mem, alerts), graphs = run(True)
    _, bare_graphs = run(False)
    assert graphs == bare_graphs
    captured = {t for t in mem.histograms if t.startswith("activations/")}
    assert captured == (set() if compiled != "inner block" else {"activations/0",
                                                                "activations/1",
                                                                "activations/3"})
    assert {"weights/0.weight", "gradients/3.weight"} <= set(mem.histograms)
    told = [a for a in alerts if a.code == "activations.not_captured"]
    assert len(told) == 1
    assert told[0].message.startswith("5 of the model's 5 layers" if compiled != "inner block"
                                      else "2 of the model's 5 layers")


@pytest.mark.parametrize("fullgraph", [False, True])
def test_a_model_compiled_after_watch_trains_as_unwatched_and_the_watcher_says_why(fullgraph):
    """torch.compile after watch(model): the watcher's forward hooks run inside compiled
    code, where they do nothing (a fullgraph compile failed on them: training stopped at
    step 0); training ends bit-identical and one info says how to watch the compiled model."""
    def run(watched):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        callbacks = [GradientCheck(warmup_steps=2, every=4, budget=None),
                     HistogramMonitor(every=2, budget=None, figure_every=None)]
        _, alerts = train_compiled(model, callbacks if watched else None, fullgraph=fullgraph,
                                   after_watch=True, steps=8)
        return [p.detach().clone() for p in model.parameters()], alerts

    bare, _ = run(False)
    watched, alerts = run(True)
    assert all(torch.equal(a, b) for a, b in zip(bare, watched))
    codes = [a.code for a in alerts]
    assert codes.count("watch.forward_unseen") == 1 and "callback.error" not in codes
    told = next(a for a in alerts if a.code == "watch.forward_unseen")
    assert told.step == 0 and "watch(torch.compile(model)" in told.suggestion


def _data_parallel_worker(rank, store, logdir, watched, results):
    """One of two processes training a DistributedDataParallel CNN (BatchNorm, dropout) on
    the CPU; process 0 is watched when ``watched``. Saves its parameters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    (x, y), (xv, yv) = data(n_train=256, n_val=64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 10))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    w = None
    if watched and rank == 0:
        w = watch(ddp, opt, criterion, logdir=logdir, progress=False, raise_errors=True,
                  callbacks=[GradientCheck(warmup_steps=2, every=5, budget=None),
                             AccuracyGapMonitor(every=4, validation_data=(xv, yv)),
                             HistogramMonitor(every=3, budget=None, figure_every=None),
                             UpdateRatioMonitor(every=2, budget=None)])
    g = torch.Generator().manual_seed(rank)
    for _ in range(12):
        idx = torch.randint(0, len(x), (16,), generator=g)
        loss = criterion(ddp(x[idx]), y[idx])
        if w is not None:
            w.loss(loss, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if w is not None:
        w.close()
    torch.save(model.state_dict(), f"{results}/{rank}.pt")
    dist.barrier()  # (gloo aborts a process torn down while the other still talks: 4 in 15)
    dist.destroy_process_group()


def _train_data_parallel(tmp_path, watched):
    import torch.multiprocessing as mp

    out = tmp_path / ("watched" if watched else "bare")
    out.mkdir()
    args = (str(out / "store"), str(out / "logs"), watched, str(out))
    context = mp.start_processes(_data_parallel_worker, args, nprocs=2, join=False,
                                 start_method="spawn")
    try:
        for _ in range(240):  # (a collective one process never joins hangs the other)
            if context.join(timeout=0.5):
                break
        else:
            pytest.fail("the data-parallel processes did not finish in 120 s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(out / f"{rank}.pt") for rank in range(2)], out / "logs"


def test_a_data_parallel_model_watched_in_one_process_trains_as_unwatched(tmp_path):
    """DistributedDataParallel, watched in process 0 only (the usual way to log): the
    gradient checks and evaluations run the module inside the wrapper, which starts no
    collective (through the wrapper a forward broadcasts buffers, a backward all-reduces
    gradients, and the other process, never joining, aborts). Every process ends with the
    parameters of the unwatched run; tags carry no ``module.`` prefix."""
    bare, _ = _train_data_parallel(tmp_path, watched=False)
    watched, logs = _train_data_parallel(tmp_path, watched=True)
    for before, after in zip(bare, watched):
        assert before.keys() == after.keys()
        for name in before:
            assert torch.equal(before[name], after[name]), name
    acc = EventAccumulator(str(logs), size_guidance=SIZE)
    acc.Reload()
    tags = set(acc.Tags()["scalars"]) | set(acc.Tags()["histograms"])
    assert {"gradcheck/passed", "accuracy/val_subset", "update_ratio/5.weight",
            "activations/0"} <= tags
    assert not any("module." in t for t in tags)
    assert [e.value for e in acc.Scalars("gradcheck/passed")][:2] == [1.0, 1.0]


def test_inputs_and_targets_of_a_step_come_from_the_same_batch():
    """With gradient accumulation, or when a step is skipped (as an AMP gradient scaler does
    on inf gradients), several batches join one optimizer step: the step's inputs and
    targets are both its first batch's, so a gradient check runs on a real batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    class Batch(Callback):
        def on_backward_end(self, s):
            seen.append((s.step, float(s.inputs[0, 0]), int(s.targets[0])))

    criterion = nn.CrossEntropyLoss()
    with watch(model, opt, callbacks=[Batch()], progress=False, raise_errors=True) as w:
        for i in range(4):
            x, y = torch.full((3, 4), float(i)), torch.full((3,), i % 3)
            loss = criterion(model(x), y)
            w.loss(loss, y)
            opt.zero_grad()
            loss.backward()
            if i != 1:  # batch 1's step skipped: batch 2 joins step 1
                opt.step()
    assert seen == [(0, 0.0, 0), (1, 1.0, 1), (2, 3.0, 0)]


def test_gradient_check_runs_on_the_reported_batch():
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    check = GradientCheck(every=4, warmup_steps=2, examples=2, budget=None)
    mem = MemoryOutput()
    with watch(model, opt, nn.CrossEntropyLoss(), callbacks=[check], outputs=[mem],
               progress=False, raise_errors=True) as w:
        loop(model, opt, w, epochs=1)
    assert [step for step, _ in check.reports] == [2, 6]
    assert all(report.passed for _, report in check.reports)
    assert list(check.reports[0][1].params) == [n for n, _ in model.named_parameters()]


def nan_run(poison_at=7):
    """Watch 16 batches with LossMonitor(every=5); a weight of ``6.weight`` becomes NaN
    before step ``poison_at``; the loop stops when the watcher asks. Returns (steps run,
    the loss.nonfinite alerts, the watcher)."""
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (xt, yt), _ = data(n_train=512)
    criterion = nn.CrossEntropyLoss()
    steps = 0
    with watch(model, opt, criterion, callbacks=[LossMonitor(every=5, check_tensors_every=None)],
               progress=False, raise_errors=True) as w:
        for start in range(0, 512, 32):
            if steps == poison_at:
                with torch.no_grad():
                    model[6].weight[0, 0] = float("nan")
            xb, yb = xt[start:start + 32], yt[start:start + 32]
            loss = criterion(model(xb), yb)
            w.loss(loss, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if w.should_stop:
                break
    return steps, [a for a in w.monitor.alerts.history if a.code == "loss.nonfinite"], w


def test_a_nan_loss_on_the_cpu_is_seen_on_its_step_with_the_tensor_that_caused_it():
    steps, alerts, w = nan_run()
    assert steps == 8  # stopped right after step 7
    assert len(alerts) == 1 and alerts[0].step == 7 and alerts[0].tensor == "6.weight"
    assert "training stops after this batch" in alerts[0].message
    assert "non-finite values at step 7 (6.weight)" in w.monitor.state.stop_reason


def test_a_nan_loss_on_an_accelerator_is_read_later_and_the_alert_says_so(monkeypatch):
    """Losses handed over in batches of 5 steps and read on the host then (as on a GPU):
    the NaN of step 7 is read at step 12, the alert names step 7, says when it was read and
    that NaN/Inf may have spread since (the tensor scan at step 12 finds the first layer's
    weights, poisoned by the updates)."""
    from tests.helpers import Clock
    from trainwatch.core import budget as budget_module

    monkeypatch.setattr(backend_module.TorchBackend, "host_reads_cheap",
                        property(lambda self: False))
    monkeypatch.setattr(budget_module.time, "perf_counter", Clock())  # (batches by steps)
    monkeypatch.setattr(budget_module, "BATCH_STEPS", 5)
    steps, alerts, w = nan_run()
    # step 0 at once, steps 1..6 at step 6, steps 7..12 at step 12: there the NaN of step 7
    assert steps == 13
    assert len(alerts) == 1 and alerts[0].step == 7
    message = alerts[0].message
    assert "at step 12, when the loss was read (5 steps later" in message
    assert "may have spread" in message and "training stops after step 12" in message
    assert "non-finite values at step 7" in w.monitor.state.stop_reason


class TwoInputNet(nn.Module):
    """forward(x, side, *, scale): the batch of a forward with several arguments."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.side = nn.Linear(2, 10)
        self.head = nn.Linear(256, 10)

    def forward(self, x, side, *, scale=1.0):
        return self.head(self.conv(x)) * scale + self.side(side)


def test_gradient_check_runs_on_a_batch_of_several_forward_arguments():
    model = TwoInputNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    check = GradientCheck(every=3, warmup_steps=1, examples=2, budget=None)
    seen = []

    class Inputs(Callback):
        def on_backward_end(self, state):
            seen.append(state.inputs)

    (xt, yt), _ = data(n_train=128)
    criterion = nn.CrossEntropyLoss()
    with watch(model, opt, criterion, callbacks=[check, Inputs()], progress=False,
               raise_errors=True) as w:
        for start in range(0, 128, 32):
            xb, yb = xt[start:start + 32], yt[start:start + 32]
            side = xb.mean(dim=(1, 2, 3)).unsqueeze(1).repeat(1, 2)
            loss = criterion(model(xb, side, scale=0.5), yb)
            w.loss(loss, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [step for step, _ in check.reports] == [1]
    report = check.reports[0][1]
    assert report.passed and list(report.params) == [n for n, _ in model.named_parameters()]
    assert isinstance(seen[0], ForwardInputs) and len(seen[0]) == 32
    assert seen[0].kwargs == {"scale": 0.5} and len(seen[0][:2]) == 2


def test_stepwise_accuracy_gap_on_a_batch_of_several_forward_arguments():
    """AccuracyGapMonitor(every=N) keeps the first training examples it sees as host copies
    and joins them: with a forward of several arguments they are ForwardInputs, joined
    argument by argument; the gap is evaluated on them and on the validation subset."""
    model = TwoInputNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (xt, yt), (xv, yv) = data(n_train=128, n_val=64)

    def side(x):
        return x.mean(dim=(1, 2, 3)).unsqueeze(1).repeat(1, 2)

    val = (ForwardInputs((xv, side(xv)), {"scale": 0.5}), yv)
    gap = AccuracyGapMonitor(every=2, validation_data=val, subset=48)
    mem = MemoryOutput()
    criterion = nn.CrossEntropyLoss()
    with watch(model, opt, criterion, callbacks=[gap], outputs=[mem], progress=False,
               raise_errors=True) as w:
        for start in range(0, 128, 32):
            xb, yb = xt[start:start + 32], yt[start:start + 32]
            loss = criterion(model(xb, side(xb), scale=0.5), yb)
            w.loss(loss, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    kept, targets = gap._train_subset
    assert isinstance(kept, ForwardInputs) and len(kept) == 48 and kept.kwargs == {"scale": 0.5}
    np.testing.assert_array_equal(kept.args[0], xt[:48].numpy())
    np.testing.assert_array_equal(targets, yt[:48].numpy())
    written = mem.scalars_log["accuracy/train_subset"]
    assert [step for step, _ in written] == [2, 4]
    model.eval()
    with torch.no_grad():  # the last evaluation saw the final model
        expected = (model(xt[:48], side(xt[:48]), scale=0.5).argmax(1) == yt[:48]).float().mean()
    assert written[-1][1] == pytest.approx(float(expected))
    assert [step for step, _ in mem.scalars_log["accuracy/val_subset"]] == [2, 4]



def eval_mode_gap_run(watched, epochs=12):
    """A loop whose validation accuracy is stuck at chance by the switch to eval mode, not by
    memorising: a BatchNorm with a momentum of 0 (running statistics never move) after a
    layer whose bias (20, which training mode normalises away) eval mode keeps. Returns
    the final parameters and buffers, the random state and the watcher (None bare)."""
    (xt, yt), (xv, yv) = data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32, momentum=0.0),
                          nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        model[1].bias.fill_(20.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    w = watch(model, opt, criterion, callbacks=[AccuracyGapMonitor()], progress=False,
              raise_errors=True) if watched else None
    for _ in range(epochs):
        right = 0
        for i in range(0, len(xt), 64):
            out = model(xt[i:i + 64])
            loss = criterion(out, yt[i:i + 64])
            if w is not None:
                w.loss(loss, yt[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            right += int((out.argmax(1) == yt[i:i + 64]).sum())
        if w is not None:  # (training accuracy counted as the model trains, in train mode)
            w.epoch_end({"train_accuracy": right / len(xt),
                         "val_accuracy": accuracy(model, xv, yv)})
    if w is not None:
        w.close()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, torch.get_rng_state(), w


def test_a_gap_that_closes_in_eval_mode_is_no_overfitting_and_scoring_it_changes_nothing():
    state, rng, w = eval_mode_gap_run(watched=True)
    alerts = w.monitor.alerts.history
    assert not [a for a in alerts if a.code == "accuracy_gap.overfit"]
    mode = [a for a in alerts if a.code == "accuracy_gap.eval_mode" and not a.resolved]
    assert len(mode) == 1 and mode[0].severity.value == "info"
    # training mode is far above validation, and so is eval mode's score of training examples
    # below it: the gap is the mode switch's
    assert "256 training examples reach" in mode[0].message and "not memorisation" in (
        mode[0].message)
    persists = [a for a in alerts if a.code == "accuracy_gap.eval_mode_persists"]
    assert len(persists) == 1 and persists[0].severity.value == "warning"
    assert "momentum of 0" in persists[0].suggestion
    # the first verdict after 3 evaluations (8 steps an epoch), the warning 9 after it
    assert mode[0].step == 24 and persists[0].step == 96
    # keeping and scoring training examples left training as it was
    bare_state, bare_rng, _ = eval_mode_gap_run(watched=False)
    assert torch.equal(rng, bare_rng)
    for name, value in bare_state.items():
        assert torch.equal(state[name], value), name

# -- no host reads on idle steps ---------------------------------------------------------------

def reads_per_step(model, opt, callbacks, mem, batch=32):
    """Train 512 examples in batches of ``batch`` watched with ``callbacks``; the host reads
    trainwatch made on each step (counted by ``count_host_reads``)."""
    w = watch(model, opt, nn.CrossEntropyLoss(), callbacks=callbacks, outputs=[mem],
              progress=False, raise_errors=True)
    (xt, yt), _ = data()
    criterion = nn.CrossEntropyLoss()
    reads = []
    with count_host_reads() as log:
        for start in range(0, 512, batch):
            xb, yb = xt[start:start + batch], yt[start:start + batch]
            before = len(log)
            loss = criterion(model(xb), yb)
            w.loss(loss, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            reads.append(len(log) - before)
    w.close()
    return reads


def test_idle_steps_read_nothing_from_the_device(monkeypatch):
    # what a GPU runs: reads not cheap (the CPU reads each loss as it comes), histograms
    # bucketed by the device path, whose only read is the final one
    monkeypatch.setattr(backend_module, "CPU_SHORT_PATH", False)
    monkeypatch.setattr(backend_module.TorchBackend, "host_reads_cheap",
                        property(lambda self: False))
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mem = MemoryOutput()
    callbacks = [MetricLogger(every=5), UpdateRatioMonitor(budget=None, every=5),
                 HistogramMonitor(budget=None, every=5, figure_every=None),
                 GradientCheck(every=8, budget=None, warmup_steps=4)]
    reads = reads_per_step(model, opt, callbacks, mem)
    written = {step for log_ in (mem.scalars_log, mem.histograms) for series in log_.values()
               for step, _ in series}
    busy = {s for s, n in enumerate(reads) if n}
    assert busy == {0, 4, 5, 10, 12, 15}
    assert busy <= written
    # a logging step: one read for the loss and the update norms together, one for all four
    # histogram kinds and the activation statistics together
    for step in (0, 5, 10, 15):
        assert reads[step] == 2, reads
    assert sum(reads) == sum(reads[s] for s in busy)


def test_a_logging_step_reads_the_device_once_for_all_callbacks(monkeypatch):
    """On a GPU (reads not cheap), the loss curve, the loss rules and the update ratios of a
    step travel to the host in one transfer, and idle steps read nothing."""
    monkeypatch.setattr(backend_module, "CPU_SHORT_PATH", False)
    monkeypatch.setattr(backend_module.TorchBackend, "host_reads_cheap",
                        property(lambda self: False))
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mem = MemoryOutput()
    callbacks = [MetricLogger(every=5), LossMonitor(every=10, check_tensors_every=None),
                 UpdateRatioMonitor(budget=None, every=5)]
    reads = reads_per_step(model, opt, callbacks, mem)
    assert [s for s, n in enumerate(reads) if n] == [0, 5, 10, 15]
    assert all(reads[s] == 1 for s in (0, 5, 10, 15)), reads
    assert mem.steps("loss/train") == [0, 5, 10, 15]
    assert mem.steps("loss/train_log10") == [0, 10]
    assert mem.steps("update_ratio/0.weight") == [0, 5, 10, 15]


def test_setup_checks_read_the_device_twice_in_a_run(monkeypatch):
    """SetupCheck on a GPU: the first batch's score statistics in step 0's transfer, the
    first 20 steps' target order in one read at step 19, nothing on the other steps."""
    monkeypatch.setattr(backend_module, "CPU_SHORT_PATH", False)
    monkeypatch.setattr(backend_module.TorchBackend, "host_reads_cheap",
                        property(lambda self: False))
    model = small_cnn()
    reads = reads_per_step(model, torch.optim.SGD(model.parameters(), lr=0.05),
                           [MetricLogger(every=1000), SetupCheck()], MemoryOutput(), batch=16)
    assert len(reads) == 32
    assert [s for s, n in enumerate(reads) if n] == [0, 19] and reads[19] == 1, reads


def test_trainer_on_an_accelerator_reads_the_loss_only_on_logging_steps(monkeypatch):
    """What a GPU sees from trainwatch's own Trainer with the loss monitors: the losses and
    correct counts stay on the device between logging steps (read in one transfer each
    ``every`` steps and at epoch ends)."""
    from trainwatch import LossMonitor, Trainer

    monkeypatch.setattr(backend_module.TorchBackend, "host_reads_cheap", property(lambda s: False))
    model = small_cnn()
    (xt, yt), _ = data(n_train=320)
    trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.05),
                      callbacks=[MetricLogger(every=5), LossMonitor(every=5)], progress=False,
                      outputs=[MemoryOutput()], raise_errors=True)
    reads = []
    original_step_end = trainer.monitor.step_end

    def step_end():
        original_step_end()
        reads.append(len(log))

    trainer.monitor.step_end = step_end
    with count_host_reads() as log:
        trainer.fit(xt.numpy(), yt.numpy(), epochs=1, batch_size=32)
    per_step = np.diff([0, *reads])
    busy = {s for s, n in enumerate(per_step) if n}
    assert busy <= {0, 5}  # 10 steps: the logging steps only (step 0 reads the first loss)
    assert len(log) > 0


def test_watch_validates_its_arguments():
    with pytest.raises(TypeError, match="model"):
        watch(object(), torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0))
    with pytest.raises(TypeError, match="optimizer"):
        watch(nn.Linear(2, 2), object())
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(ValueError, match="optimizer: trains none of the model's parameters"):
        watch(model, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0))
    with pytest.raises(TypeError, match=r"loss_fn: expected a callable .* got int"):
        watch(model, opt, 5)
    with pytest.raises(ValueError, match="epochs: must be an integer >= 1 or None, got 0"):
        watch(model, opt, epochs=0)
    with pytest.raises(ValueError, match="steps_per_epoch: must be an integer >= 1"):
        watch(model, opt, steps_per_epoch=2.5)
    with pytest.raises(TypeError, match=r"'logdr' \(did you mean 'logdir'\?\)"):
        watch(model, opt, logdr="runs")
    with pytest.raises(TypeError, match=r"'raise_error' \(did you mean 'raise_errors'\?\)"):
        watch(model, opt, raise_error=True)
    assert model._forward_hooks == {} and opt._optimizer_step_post_hooks == {}
    w = watch(model, torch.optim.SGD(model.parameters(), lr=1.0), progress=False)
    assert isinstance(w, Watcher)
    w.close()


@pytest.mark.parametrize("fail_at", [2, 12])  # 9 layers: a forward copy, a backward one
def test_a_capture_that_runs_out_of_memory_never_stops_training(monkeypatch, fail_at):
    """Copying a layer's output (in the forward) or its gradient (in the backward) raises,
    as a GPU out of memory would: training goes on, the step has no activation data, one
    alert says so, and the next capture step tries again."""
    copies = {"n": 0}
    original = backend_module._detached_copy

    def copy_or_fail(t):
        copies["n"] += 1
        if copies["n"] == fail_at:  # during the first capture (step 0)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(t)

    monkeypatch.setattr(backend_module, "_detached_copy", copy_or_fail)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mem = MemoryOutput()
    with watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
               callbacks=[HistogramMonitor(budget=None, every=4, figure_every=None)]) as w:
        loop(model, opt, w, epochs=1)
    assert w.step == 8
    failed = [a for a in w.monitor.alerts.history if a.code == "activations.capture_failed"]
    assert len(failed) == 1 and failed[0].step == 0 and "out of memory" in failed[0].message
    assert not any(a.code == "callback.error" for a in w.monitor.alerts.history)
    assert mem.steps("activations/0/mean") == [4]  # step 0's capture failed, step 4's worked
    # what needs no capture is still written at the failed step
    assert [step for step, _ in mem.histograms["weights/0.weight"]] == [0, 4]
    assert [step for step, _ in mem.histograms["activations/0"]] == [4]


def test_bad_losses_and_metrics_are_reported_once_and_never_stop_training():
    """A loss that is no scalar, a loss that is no number, a metric that is no number:
    each is left out with one warning, and training and the other values go on."""
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mem = MemoryOutput()
    (xt, yt), _ = data(n_train=128)
    per_example = nn.CrossEntropyLoss(reduction="none")
    with watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
               callbacks=[MetricLogger(every=1)]) as w:
        for i, start in enumerate(range(0, 128, 32)):
            losses = per_example(model(xt[start:start + 32]), yt[start:start + 32])
            reported = {0: losses, 1: "nan?", 2: None}.get(i, losses.mean())
            w.loss(reported, yt[start:start + 32])
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
            w.epoch_end({"val_accuracy": "high" if i == 0 else 0.5, "val_loss": 0.7})
    codes = [a.code for a in w.monitor.alerts.history]
    assert codes.count("watch.bad_loss") == 1  # once, whatever came after
    assert codes.count("metrics.not_a_number") == 1
    assert "callback.error" not in codes
    assert w.step == 4
    assert mem.steps("loss/train") == [3]  # only the scalar loss was recorded
    assert mem.steps("accuracy/val") == [2, 3, 4]  # "high" left out, the rest written
    assert mem.steps("loss/val") == [1, 2, 3, 4]


def test_a_watched_model_can_be_deep_copied_pickled_and_saved_and_the_copy_is_not_watched(
        tmp_path):
    """copy.deepcopy(model) (an EMA model, a best-model snapshot) and torch.save(model) copy
    the module's hooks: they must not drag the watcher along (its writers hold locks: this
    raised "cannot pickle '_thread.lock'"), and the copy's forwards are not the watched
    model's batches. Also during a step that captures activations. A copy's hooks do
    nothing and take themselves off at its first forward (they stayed for good)."""
    import copy
    import pickle

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    seen = []

    class Batches(Callback):
        def on_batch_begin(self, state):
            seen.append(state.step)

    w = watch(model, opt, criterion, logdir=tmp_path, progress=False, raise_errors=True,
              callbacks=[HistogramMonitor(budget=None, every=2), Batches()])
    torch.manual_seed(0)
    copies, hooked = [], []

    def hooks(module):
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())

    for _ in range(4):
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        out = model(x)  # on even steps the layers are capturing now
        copies.append(copy.deepcopy(model))
        hooked.append(hooks(copies[-1]))
        loss = criterion(out, y)
        w.loss(loss, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema = copies[-1].train()
        ema(torch.randn(8, 4)).sum().backward()  # a training forward of the copy: not watched
    assert max(hooked) > 0 and [hooks(c) for c in copies] == [0, 0, 0, 0], hooked
    saved = tmp_path / "model.pt"
    torch.save(model, saved)
    pickle.loads(pickle.dumps(opt))
    loaded = torch.load(saved, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert w.step == 4 and seen == [0, 1, 2, 3]
    w.close()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert "callback.error" not in {a.code for a in w.monitor.alerts.history}


def test_without_targets_or_a_loss_function_gradient_checks_say_so_and_training_goes_on():
    """A loop that reports no targets gets one info alert naming what is missing and how to
    give it; watch(..., loss_fn=None) leaves GradientCheck out of the defaults (nothing to
    check with) instead of failing at its first check."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    w = watch(model, opt, criterion, progress=False, raise_errors=True,
              callbacks=[GradientCheck(warmup_steps=2, budget=None)])
    other = nn.Linear(2, 2)
    no_loss_fn = watch(other, torch.optim.SGD(other.parameters(), lr=0.1), progress=False)
    assert not any(isinstance(cb, GradientCheck) for cb in no_loss_fn.monitor.callbacks)
    assert any(isinstance(cb, UpdateRatioMonitor) for cb in no_loss_fn.monitor.callbacks)
    no_loss_fn.close()
    for _ in range(5):
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        loss = criterion(model(x), y)
        w.loss(loss)  # no targets
        opt.zero_grad()
        loss.backward()
        opt.step()
    w.close()
    skipped = [a for a in w.monitor.alerts.history if a.code == "gradcheck.skipped"]
    assert len(skipped) == 1 and skipped[0].step == 2
    assert "its targets" in skipped[0].message and "inputs" not in skipped[0].message
    assert "watcher.loss(loss, targets)" in skipped[0].suggestion


def test_a_loss_function_the_outputs_do_not_fit_is_said_once_and_training_goes_on():
    """A sequence model's (N, T, C) scores with CrossEntropyLoss given to watch() while the
    loop transposes them itself: the gradient check says what failed (with the shapes) and
    how to give the loss, once, and stops; no callback error, the other callbacks go on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    mem = MemoryOutput()
    with watch(model, opt, criterion, outputs=[mem], progress=False,
               callbacks=[GradientCheck(warmup_steps=2, every=2, budget=None),
                          UpdateRatioMonitor(every=1, budget=None)]) as w:
        for _ in range(6):
            x = torch.randint(0, 6, (4, 5))
            loss = criterion(model(x).transpose(1, 2), x)
            w.loss(loss, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    codes = [a.code for a in w.monitor.alerts.history]
    assert codes.count("gradcheck.loss_fn_failed") == 1 and "callback.error" not in codes
    alert = next(a for a in w.monitor.alerts.history if a.code == "gradcheck.loss_fn_failed")
    assert alert.step == 2 and "(outputs (3, 5, 6), targets (3, 5))" in alert.message
    assert "loss_fn=lambda out, y" in alert.suggestion
    assert len(mem.scalars_log["update_ratio/1.weight"]) == 6


def test_the_model_carries_forward_hooks_only_on_steps_whose_batch_is_read():
    """A histogram every 4 steps reads the batch on steps 0, 4, 8, ...: only then does the
    model carry trainwatch's forward hooks (elsewhere torch's fast call path); a callback
    that keeps the default reads_batch gets them every step."""
    class Seen(Callback):
        def __init__(self):
            self.hooked, self.inputs = [], []

        def next_step(self, step):
            return step

        def reads_batch(self, step):
            return False

        def on_loss_computed(self, s):
            self.hooked.append(bool(s.backend.model._forward_pre_hooks))
            self.inputs.append(s.inputs is not None)

    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen, mem = Seen(), MemoryOutput()
    w = watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
              callbacks=[seen, HistogramMonitor(budget=None, every=4, figure_every=None)])
    loop(model, opt, w, epochs=2)  # 16 steps
    w.close()
    reads = [step % 4 == 0 for step in range(16)]
    assert seen.hooked == reads and seen.inputs == reads
    assert [s for s, _ in mem.histograms["activations/2"]] == [0, 4, 8, 12]

    class Every(Callback):  # the default: reads every batch
        def on_loss_computed(self, s):
            seen.inputs.append(s.inputs is not None)

    seen.inputs = []
    w = watch(model, opt, callbacks=[Every()], progress=False)
    loop(model, opt, w, epochs=1)
    w.close()
    assert seen.inputs == [True] * 8
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_the_optimizer_carries_the_step_pre_hook_only_on_steps_a_callback_is_awake_for():
    """An update ratio every 4 steps wakes on steps 0, 4, 8, ...: only then does the
    optimizer carry trainwatch's step pre-hook (its backward_end and step_begin); on the
    quiet steps only the post-hook counts the step. The measured steps are the same."""
    pre_hooks = []
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mem = MemoryOutput()
    w = watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
              callbacks=[UpdateRatioMonitor(every=4, budget=None)])
    loop(model, opt, w, epochs=2, on_batch=lambda: pre_hooks.append(
        len(opt._optimizer_step_pre_hooks)))  # 16 steps
    assert pre_hooks == [int(step % 4 == 0) for step in range(16)]
    assert len(opt._optimizer_step_post_hooks) == 1
    ratio_steps = [s for s, _ in mem.scalars_log["update_ratio/0.weight"]]
    assert ratio_steps == [0, 4, 8, 12]
    w.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_an_lbfgs_closure_step_is_watched_like_any_other_step():
    """``optimizer.step(closure)`` runs the forward, loss and backward inside the step (LBFGS
    re-evaluates the closure at moved parameters). The closure's first forward is the
    batch's, the backward's end and the step begin when the closure first returns (the
    parameters not yet moved), so the gradient check runs on that batch, and the loss rules
    take each step's first loss, not the re-evaluations."""
    events, reported = [], []

    class Order(Callback):
        def on_batch_begin(self, s):
            events.append(("batch", s.step, s.inputs is not None))
            self.before = [p.detach().clone() for p in s.backend.model.parameters()]

        def on_backward_end(self, s):
            unmoved = all(torch.equal(a, p) for a, p in zip(self.before,
                                                             s.backend.model.parameters()))
            events.append(("backward_end", s.step, unmoved))

        def on_step_begin(self, s):
            events.append(("step_begin", s.step))

        def on_step_end(self, s):
            events.append(("step_end", s.step))

    model = small_cnn()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4)
    (xt, yt), _ = data()
    criterion = nn.CrossEntropyLoss()
    mem, losses = MemoryOutput(), LossMonitor()
    w = watch(model, opt, criterion, outputs=[mem], progress=False, callbacks=[
        Order(), losses, GradientCheck(every=3, warmup_steps=1, budget=None)])
    for start in range(0, 6 * 32, 32):
        xb, yb = xt[start:start + 32], yt[start:start + 32]

        def closure(xb=xb, yb=yb):
            opt.zero_grad()
            loss = criterion(model(xb), yb)
            reported.append((w.step, loss.item()))
            w.loss(loss, yb)
            loss.backward()
            return loss

        opt.step(closure)
    w.close()
    assert len(reported) > 6  # LBFGS re-evaluated the closure within steps
    for step in range(6):
        assert [e for e in events if e[1] == step] == [
            ("batch", step, True), ("backward_end", step, True), ("step_begin", step),
            ("step_end", step)]
    assert [s for s, _ in mem.scalars_log["gradcheck/passed"]] == [1, 4]
    assert all(v == 1.0 for _, v in mem.scalars_log["gradcheck/passed"])
    assert not [a for a in w.monitor.alerts.history if a.code.startswith(("gradcheck", "loss"))]
    assert losses.initial_loss == reported[0][1]  # the first loss, not a re-evaluation
    assert len(opt._optimizer_step_pre_hooks) == len(opt._optimizer_step_post_hooks) == 0


def test_tensors_another_optimizer_trains_are_not_called_frozen():
    """Two optimizers on one model (Muon-style: one for the matrices, one for the rest),
    one watched: the other's tensors do not move in the watched step, but they move between
    checks, so they get no ratio and no ``frozen`` alert; a tensor no optimizer holds still
    does, and the alert says the watched optimizer lacks it."""
    def run(other_steps):
        model = small_cnn()
        matrices = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for n, p in model.named_parameters() if p.ndim < 2 and n != "8.bias"]
        watched_opt = torch.optim.SGD(matrices, lr=0.05, momentum=0.9)
        other = torch.optim.Adam(rest, lr=1e-3)
        mem = MemoryOutput()
        w = watch(model, watched_opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
                  callbacks=[UpdateRatioMonitor(every=2, budget=None)])

        def step_the_other():
            if other_steps:
                other.step()
                other.zero_grad()

        loop(model, watched_opt, w, epochs=2, on_batch=step_the_other)
        w.close()
        frozen = {a.tensor for a in w.monitor.alerts.history if a.code == "update_ratio.frozen"}
        return mem, frozen, w.monitor.alerts.history

    mem, frozen, history = run(other_steps=True)
    assert frozen == {"8.bias"}  # in no optimizer
    alert = next(a for a in history if a.tensor == "8.bias")
    assert "the watched optimizer does not hold it" in alert.message
    # (BatchNorm's weight, the other optimizer's: 0 at the first check, before it could
    # be seen moving, then no ratio)
    assert [s for s, _ in mem.scalars_log["update_ratio/1.weight"]] == [0]
    assert len(mem.scalars_log["update_ratio/0.weight"]) == 8
    _, frozen, _ = run(other_steps=False)  # nobody trains the rest: frozen, all of them
    assert frozen == {"0.bias", "1.weight", "6.bias", "8.bias"}  # (1.bias: all zeros)


def test_sleeping_callbacks_and_idle_forward_hooks_write_what_every_step_dispatch_writes(
        monkeypatch):
    """With callbacks asleep between their steps and the model's forward hooks attached only
    on the steps whose batch is read, a watched run writes the same dashboard and raises the
    same alerts as one whose callbacks see every step and every batch."""
    from tests.helpers import dashboard, every_step_dispatch, scheduled_callbacks

    (_, _), (xv, yv) = data()

    def run():
        model = small_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        memory = MemoryOutput()
        w = watch(model, opt, nn.CrossEntropyLoss(), outputs=[memory], progress=False,
                  callbacks=scheduled_callbacks((xv[:64], yv[:64])))
        loop(model, opt, w, epochs=3)
        w.close()
        return dashboard(memory, w.monitor.alerts.history)

    sleeping = run()
    every_step_dispatch(monkeypatch)
    assert run() == sleeping
    scalars, histograms, images, texts, _ = sleeping
    assert [p[0] for p in histograms["activations/2"]] == [0, 4, 8, 12, 16, 20]
    assert [s for s, _ in scalars["gradcheck/passed"]] == [2, 9, 16, 23]
    assert images and [s for s, _ in scalars["accuracy/val_subset"]] == [5, 10, 15, 20]


def test_a_quiet_step_leaves_no_earlier_batch_in_the_state():
    """On a step no callback is awake for, the state holds that step's loss and none of an
    earlier step's batch or outputs (no stale tensors kept alive, nothing misread)."""
    from trainwatch import NEVER

    class FirstStepOnly(Callback):
        def next_step(self, step):
            return 0 if step == 0 else NEVER

    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (xt, yt), _ = data(n_train=64)
    criterion = nn.CrossEntropyLoss()
    seen = []
    with watch(model, opt, criterion, callbacks=[FirstStepOnly()], progress=False) as w:
        for start in (0, 32):
            xb, yb = xt[start:start + 32], yt[start:start + 32]
            loss = w.loss(criterion(model(xb), yb), yb)
            s = w.state
            seen.append((w.monitor.callbacks.quiet, s.loss, s.predictions, s.inputs, s.targets))
            opt.zero_grad()
            loss.backward()
            opt.step()
    (quiet0, loss0, out0, x0, y0), (quiet1, loss1, out1, x1, y1) = seen
    assert not quiet0 and out0 is not None and x0 is not None and y0 is not None
    assert quiet1 and isinstance(loss1, float) and loss1 != loss0
    assert out1 is None and x1 is None and y1 is None


class TwoHeads(nn.Module):
    """Several forward outputs, one argument that is a tuple, two targets (a multi-task
    model): ``model((x, ids)) -> (logits, value, aux_loss)``."""

    def __init__(self):
        super().__init__()
        self.emb, self.body = nn.Embedding(4, 6), nn.Linear(6, 6)
        self.classes, self.value = nn.Linear(6, 3), nn.Linear(6, 1)

    def forward(self, batch):
        x, ids = batch
        h = torch.tanh(self.body(x + self.emb(ids)))
        logits = self.classes(h)
        return logits, self.value(h).squeeze(1), logits.pow(2).mean()


def two_task_loss(out, targets):
    logits, value, aux = out
    labels, goal = targets
    return (nn.functional.cross_entropy(logits, labels)
            + nn.functional.mse_loss(value, goal) + 0.01 * aux)


def test_a_multi_task_model_is_watched_whole():
    """A tuple of outputs (the scores are the first with a batch dimension), a forward of one
    tuple argument and a tuple of targets: LossMonitor judges the first loss and a NaN (it
    raised on the tuple before and was disabled), gradient checks run on 3 examples of every
    part (they raised on the tuple's items), and the accuracy counts the logits."""
    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    check = GradientCheck(every=2, warmup_steps=1, budget=None)
    w = watch(model, opt, two_task_loss, callbacks=[LossMonitor(), check], progress=False)
    x, ids = torch.randn(8, 6), torch.randint(0, 4, (8,))
    labels, goal = torch.randint(0, 3, (8,)), torch.randn(8)
    for step in range(6):
        opt.zero_grad()
        loss = two_task_loss(model((x, ids)), (labels, goal))
        loss.backward()
        w.loss(loss * float("nan") if step == 5 else loss, (labels, goal))
        opt.step()
    w.close()
    codes = [a.code for a in w.monitor.alerts.history]
    assert "callback.error" not in codes, w.summary()
    assert "loss.nonfinite" in codes
    assert len(check.reports) >= 2 and all(r.passed for _, r in check.reports)
    backend = w.backend
    out = model((x, ids))
    scores = backend.scores(out)  # (the logits, detached: callbacks never differentiate them)
    assert torch.equal(scores, out[0]) and scores.data_ptr() == out[0].data_ptr()
    assert not scores.requires_grad
    assert backend.accuracy(out, labels) == pytest.approx(
        float((out[0].argmax(1) == labels).float().mean()))


def test_the_trainer_fits_a_model_with_several_outputs():
    """``(logits, aux_loss)`` outputs: the Trainer's accuracy counts the logits (it raised on
    the tuple before)."""
    from trainwatch import Trainer

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(64, 10)

        def forward(self, x):
            logits = self.l1(x)
            return logits, logits.pow(2).mean()

    x, y = load_digits()
    torch.manual_seed(0)
    model = WithAux()
    trainer = Trainer(model, lambda out, t: nn.functional.cross_entropy(out[0], t)
                      + 1e-3 * out[1], torch.optim.SGD(model.parameters(), lr=0.1),
                      callbacks=[LossMonitor()], progress=False)
    history = trainer.fit(x[:256].astype(np.float32), y[:256], epochs=2, batch_size=32)
    assert history["train_accuracy"][-1] > 0.5
    assert not [a for a in trainer.monitor.alerts.history if a.code == "callback.error"]


class SequenceFirst(nn.Module):
    """nn.LSTM as PyTorch defaults it (batch_first=False: inputs (T, N, F))."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


class CausalAttention(nn.Module):
    """A (T, T) mask shared by every example: no batch tensor."""

    def __init__(self):
        super().__init__()
        self.att, self.out = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x, attn_mask):
        return self.out(self.att(x, x, x, attn_mask=attn_mask, need_weights=False)[0].mean(1))


class SequenceFirstWeighted(SequenceFirst):
    """Sequence-first inputs and a per-example weight: a forward of several arguments."""

    def forward(self, x, weight):
        return super().forward(x) * weight[:, None]


@pytest.mark.parametrize("case", ["sequence first", "sequence first, two arguments",
                                  "shared mask", "sequence first, as long as the batch",
                                  "shared mask, as long as the batch"])
def test_gradient_checks_find_the_examples_of_a_batch(case):
    """Sequence-first inputs are cut along dim 1, where the targets' batch is (dim 0 cut time
    steps against 3 examples of targets), also among a forward's several arguments, and a
    shared (T, T) mask is left whole (it was cut to (3, T)): the checks run and pass instead
    of raising. Where the shapes leave it open (T equal to the batch size) the other
    readings are tried until the model runs (GradientCheck raised and was disabled)."""
    torch.manual_seed(0)
    if case.startswith("sequence first") and "two" not in case:
        model, x = SequenceFirst(), torch.randn(8 if "long" in case else 5, 8, 4)
        forward = model
    elif case == "sequence first, two arguments":
        model, x, weight = SequenceFirstWeighted(), torch.randn(5, 8, 4), torch.rand(8) + 0.5
        forward = lambda x: model(x, weight)  # noqa: E731
    else:
        steps = 8 if "long" in case else 5
        model, x = CausalAttention(), torch.randn(8, steps, 8)
        mask = nn.Transformer.generate_square_subsequent_mask(steps)
        forward = lambda x: model(x, mask)  # noqa: E731
    y = torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    check = GradientCheck(every=2, warmup_steps=1, budget=None)
    w = watch(model, opt, nn.CrossEntropyLoss(), callbacks=[check], progress=False)
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        w.loss(loss, y)
        opt.step()
    w.close()
    assert not [a for a in w.monitor.alerts.history if a.code == "callback.error"], w.summary()
    assert len(check.reports) == 2 and all(r.passed for _, r in check.reports)


def test_a_stepwise_accuracy_gap_without_a_recorded_batch_says_so_once():
    """A model trained in eval mode (or through optimizer.step(closure)) records no batch:
    the step-wise AccuracyGapMonitor says so once and stops (it raised IndexError, reported
    as a callback error, before)."""
    (xt, yt), (xv, yv) = data(64, 32)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gap = AccuracyGapMonitor(every=4, validation_data=(xv.numpy(), yv.numpy()), subset=16)
    w = watch(model, opt, nn.CrossEntropyLoss(), callbacks=[gap], progress=False)
    model.eval()  # (dropout-free model: eval-mode training is what some loops do)
    for _ in range(3):
        for idx in torch.arange(64).split(8):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            w.loss(loss, yt[idx])
            opt.step()
        w.epoch_end()
    w.close()
    codes = [a.code for a in w.monitor.alerts.history]
    assert codes.count("accuracy_gap.skipped") == 1 and "callback.error" not in codes, codes


def train_with_freezing(callbacks, trainable_from):
    """16 steps of a 2-layer net (16 inputs: 4x4 filters) whose first layer trains from the
    steps ``trainable_from`` names (step -> requires_grad, 0 = as watch() finds it); the
    watcher (closed) and its MemoryOutput."""
    torch.manual_seed(0)
    x, y = torch.randn(128, 16), torch.randint(0, 3, (128,))
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    model[0].requires_grad_(trainable_from.get(0, True))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mem = MemoryOutput()
    w = watch(model, opt, nn.CrossEntropyLoss(), progress=False, outputs=[mem],
              callbacks=callbacks)
    for step, i in enumerate(list(range(0, 128, 16)) * 2):
        if step in trainable_from:
            model[0].requires_grad_(trainable_from[step])
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
        loss.backward()
        w.loss(loss, y[i:i + 16])
        opt.step()
    w.close()
    return w, mem


class TinyVisionTransformer(nn.Module):
    """A class token and a position table registered before the patch embedding (as vision
    transformers do), 4x4 patches of 8x8 greyscale images, a linear head."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 8) * 0.02)
        self.patch_embed = nn.Conv2d(1, 8, 4, stride=4)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, 4, 8)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], 1) + self.pos_embed
        return self.head(tokens[:, 0] + tokens[:, 1:].mean(1))


def test_a_vision_transformer_shows_its_patch_embedding_filters():
    """The first layer that reads the pixels is drawn, not the first tensor registered (the
    class token, drawn as a one-pixel strip before)."""
    (x, y), _ = data(n_train=64, n_val=8)
    model = TinyVisionTransformer()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mem = MemoryOutput()
    with watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
               raise_errors=True, callbacks=[FilterImages(every=2)]) as w:
        for i in range(0, 64, 16):
            loss = nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
            w.loss(loss, y[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert set(mem.images) == {"filters/patch_embed.weight"}
    image = mem.images["filters/patch_embed.weight"][0][1]
    assert image.shape[0] > 20 and image.shape[1] > 20  # (8 tiles of 4x4 filters, enlarged)


def test_an_embedding_first_layer_is_no_filter_image():
    """A language model's first tensor is an embedding table (here 64 wide, a square
    number a dense layer on 8x8 images would have): no picture of its rows as 8x8 filters,
    one info saying why."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(32, 64), nn.Flatten(), nn.Linear(4 * 64, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mem = MemoryOutput()
    with watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
               raise_errors=True, callbacks=[FilterImages(every=2)]) as w:
        for _ in range(4):
            x = torch.randint(0, 32, (8, 4))
            loss = nn.functional.cross_entropy(model(x), x[:, 0])
            w.loss(loss, x[:, 0])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not mem.images
    skipped = [a for a in w.monitor.alerts.history if a.code == "filters.skipped"]
    assert len(skipped) == 1 and "0.weight (32, 64) is an embedding table" in skipped[0].message


def test_a_model_with_a_complex_weight_is_watched_without_errors_or_warnings():
    """Gradient checks on its (real, imaginary) parts, histograms of both parts, and no filter
    picture of a complex weight (one info); nothing warns (a cast discarded the imaginary
    parts) or raises."""
    torch.manual_seed(0)
    model = ComplexLayer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mem = MemoryOutput()
    check = GradientCheck(warmup_steps=2, every=3, budget=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
                   raise_errors=True,
                   callbacks=[check, HistogramMonitor(every=2, budget=None, figure_every=None),
                              FilterImages(every=2, layer="w"),
                              UpdateRatioMonitor(every=1, budget=None)]
                   ) as w:
            for _ in range(6):
                x = torch.randn(8, 4)
                y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
                loss = nn.functional.cross_entropy(model(x), y)
                w.loss(loss, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert [r.passed for _, r in check.reports] == [True, True]
    assert {"weights/w", "gradients/w"} <= set(mem.histograms)
    assert "update_ratio/w" in mem.scalars_log and not mem.images
    skipped = [a for a in w.monitor.alerts.history if a.code == "filters.skipped"]
    assert len(skipped) == 1 and "w (4, 8) is complex" in skipped[0].message


def test_a_layer_unfrozen_or_frozen_mid_run_is_watched_as_it_trains():
    """Gradual unfreezing: the layer frozen when watch() was called gets update ratios and
    histograms once it trains (the tracked tensors were fixed at watch()); frozen again, it
    is left out (its None gradient read as zeros raised gradients.vanishing)."""
    w, mem = train_with_freezing([UpdateRatioMonitor(every=1, budget=None),
                                  HistogramMonitor(every=1, budget=None)],
                                 {0: False, 2: True, 10: False})
    ratios = mem.scalars_log["update_ratio/0.weight"]
    assert ratios and min(s for s, _ in ratios) == 2 and max(s for s, _ in ratios) == 9
    assert {s for s, _ in mem.histograms["weights/0.weight"]} == set(range(2, 10))
    codes = [a.code for a in w.monitor.alerts.history]
    assert "gradients.vanishing" not in codes and "callback.error" not in codes, codes


def test_first_layer_filters_pause_while_that_layer_is_frozen():
    """FilterImages keeps its layer; frozen mid-run, the layer is not tracked and its
    images pause (a KeyError disabled FilterImages before)."""
    w, mem = train_with_freezing([FilterImages(every=4)], {10: False})
    assert max(s for s, _ in mem.images["filters/0.weight"]) < 10
    assert "callback.error" not in [a.code for a in w.monitor.alerts.history]


def test_first_layer_filters_of_a_frozen_backbone_are_its_convolution_drawn_once():
    """Fine-tuning a head on a frozen backbone: the first-layer picture is the backbone's
    first convolution (drawn once: it does not change), not the trainable head, whose 64
    inputs were drawn as 8x8 'filters' before."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64, 3))
    model[0].requires_grad_(False)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    w, mem = fit_watched(model, opt, nn.CrossEntropyLoss(), x, y, batch=8,
                         callbacks=[FilterImages(every=4)])
    assert set(mem.images) == {"filters/0.weight"}
    [(step, image)] = mem.images["filters/0.weight"]
    assert step == 0 and image.shape[:2] == (2 * 24 + 1, 2 * 24 + 1)  # 4 grey 3x3 tiles, x8
    assert "callback.error" not in [a.code for a in w.monitor.alerts.history]


def test_lbfgs_update_ratios_are_written_but_not_judged_against_the_sgd_band():
    """L-BFGS's line search takes steps of 10-40% of the weights by design: the ~1e-3 band
    is a first-order rule of thumb, so the ratios are written and one info alert says why
    they are not judged (update_ratio.high fired on every tensor with 'lower the learning
    rate 140x' before); a tensor ``overrides`` names is still judged."""
    def run(**monitor_options):
        model = small_cnn()
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
        (xt, yt), _ = data()
        mem = MemoryOutput()
        ratios = UpdateRatioMonitor(every=1, budget=None, patience=2, **monitor_options)
        with watch(model, opt, nn.CrossEntropyLoss(), outputs=[mem], progress=False,
                   callbacks=[ratios]) as w:
            for start in range(0, 8 * 32, 32):
                xb, yb = xt[start:start + 32], yt[start:start + 32]

                def closure(xb=xb, yb=yb):
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(xb), yb)
                    w.loss(loss, yb)
                    loss.backward()
                    return loss

                opt.step(closure)
        return mem, [a.code for a in w.monitor.alerts.history]

    mem, codes = run()
    assert max(v for _, v in mem.scalars_log["update_ratio/6.weight"]) > 0.05  # far above 1e-2
    assert codes == ["update_ratio.band_not_applied"], codes
    _, codes = run(overrides={"6.weight": (1e-4, 1e-2)})
    assert codes.count("update_ratio.band_not_applied") == 1 and "update_ratio.high" in codes


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_every_callback_watches_a_model_in_float64_or_bfloat16(dtype):
    """A model in float64 (model.double()) or bfloat16, every callback on: none raises (the
    batched norms asked torch to narrow float64 to float32, which disabled LossMonitor from
    step 0; bfloat16 batches met numpy, which has no bfloat16, in AccuracyGapMonitor), and a
    NaN planted in a weight is still named."""
    from tests.helpers import all_callbacks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out.float(), y)

    val = (torch.randn(24, 8).to(dtype), torch.randint(0, 4, (24,)))
    mem = MemoryOutput()
    with watch(model, opt, loss_fn, outputs=[mem], progress=False,
               callbacks=all_callbacks(val)) as w:
        for step in range(12):
            x, y = torch.randn(16, 8).to(dtype), torch.randint(0, 4, (16,))
            if step == 10:
                with torch.no_grad():
                    model[2].weight[0, 0] = float("nan")
            loss = loss_fn(model(x), y)
            w.loss(loss, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 4 == 3:
                w.epoch_end({"val_accuracy": 0.5})
    codes = [a.code for a in w.monitor.alerts.history]
    assert "callback.error" not in codes, w.summary()
    nonfinite = [a for a in w.monitor.alerts.history if a.code == "loss.nonfinite"]
    assert nonfinite and "2.weight" in nonfinite[0].message, w.summary()
    assert mem.scalars_log["update_ratio/0.weight"] and mem.scalars_log["gradcheck/passed"]


def test_accuracy_gap_of_a_token_classifier_and_of_an_autoencoder():
    """Step-wise gaps: a token classifier's accuracy is per token, within [0, 1] (it was
    per sequence, over 300%, and raised accuracy_gap.overfit on a healthy run); an
    autoencoder has no accuracy: one accuracy_gap.skipped, no accuracy written."""
    def run(model, loss_fn, make_batch):
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mem = MemoryOutput()
        gap = AccuracyGapMonitor(every=2, validation_data=make_batch(24), subset=24)
        with watch(model, opt, loss_fn, callbacks=[gap], outputs=[mem], progress=False) as w:
            for _ in range(12):
                x, y = make_batch(12)
                loss = loss_fn(model(x), y)
                w.loss(loss, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        accuracies = [v for k, points in mem.scalars_log.items() if k.startswith("accuracy/")
                      and k != "accuracy/gap" for _, v in points]
        return accuracies, [a.code for a in w.monitor.alerts.history]

    table = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(0))

    def tokens(n):
        ids = torch.randint(1, 30, (n, 6))
        return ids, table[ids]

    ce = nn.CrossEntropyLoss()
    accuracies, codes = run(
        nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
        lambda out, y: ce(out.reshape(-1, 4), y.reshape(-1)), tokens)
    assert len(accuracies) == 12 and all(0.0 <= a <= 1.0 for a in accuracies), accuracies
    assert max(accuracies) > 0.4 and "accuracy_gap.overfit" not in codes, codes  # (chance 0.25)

    def images(n):
        x = torch.randn(n, 1, 8, 8)
        return x, x.clone()

    accuracies, codes = run(
        nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                      nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1)),
        nn.MSELoss(), images)
    assert accuracies == [] and codes == ["accuracy_gap.skipped"], codes


@pytest.mark.parametrize("mistake", ["loss after the step", "training in eval mode"])
def test_a_loop_that_gives_no_batch_is_told_why(mistake):
    """A loss reported after optimizer.step(), or training forwards in eval mode, leave no
    batch for the gradient checks: the watcher says which, once (gradcheck.skipped told
    the loop to report its targets, which it did), and the right order gives no such alert."""
    def run(mistake):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        check = GradientCheck(every=2, warmup_steps=1, budget=None)
        with watch(model, opt, nn.CrossEntropyLoss(), callbacks=[check], progress=False) as w:
            if mistake == "training in eval mode":
                model.eval()
            for _ in range(6):
                x, y = torch.randn(12, 8), torch.randint(0, 4, (12,))
                loss = nn.functional.cross_entropy(model(x), y)
                if mistake != "loss after the step":
                    w.loss(loss, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if mistake == "loss after the step":
                    w.loss(loss, y)
        return check, [a.code for a in w.monitor.alerts.history]

    check, codes = run(None)
    assert len(check.reports) == 3 and codes == [], codes
    check, codes = run(mistake)
    told = {"loss after the step": "watch.loss_after_step",
            "training in eval mode": "watch.eval_mode_training"}[mistake]
    assert not check.reports and codes.count(told) == 1, codes
    assert set(codes) == {told, "gradcheck.skipped"}, codes


@pytest.mark.parametrize("loop, told", [
    ("zero_grad", False), ("zero_grad in place", False), ("zero_grad after the step", False),
    ("two micro-batches a step", False), ("clipped", False),
    ("no zero_grad", True), ("no zero_grad, two micro-batches a step", True),
])
def test_a_loop_that_never_resets_its_gradients_is_told_once(loop, told):
    """Without optimizer.zero_grad() each step applies the sum of all gradients so far: the
    same .grad tensors grow by one backward pass per reported loss. Loops that reset them,
    however they do it, are not told."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    micro = 2 if "two micro-batches" in loop else 1
    with watch(model, opt, nn.CrossEntropyLoss(), callbacks=[], progress=False) as w:
        for _ in range(8):
            if loop in ("zero_grad", "two micro-batches a step", "clipped"):
                opt.zero_grad()
            elif loop == "zero_grad in place":
                opt.zero_grad(set_to_none=False)
            for _ in range(micro):
                x, y = torch.randn(12, 8), torch.randint(0, 4, (12,))
                loss = nn.functional.cross_entropy(model(x), y) / micro
                w.loss(loss, y)
                loss.backward()
            if loop == "clipped":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            if loop == "zero_grad after the step":
                model.zero_grad()
    alerts = [a for a in w.monitor.alerts.history if a.code == "watch.grads_not_reset"]
    assert len(alerts) == told
    if told:
        assert alerts[0].step == 3 and "zero_grad()" in alerts[0].suggestion


def random_step(model, opt, w):
    """One watched step on a random batch of 12 examples, 8 features, 4 classes."""
    x, y = torch.randn(12, 8), torch.randint(0, 4, (12,))
    loss = nn.functional.cross_entropy(model(x), y)
    w.loss(loss, y)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("evaluation, told", [
    ("eval", False), ("eval, then train again", False), ("none", False),
    ("in training mode", True),
])
def test_an_evaluation_in_training_mode_is_told_once(evaluation, told):
    """Validation without model.eval() runs BatchNorm on batch statistics and feeds the
    validation batches into its running statistics: a training-mode forward between the
    epoch's last step and epoch_end moves BatchNorm's batch counter, which says so."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xv, yv = torch.randn(24, 8), torch.randint(0, 4, (24,))
    with watch(model, opt, nn.CrossEntropyLoss(), callbacks=[], progress=False) as w:
        for _ in range(3):
            model.train()
            for _ in range(4):
                random_step(model, opt, w)
            metrics = {}
            if evaluation != "none":
                if evaluation != "in training mode":
                    model.eval()
                with torch.no_grad():
                    metrics["val_accuracy"] = float((model(xv).argmax(1) == yv).float().mean())
                if evaluation == "eval, then train again":
                    model.train()
            w.epoch_end(metrics)
    alerts = [a for a in w.monitor.alerts.history if a.code == "watch.eval_in_training_mode"]
    assert len(alerts) == told
    if told:
        assert alerts[0].step == 4 and "model.eval()" in alerts[0].suggestion


def test_a_hook_of_yours_can_tell_trainwatchs_own_passes_apart():
    """Gradient checks and the step-wise accuracy gap run the model through its hooks, the
    user's too; trainwatch.torch.in_own_pass() tells such a hook which calls are the loop's."""
    from trainwatch.torch import in_own_pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    calls = {"loop": 0, "trainwatch": 0}

    def count(module, args, output):
        calls["trainwatch" if in_own_pass() else "loop"] += 1

    model[2].register_forward_hook(count)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    val = (torch.randn(24, 8), torch.randint(0, 4, (24,)))
    check = GradientCheck(every=3, warmup_steps=1, budget=None)
    with watch(model, opt, nn.CrossEntropyLoss(), progress=False, callbacks=[
            check, AccuracyGapMonitor(every=2, validation_data=val, subset=16)]) as w:
        for _ in range(6):
            random_step(model, opt, w)
    assert calls["loop"] == 6 and calls["trainwatch"] > 6 and len(check.reports) == 2, calls


def test_a_tagger_in_torchs_sequence_layout_starts_at_the_expected_loss():
    """Scores (N, C, T) against targets (N, T), the layout nn.CrossEntropyLoss takes: a
    healthy 5-class tagger over 64 positions starts near ln 5, which loss.initial read as
    'only 0.38x the expected ln 64' (the last dim taken for the classes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 5, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 8, 64), torch.randint(0, 5, (32, 64))
    with watch(model, opt, nn.CrossEntropyLoss(), progress=False,
               callbacks=[LossMonitor()]) as w:
        loss = nn.functional.cross_entropy(model(x), y)
        w.loss(loss, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(loss.item() - np.log(5)) < 0.3
    assert "loss.initial" not in [a.code for a in w.monitor.alerts.history], w.summary()


def test_a_confident_sigmoid_output_is_not_called_saturated():
    """A binary classifier's sigmoid output (BCELoss) saturates as the model grows
    confident, as it should: its saturated fraction is written, but activations.saturated
    (whose advice is weights too large or a rate too high) no longer fires on it."""
    torch.manual_seed(0)
    x = torch.randn(512, 2)
    y = (x[:, :1] + x[:, 1:] > 0).float()
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    w, mem = fit_watched(model, opt, nn.BCELoss(), x, y, batch=32, epochs=10,
                         callbacks=[HistogramMonitor(every=50, budget=None)])
    assert mem.scalars_log["activations/3/saturated_fraction"][-1][1] > 0.5
    assert "activations.saturated" not in [a.code for a in w.monitor.alerts.history]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_loss_near_its_label_smoothing_floor_is_no_plateau(smoothing):
    """Cross-entropy with label smoothing 0.1 over 10 classes cannot go below 0.500 (the
    smoothed targets' entropy): a loss settling at 0.52 is at its floor, not 'a plateau at a
    poor value' (loss.plateau fired, advising a lower learning rate). Without smoothing the
    same curve is a plateau, and is still reported."""
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    floor = TorchBackend(model, criterion).loss_floor(10)
    assert floor == (pytest.approx(0.50029, abs=1e-5) if smoothing else 0.0)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    with watch(model, opt, criterion, progress=False, callbacks=[LossMonitor()]) as w:
        for step in range(1600):
            if step == 0:
                w.loss(criterion(model(x), y), y)  # (the first batch: the classes)
            else:
                w.loss(0.5 + 0.02 + 1.8 * np.exp(-step / 100))
            opt.step()
    plateau = [a for a in w.monitor.alerts.history if a.code == "loss.plateau"]
    assert bool(plateau) == (smoothing == 0.0), w.summary()


def first_steps_alerts(model, loss_fn, batch, code, steps=3):
    """The ``code`` alerts of ``steps`` steps watched with a SetupCheck, on batches from
    ``batch()`` ((inputs, targets))."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, loss_fn, progress=False, callbacks=[SetupCheck()]) as w:
        for _ in range(steps):
            x, y = batch()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (torch's own warning of a broadcast)
                loss = loss_fn(model(x), y)
            w.loss(loss, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [a for a in w.monitor.alerts.history if a.code == code]


@pytest.mark.parametrize("head, loss_fn, told", [
    ("softmax", nn.CrossEntropyLoss(), True),
    ("sigmoid", nn.BCEWithLogitsLoss(), True),
    ("softmax over dim 1 of (N, C, T)", nn.CrossEntropyLoss(), True),
    ("none", nn.CrossEntropyLoss(), False),
    ("log_softmax", nn.CrossEntropyLoss(), False),  # (log-softmax twice is log-softmax)
    ("sigmoid", nn.BCELoss(), False),  # (a loss on probabilities)
    ("none", nn.BCEWithLogitsLoss(), False),
])
def test_scores_squashed_before_a_loss_that_squashes_them_itself_are_told(head, loss_fn, told):
    """A softmax at the end of the model before CrossEntropyLoss (which applies log-softmax
    itself), or a sigmoid before BCEWithLogitsLoss, flattens the loss: learning crawls with no
    other alert. The first batch's outputs show it."""
    torch.manual_seed(0)
    binary = isinstance(loss_fn, (nn.BCEWithLogitsLoss, nn.BCELoss))
    sequence = "(N, C, T)" in head
    layers = [nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1 if binary else 5 * (3 if sequence
                                                                                else 1))]
    if sequence:
        layers.append(nn.Unflatten(1, (5, 3)))
    layers += {"softmax": [nn.Softmax(dim=-1)], "sigmoid": [nn.Sigmoid()],
               "log_softmax": [nn.LogSoftmax(dim=-1)], "none": []}.get(head, [nn.Softmax(dim=1)])

    def batch():
        return torch.randn(32, 8), ((torch.rand(32, 1) < 0.5).float() if binary else
                                    torch.randint(0, 5, (32, 3) if sequence else (32,)))

    alerts = first_steps_alerts(nn.Sequential(*layers), loss_fn, batch, "setup.squashed_scores")
    assert len(alerts) == told
    if told:
        final = "sigmoid" if binary else "softmax"
        assert alerts[0].step == 0 and f"remove the model's final {final}" in alerts[0].suggestion


@pytest.mark.parametrize("outputs, targets, told", [
    (1, (32,), True), (1, (32, 1), False), (3, (32, 3), False), (3, (32, 1), True),
])
def test_a_regression_loss_that_broadcasts_outputs_against_targets_is_told(outputs, targets,
                                                                            told):
    """MSELoss on outputs (N, 1) and targets (N,) compares every output with every target,
    (N, N): the model learns the mean, with only a torch UserWarning to show for it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, outputs))
    alerts = first_steps_alerts(model, nn.MSELoss(),
                                lambda: (torch.randn(32, 4), torch.randn(*targets)),
                                "setup.broadcast")
    assert len(alerts) == told
    if told:
        assert f"targets of shape {targets}" in alerts[0].message and alerts[0].step == 0


def test_a_classifier_initialised_at_its_label_prior_starts_where_it_should():
    """An imbalanced detector (10% positives) whose output bias is set to the prior's log
    odds starts at the labels' entropy (~0.33), not ln 2: loss.initial called that 'below
    chance' with advice about leaking labels. A start far below even the prior is still
    reported."""
    torch.manual_seed(0)
    x = torch.randn(320, 8)
    y = (torch.rand(320, 1) < 0.1).float()
    y[:32:10] = 1.0  # (the first batch holds a few positives)

    def first_alerts(bias, leak=False):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        with torch.no_grad():
            model[2].bias.fill_(bias)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        criterion = nn.BCEWithLogitsLoss()
        with watch(model, opt, criterion, progress=False, callbacks=[LossMonitor()]) as w:
            out = model(x[:32])
            if leak:  # the labels leak into the scores: a start near 0
                out = out + 20 * (2 * y[:32] - 1)
            loss = criterion(out, y[:32])
            w.loss(loss, y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [a.code for a in w.monitor.alerts.history]

    prior = float(y[:32].mean())
    assert "loss.initial" not in first_alerts(np.log(prior / (1 - prior)))
    assert "loss.initial" in first_alerts(0.0, leak=True)


def test_a_multi_task_loss_with_a_tuple_of_targets_is_watched_by_the_loss_rules():
    """Targets (class labels, regression values) of a multi-task loss: LossMonitor reads the
    classes from single arrays only (np.shape of the tuple raised, disabling it)."""
    torch.manual_seed(0)
    body, cls, reg = nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 1)
    model = nn.ModuleDict({"body": body, "cls": cls, "reg": reg})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def forward(x):
        h = torch.relu(body(x))
        return cls(h), reg(h)

    with watch(model, opt, progress=False, callbacks=[LossMonitor()]) as w:
        for _ in range(4):
            x = torch.randn(12, 8)
            targets = (torch.randint(0, 3, (12,)), torch.randn(12, 1))
            scores, value = forward(x)
            loss = (nn.functional.cross_entropy(scores, targets[0])
                    + nn.functional.mse_loss(value, targets[1]))
            w.loss(loss, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert "callback.error" not in [a.code for a in w.monitor.alerts.history], w.summary()


@pytest.mark.parametrize("schedule", ["decay", "warm-up", "constant"])
def test_update_ratios_below_the_band_are_not_blamed_on_a_scheduled_learning_rate(schedule):
    """A learning rate decayed to 1/1000 of its peak, or still warming up, moves the weights
    by ratios far below the band by design: update_ratio.low ('try it 100x higher') fired on
    such healthy schedules. A rate that low from the start is still reported."""
    torch.manual_seed(0)
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    lr = {"decay": 0.05, "warm-up": 5e-6, "constant": 5e-6}[schedule]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    if schedule == "decay":
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=1e-3)
    else:  # (warm-up: the rate grows 5% a step; constant: it stays at its start)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 1.05 ** s if schedule == "warm-up" else 1.0)
    monitor = UpdateRatioMonitor(every=5, budget=None, patience=3, severe_patience=3)
    with watch(model, opt, nn.CrossEntropyLoss(), progress=False, callbacks=[monitor]) as w:
        for step in range(120 if schedule == "decay" else 60):
            i = (step * 32) % 256
            loss = nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            w.loss(loss, y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            scheduler.step()
    low = [a for a in w.monitor.alerts.history if a.code == "update_ratio.low"]
    assert bool(low) == (schedule == "constant"), w.summary()
