"""Per-step cost of watching a PyTorch loop in its steady state, end to end.

    python benchmarks/torch_steady_state.py [--runs 21]

The digits CNN loop of ``torch_overhead.py``, timed over its steady epochs only (3 to 19:
after the first gradient check and the step-0 histogram round, before closing), so what is
left is what every step costs: the optimizer's step hooks and ``watcher.loss``, including
what they cost torch outside trainwatch's own code (colder caches between the kernels),
which the "inside trainwatch" timers of ``torch_overhead.py`` do not see. Variants, in
interleaved runs: bare; two no-op optimizer step hooks (torch's own hook dispatch); watched
with the hooks only (``callbacks=[]``); watched with the default callbacks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import torch
from torch import nn
from torch_overhead import digits_workload  # benchmarks/torch_overhead.py

from trainwatch.torch import watch

VARIANTS = ("bare", "no-op step hooks", "hooks only", "the default set")
STEADY_EPOCHS = slice(3, None)


def run(work, variant: str) -> float:
    """Seconds of the steady epochs' training steps (validation and epoch ends excluded)."""
    torch.manual_seed(0)
    model = work.make()
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=work.lr, momentum=0.9, weight_decay=1e-4)
    with contextlib.ExitStack() as stack:
        watcher = None
        if variant in ("hooks only", "the default set"):
            logdir = stack.enter_context(tempfile.TemporaryDirectory())
            stack.enter_context(contextlib.redirect_stderr(open(os.devnull, "w")))  # noqa: SIM115
            watcher = watch(model, opt, criterion, logdir=logdir, progress=False,
                            callbacks=[] if variant == "hooks only" else None)
            stack.callback(watcher.close)
        elif variant == "no-op step hooks":
            opt.register_step_pre_hook(lambda *args: None)
            opt.register_step_post_hook(lambda *args: None)
        xv, yv = work.val
        epochs = []
        for _ in range(work.epochs):
            model.train()
            start = time.perf_counter()
            for xb, yb in work.batches:
                loss = criterion(model(xb), yb)
                if watcher is not None:
                    watcher.loss(loss, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            epochs.append(time.perf_counter() - start)
            model.eval()
            with torch.no_grad():
                accuracy = (model(xv).argmax(1) == yv).float().mean().item()
            if watcher is not None:
                watcher.epoch_end({"val_accuracy": accuracy})
    return sum(epochs[STEADY_EPOCHS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    work = digits_workload(20)
    steps = len(work.batches) * len(range(work.epochs)[STEADY_EPOCHS])
    for variant in VARIANTS:  # warm-up
        run(work, variant)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.runs):
        for variant in (VARIANTS if i % 2 else VARIANTS[::-1]):
            times[variant].append(run(work, variant))
    bare = statistics.median(times["bare"])
    print(f"digits CNN, {steps} steady steps a run, median of {args.runs} interleaved runs")
    for variant in VARIANTS:
        median = statistics.median(times[variant])
        q1, _, q3 = statistics.quantiles(times[variant], n=4)
        print(f"  {variant:18s} {median * 1e3:7.1f} ms [{q1 * 1e3:.1f}, {q3 * 1e3:.1f}]  "
              f"x{median / bare:.3f}  {(median - bare) / steps * 1e6:+6.2f} µs a step")


if __name__ == "__main__":
    main()
