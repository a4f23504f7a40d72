"""FilterImages: the first layer's weights as a picture, and how smooth they are.

KNOWLEDGE §3: for image data, the first layer's filters shown as images tell healthy training
(smooth, clean, diverse filters) from trouble (noisy filters: not converged, a bad learning
rate, too little regularisation). This callback renders them as one grid image and adds a
number that turns the picture into a curve:

**smoothness** = normalised total variation, per filter
``mean over directions of mean |f[i+1] − f[i]|`` divided by ``std(f)``, averaged over the
filters. It ignores scale and offset; **lower is smoother**: about 2/√π ≈ 1.13 for white
noise, near 0 for a slow ramp, 0 for a constant filter.

How weights become pictures:

* a conv weight ``(out, in, kh, kw)`` (the layout of :mod:`trainwatch.nn` and torch): one tile
  per output channel; ``in == 1`` is grey, ``in == 3`` is RGB (the three channels normalised
  together, so colours stay true), any other ``in`` shows the mean over input channels (the
  filter's response to a uniform-colour input). A 3-D weight ``(out, in, k)`` is shown as
  1-pixel-high filters.
* a dense weight on image inputs: one tile per unit, its incoming weights reshaped to the input
  image ``(C, H, W)``. The shape comes from ``image_shape=``, else from the batch
  (``state.inputs.shape[1:]``, CHW), else from the number of inputs: a perfect square ``s²`` is
  an ``s × s`` grey image, ``3·s²`` an RGB one. Numpy models store ``(in, out)`` and torch
  ``(out, in)``; the backend's ``framework`` says which.

Each tile is min-max normalised to [0, 1] on its own (written as uint8 0–255), enlarged (nearest
neighbour) to at least ``min_size`` pixels, and tiles are laid out in a near-square grid with
1-pixel white separators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from trainwatch.core.callback import NEVER, Callback, next_block_end
from trainwatch.core.checks import count, optional_count
from trainwatch.core.state import RunState

SEPARATOR = 255  # value of the separator pixels (white)
#: layer kinds that read the model's inputs: the first of them is the one drawn
FIRST_LAYER_KINDS = frozenset({"conv2d", "dense", "embedding"})


# -- pure helpers (public for tests and reuse) ----------------------------------------------------


def conv_filters(weight: np.ndarray) -> np.ndarray:
    """``(out, in, kh, kw)`` (or ``(out, in, k)``) -> ``(out, c, kh, kw)`` with c in {1, 3}."""
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim == 3:
        w = w[:, :, None, :]
    if w.ndim != 4:
        raise ValueError(f"weight: expected a 3-D or 4-D conv weight, got shape {w.shape}")
    if w.shape[1] not in (1, 3):
        w = w.mean(axis=1, keepdims=True)
    return w


def dense_filters(weight: np.ndarray, image_shape: Sequence[int], *,
                  out_first: bool = False) -> np.ndarray:
    """A dense weight -> one image per unit, ``(units, c, H, W)`` with c in {1, 3}.

    ``weight`` is ``(in, out)`` (numpy models) or, with ``out_first``, ``(out, in)`` (torch).
    ``image_shape`` is ``(H, W)`` or ``(C, H, W)`` with ``C·H·W == in``.
    """
    w = np.asarray(weight, dtype=np.float64)
    shape = tuple(int(d) for d in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or w.ndim != 2:
        raise ValueError(f"image_shape: expected (H, W) or (C, H, W), got {image_shape!r}")
    units = w if out_first else w.T
    if units.shape[1] != math.prod(shape):
        raise ValueError(f"image_shape: {shape} has {math.prod(shape)} values, but the weight "
                         f"{w.shape} has {units.shape[1]} inputs per unit")
    images = units.reshape(len(units), *shape)
    if shape[0] not in (1, 3):
        images = images.mean(axis=1, keepdims=True)
    return images


def normalise_filters(filters: np.ndarray) -> np.ndarray:
    """Min-max each filter (axis 0) into [0, 1] independently; a constant filter becomes 0.5."""
    f = np.asarray(filters, dtype=np.float64)
    axes = tuple(range(1, f.ndim))
    lo = f.min(axis=axes, keepdims=True)
    span = f.max(axis=axes, keepdims=True) - lo
    flat = span == 0
    out = (f - lo) / np.where(flat, 1.0, span)
    return np.where(flat, 0.5, out)


def filter_grid(filters: np.ndarray, *, min_size: int = 24, max_filters: int = 256) -> np.ndarray:
    """Tile ``(n, c, h, w)`` filters (c in {1, 3}) into one uint8 image (0 = each filter's
    minimum, 255 = its maximum; separators 255).

    Returns ``(H, W)`` for grey or ``(3, H, W)`` for RGB (CHW: unambiguous for any H), with
    ``H = rows·h·s + rows − 1`` and ``W = cols·w·s + cols − 1``, where ``cols = ⌈√n⌉``,
    ``rows = ⌈n / cols⌉`` and ``s = max(1, ⌈min_size / max(h, w)⌉)``. At most ``max_filters``
    filters (the first ones) are shown.
    """
    f = np.asarray(filters)[:max_filters]
    if f.ndim != 4 or f.shape[1] not in (1, 3) or f.shape[0] == 0:
        raise ValueError(f"filters: expected (n >= 1, 1 or 3, h, w), got shape {f.shape}")
    n, c, h, w = f.shape
    scale = max(1, math.ceil(min_size / max(h, w)))
    unit = np.nan_to_num(normalise_filters(f))  # NaN weights show black, without a warning
    tiles = np.rint(unit * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
    th, tw = h * scale, w * scale
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * cols, th + 1, tw + 1, c), SEPARATOR, dtype=np.uint8)
    # nearest-neighbour enlargement by writing each tile pixel into an s x s block
    canvas[:n, :th, :tw] = (tiles[:, :, None, :, None, :]
                            .repeat(scale, axis=2).repeat(scale, axis=4)
                            .reshape(n, th, tw, c))
    grid = (canvas.reshape(rows, cols, th + 1, tw + 1, c).transpose(0, 2, 1, 3, 4)
            .reshape(rows * (th + 1), cols * (tw + 1), c))[:-1, :-1]
    return np.ascontiguousarray(grid[..., 0] if c == 1 else grid.transpose(2, 0, 1))


def smoothness(filters: np.ndarray) -> float:
    """Normalised total variation of ``(n, c, h, w)`` filters, averaged over filters (lower is
    smoother; ≈ 1.13 for white noise). NaN for 1×1 filters."""
    f = np.asarray(filters, dtype=np.float64)
    parts = []
    if f.shape[-1] > 1:
        parts.append(np.abs(np.diff(f, axis=-1)).mean(axis=(1, 2, 3)))
    if f.shape[-2] > 1:
        parts.append(np.abs(np.diff(f, axis=-2)).mean(axis=(1, 2, 3)))
    if not parts:
        return math.nan
    tv = np.mean(parts, axis=0)
    std = f.std(axis=(1, 2, 3))
    score = np.where(std > 0, tv / np.where(std > 0, std, 1.0), 0.0)
    return float(score.mean())


def _square_image(features: int) -> tuple[int, int, int] | None:
    for channels in (1, 3):
        if features % channels:
            continue
        side = math.isqrt(features // channels)
        if side > 1 and side * side * channels == features:
            return (channels, side, side)
    return None


# -- the callback ---------------------------------------------------------------------------------


class FilterImages(Callback):
    """Writes the first layer's filters as an image grid, with their smoothness.

    Tags: ``filters/<tensor>`` (the grid image, uint8; grey HW or RGB CHW) and
    ``filters/<tensor>/smoothness`` (see the module docstring; lower = smoother). The step
    of each point is the number of optimizer updates the weights have received, so the
    initial filters are at step 0.

    Args:
        every: write every this-many optimizer steps (default None: never).
        every_epochs: write at the end of every this-many epochs (default 10; filters change
            slowly, and each image costs about 0.4 ms on the demo); None: never.
        at_start: also write the initial filters, before the first update (default True).
        at_end: also write the final filters when training ends (default True).
        layer: a layer (``"conv1"``) or parameter tensor (``"conv1.weight"``) name; None
            (default) takes the first parameter tensor with 2 or more dimensions, trainable
            or frozen (a pretrained backbone's first convolution, not the head that
            trains). A frozen layer is drawn once: its filters do not change.
        image_shape: ``(H, W)`` or ``(C, H, W)`` of the input, for a dense first layer (default:
            from the batch or the number of inputs, see the module docstring).
        min_size: tiles are enlarged to at least this many pixels (default 24).
        max_filters: at most this many filters are shown, the first ones (default 256).
    """

    order = 30

    def __init__(
        self,
        every: int | None = None,
        *,
        every_epochs: int | None = 10,
        at_start: bool = True,
        at_end: bool = True,
        layer: str | None = None,
        image_shape: Sequence[int] | None = None,
        min_size: int = 24,
        max_filters: int = 256,
    ):
        self.every = optional_count("every", every)
        self.every_epochs = optional_count("every_epochs", every_epochs)
        self.at_start = bool(at_start)
        self.at_end = bool(at_end)
        if (self.every is None and self.every_epochs is None and not self.at_start
                and not self.at_end):
            raise ValueError("every_epochs: with every=None, at_start=False and at_end=False "
                             "nothing would ever be written")
        if layer is not None and not (isinstance(layer, str) and layer):
            raise ValueError(f"layer: must be a layer or tensor name, got {layer!r}")
        self.layer = layer
        if image_shape is not None:
            shape = tuple(image_shape)
            if len(shape) not in (2, 3) or not all(
                    isinstance(d, (int, np.integer)) and d > 0 for d in shape):
                raise ValueError(f"image_shape: expected (H, W) or (C, H, W) of positive "
                                 f"integers, got {image_shape!r}")
            image_shape = tuple(int(d) for d in shape)
        self.image_shape = image_shape
        self.min_size = count("min_size", min_size)
        self.max_filters = count("max_filters", max_filters)
        self.tensor: str | None = None
        self._pending_start = self.at_start
        self._input_shape: tuple[int, ...] = ()  # the batch's, when seen
        self._last_step: int | None = None
        self._drawn = False  # once drawn, a frozen layer is not drawn again
        self._disabled = False

    # -- hooks ---------------------------------------------------------------------------------

    def next_step(self, step: int) -> int:
        if self._pending_start:
            return step
        if self.every is None:
            return NEVER  # epoch ends only
        return next_block_end(step, self.every)

    def reads_batch(self, step: int) -> bool:
        return not self._input_shape and self.image_shape is None

    def on_step_begin(self, state: RunState) -> None:
        if state.inputs is not None:  # the input images' shape, for a dense first layer
            self._input_shape = tuple(getattr(state.inputs, "shape", ()))
        if not self._pending_start:
            return
        self._pending_start = False
        self._write(state, state.step)

    def on_step_end(self, state: RunState) -> None:
        every = self.every
        if every is None or (state.step + 1) % every:
            return
        self._write(state, state.step + 1)

    def on_epoch_end(self, state: RunState) -> None:
        every = self.every_epochs
        if every is None or (state.epoch + 1) % every:
            return
        self._write(state, state.step)

    def on_train_end(self, state: RunState) -> None:
        if self.at_end and state.step > 0:
            self._write(state, state.step)

    # -- internals -----------------------------------------------------------------------------

    def _write(self, state: RunState, step: int) -> None:
        if self._disabled or step == self._last_step:
            return
        self._last_step = step
        backend = state.backend
        name = self.tensor or self._choose(state, backend.parameter_shapes(include_frozen=True))
        if name is None:
            return
        if self._drawn and name not in backend.parameter_shapes():
            return  # frozen: the picture has not changed since it was drawn
        weights = backend.parameters(names=[name], include_frozen=True)
        filters = self._filters(state, name, weights[name])
        if filters is None:
            return
        image = filter_grid(filters, min_size=self.min_size, max_filters=self.max_filters)
        state.writer.image(f"filters/{name}", image, step)
        self._drawn = True
        score = smoothness(filters)
        if math.isfinite(score):
            state.writer.scalars({f"filters/{name}/smoothness": score}, step)

    def _choose(self, state: RunState, shapes: dict[str, tuple[int, ...]]) -> str | None:
        if self.layer is not None:
            for candidate in (self.layer, f"{self.layer}.weight"):
                if candidate in shapes:
                    self.tensor = candidate
                    return candidate
            raise ValueError(f"layer: {self.layer!r} is neither a layer with a weight nor a "
                             f"parameter tensor; tensors are {list(shapes)}")
        # the first layer that reads the inputs: a convolution's or a dense layer's weight
        # (a vision transformer's patch embedding, not its class token or position table),
        # an embedding's (no picture); else the first tensor of 2 or more dimensions
        layer = next((layer for layer in state.backend.layers()
                      if layer.kind in FIRST_LAYER_KINDS and f"{layer.name}.weight" in shapes),
                     None)
        if layer is not None and layer.kind == "embedding":
            self._skip(state, f"the first layer's {layer.name}.weight "
                              f"{shapes[layer.name + '.weight']} is an embedding table (a row "
                              "looked up per token id), not filters over pixels, so it has no "
                              "filters to draw")
            return None
        first = (f"{layer.name}.weight" if layer is not None
                 else next((k for k, shape in shapes.items() if len(shape) >= 2), None))
        if first is None:
            self._skip(state, "the model has no parameter tensor with 2 or more dimensions")
            return None
        self.tensor = first
        return first

    def _filters(self, state: RunState, name: str, weight: np.ndarray) -> np.ndarray | None:
        if np.iscomplexobj(weight):
            self._skip(state, f"{name} {tuple(weight.shape)} is complex: no picture of it")
            return None
        if weight.ndim in (3, 4):
            return conv_filters(weight)
        if weight.ndim != 2:
            self._skip(state, f"{name} has shape {weight.shape}, not a conv or dense weight")
            return None
        out_first = getattr(state.backend, "framework", "") == "torch"
        in_features = weight.shape[1] if out_first else weight.shape[0]
        shape = self._image_shape(state, in_features)
        if shape is None:
            self._skip(state, f"{name} {tuple(weight.shape)}: its {in_features} inputs make no "
                              "square image (a table's features, say), so it has no filters "
                              "to draw; for inputs flattened from a non-square image, pass "
                              "image_shape=(C, H, W)")
            return None
        try:
            return dense_filters(weight, shape, out_first=out_first)
        except ValueError as exc:
            self._skip(state, f"{name}: {exc}")
            return None

    def _image_shape(self, state: RunState, in_features: int) -> tuple[int, ...] | None:
        if self.image_shape is not None:
            return self.image_shape
        inputs = state.inputs
        dims = (tuple(getattr(inputs, "shape", ()))
                if inputs is not None else self._input_shape)[1:]
        if len(dims) in (2, 3) and math.prod(dims) == in_features:
            return dims
        return _square_image(in_features)

    def _skip(self, state: RunState, reason: str) -> None:
        self._disabled = True
        state.alerts.fire("filters.skipped", "info", f"FilterImages writes nothing: {reason}",
                          state.step)
