"""A small, vectorised numpy neural-network library: layers, losses, ``Sequential``, optimizers.

Example::

    model = Sequential([Dense(64, 32, rng=0), ReLU(), Dense(32, 10, rng=1)], l2=1e-4)
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model, lr=0.1)
    loss = loss_fn.forward(model.forward(x), y) + model.regularization_loss()
    model.zero_grad(); model.backward(loss_fn.backward()); opt.step()
"""

from trainwatch.nn.layers import (
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)
from trainwatch.nn.losses import (
    Loss,
    MeanSquaredError,
    MulticlassSVM,
    SigmoidBinaryCrossEntropy,
    SoftmaxCrossEntropy,
)
from trainwatch.nn.model import Sequential
from trainwatch.nn.optim import SGD, Adagrad, Adam, Momentum, Nesterov, Optimizer, RMSProp

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "Layer",
    "LeakyReLU",
    "Loss",
    "MaxPool2D",
    "MeanSquaredError",
    "Momentum",
    "MulticlassSVM",
    "Nesterov",
    "Optimizer",
    "RMSProp",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SigmoidBinaryCrossEntropy",
    "SoftmaxCrossEntropy",
    "Tanh",
]
