"""The classic backprop bug, caught by trainwatch's gradient check and pinned to its tensors.

    python examples/buggy_backprop.py [--logdir runs/buggy-backprop] [--fixed]

A custom layer, dense + sigmoid, whose backward applies the sigmoid derivative to the
pre-activation z (``z * (1 - z)``) instead of the activation a = sigmoid(z) (``a * (1 - a)``).
The network is ``fc1 (dense) -> tanh1 -> sig2 (the custom layer) -> fc3 (dense) -> softmax``
on the bundled 8x8 digits. GradientCheck compares the analytic gradients with centered
finite differences during training and reports which tensors disagree:

* ``sig2.weight`` and ``sig2.bias``: their gradients ``x.T @ dz`` and ``sum(dz)`` are built
  from the wrong ``dz``;
* ``fc1.weight`` and ``fc1.bias``, below the bug: ``sig2`` hands ``dz @ W.T`` back to them,
  so the same error flows into their gradients (they are right once ``sig2`` is fixed);
* ``fc3.weight`` and ``fc3.bias``, above the bug, stay correct: their gradients are
  computed before the backward pass reaches ``sig2``.

With the bug, training diverges within a few dozen steps (the loss goes NaN and trainwatch's
LossMonitor stops the run); the gradient check has said why from its first check on.

The first failing check also sweeps the step h from 1e-1 to 1e-10 for the worst entries (in
TensorBoard: ``gradcheck/sweep``, Images tab): a relative error that stays flat as h shrinks
is a real bug, not truncation or round-off. The example then calls
:func:`trainwatch.gradcheck.sweep` itself on the buggy ``sig2.bias`` and the correct
``fc3.bias`` and saves the contrast as ``<logdir>/gradcheck_sweep.png``. ``--fixed`` runs the
corrected layer: every check passes. Runs in a few seconds.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import trainwatch as tw
from trainwatch import nn
from trainwatch.callbacks import default_callbacks
from trainwatch.data import load_digits, train_val_split
from trainwatch.demo import tensorboard_command
from trainwatch.gradcheck import sweep


class SigmoidDense(nn.Layer):
    """``a = sigmoid(x @ W + b)``; x (N, in_features) -> a (N, out_features).

    With ``buggy=True`` the backward uses ``z * (1 - z)`` (the derivative formula applied to
    the pre-activation z) instead of ``a * (1 - a)``.
    """

    kind = "sigmoid"  # its output is a sigmoid: the activation monitors read it as one

    def __init__(self, in_features: int, out_features: int, *, rng: int, buggy: bool):
        super().__init__()
        weight = np.random.default_rng(rng).standard_normal((in_features, out_features))
        self.params = {"weight": weight / np.sqrt(in_features),
                       "bias": np.zeros(out_features)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buggy = buggy

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._x = x.astype(self.params["weight"].dtype, copy=False)
        self._z = self._x @ self.params["weight"] + self.params["bias"]
        self._a = 0.5 * (np.tanh(0.5 * self._z) + 1)  # sigmoid(z), overflow-free
        return self._a

    def backward(self, da: np.ndarray) -> np.ndarray:
        # the derivative of a = sigmoid(z) is a*(1-a); the bug evaluates it at z instead
        derivative = self._z * (1 - self._z) if self.buggy else self._a * (1 - self._a)
        dz = da * derivative
        self.grads["weight"] += self._x.T @ dz
        self.grads["bias"] += dz.sum(axis=0)
        return dz @ self.params["weight"].T


def build(buggy: bool) -> nn.Sequential:
    layers = [nn.Dense(64, 32, rng=0), nn.Tanh(), SigmoidDense(32, 32, rng=1, buggy=buggy),
              nn.Dense(32, 10, rng=2)]
    return nn.Sequential(layers, names=["fc1", "tanh1", "sig2", "fc3"], seed=0)


def loss_and_gradients(model: nn.Sequential, x: np.ndarray, y: np.ndarray):
    """``loss_fn(params)``, the point and the model's analytic gradient there, in the form
    :mod:`trainwatch.gradcheck` takes (what ``NumpyBackend.check_gradients`` does for you)."""
    model = model.astype(np.float64)  # a float64 copy: the original is never touched
    loss = nn.SoftmaxCrossEntropy()
    live = model.named_parameters()
    params = {name: value.copy() for name, value in live.items()}

    def loss_fn(point: dict[str, np.ndarray]) -> float:
        for name, value in point.items():
            live[name][...] = value
        return loss.forward(model.forward(x, training=True), y)

    loss_fn(params)
    model.zero_grad()
    model.backward(loss.backward())
    grads = {name: g.copy() for name, g in model.named_gradients().items()}
    return loss_fn, params, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/buggy-backprop")
    parser.add_argument("--fixed", action="store_true",
                        help="use the corrected layer (a*(1-a)): the checks pass")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    x, y = load_digits()
    (x_train, y_train), (x_val, y_val) = train_val_split(x, y, val_fraction=0.2, seed=0)
    model = build(buggy=not args.fixed)
    # a short run, so check early and often (the defaults suit long runs: every=1000)
    check = tw.GradientCheck(every=10, warmup_steps=10)
    others = [cb for cb in default_callbacks() if not isinstance(cb, tw.GradientCheck)]
    trainer = tw.Trainer(model, nn.SoftmaxCrossEntropy(),
                         nn.Momentum(model, lr=0.05, momentum=0.9),
                         callbacks=[check, *others], logdir=args.logdir, progress=False)
    # the buggy gradient makes training diverge within a few dozen steps; trainwatch
    # reports that too (loss.nonfinite), so numpy's overflow warnings would only repeat it
    with np.errstate(over="ignore", invalid="ignore"):
        history = trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=32,
                              validation_data=(x_val, y_val))

    layer = "fixed: a*(1-a)" if args.fixed else "buggy: z*(1-z)"
    print(f"\ntrained {trainer.monitor.step} steps with sig2 = SigmoidDense ({layer}); "
          f"validation accuracy {history['val_accuracy'][-1]:.3f}")
    print(f"{len(check.reports)} gradient checks, at steps "
          f"{[step for step, _ in check.reports]}:")
    for step, report in check.reports:
        if not report.passed:
            print(f"  step {step:3d}: FAILED: {', '.join(report.failed)}")
    passed = [step for step, report in check.reports if report.passed]
    if passed:
        print(f"  passed at steps {passed}")
    step, report = check.reports[0]
    print(f"\n== the first check, at step {step} ==\n{report}\n")

    if args.fixed:
        verdict = "As expected" if report.passed else "UNEXPECTED"
        print(f"{verdict}: with a*(1-a) every tensor agrees with finite differences.")
    else:
        expected = [name for name in report.params if not name.startswith("fc3.")]
        verdict = "As expected" if report.failed == expected else "UNEXPECTED"
        print(f"{verdict}: trainwatch names {', '.join(report.failed) or 'nothing'}.\n"
              "  sig2.weight, sig2.bias: the bug. Their gradients x.T @ dz and sum(dz) use\n"
              "    dz = da * z*(1-z), the sigmoid derivative evaluated at the pre-activation\n"
              "    z instead of the activation a (correct: dz = da * a*(1-a)).\n"
              "  fc1.weight, fc1.bias: below the bug. sig2 hands them dz @ W.T, built from\n"
              "    the same wrong dz: their own backward is right, they inherit the error.\n"
              "  fc3.weight, fc3.bias: above the bug, computed before backprop reaches sig2:\n"
              "    correct.\n"
              "  Fix the failing layer closest to the loss first: "
              f"{report.failed[-1].rpartition('.')[0] if report.failed else '-'}.")
        # the step sweep, called directly: the worst entries of the buggy sig2.bias (a bug:
        # the error stays flat as h shrinks) next to fc3.bias, whose gradient is right (the
        # error falls ~100x per decade while truncation dominates, then round-off takes over)
        loss_fn, params, grads = loss_and_gradients(build(buggy=True), x_train[:3],
                                                    y_train[:3])
        result = sweep(loss_fn, params, grads, names=["sig2.bias", "fc3.bias"], entries=2)
        print(f"\n{result}")
        path = os.path.join(args.logdir, "gradcheck_sweep.png")
        result.figure().savefig(path, dpi=100)
        print("sig2.bias: the error stays flat as h shrinks from 1e-1 to 1e-10, a real bug.\n"
              "fc3.bias: the error falls ~100x per decade (truncation, O(h^2)) down to ~1e-10,"
              "\n  then grows again as round-off takes over: approximation, not a bug.")
        print(f"The figure: {path}; the sweep of the run's first failing check is in "
              "TensorBoard (gradcheck/sweep).")

    print(f"\n{trainer.monitor.summary()}")
    print(f"\nTensorBoard: {tensorboard_command(args.logdir)}")


if __name__ == "__main__":
    main()
