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
    # each round: bare, v1, bare, v2, bare, v3, bare (the order of v1..v3 alternating); a
    # variant's run is compared with the mean of the bare runs on either side of it
    watched = VARIANTS[1:]
    diffs: dict[str, list[float]] = {v: [] for v in watched}
    ratios: dict[str, list[float]] = {v: [] for v in watched}
    for i in range(args.runs):
        bare = run(work, "bare")
        for variant in (watched if i % 2 else watched[::-1]):
            t = run(work, variant)
            after = run(work, "bare")
            reference = (bare + after) / 2
            diffs[variant].append((t - reference) / steps * 1e6)
            ratios[variant].append(t / reference)
            bare = after
    print(f"digits CNN, {steps} steady steps a run, {args.runs} rounds; per variant, the "
          "median [quartiles] of its run's difference to the mean of the bare runs just "
          "before and after it (the machine's speed drifts between minutes: a median of the "
          "times themselves would mix its phases)")
    for variant in watched:
        q1, median, q3 = statistics.quantiles(diffs[variant], n=4)
        print(f"  {variant:18s} {median:+7.2f} µs a step [{q1:+.2f}, {q3:+.2f}]  "
              f"x{statistics.median(ratios[variant]):.3f}")

if __name__ == "__main__":
    main()
