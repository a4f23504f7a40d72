"""What gradient checks cost: one check on the demo CNN and on a ~1M-parameter MLP, and the
demo's training-time overhead of ``GradientCheck()`` at its defaults.

    python benchmarks/gradcheck_overhead.py [--repeats 7] [--epochs 20]

1. One check, through ``NumpyBackend.check_gradients`` on 3 examples, as the callback runs it
   (its periodic probes: 3 coordinates + 2 directions per tensor) and with the engine's
   one-off defaults (10 + 3): the demo CNN (``trainwatch.demo.build_model("cnn", 0)``, digits)
   at initialisation and after the callback's warm-up (``warmup_steps`` steps), and a
   784-1024-256-10 ReLU MLP (1,068,810 parameters) on random 784-d inputs. Median over
   ``--repeats`` checks, each with its own seed.
2. The demo's training (20 epochs × 23 steps of 64 digits for the CNN, Momentum, per-epoch
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
from functools import partial

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
BATCH = 64  # the demo's batch size (trainwatch.demo.run_demo, benchmarks/overhead.py)


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
    batches = (batch for _ in iter(int, 1) for batch in minibatches(x, y, BATCH, rng))
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


def check(backend: NumpyBackend, x: np.ndarray, y: np.ndarray, seed: int,
          options: dict, reports: list) -> None:
    reports.append(backend.check_gradients(x, y, seed=seed, **options))


def one_check(repeats: int) -> None:
    warmup = GradientCheck().warmup_steps
    setups = {"demo CNN at init": lambda: demo_backend(0),
              f"demo CNN after {warmup} steps": lambda: demo_backend(warmup),
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
                wall, cpu = timed(partial(check, backend, x, y, seed, options, reports))
                walls.append(wall)
                cpus.append(cpu)
            report = reports[-1]
            print(f"    {kind:28s} {statistics.median(walls) * 1e3:8.1f} ms / "
                  f"{statistics.median(cpus) * 1e3:8.1f} ms CPU   "
                  f"{report.evaluations:4d} evaluations, passed={report.passed}")


class TimedGradientCheck(GradientCheck):
    """``GradientCheck()`` at its defaults that also adds up the CPU time of the work it does
    on its scheduled steps (the check, the writes, the alerts). Idle steps are left untimed
    (two clock reads would cost more than the step itself): see :func:`idle_cost`."""

    def on_train_begin(self, state) -> None:
        self.cpu = 0.0
        super().on_train_begin(state)

    def _check(self, state):
        start = time.process_time()
        try:
            return super()._check(state)
        finally:
            self.cpu += time.process_time() - start

    def _write(self, state, report) -> None:
        start = time.process_time()
        super()._write(state, report)
        self.cpu += time.process_time() - start

    def _alert(self, state, report) -> None:
        start = time.process_time()
        super()._alert(state, report)
        self.cpu += time.process_time() - start


def idle_cost(calls: int = 200_000) -> float:
    """Seconds per idle step of GradientCheck (its two hooks, between checks)."""
    from trainwatch.alerts import AlertManager
    from trainwatch.core.state import RunState
    from trainwatch.outputs.base import OutputList

    cb = GradientCheck()
    state = RunState(backend=None, writer=OutputList(), alerts=AlertManager(), step=5, loss=1.0)
    start = time.perf_counter()
    for _ in range(calls):
        cb.on_loss_computed(state)
        cb.on_backward_end(state)
    return (time.perf_counter() - start) / calls


def trainer_run(epochs: int, callbacks: Callable[[], list]) -> Callable[[], None]:
    """The demo's training through Trainer (a TensorBoard log in a temporary folder)."""
    (x, y), val = data("cnn")

    def run() -> None:
        net = build_model("cnn", 0)
        with tempfile.TemporaryDirectory() as logdir:
            trainer = Trainer(net, nn.SoftmaxCrossEntropy(),
                              nn.Momentum(net, lr=LR, momentum=0.9), callbacks=callbacks(),
                              logdir=logdir, progress=False)
            trainer.fit(x, y, epochs=epochs, batch_size=BATCH, validation_data=val, seed=0)
        for cb in trainer.monitor.callbacks:
            if isinstance(cb, TimedGradientCheck):
                run.inside.append((len(cb.reports), cb.cpu))

    run.inside = []
    return run


def training_overhead(epochs: int, repeats: int) -> None:
    bare_run = trainer_run(epochs, list)
    watched_run = trainer_run(epochs, lambda: [TimedGradientCheck()])
    variants = {
        "bare numpy loop (benchmarks/overhead.py)": lambda: bare("cnn", epochs, LR),
        "Trainer, callbacks=[]": bare_run,
        "Trainer, callbacks=[GradientCheck()]": watched_run,
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: imports, caches
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    defaults = GradientCheck()
    checks = watched_run.inside[-1][0]
    steps = epochs * -(-len(data("cnn")[0][0]) // BATCH)
    print(f"\ndemo training: cnn, {epochs} epochs, {steps} steps of {BATCH}, {repeats} "
          "interleaved runs each; "
          f"GradientCheck() defaults: every={defaults.every}, "
          f"warmup_steps={defaults.warmup_steps}, examples={defaults.examples}, "
          f"{defaults.options} -> {checks} check(s) per run")
    print(f"  {'':42s} {'median wall':>11s} {'median CPU':>11s} {'min CPU':>9s}")
    stats = {}
    for name, ts in times.items():
        wall = statistics.median(w for w, _ in ts)
        cpu = statistics.median(c for _, c in ts)
        low = min(c for _, c in ts)
        stats[name] = (wall, cpu, low)
        print(f"  {name:42s} {wall:9.3f} s {cpu:9.3f} s {low:7.3f} s")
    base = stats["Trainer, callbacks=[]"]
    with_check = stats["Trainer, callbacks=[GradientCheck()]"]
    print("  GradientCheck() overhead, whole runs: "
          + ", ".join(f"{label} {w / b - 1:+.2%}" for label, w, b in
                      zip(("median wall", "median CPU", "min CPU"), with_check, base)))
    inside = statistics.median(cpu for _, cpu in watched_run.inside[1:])  # [0]: warm-up
    share = inside / base[1]
    idle = idle_cost()
    print(f"  CPU of GradientCheck's work on its scheduled steps: {inside * 1e3:.1f} ms per run; "
          f"idle steps: {idle * 1e9:.0f} ns each, {idle * steps * 1e3:.2f} ms per run")
    share = (inside + idle * steps) / base[1]
    print(f"  => {share:.2%} of the run without it; budget {BUDGET:.0%}: "
          + ("within" if share <= BUDGET else "OVER"))
    print("  (the whole-run differences carry the run-to-run noise of ~1 s of training on a "
          "shared machine; the time inside the hooks is the direct measure)")


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
