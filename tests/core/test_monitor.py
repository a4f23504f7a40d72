"""Monitor: bad configuration fails at construction, naming the argument, before any output
opens a file."""

import pytest

from trainwatch import GradientCheck, Monitor
from trainwatch import nn as twnn


def small_model():
    model = twnn.Sequential([twnn.Dense(4, 3, rng=0)], seed=0)
    return model, twnn.SoftmaxCrossEntropy(), twnn.SGD(model, lr=0.1)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"logdir": 5}, TypeError, r"logdir: expected a folder path .* got int"),
    ({"callbacks": GradientCheck()}, TypeError,
     r"callbacks: expected a list of callbacks, got one GradientCheck: pass \[GradientCheck"),
    ({"callbacks": [GradientCheck(), "x"]}, TypeError, "callbacks: 'x' is not a trainwatch"),
    ({"log_every": 0}, ValueError, "log_every: must be an integer >= 1"),
    ({"loss": "cross-entropy"}, TypeError, r"loss: expected a trainwatch.nn loss .* got str"),
    ({"optimizer": 0.1}, TypeError, r"optimizer: expected a trainwatch.nn optimizer .* float"),
    ({"optimizer": twnn.SGD(small_model()[0], lr=0.1)}, ValueError,
     "optimizer: made for another model"),
])
def test_bad_configuration_fails_before_anything_is_written(tmp_path, kwargs, error, message):
    model, loss, opt = small_model()
    logdir = tmp_path / "runs"
    with pytest.raises(error, match=message):
        Monitor(model, progress=False, **{"loss": loss, "optimizer": opt, "logdir": logdir,
                                          **kwargs})
    assert not logdir.exists()
