"""The demo: a numpy network learns the bundled digits with every monitor switched on."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass

from trainwatch import nn
from trainwatch.callbacks import default_callbacks
from trainwatch.core.trainer import Trainer
from trainwatch.data import load_digits, train_val_split

MODELS = ("mlp", "cnn")


@dataclass
class DemoResult:
    """What a demo run produced."""

    logdir: str
    val_accuracy: float
    seconds: float
    trainer: Trainer


def build_model(kind: str, seed: int) -> nn.Sequential:
    """The demo network: ``"mlp"`` (64-128-10 with dropout) or ``"cnn"`` (one 3x3 conv layer
    with 16 filters, max-pool, 64-unit dense layer)."""
    if kind == "mlp":
        layers = [nn.Dense(64, 128, rng=seed), nn.ReLU(), nn.Dropout(0.1),
                  nn.Dense(128, 10, rng=seed + 1)]
    elif kind == "cnn":
        layers = [nn.Conv2D(1, 16, 3, padding=1, rng=seed), nn.ReLU(), nn.MaxPool2D(2),
                  nn.Flatten(), nn.Dense(16 * 4 * 4, 64, rng=seed + 1), nn.ReLU(),
                  nn.Dense(64, 10, rng=seed + 2)]
    else:
        raise ValueError(f"model: must be one of {MODELS}, got {kind!r}")
    model = nn.Sequential(layers, l2=1e-4, seed=seed)
    # A small positive bias keeps ReLUs fed by non-negative inputs alive at the start
    # (with zero biases about half of them never fire: trainwatch's activations.dead).
    *hidden, _output = model.layers.values()
    for layer in hidden:
        if layer.kind == "dense":
            layer.params["bias"][...] = 0.1
    return model


def run_demo(logdir: str = "runs/demo", model: str = "cnn", epochs: int = 20,
             lr: float = 0.05, seed: int = 0, progress: bool = True) -> DemoResult:
    """Train the demo network with every callback on; returns where the logs went and the
    final validation accuracy (fraction)."""
    if lr <= 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    x, y = load_digits(images=(model == "cnn"))
    (x_train, y_train), (x_val, y_val) = train_val_split(x, y, val_fraction=0.2, seed=seed)
    net = build_model(model, seed)
    trainer = Trainer(net, nn.SoftmaxCrossEntropy(), nn.Momentum(net, lr=lr, momentum=0.9),
                      callbacks=default_callbacks(figures=True), logdir=logdir, progress=progress)
    start = time.perf_counter()
    history = trainer.fit(x_train, y_train, epochs=epochs, batch_size=64,
                          validation_data=(x_val, y_val), seed=seed)
    seconds = time.perf_counter() - start
    return DemoResult(logdir, history["val_accuracy"][-1], seconds, trainer)


def tensorboard_command(logdir: str) -> str:
    """The exact command that opens TensorBoard on ``logdir`` with this Python."""
    path = os.path.abspath(logdir)
    cmd = f"{sys.executable} -m tensorboard.main --logdir {path} --host 127.0.0.1 --port 6006"
    if importlib.util.find_spec("tensorboard") is None:
        cmd = f"{sys.executable} -m pip install tensorboard && {cmd}"
    return cmd
