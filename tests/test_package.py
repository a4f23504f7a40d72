"""The package without its optional extra: torch stays optional."""

import subprocess
import sys

WITHOUT_TORCH = """
import sys, tempfile
sys.modules["torch"] = None  # as if PyTorch were not installed
import trainwatch as tw
from trainwatch import nn
from trainwatch.data import load_digits
x, y = load_digits()
m = nn.Sequential([nn.Dense(64, 16), nn.ReLU(), nn.Dense(16, 10)], seed=0)
trainer = tw.Trainer(m, nn.SoftmaxCrossEntropy(), nn.SGD(m, lr=0.1),
                     logdir=tempfile.mkdtemp(), progress=False)
history = trainer.fit(x[:300], y[:300], epochs=1, validation_data=(x[300:400], y[300:400]))
assert len(history["val_accuracy"]) == 1
try:
    import trainwatch.torch
except ImportError as exc:
    print(exc)
"""


def test_trainwatch_works_without_torch_and_says_how_to_get_it():
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'pip install "trainwatch[torch]"' in done.stdout
