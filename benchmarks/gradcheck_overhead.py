"""What gradient checks cost: one check on the demo CNN and on a ~1M-parameter MLP, and the
demo's training-time overhead of ``GradientCheck()`` at its defaults.

    python benchmarks/gradcheck_overhead.py [--repeats 7] [--epochs 20]

1. One check, through ``NumpyBackend.check_gradients`` on 3 examples, as the callback runs it
   (its periodic probes: 3 coordinates + 2 directions per tensor) and with the engine's
   one-off defaults (10 + 3): the demo CNN (``trainwatch.demo.build_model("cnn", 0)``, digits)
   at initialisation and after 100 training steps (the callback's warm-up), and a
   784-1024-256-10 ReLU MLP (1,068,810 parameters) on random 784-d inputs. Median over
   ``--repeats`` checks, each with its own seed.
2. The demo's training (20 epochs × 45 steps of the digits CNN, Momentum, per-epoch
   validation, a TensorBoard log) through ``Trainer`` with ``callbacks=[GradientCheck()]``
   against the same with ``callbacks=[]``, and the plain numpy loop of
   ``benchmarks/overhead.py`` (``bare``) for reference; runs interleaved, medians, ratio.

Times are wall-clock (``perf_counter``) and CPU (``process_time``; BLAS is single-threaded
here, so CPU time is the work done and is much less disturbed by other processes on a busy
machine). The budget is 2 % of the demo's training at the callback's defaults.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: threads only add noise

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from overhead import bare, data  # noqa: E402  (benchmarks/overhead.py: the demo's setup)

from trainwatch import GradientCheck, Trainer, nn  # noqa: E402
from trainwatch.backends.numpy_backend import NumpyBackend  # noqa: E402
from trainwatch.callbacks.gradient_check import PERIODIC_PROBES  # noqa: E402
from trainwatch.data import minibatches  # noqa: E402
from trainwatch.demo import build_model  # noqa: E402

BUDGET = 0.02
LR = 0.05  # the demo's learning rate


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def demo_backend(steps: int) -> tuple[NumpyBackend, np.ndarray, np.ndarray]:
    """The demo CNN after ``steps`` training steps, and 3 examples of the next batch."""
    (x, y), _ = data("cnn")
    net = build_model("cnn", 0)
    loss, opt = nn.SoftmaxCrossEntropy(), nn.Momentum(net, lr=LR, momentum=0.9)
    rng = np.random.default_rng(0)
    batches = (batch for _ in iter(int, 1) for batch in minibatches(x, y, 32, rng))
    for _ in range(steps):
        xb, yb = next(batches)
        loss.forward(net.forward(xb, training=True), yb)
        net.zero_grad()
        net.backward(loss.backward())
        opt.step()
    xb, yb = next(batches)
    return NumpyBackend(net, loss, opt), xb[:3], yb[:3]


def mlp_backend() -> tuple[NumpyBackend, np.ndarray, np.ndarray]:
    """784-1024-256-10 ReLU MLP (1,068,810 parameters), 3 random 784-d examples."""
    net = nn.Sequential([nn.Dense(784, 1024, rng=0), nn.ReLU(), nn.Dense(1024, 256, rng=1),
                         nn.ReLU(), nn.Dense(256, 10, rng=2)], seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.random((3, 784)), rng.integers(0, 10, 3)
    return NumpyBackend(net, nn.SoftmaxCrossEntropy(), nn.SGD(net, lr=0.01)), x, y


def one_check(repeats: int) -> None:
    setups = {"demo CNN at init": lambda: demo_backend(0),
              "demo CNN after 100 steps": lambda: demo_backend(100),
              "MLP 784-1024-256-10": mlp_backend}
    probes = {"periodic (callback default)": PERIODIC_PROBES,
              "one-off (engine default)": {}}
    print("one gradient check, 3 examples (median of "
          f"{repeats}; wall / CPU; loss evaluations):")
    for label, setup in setups.items():
        backend, x, y = setup()
        params = sum(p.size for p in backend.parameters().values())
        print(f"  {label} ({params:,} parameters)")
        backend.check_gradients(x, y, seed=0)  # warm-up: imports, caches
        for kind, options in probes.items():
            walls, cpus, reports = [], [], []
            for seed in range(1, repeats + 1):
                wall, cpu = timed(lambda b=backend, x=x, y=y, s=seed, o=options: reports.append(
                    b.check_gradients(x, y, seed=s, **o)))
                walls.append(wall)
                cpus.append(cpu)
            report = reports[-1]
            print(f"    {kind:28s} {statistics.median(walls) * 1e3:8.1f} ms / "
                  f"{statistics.median(cpus) * 1e3:8.1f} ms CPU   "
                  f"{report.evaluations:4d} evaluations, passed={report.passed}")


def trainer_run(epochs: int, callbacks: Callable[[], list]) -> Callable[[], None]:
    (x, y), val = data("cnn")

    def run() -> None:
        net = build_model("cnn", 0)
        with tempfile.TemporaryDirectory() as logdir:
            trainer = Trainer(net, nn.SoftmaxCrossEntropy(),
                              nn.Momentum(net, lr=LR, momentum=0.9), callbacks=callbacks(),
                              logdir=logdir, progress=False)
            trainer.fit(x, y, epochs=epochs, batch_size=32, validation_data=val, seed=0)
            run.checks = sum(len(cb.reports) for cb in trainer.monitor.callbacks
                             if isinstance(cb, GradientCheck))

    run.checks = 0
    return run


def training_overhead(epochs: int, repeats: int) -> None:
    variants = {
        "bare numpy loop": lambda: bare("cnn", epochs, LR),
        "Trainer, callbacks=[]": trainer_run(epochs, list),
        "Trainer, callbacks=[GradientCheck()]": trainer_run(epochs, lambda: [GradientCheck()]),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: imports, caches
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    checks = variants["Trainer, callbacks=[GradientCheck()]"].checks
    defaults = GradientCheck()
    print(f"\ndemo training, cnn, {epochs} epochs x 45 steps, median of {repeats} interleaved "
          f"runs; GradientCheck() defaults: every={defaults.every}, "
          f"warmup_steps={defaults.warmup_steps}, examples={defaults.examples}, "
          f"{defaults.options} -> {checks} check(s) per run")
    medians = {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
               for name, ts in times.items()}
    for name, (wall, cpu) in medians.items():
        print(f"  {name:38s} {wall:7.3f} s / {cpu:7.3f} s CPU")
    base_wall, base_cpu = medians["Trainer, callbacks=[]"]
    wall, cpu = medians["Trainer, callbacks=[GradientCheck()]"]
    ratio_wall, ratio_cpu = wall / base_wall, cpu / base_cpu
    print(f"  GradientCheck() overhead: x{ratio_wall:.4f} wall ({ratio_wall - 1:+.2%}), "
          f"x{ratio_cpu:.4f} CPU ({ratio_cpu - 1:+.2%}); budget {BUDGET:.0%}: "
          + ("within" if ratio_cpu - 1 <= BUDGET else "OVER"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--skip-checks", action="store_true",
                        help="only measure the training overhead")
    args = parser.parse_args()
    if not args.skip_checks:
        one_check(args.repeats)
    training_overhead(args.epochs, args.repeats)


if __name__ == "__main__":
    main()
