"""Watching a training loop you already have: the lines marked `# trainwatch` are all it takes.

    python examples/numpy_existing_loop.py [--logdir runs/existing-loop]
"""

import argparse

import numpy as np

import trainwatch as tw  # trainwatch
from trainwatch import nn
from trainwatch.data import load_digits, minibatches, train_val_split

parser = argparse.ArgumentParser()
parser.add_argument("--logdir", default="runs/existing-loop")
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()

x, y = load_digits()
(x_train, y_train), (x_val, y_val) = train_val_split(x, y, val_fraction=0.2, seed=0)
model = nn.Sequential([nn.Dense(64, 64, rng=0), nn.Tanh(), nn.Dense(64, 10, rng=1)], seed=0)
loss_fn = nn.SoftmaxCrossEntropy()
optimizer = nn.Nesterov(model, lr=0.05, momentum=0.9)
rng = np.random.default_rng(0)

mon = tw.Monitor(model, loss=loss_fn, optimizer=optimizer, logdir=args.logdir)  # trainwatch
with mon.run(epochs=args.epochs, steps_per_epoch=-(-len(x_train) // 32)):  # trainwatch
    for epoch in range(args.epochs):
        mon.epoch_begin(epoch)  # trainwatch
        correct = 0
        for xb, yb in minibatches(x_train, y_train, 32, rng):
            mon.batch_begin(xb, yb)  # trainwatch
            scores = model.forward(xb, training=True)
            loss = loss_fn.forward(scores, yb)
            mon.loss_computed(loss, scores)  # trainwatch
            model.zero_grad()
            model.backward(loss_fn.backward())
            mon.backward_end()  # trainwatch
            mon.step_begin()  # trainwatch
            optimizer.step()
            mon.step_end()  # trainwatch
            correct += int(np.sum(scores.argmax(axis=1) == yb))
        val_scores = model.forward(x_val, training=False)
        val_accuracy = float(np.mean(val_scores.argmax(axis=1) == y_val))
        mon.epoch_end({"train_accuracy": correct / len(x_train),  # trainwatch
                       "val_accuracy": val_accuracy,
                       "val_loss": loss_fn.forward(val_scores, y_val)})

print(f"validation accuracy {val_accuracy:.3f}")
print(mon.summary())
