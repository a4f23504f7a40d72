"""Training-time overhead of watching a PyTorch loop: the same loop bare and watched, in one run.

    python benchmarks/torch_overhead.py [--epochs 20] [--pairs 11] [--breakdown] [--loader]
                                        [--batch 32] [--gpu-steps 600]

CPU: the digits CNN of ``examples/torch_existing_loop.py`` (batch 32, SGD with momentum,
20 epochs, training accuracy counted every step, validation every epoch, as the example
does, but from batches made beforehand: no DataLoader time in the denominator, the strict
measure). ``--loader`` also runs the example's loop as it is, batches from its shuffling
``DataLoader`` (what a user of the example measures). GPU (when
``torch.cuda.is_available()``): a ResNet-18-sized CNN (11.2M parameters, 62 tensors) on
random 3x224x224 data, batch 64, SGD with momentum.

"bare" is the loop without trainwatch; "watched" is the same loop with ``watch(...)`` and the
default callbacks writing TensorBoard files to a temporary folder (no progress bar: it only
adds terminal output; a variant with it is shown too). The machine's speed drifts over
seconds, so runs are taken in adjacent pairs (bare, variant; the order alternates) and the
median of the per-pair ratios is reported with its quartiles, as ``benchmarks/overhead.py``
does. "in trainwatch" is the time spent inside trainwatch's entry points (its torch hooks,
``watcher.loss``, ``epoch_end``, ``close``) in 5 separate runs: the least of them against the
bare run, and the median of each run's time inside over the rest of that run (the bare
loop's share of it, taken in the same phase of the machine's speed, which drifts by up to 2x
within minutes): steadier measures, which leave out what watching costs torch outside them
(e.g. the model's forward taking torch's hooked path).

Host reads: a separate pass counts the calls, made by trainwatch code, of the tensor methods
that copy device memory to the host (``item``, ``tolist``, ``cpu``, ``__float__``,
``__int__``, ``__bool__``, ``__array__``); on a GPU each one is a synchronisation. On a GPU,
``torch.cuda.set_sync_debug_mode("warn")`` also counts every synchronising CUDA call, bare
and watched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from overhead import paired_ratio, time_inside  # benchmarks/overhead.py
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainwatch.callbacks import default_callbacks
from trainwatch.data import load_digits, train_val_split
from trainwatch.torch import backend as backend_module
from trainwatch.torch import watch
from trainwatch.torch.host_reads import count_host_reads
from trainwatch.torch.watch import Watcher

# -- models and data ------------------------------------------------------------------------------


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


class Block(nn.Module):
    """ResNet basic block."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.down is None else self.down(x)))


def resnet18(classes: int = 1000) -> nn.Module:
    """ResNet-18's layout (torchvision's resnet18 without the dependency)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(c, width, stride), Block(width, width, 1)]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


class Workload:
    """One training setup: model factory, batches, validation, device."""

    def __init__(self, name: str, make: Callable[[], nn.Module], batches, val, device,
                 epochs: int, lr: float, examples: int):
        self.name, self.make, self.batches, self.val = name, make, batches, val
        self.device, self.epochs, self.lr = device, epochs, lr
        self.examples = examples  # training examples per epoch

    @property
    def steps(self) -> int:
        return self.epochs * len(self.batches)


def digits_workload(epochs: int, loader: bool = False, batch: int = 32) -> Workload:
    x, y = load_digits(images=True)
    (xt, yt), (xv, yv) = train_val_split(x, y, val_fraction=0.2, seed=0)
    xt, yt = torch.tensor(xt, dtype=torch.float32), torch.tensor(yt)
    val = (torch.tensor(xv, dtype=torch.float32), torch.tensor(yv))
    if loader:  # the example's batches: a shuffling DataLoader, iterated every epoch
        batches = DataLoader(TensorDataset(xt, yt), batch_size=batch, shuffle=True,
                             generator=torch.Generator().manual_seed(0))
        name = f"CPU, digits CNN (batch {batch}), the example's DataLoader"
    else:
        order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))
        batches = [(xt[order[i:i + batch]], yt[order[i:i + batch]])
                   for i in range(0, len(xt), batch)]
        name = f"CPU, digits CNN (batch {batch})"
    return Workload(name, digits_cnn, batches, val, torch.device("cpu"), epochs, 0.05, len(xt))


def resnet_workload(device: torch.device, steps: int, batch: int, size: int) -> Workload:
    g = torch.Generator(device="cpu").manual_seed(0)
    n_batches = 8  # distinct random batches, cycled
    batches = [(torch.randn(batch, 3, size, size, generator=g).to(device),
                torch.randint(0, 1000, (batch,), generator=g).to(device))
               for _ in range(n_batches)]
    epochs = max(1, steps // n_batches)
    val = (batches[0][0][:16], batches[0][1][:16])
    return Workload(f"{device.type.upper()}, ResNet-18 ({batch}x3x{size}x{size})", resnet18,
                    batches, val, device, epochs, 0.01, batch * n_batches)


# -- the loop -------------------------------------------------------------------------------------


def callbacks_of(mode: str) -> list:
    """The callbacks of a variant: the defaults, none (hooks and the loss curve only: a
    MetricLogger is always added), or one default callback alone ("only <Name>")."""
    if mode.startswith("only "):
        name = mode[len("only "):]
        return [cb for cb in default_callbacks() if type(cb).__name__ == name]
    if mode == "hooks only":
        return []
    return default_callbacks()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(work: Workload, mode: str, step_times: list[float] | None = None) -> float:
    """Train once; returns the wall time of the whole run (seconds). The loop reports what
    a conventional loop (and ``examples/torch_existing_loop.py``) reports: the epoch's
    training accuracy (counted on the device every step) and the validation loss and
    accuracy."""
    torch.manual_seed(0)
    model = work.make().to(work.device)
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=work.lr, momentum=0.9, weight_decay=1e-4)
    with contextlib.ExitStack() as stack:
        watcher = None
        if mode != "bare":
            logdir = stack.enter_context(tempfile.TemporaryDirectory())
            progress = mode == "watched + progress bar"
            # the bar and the runs' own alerts: written (their cost counts), not shown
            stack.enter_context(contextlib.redirect_stderr(open(os.devnull, "w")))  # noqa: SIM115
            watcher = watch(model, opt, criterion, logdir=logdir, callbacks=callbacks_of(mode),
                            progress=progress)
            stack.callback(watcher.close)
        xv, yv = work.val
        sync(work.device)
        start = time.perf_counter()
        for _ in range(work.epochs):
            model.train()
            correct = torch.zeros((), dtype=torch.int64, device=work.device)
            for xb, yb in work.batches:
                t0 = time.perf_counter() if step_times is not None else 0.0
                out = model(xb)
                loss = criterion(out, yb)
                if watcher is not None:
                    watcher.loss(loss, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                correct += (out.argmax(1) == yb).sum()
                if step_times is not None:
                    step_times.append(time.perf_counter() - t0)
            model.eval()
            with torch.no_grad():
                val_out = model(xv)
                metrics = {"train_accuracy": correct.item() / work.examples,
                           "val_loss": criterion(val_out, yv).item(),
                           "val_accuracy": (val_out.argmax(1) == yv).float().mean().item()}
            if watcher is not None:
                watcher.epoch_end(metrics)
        if watcher is not None:
            watcher.close()  # flushing the logs is part of watching (idempotent)
        sync(work.device)
        return time.perf_counter() - start


WATCHER_ENTRY_POINTS = ("_forward_pre", "_forward_post", "_step_pre", "_step_post", "loss",
                        "epoch_end", "close")


def time_in_hooks(work: Workload, mode: str) -> tuple[float, float]:
    """(seconds inside trainwatch's entry points: the watcher's torch hooks, ``loss``,
    ``epoch_end`` and ``close``; seconds of the whole run) for one watched run."""
    return time_inside(Watcher, WATCHER_ENTRY_POINTS, lambda: run(work, mode))


# -- host reads -----------------------------------------------------------------------------------


def reads_per_step(work: Workload) -> dict[str, float]:
    """Run watched once, counting trainwatch's host reads per step (epoch ends apart), as a
    GPU would see them: CPU tensors take the device paths here (on a CPU, reading a tensor
    costs no sync, so the backend reads losses every step and histograms take a short path
    that reads a few values per tensor; on a GPU each read would be a synchronisation)."""
    cheap = backend_module.TorchBackend.host_reads_cheap
    backend_module.CPU_SHORT_PATH = False
    backend_module.TorchBackend.host_reads_cheap = property(lambda self: False)
    try:
        return _reads_per_step(work)
    finally:
        backend_module.CPU_SHORT_PATH = True
        backend_module.TorchBackend.host_reads_cheap = cheap


def _reads_per_step(work: Workload) -> dict[str, float]:
    per_step: list[int] = []
    torch.manual_seed(0)
    model = work.make().to(work.device)
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=work.lr, momentum=0.9)
    with (tempfile.TemporaryDirectory() as logdir, count_host_reads() as log,
          open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet)):
        watcher = watch(model, opt, criterion, logdir=logdir, callbacks=default_callbacks(),
                        progress=False)
        epoch_reads = 0
        for _ in range(work.epochs):
            model.train()
            for xb, yb in work.batches:
                before = len(log)
                loss = criterion(model(xb), yb)
                watcher.loss(loss, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                per_step.append(len(log) - before)
            before = len(log)
            model.eval()
            with torch.no_grad():
                val_acc = (model(work.val[0]).argmax(1) == work.val[1]).float().mean().item()
            watcher.epoch_end({"val_accuracy": val_acc})
            epoch_reads += len(log) - before
        watcher.close()
    busy = [n for n in per_step if n]
    return {"steps": len(per_step), "reads": sum(per_step),
            "per_step": sum(per_step) / len(per_step),
            "steps_with_reads": len(busy), "max_on_a_step": max(per_step),
            "median_on_busy": statistics.median(busy) if busy else 0,
            "per_epoch_end": epoch_reads / work.epochs}


def cuda_syncs(work: Workload, mode: str) -> int:
    """Synchronising CUDA calls of one run, counted by torch's sync debug mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(work, mode)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


# -- report ---------------------------------------------------------------------------------------


def bench(work: Workload, pairs: int, modes: list[str]) -> None:
    print(f"\n== {work.name}: {work.steps} steps per run, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; watched/bare, median [quartiles] of {pairs} "
          "adjacent pairs")
    for mode in modes:  # warm-up: imports, allocator, cuDNN autotuning
        run(work, mode)
    bare_step: list[float] = []
    base = statistics.median(run(work, "bare", bare_step) for _ in range(3))
    print(f"bare: {base:.3f} s a run, {base / work.steps * 1e3:.3f} ms a step (median step "
          f"{statistics.median(bare_step) * 1e3:.3f} ms)")
    for mode in modes[1:]:
        med, q1, q3 = paired_ratio(lambda: run(work, "bare"), lambda m=mode: run(work, m), pairs)
        # (inside, whole run) of 5 runs: the least time inside (interference from the machine
        # only ever adds time), and each run's time inside over the rest of the same run (both
        # in the same phase of the machine's speed), their median
        runs = [time_in_hooks(work, mode) for _ in range(5)]
        inside = min(t for t, _ in runs)
        share = statistics.median(t / (total - t) for t, total in runs)
        print(f"  {mode:32s} x{med:.3f}  [{q1:.3f}, {q3:.3f}]   in trainwatch: least "
              f"{inside * 1e3:5.1f} ms = {inside / base:.1%} of bare; of its own run "
              f"(median of 5): {share:.1%}")
    r = reads_per_step(work)
    print(f"trainwatch host reads: {r['reads']} over {r['steps']} steps "
          f"({r['per_step']:.3f} per step); {r['steps_with_reads']} steps with any "
          f"(median {r['median_on_busy']}, max {r['max_on_a_step']} on one step); "
          f"{r['per_epoch_end']:.1f} per epoch end")
    if work.device.type == "cuda":
        bare, watched = cuda_syncs(work, "bare"), cuda_syncs(work, "watched")
        print(f"CUDA synchronisations per run (sync debug mode): bare {bare}, watched "
              f"{watched} ({(watched - bare) / work.steps:.3f} extra per step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20,
                        help="CPU run length (45 steps each; 20 as in the example)")
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--gpu-steps", type=int, default=600)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--gpu-size", type=int, default=224)
    parser.add_argument("--resnet-on-cpu", action="store_true",
                        help="run the ResNet workload on the CPU (to try the GPU code path)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each default callback alone")
    parser.add_argument("--only", action="append", default=[], metavar="CALLBACK",
                        help="also time this default callback alone (repeatable)")
    parser.add_argument("--batch", type=int, default=32,
                        help="CPU batch size (32 as in the example; larger: longer steps)")
    parser.add_argument("--loader", action="store_true",
                        help="also run the CPU loop with the example's DataLoader")
    args = parser.parse_args()
    modes = ["bare", "hooks only", "watched", "watched + progress bar"]
    names = [type(cb).__name__ for cb in default_callbacks() if type(cb).__name__ != "MetricLogger"]
    unknown = set(args.only) - set(names)
    if unknown:
        parser.error(f"--only: {sorted(unknown)} not among the default callbacks {names}")
    modes += [f"only {name}" for name in names if args.breakdown or name in args.only]
    if not args.skip_cpu:
        bench(digits_workload(args.epochs, batch=args.batch), args.pairs, modes)
        if args.loader:
            bench(digits_workload(args.epochs, loader=True, batch=args.batch), args.pairs,
                  modes[:3])
    if torch.cuda.is_available() or args.resnet_on_cpu:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.backends.cudnn.benchmark = True
        bench(resnet_workload(device, args.gpu_steps, args.gpu_batch, args.gpu_size),
              args.pairs, [m for m in modes if m != "watched + progress bar"])
    else:
        print("\n(no CUDA device: the GPU workload was skipped)")


if __name__ == "__main__":
    main()
