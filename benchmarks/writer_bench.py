"""Per-step cost of the outputs' hot path, in microseconds per call.

Compares TensorBoardOutput.scalars (10 values buffered, serialised later as one Summary per
step; both parts are timed) with 10 tensorboardX ``add_scalar`` calls, histograms likewise,
plus ConsoleOutput.scalars and MemoryOutput.scalars. Run:

    .venv/bin/python benchmarks/writer_bench.py [--steps 5000]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from trainwatch.outputs import ConsoleOutput, MemoryOutput, TensorBoardOutput

TAGS = [f"group{i % 3}/metric{i}" for i in range(10)]


def time_per_call(fn: Callable[[int], None], steps: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean seconds per ``fn(step)`` call."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for step in range(steps):
            fn(step)
        runs.append((time.perf_counter() - t0) / steps)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    n = args.steps
    values = {t: 0.5 for t in TAGS}
    rows: list[tuple[str, float]] = []

    with tempfile.TemporaryDirectory() as d:
        out = TensorBoardOutput(f"{d}/batched", flush_secs=3600)
        rows.append(("TensorBoardOutput.scalars, 10 values (buffered in the caller)",
                     time_per_call(lambda s: out.scalars(values, s + 1), n)))
        t0 = time.perf_counter()
        out._write_scalars()  # what the flusher thread does with them, one event per step
        rows.append(("  then serialising them, per step (flusher thread)",
                     (time.perf_counter() - t0) / (3 * n)))
        data = np.random.default_rng(0).normal(size=4096)
        rows.append(("TensorBoardOutput.histogram, 4096 values",
                     time_per_call(lambda s: out.histogram("h", data, s), max(n // 10, 200))))
        t0 = time.perf_counter()
        out.flush()
        rows.append(("  then flush() barrier (fsync)", time.perf_counter() - t0))
        out.close()

        from tensorboardX import SummaryWriter

        each = SummaryWriter(f"{d}/each", flush_secs=2)

        def add_each(step: int, w=each) -> None:
            for k, v in values.items():
                w.add_scalar(k, v, step)

        rows.append(("10 x tensorboardX SummaryWriter.add_scalar",
                     time_per_call(add_each, max(n // 5, 200))))
        rows.append(("tensorboardX SummaryWriter.add_histogram, 4096 values",
                     time_per_call(lambda s: each.add_histogram("h", data, s, bins=64),
                                   max(n // 10, 200))))
        each.close()

    bar = ConsoleOutput(file=io.StringIO(), total=10**9)
    bar.start()
    rows.append(("ConsoleOutput.scalars, 10 values + loss/train postfix",
                 time_per_call(lambda s: bar.scalars({**values, "loss/train": 0.5}, s), n)))
    rows.append(("ConsoleOutput.scalars, 10 values, no postfix tag",
                 time_per_call(lambda s: bar.scalars(values, s), n)))
    bar.close()
    mem = MemoryOutput()
    rows.append(("MemoryOutput.scalars, 10 values",
                 time_per_call(lambda s: mem.scalars(values, s), n)))

    width = max(len(name) for name, _ in rows)
    for name, sec in rows:
        print(f"{name:<{width}}  {sec * 1e6:10.1f} us")


if __name__ == "__main__":
    main()
