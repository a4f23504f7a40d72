"""Training-time overhead of watching: the demo's training, bare and watched, in one run.

    python benchmarks/overhead.py [--model cnn|mlp] [--epochs 5] [--repeats 5]

"bare" is a plain numpy loop with no trainwatch at all (same network, data order,
optimizer, per-epoch validation). Each watched variant is the same training through
trainwatch's Trainer. Runs are interleaved and the median over repeats is reported, so
machine noise hits every variant alike. Prints the ratio watched / bare per variant.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: threads only add noise

import argparse
import statistics
import tempfile
import time

import numpy as np

from trainwatch import Trainer, nn
from trainwatch.callbacks import default_callbacks
from trainwatch.data import load_digits, minibatches, train_val_split
from trainwatch.demo import build_model


def data(model: str):
    x, y = load_digits(images=(model == "cnn"))
    return train_val_split(x, y, val_fraction=0.2, seed=0)


def bare(model: str, epochs: int, lr: float) -> float:
    (x, y), (xv, yv) = data(model)
    net = build_model(model, 0)
    loss, opt = nn.SoftmaxCrossEntropy(), nn.Momentum(net, lr=lr, momentum=0.9)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in minibatches(x, y, 64, rng):
            scores = net.forward(xb, training=True)
            loss.forward(scores, yb)
            net.regularization_loss()
            net.zero_grad()
            net.backward(loss.backward())
            opt.step()
        for i in range(0, len(xv), 512):
            loss.forward(net.forward(xv[i:i + 512], training=False), yv[i:i + 512])
    return time.perf_counter() - start


def watched(model: str, epochs: int, lr: float, callbacks, progress: bool) -> float:
    (x, y), val = data(model)
    net = build_model(model, 0)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = Trainer(net, nn.SoftmaxCrossEntropy(), nn.Momentum(net, lr=lr, momentum=0.9),
                          callbacks=callbacks(), logdir=logdir, progress=progress)
        start = time.perf_counter()
        trainer.fit(x, y, epochs=epochs, batch_size=64, validation_data=val, seed=0)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    variants = {
        "bare": lambda: bare(args.model, args.epochs, args.lr),
        "trainer, no callbacks": lambda: watched(args.model, args.epochs, args.lr, list, False),
        "default callbacks": lambda: watched(args.model, args.epochs, args.lr,
                                             default_callbacks, False),
        "default callbacks + progress bar": lambda: watched(args.model, args.epochs, args.lr,
                                                            default_callbacks, True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: imports, caches
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(fn())
    base = statistics.median(times["bare"])
    print(f"{args.model}, {args.epochs} epochs, median of {args.repeats} interleaved runs")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:34s} {med:7.3f} s   x{med / base:.3f}")


if __name__ == "__main__":
    main()
