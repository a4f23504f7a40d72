"""trainwatch's own loop: a numpy MLP on the bundled digits, every monitor on.

    python examples/quickstart_trainer.py [--logdir runs/quickstart]
"""

import argparse

import trainwatch as tw
from trainwatch import nn
from trainwatch.data import load_digits, train_val_split

parser = argparse.ArgumentParser()
parser.add_argument("--logdir", default="runs/quickstart")
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()

x, y = load_digits()
(x_train, y_train), (x_val, y_val) = train_val_split(x, y, val_fraction=0.2, seed=0)

model = nn.Sequential([nn.Dense(64, 128, rng=0), nn.ReLU(), nn.Dense(128, 10, rng=1)],
                      l2=1e-4, seed=0)  # (rng: each layer's initial weights; seed: dropout)
trainer = tw.Trainer(model, nn.SoftmaxCrossEntropy(), nn.Adam(model, lr=1e-3),
                     callbacks=tw.default_callbacks(), logdir=args.logdir)
history = trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=32,
                      validation_data=(x_val, y_val))

print(f"validation accuracy {history['val_accuracy'][-1]:.3f}")
print(trainer.monitor.summary())
