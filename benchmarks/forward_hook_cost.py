"""What a forward pre-hook and hook on the model cost torch, per training step: the digits CNN
of ``examples/torch_existing_loop.py`` trained bare and with two no-op hooks on its root
module, in adjacent pairs (a module with any hook leaves torch's fast call path). This is
the cost ``trainwatch.torch.watch`` saves on the steps whose batch no callback reads.

    python benchmarks/forward_hook_cost.py [--pairs 11] [--steps 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch_overhead import digits_cnn, digits_workload  # benchmarks/torch_overhead.py


def train(batches, steps: int, hooked: bool) -> float:
    """Seconds per step of ``steps`` SGD steps, with or without the two no-op hooks."""
    torch.manual_seed(0)
    model = digits_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    if hooked:
        model.register_forward_pre_hook(lambda module, args, kwargs: None, with_kwargs=True)
        model.register_forward_hook(lambda module, args, output: None)
    start = time.perf_counter()
    for i in range(steps):
        xb, yb = batches[i % len(batches)]
        loss = criterion(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    batches = digits_workload(1).batches
    train(batches, 200, False), train(batches, 200, True)  # warm-up
    diffs, bare = [], []
    for i in range(args.pairs):
        if i % 2:
            h, b = train(batches, args.steps, True), train(batches, args.steps, False)
        else:
            b, h = train(batches, args.steps, False), train(batches, args.steps, True)
        diffs.append(h - b)
        bare.append(b)
    q1, med, q3 = statistics.quantiles(diffs, n=4)
    print(f"bare step {statistics.median(bare) * 1e6:.0f} µs; two no-op forward hooks on the "
          f"model add {med * 1e6:.1f} µs a step [quartiles {q1 * 1e6:.1f}, {q3 * 1e6:.1f}] "
          f"over {args.pairs} pairs of {args.steps} steps")


if __name__ == "__main__":
    main()
