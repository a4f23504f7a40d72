"""Watching a PyTorch training loop you already have: the lines marked `# trainwatch` are all it
takes (needs the torch extra: pip install "trainwatch[torch]").

    python examples/torch_existing_loop.py [--logdir runs/torch-digits] [--epochs 20]
    python -m tensorboard.main --logdir runs/torch-digits

A small CNN learns the bundled 8x8 digits; trainwatch writes the same dashboard as the numpy
demo (loss and accuracy curves, update/weight ratios, activation and gradient histograms,
first-layer filters, periodic gradient checks, alerts).
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainwatch.data import load_digits, train_val_split
from trainwatch.torch import watch  # trainwatch

parser = argparse.ArgumentParser()
parser.add_argument("--logdir", default="runs/torch-digits")
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--lr", type=float, default=0.05)
args = parser.parse_args()

torch.manual_seed(0)
x, y = load_digits(images=True)
(x_train, y_train), (x_val, y_val) = train_val_split(x, y, val_fraction=0.2, seed=0)
x_train, y_train = torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train)
x_val, y_val = torch.tensor(x_val, dtype=torch.float32), torch.tensor(y_val)
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True,
                    generator=torch.Generator().manual_seed(0))

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)

watcher = watch(model, optimizer, criterion, logdir=args.logdir, figures=True,  # trainwatch
                epochs=args.epochs, steps_per_epoch=len(loader))  # (for the progress bar)
for _epoch in range(args.epochs):
    model.train()
    correct = torch.zeros((), dtype=torch.int64)
    for xb, yb in loader:
        scores = model(xb)
        loss = criterion(scores, yb)
        watcher.loss(loss, yb)  # trainwatch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        correct += (scores.argmax(1) == yb).sum()
    model.eval()
    with torch.no_grad():
        val_scores = model(x_val)
    metrics = {"train_accuracy": correct.item() / len(x_train),
               "val_loss": criterion(val_scores, y_val).item(),
               "val_accuracy": (val_scores.argmax(1) == y_val).float().mean().item()}
    watcher.epoch_end(metrics)  # trainwatch
watcher.close()  # trainwatch

print(f"validation accuracy {metrics['val_accuracy']:.3f}")
