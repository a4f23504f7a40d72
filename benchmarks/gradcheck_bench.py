"""Time one default gradient check on a ~1M-parameter numpy MLP (784-1024-256-10, ReLU,
softmax cross-entropy) with 3 examples, as the periodic callback would run it.

Usage: ``python benchmarks/gradcheck_bench.py [--repeats 5] [--examples 3]``
Prints the median seconds per check (and the loss evaluations it spent).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from trainwatch.gradcheck import check_gradients

SIZES = (784, 1024, 256, 10)


def make_mlp(examples: int, seed: int = 0):
    """Params, a loss_fn returning (loss, ReLU signature), and its analytic gradient."""
    rng = np.random.default_rng(seed)
    x = rng.random((examples, SIZES[0]))
    y = rng.integers(0, SIZES[-1], examples)
    params: dict[str, np.ndarray] = {}
    for k, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:]), start=1):
        params[f"W{k}"] = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        params[f"b{k}"] = np.zeros(fan_out)
    layers = len(SIZES) - 1

    def forward(p):
        acts, pre = [x], []
        for k in range(1, layers + 1):
            z = acts[-1] @ p[f"W{k}"] + p[f"b{k}"]
            pre.append(z)
            acts.append(np.maximum(z, 0) if k < layers else z)
        scores = acts[-1] - acts[-1].max(axis=1, keepdims=True)
        logp = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        return acts, pre, logp

    def loss_fn(p):
        _, pre, logp = forward(p)
        signature = np.concatenate([(z > 0).ravel() for z in pre[:-1]])
        return -logp[np.arange(examples), y].mean(), signature

    def gradient(p):
        acts, pre, logp = forward(p)
        delta = np.exp(logp)
        delta[np.arange(examples), y] -= 1
        delta /= examples
        grads = {}
        for k in range(layers, 0, -1):
            grads[f"W{k}"] = acts[k - 1].T @ delta
            grads[f"b{k}"] = delta.sum(0)
            if k > 1:
                delta = (delta @ p[f"W{k}"].T) * (pre[k - 2] > 0)
        return {name: grads[name] for name in p}

    return params, loss_fn, gradient(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--examples", type=int, default=3)
    args = parser.parse_args()
    params, loss_fn, grads = make_mlp(args.examples)
    n_params = sum(p.size for p in params.values())
    check_gradients(loss_fn, params, grads, seed=0)  # warm-up (BLAS threads, caches)
    times, report = [], None
    for seed in range(args.repeats):
        start = time.perf_counter()
        report = check_gradients(loss_fn, params, grads, seed=seed + 1)
        times.append(time.perf_counter() - start)
    print(report)
    print(f"\nMLP {'-'.join(map(str, SIZES))}: {n_params:,} parameters, {args.examples} examples")
    print(f"default check: {statistics.median(times):.3f} s per check (median of "
          f"{args.repeats}; min {min(times):.3f}, max {max(times):.3f}), "
          f"{report.evaluations} loss evaluations, passed={report.passed}")


if __name__ == "__main__":
    main()
