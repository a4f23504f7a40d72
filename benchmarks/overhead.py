"""Training-time overhead of watching: the demo's training, bare and watched, in one run.

    python benchmarks/overhead.py [--model cnn|mlp] [--epochs 20] [--pairs 15] [--each]

"bare" is a plain numpy loop with no trainwatch at all (same network, data order,
optimizer), computing what a conventional loop reports: the epoch's training loss and
accuracy and the validation loss and accuracy. "watched" is the same training through trainwatch's
Trainer with the default callbacks, TensorBoard logs and alerts.jsonl (no progress bar).
The machine's speed drifts over seconds, so runs are taken in adjacent pairs (bare, watched)
and the median of the per-pair ratios is reported, with its quartiles. ``--each`` also
measures every default callback alone (each with the always-on MetricLogger).

The allocator is pinned first (see :func:`pin_allocator`; ``--default-malloc`` skips it): with
glibc's dynamic thresholds the same loop flips between two speeds about 10 % apart, from run
to run, depending on whether the validation pass's 4–6 MB of temporaries are handed back to
the OS and faulted in again at every epoch (about 1600 page faults an epoch).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: threads only add noise

import argparse
import ctypes
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trainwatch import Trainer, nn
from trainwatch.callbacks import default_callbacks
from trainwatch.data import load_digits, minibatches, train_val_split
from trainwatch.demo import build_model

BATCH = 64  # as the demo


def pin_allocator() -> bool:
    """Fix glibc malloc's mmap and trim thresholds (16 MB, 256 MB), as the environment
    variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` would, so freed
    temporaries stay in the heap instead of being returned to the OS and faulted in again.
    Returns False where there is no glibc (nothing pinned)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 16 << 20)
                    and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False


def data(model: str):
    x, y = load_digits(images=(model == "cnn"))
    return train_val_split(x, y, val_fraction=0.2, seed=0)


def bare(model: str, epochs: int, lr: float) -> float:
    """Seconds of the demo's training written as a plain numpy loop."""
    (x, y), (xv, yv) = data(model)
    net = build_model(model, 0)
    loss, opt = nn.SoftmaxCrossEntropy(), nn.Momentum(net, lr=lr, momentum=0.9)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(epochs):
        total = correct = 0.0
        for xb, yb in minibatches(x, y, BATCH, rng):
            scores = net.forward(xb, training=True)
            total += loss.forward(scores, yb) * len(xb)
            correct += np.count_nonzero(scores.argmax(axis=1) == yb)
            net.regularization_loss()
            net.zero_grad()
            net.backward(loss.backward())
            opt.step()
        history = {"train_loss": total / len(x), "train_accuracy": correct / len(x)}
        total = correct = 0.0
        for i in range(0, len(xv), 512):
            scores = net.forward(xv[i:i + 512], training=False)
            total += loss.forward(scores, yv[i:i + 512]) * len(scores)
            correct += np.count_nonzero(scores.argmax(axis=1) == yv[i:i + 512])
        history.update(val_loss=total / len(xv), val_accuracy=correct / len(xv))
    return time.perf_counter() - start


def watched(model: str, epochs: int, lr: float, callbacks) -> float:
    """Seconds of the same training through Trainer with ``callbacks()``."""
    (x, y), val = data(model)
    net = build_model(model, 0)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = Trainer(net, nn.SoftmaxCrossEntropy(), nn.Momentum(net, lr=lr, momentum=0.9),
                          callbacks=callbacks(), logdir=logdir, progress=False)
        start = time.perf_counter()
        trainer.fit(x, y, epochs=epochs, batch_size=BATCH, validation_data=val, seed=0)
        return time.perf_counter() - start


HOOK_METHODS = ("train_begin", "epoch_begin", "batch_begin", "loss_computed", "backward_end",
                "step_begin", "step_end", "validation_end", "epoch_end", "train_end")


def time_inside(cls: type, names: tuple[str, ...], fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds spent inside the methods ``names`` of ``cls`` while ``fn()`` runs, what it
    returned); the methods are wrapped with timers for the call and restored after."""
    spent = [0.0]
    originals = {name: getattr(cls, name) for name in names}

    def timed(method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    for name, method in originals.items():
        setattr(cls, name, timed(method))
    try:
        result = fn()
    finally:
        for name, method in originals.items():
            setattr(cls, name, method)
    return spent[0], result


def time_in_hooks(model: str, epochs: int, lr: float, callbacks) -> tuple[float, float]:
    """(seconds inside trainwatch's hook calls, seconds of the whole fit) for one watched run:
    a steadier measure than the end-to-end ratio on a machine whose speed drifts."""
    from trainwatch.core.monitor import Monitor

    return time_inside(Monitor, HOOK_METHODS, lambda: watched(model, epochs, lr, callbacks))


def paired_ratio(run_bare, run_watched, pairs: int) -> tuple[float, float, float]:
    """Median and quartiles of watched/bare over adjacent pairs."""
    ratios = []
    for i in range(pairs):
        if i % 2:  # alternate which goes first
            w, b = run_watched(), run_bare()
        else:
            b, w = run_bare(), run_watched()
        ratios.append(w / b)
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    return med, q1, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--each", action="store_true", help="also each callback alone")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's dynamic malloc thresholds alone (noisier)")
    args = parser.parse_args()
    pinned = not args.default_malloc and pin_allocator()

    run_bare = lambda: bare(args.model, args.epochs, args.lr)  # noqa: E731
    from trainwatch import LossMonitor, UpdateRatioMonitor

    variants = {"trainer + MetricLogger only": list,
                "LossMonitor + UpdateRatioMonitor": lambda: [LossMonitor(), UpdateRatioMonitor()],
                "default callbacks": default_callbacks}
    if args.each:
        for cls in (type(cb) for cb in default_callbacks()[1:]):
            variants[cls.__name__] = (lambda cls=cls: [cls()])
    run_bare(), watched(args.model, args.epochs, args.lr, default_callbacks)  # warm-up
    base = statistics.median(run_bare() for _ in range(3))
    print(f"{args.model}, {args.epochs} epochs of batch {BATCH}, bare {base:.3f} s; "
          f"watched/bare, median [quartiles] of {args.pairs} adjacent pairs; allocator "
          f"{'pinned' if pinned else 'as it comes'}")
    for name, callbacks in variants.items():
        med, q1, q3 = paired_ratio(run_bare, lambda c=callbacks: watched(
            args.model, args.epochs, args.lr, c), args.pairs)
        inside = statistics.median(time_in_hooks(args.model, args.epochs, args.lr, callbacks)[0]
                                   for _ in range(3))
        print(f"  {name:30s} x{med:.3f}  [{q1:.3f}, {q3:.3f}]   in hooks: {inside * 1e3:6.1f} ms"
              f" = {inside / base:.1%} of bare")


if __name__ == "__main__":
    main()
