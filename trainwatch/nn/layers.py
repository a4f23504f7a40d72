"""Layers of the numpy network library: forward, backward and kink signatures.

Every layer caches in ``forward`` what its ``backward`` needs, so a ``backward`` always refers
to the most recent ``forward``. Parameter gradients are accumulated (``+=``) until
``zero_grad``. Layers with parameters compute in their parameters' dtype; the others compute
in their input's dtype. Images are NCHW: (batch, channels, height, width).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

RngLike = np.random.Generator | int | None


def _generator(rng: RngLike) -> np.random.Generator:
    """A Generator as given, or a new one seeded with ``rng`` (an int, or None for entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _positive_int(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def _windows(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """Strided (read-only) view of every (kh, kw) window of NCHW ``x``:
    shape (N, C, Ho, Wo, kh, kw)."""
    n, c, h, w = x.shape
    sn, sc, sh, sw = x.strides
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    return as_strided(x, (n, c, ho, wo, kh, kw),
                      (sn, sc, sh * stride, sw * stride, sh, sw), writeable=False)


def _pad(x: np.ndarray, p: int, dtype: np.dtype) -> np.ndarray:
    """``x`` (NCHW) zero-padded by ``p`` pixels on each side, as ``dtype``."""
    if p == 0:
        return np.ascontiguousarray(x, dtype=dtype)
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=dtype)
    out[:, :, p:p + h, p:p + w] = x
    return out


class Layer:
    """Base class. Subclasses set ``kind`` and implement ``forward`` and ``backward``.

    ``params`` and ``grads`` map local names ("weight", "bias") to arrays of equal shapes.
    """

    kind: str = "layer"

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Compute the output for input ``x``; ``training`` switches dropout on."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Given dL/dy for the last forward, add dL/dparams to ``grads`` and return dL/dx."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Set every accumulated gradient to zero, in place."""
        for grad in self.grads.values():
            grad[...] = 0

    def kink_signature(self) -> np.ndarray | None:
        """The pattern of the last forward that changes when a kink is crossed (None: smooth)."""
        return None


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b``; x (N, in_features) -> y (N, out_features).

    ``weight`` is (in_features, out_features), drawn from N(0, std²) with He's
    ``std = sqrt(2 / in_features)`` unless ``weight_scale`` gives the std; ``bias`` starts at 0.
    ``rng`` is a Generator, an int seed, or None (fresh entropy).
    """

    kind = "dense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rng: RngLike = None,
        weight_scale: float | None = None,
        dtype: np.dtype | type = np.float64,
    ) -> None:
        super().__init__()
        in_features = _positive_int("in_features", in_features)
        out_features = _positive_int("out_features", out_features)
        std = np.sqrt(2.0 / in_features) if weight_scale is None else weight_scale
        weight = std * _generator(rng).standard_normal((in_features, out_features))
        self.params = {
            "weight": weight.astype(dtype),
            "bias": np.zeros(out_features, dtype=dtype),
        }
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        weight = self.params["weight"]
        if x.ndim != 2 or x.shape[1] != weight.shape[0]:
            raise ValueError(f"Dense: expected input (N, {weight.shape[0]}), got {x.shape}")
        self._x = x.astype(weight.dtype, copy=False)
        return self._x @ weight + self.params["bias"]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dy = dy.astype(self.params["weight"].dtype, copy=False)
        self.grads["weight"] += self._x.T @ dy
        self.grads["bias"] += dy.sum(axis=0)
        return dy @ self.params["weight"].T


class Conv2D(Layer):
    """2-D convolution (cross-correlation) on NCHW images, computed as one matmul (im2col).

    x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo) with
    ``Ho = (H + 2*padding - kh) // stride + 1`` (likewise Wo). ``weight`` is
    (out_channels, in_channels, kh, kw), He-initialised with ``std = sqrt(2 / (in*kh*kw))``
    unless ``weight_scale`` gives the std; ``bias`` is (out_channels,), zero.
    ``kernel_size`` is an int or a (kh, kw) pair; padding is zeros on all four sides.
    """

    kind = "conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int = 0,
        rng: RngLike = None,
        weight_scale: float | None = None,
        dtype: np.dtype | type = np.float64,
    ) -> None:
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        self.kernel_size = (_positive_int("kernel_size", kh), _positive_int("kernel_size", kw))
        self.stride = _positive_int("stride", stride)
        if int(padding) != padding or padding < 0:
            raise ValueError(f"padding: must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)
        fan_in = in_channels * kh * kw
        std = np.sqrt(2.0 / fan_in) if weight_scale is None else weight_scale
        weight = std * _generator(rng).standard_normal((out_channels, in_channels, kh, kw))
        self.params = {
            "weight": weight.astype(dtype),
            "bias": np.zeros(out_channels, dtype=dtype),
        }
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        weight = self.params["weight"]
        out_channels, in_channels, kh, kw = weight.shape
        if x.ndim != 4 or x.shape[1] != in_channels:
            raise ValueError(f"Conv2D: expected input (N, {in_channels}, H, W), got {x.shape}")
        p = self.padding
        xp = _pad(x, p, weight.dtype)
        if xp.shape[2] < kh or xp.shape[3] < kw:
            raise ValueError(f"Conv2D: padded input {xp.shape[2:]} smaller than kernel {kh, kw}")
        windows = _windows(xp, kh, kw, self.stride)  # (N, C, Ho, Wo, kh, kw)
        n, _, ho, wo = windows.shape[:4]
        # One row per output pixel, one column per (channel, ky, kx): (N*Ho*Wo, C*kh*kw).
        self._cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, -1)
        self._padded_shape = xp.shape
        out = self._cols @ weight.reshape(out_channels, -1).T + self.params["bias"]
        return out.reshape(n, ho, wo, out_channels).transpose(0, 3, 1, 2)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        weight = self.params["weight"]
        out_channels, in_channels, kh, kw = weight.shape
        n, _, ho, wo = dy.shape
        dy = dy.astype(weight.dtype, copy=False)
        dy_rows = dy.transpose(0, 2, 3, 1).reshape(-1, out_channels)  # (N*Ho*Wo, out)
        self.grads["weight"] += (dy_rows.T @ self._cols).reshape(weight.shape)
        self.grads["bias"] += dy_rows.sum(axis=0)
        dcols = dy_rows @ weight.reshape(out_channels, -1)  # (N*Ho*Wo, C*kh*kw)
        dcols = dcols.reshape(n, ho, wo, in_channels, kh, kw).transpose(0, 3, 4, 5, 1, 2)
        # col2im: add each kernel offset's (N, C, Ho, Wo) slab back onto the padded input.
        dxp = np.zeros(self._padded_shape, dtype=weight.dtype)
        s = self.stride
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i : i + s * ho : s, j : j + s * wo : s] += dcols[:, :, i, j]
        p = self.padding
        return dxp[:, :, p : dxp.shape[2] - p, p : dxp.shape[3] - p]


class MaxPool2D(Layer):
    """Max over (k, k) windows of NCHW images; ``stride`` defaults to ``kernel_size``.

    x (N, C, H, W) -> y (N, C, Ho, Wo) with ``Ho = (H - k) // stride + 1``. Ties go to the
    first maximum in row-major window order; the gradient flows to that element only.
    """

    kind = "maxpool"

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _positive_int("stride", stride)
        self._argmax: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        k = self.kernel_size
        if x.ndim != 4 or x.shape[2] < k or x.shape[3] < k:
            raise ValueError(f"MaxPool2D: expected input (N, C, H>={k}, W>={k}), got {x.shape}")
        windows = _windows(x, k, k, self.stride)
        flat = windows.reshape(*windows.shape[:4], k * k)
        self._argmax = flat.argmax(axis=-1)  # (N, C, Ho, Wo), index into the k*k window
        self._input_shape = x.shape
        self._dtype = x.dtype
        return np.take_along_axis(flat, self._argmax[..., None], axis=-1)[..., 0]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        k, s = self.kernel_size, self.stride
        ho, wo = dy.shape[2:]
        dx = np.zeros(self._input_shape, dtype=self._dtype)
        for offset in range(k * k):  # route dy to the winner; += handles overlapping windows
            i, j = divmod(offset, k)
            dx[:, :, i : i + s * ho : s, j : j + s * wo : s] += dy * (self._argmax == offset)
        return dx

    def kink_signature(self) -> np.ndarray | None:
        """Index (0 .. k*k-1) of the winning element of every window, (N, C, Ho, Wo)."""
        return self._argmax


class Flatten(Layer):
    """Reshape (N, d1, d2, ...) to (N, d1*d2*...)."""

    kind = "flatten"

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._input_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy.reshape(self._input_shape)


class ReLU(Layer):
    """``max(0, x)``, elementwise. Kink at 0; its signature is the mask ``x > 0``."""

    kind = "relu"

    def __init__(self) -> None:
        super().__init__()
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * self._mask

    def kink_signature(self) -> np.ndarray | None:
        """Boolean mask ``x > 0`` of the last forward's input."""
        return self._mask


class LeakyReLU(ReLU):
    """``x`` for x > 0, ``negative_slope * x`` otherwise (default slope 0.01)."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._mask = x > 0
        return np.where(self._mask, x, self.negative_slope * x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return np.where(self._mask, dy, self.negative_slope * dy)


class Tanh(Layer):
    """``tanh(x)``; backward uses the cached activation: ``dy * (1 - a²)``."""

    kind = "tanh"

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._a = np.tanh(x)
        return self._a

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * (1 - self._a**2)


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, overflow-free; backward uses the activation: ``dy * a * (1 - a)``."""

    kind = "sigmoid"

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._a = 0.5 * (np.tanh(0.5 * x) + 1)  # equals the sigmoid, no overflow for any x
        return self._a

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * self._a * (1 - self._a)


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale the
    survivors by ``1 / (1 - p)``; identity when ``training=False`` or ``p == 0``.

    The mask is drawn (in float64, whatever the input dtype, so a float32 model and its float64
    copy draw the same mask) from ``self.rng``, which ``Sequential`` sets to its own Generator.
    """

    kind = "dropout"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p: must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng: np.random.Generator | None = None
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if not training or self.p == 0:
            self._mask = None
            return x
        if self.rng is None:
            raise RuntimeError("Dropout.rng is not set: add the layer to a Sequential")
        keep = self.rng.random(x.shape) >= self.p
        self._mask = keep.astype(x.dtype) * (1 / (1 - self.p))
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy if self._mask is None else dy * self._mask
