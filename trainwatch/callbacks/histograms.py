"""HistogramMonitor: per-layer distributions of activations, gradients and weights, with the
statistics that read faster than a histogram: saturated and dead units, vanishing or
exploding gradients (KNOWLEDGE §3: "tanh units should spread over [−1, 1]; all outputs at 0,
or all saturated at ±1, is a problem. Dead ReLUs (always 0) likewise.").

Definitions (all vectorised numpy, computed on the batch of a scheduled step):

* **saturated** (``tanh``, ``sigmoid`` layers): an output with ``|a| > threshold`` for tanh,
  ``a < 1 − threshold`` or ``a > threshold`` for sigmoid (default threshold 0.97: tanh'
  there is below 0.06, i.e. under 6 % of its peak slope). ``saturated_fraction`` is the
  fraction of the layer's outputs (examples × units) that are saturated.
* **dead** (``relu``, ``leaky_relu`` layers): a unit whose output is ``<= 0`` for every
  example of the batch. A unit is axis 1 of the output: a feature of a dense output
  ``(N, F)``, a channel of a conv output ``(N, C, H, W)`` (dead at every position: a dead
  filter). ``dead_fraction`` is the fraction of units that are dead; it is skipped for
  batches of fewer than ``dead_min_batch`` examples, where "never active" means little.
  A small batch overstates it (a unit active on 2 % of the data looks dead in half the
  batches of 32), so the *alert* uses units dead in each of the last ``dead_window``
  measured batches (by default 3: 200 steps from first to last at ``every=100``).
* **gradient norm ratio**: the RMS (``‖g‖ / √size``) of the first weight tensor's gradient
  divided by that of the last weight tensor (weights = parameter tensors with 2 or more
  dimensions), so tensor sizes do not bias it. Healthy nets sit within a decade or two of
  1; far below, the first layers barely learn (vanishing), far above they blow up.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from trainwatch.alerts.rules import Hysteresis
from trainwatch.core.backend import (
    SATURATING_KINDS,
    LayerInfo,
    alive_units,
    saturated_fraction,
)
from trainwatch.core.budget import TimeBudget
from trainwatch.core.callback import Callback
from trainwatch.core.checks import count, optional_count
from trainwatch.core.state import RunState
from trainwatch.outputs.base import HistogramData

#: what HistogramMonitor can write, and the tag prefix of each
WHICH_PREFIX: dict[str, str] = {
    "activations": "activations/",
    "activation_gradients": "gradients/activations/",
    "weights": "weights/",
    "gradients": "gradients/",
}
RECTIFIER_KINDS = frozenset({"relu", "leaky_relu"})
#: layers whose output is another layer's output reshaped: no histogram, no statistics
SKIPPED_KINDS = frozenset({"flatten"})

SATURATED_SUGGESTION = (
    "initial weights are probably too large for a saturating unit (use Xavier/Glorot "
    "scaling, std = 1/sqrt(fan_in)), inputs are unnormalised, or the learning rate is too high"
)
DEAD_SUGGESTION = (
    "lower the learning rate, check the bias initialisation (large negative biases kill "
    "units), use He initialisation or a LeakyReLU"
)
VANISHING_SUGGESTION = (
    "the first layers barely learn: prefer ReLU to sigmoid/tanh in deep stacks, use "
    "He/Xavier initialisation, normalisation layers or residual connections"
)
NO_GRADIENT_SUGGESTION = (
    "something between the first and the last layer blocks every gradient: units that output "
    "0 for every example (dead ReLUs: see activations/ and activations.dead), a detached "
    "tensor (.detach(), a stop-gradient), or a first layer whose output is not used"
)
EXPLODING_SUGGESTION = (
    "gradients grow toward the input: lower the learning rate, clip gradients, and check the "
    "initialisation scale"
)


# -- statistics (public so they can be tested and reused) -------------------------------------


def dead_fraction(a: np.ndarray) -> float:
    """Fraction of units (axis 1) whose output is ``<= 0`` for every example and position
    (see :func:`alive_units`). NaN for an empty array."""
    if np.size(a) == 0:
        return math.nan
    alive = alive_units(a)
    return (alive.size - np.count_nonzero(alive)) / alive.size


def gradient_rms_ratio(first_norm: float, first_size: int, last_norm: float,
                       last_size: int) -> float:
    """``(first_norm / √first_size) / (last_norm / √last_size)``; NaN if both are zero or
    either is not finite, +inf if only the last is zero."""
    if not (math.isfinite(first_norm) and math.isfinite(last_norm)):
        return math.nan
    first = first_norm / math.sqrt(first_size)
    last = last_norm / math.sqrt(last_size)
    if last == 0:
        return math.nan if first == 0 else math.inf
    return first / last


def activation_figure(activations: Mapping[str, np.ndarray], kinds: Mapping[str, str],
                      bins: int = 64, threshold: float = 0.97):
    """A matplotlib ``Figure`` with one histogram per layer, side by side (share of the
    outputs per bin). tanh panels span [−1, 1] and sigmoid panels [0, 1], with the
    saturated zones shaded; rectifier panels give the share of exact zeros in the title."""
    from matplotlib.figure import Figure

    names = list(activations)
    fig = Figure(figsize=(max(2.4 * len(names), 3.0), 2.6), layout="constrained")
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        a = np.asarray(activations[name], dtype=np.float64).ravel()
        a = a[np.isfinite(a)]
        kind = kinds.get(name, "other")
        if kind == "tanh":
            span = (-1.0, 1.0)
        elif kind == "sigmoid":
            span = (0.0, 1.0)
        else:
            span = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
            if span[1] <= span[0]:
                span = (span[0] - 0.5, span[0] + 0.5)
        counts, edges = np.histogram(a, bins=bins, range=span)
        share = counts / max(a.size, 1)
        ax.stairs(share, edges, fill=True, color="tab:blue")
        title = f"{name} ({kind})"
        if kind in SATURATING_KINDS:
            lo = -threshold if kind == "tanh" else 1.0 - threshold
            ax.axvspan(span[0], lo, color="tab:red", alpha=0.15, lw=0)
            ax.axvspan(threshold, span[1], color="tab:red", alpha=0.15, lw=0)
            title += f"\nsaturated {saturated_fraction(a, kind, threshold):.0%}"
        elif kind in RECTIFIER_KINDS and a.size:
            title += f"\nzero {np.count_nonzero(a == 0) / a.size:.0%}"
        ax.set_title(title, fontsize=8)
        ax.set_xlim(*span)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("share of outputs", fontsize=8)
    return fig


# -- the callback ----------------------------------------------------------------------------------


def _positive(name: str, value: Any, *, upper: float | None = None) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0 and (upper is None or value <= upper))
    if not ok:
        bound = f"in (0, {upper}]" if upper is not None else "> 0"
        raise ValueError(f"{name}: must be a finite number {bound}, got {value!r}")
    return float(value)


class HistogramMonitor(Callback):
    """Every ``every`` steps: per-layer histograms and activation statistics, with alerts.

    On a scheduled step (a multiple of ``every``, step 0 included, spaced further where
    ``budget`` asks for it) it turns activation capture
    on before the forward pass, and after the backward pass writes (step = the batch's
    global step):

    * histograms ``activations/<layer>``, ``gradients/activations/<layer>`` (dL/d output),
      ``weights/<tensor>`` and ``gradients/<tensor>`` for the kinds in ``which``, bucketed
      by ``state.backend.histograms`` (on the device for a GPU backend);
    * scalars ``activations/<layer>/mean`` and ``/std`` for every captured layer,
      ``/saturated_fraction`` for tanh/sigmoid layers, ``/dead_fraction`` for ReLU-type
      layers, and ``gradients/norm_ratio_first_last`` (see the module docstring);
    * every ``figure_every``-th scheduled step, the figure ``activations/distribution``
      (matplotlib, about 100 ms to render: keep it rare).

    Then capture goes off again; the other steps never call it.

    Alerts (warnings, per layer for the first two, once per episode, with hysteresis):
    ``activations.saturated`` when a layer's saturated fraction exceeds ``saturated_alert``
    (not for the model's last layer: a sigmoid or tanh output saturates as the model grows
    confident, as a binary classifier trained with BCE should),
    ``activations.dead`` when its dead fraction exceeds ``dead_alert``,
    ``gradients.vanishing`` / ``gradients.exploding`` when the gradient norm ratio falls
    below ``vanishing_ratio`` / rises above ``exploding_ratio``; and once per run
    ``activations.capture_failed`` when copying the layer outputs failed (e.g. out of GPU
    memory: the copy never raises into the model's forward, the step just has no
    activation data).

    Args:
        every: steps between measurements (default 250).
        bins: histogram buckets (default 64).
        which: histograms to write, any of ``"activations"``, ``"activation_gradients"``,
            ``"weights"``, ``"gradients"`` (default all four); statistics and alerts are
            computed whatever this says.
        saturation_threshold: see the module docstring (default 0.97).
        saturated_alert: saturated fraction (0–1) that raises ``activations.saturated``
            (default 0.3; a healthy tanh MLP on the digits stays under 0.02, one with
            weights 15 times too large above 0.8).
        dead_alert: dead-unit fraction (0–1, over the ``dead_window``) that raises
            ``activations.dead`` (default 0.5; a ReLU MLP on the digits shows 0.10–0.17 per
            batch of 64; the 64-unit dense ReLU layer of the demo CNN loses 0.2–0.5 of its
            units within 200 steps, depending on the seed).
        dead_min_batch: smallest batch on which dead units are counted (default 16).
        dead_window: measured batches a unit must be dead in, each of them, to count for
            the ``activations.dead`` alert (default 3; 1 alerts on a single batch).
        vanishing_ratio: gradient norm ratio below which ``gradients.vanishing`` fires
            (default 1e-3).
        exploding_ratio: ratio above which ``gradients.exploding`` fires (default 1e3).
        figure_every: draw the figure at every this-many-th scheduled step, the first one
            included, e.g. 5; default None: never (matplotlib costs ~0.5 s to import once
            and ~0.1 s a figure; ``default_callbacks(figures=True)`` sets 5).
        budget: the most measuring may take, as a fraction of the run's wall time (default
            0.0025; a :class:`~trainwatch.core.budget.TimeBudget`): on a small model whose
            steps take a millisecond, where a round of histograms costs several steps, a
            due round moves to a later multiple of ``every``. None: every ``every`` steps
            whatever it costs.
    """

    order = 20

    def __init__(
        self,
        every: int = 250,
        *,
        bins: int = 64,
        which: Iterable[str] = ("activations", "activation_gradients", "weights", "gradients"),
        saturation_threshold: float = 0.97,
        saturated_alert: float = 0.3,
        dead_alert: float = 0.5,
        dead_min_batch: int = 16,
        dead_window: int = 3,
        vanishing_ratio: float = 1e-3,
        exploding_ratio: float = 1e3,
        figure_every: int | None = None,
        budget: float | None = 0.0025,
    ):
        self.every = count("every", every)
        self.budget = TimeBudget(budget, name="budget")
        self.bins = count("bins", bins)
        if isinstance(which, str):
            which = (which,)
        self.which = tuple(which)
        unknown = [w for w in self.which if w not in WHICH_PREFIX]
        if unknown:
            raise ValueError(f"which: {unknown} not among {list(WHICH_PREFIX)}")
        t = saturation_threshold
        if (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.5 < t < 1):
            raise ValueError(f"saturation_threshold: must be a number in (0.5, 1), got {t!r}")
        self.saturation_threshold = float(t)
        self.saturated_alert = _positive("saturated_alert", saturated_alert, upper=1.0)
        self.dead_alert = _positive("dead_alert", dead_alert, upper=1.0)
        self.dead_min_batch = count("dead_min_batch", dead_min_batch)
        self.dead_window = count("dead_window", dead_window)
        self.vanishing_ratio = _positive("vanishing_ratio", vanishing_ratio)
        self.exploding_ratio = _positive("exploding_ratio", exploding_ratio)
        if not self.vanishing_ratio < self.exploding_ratio:
            raise ValueError(f"vanishing_ratio: must be below exploding_ratio "
                             f"({exploding_ratio!r}), got {vanishing_ratio!r}")
        self.figure_every = optional_count("figure_every", figure_every)
        self._saturated = Hysteresis(high=self.saturated_alert, margin=0.2)
        self._dead = Hysteresis(high=self.dead_alert, margin=0.2)
        self._ratio = Hysteresis(high=self.exploding_ratio, low=self.vanishing_ratio, margin=1.0)
        self._alive: dict[str, deque[tuple[np.ndarray, int]]] = {}
        self._capturing = False
        self._measured = 0
        self._layers: list[LayerInfo] | None = None
        self._ends: tuple[tuple[str, int], tuple[str, int]] | None = None

    # -- hooks ---------------------------------------------------------------------------------

    def next_step(self, step: int) -> int:
        # (awake while capturing: a scheduled step that never reached its backward pass
        # gives its capture back at the next batch)
        if self._capturing:
            return step
        return self.budget.next_due(step, self.every)

    def on_train_begin(self, state: RunState) -> None:
        self.budget.start(state.step)

    def on_batch_begin(self, state: RunState) -> None:
        if self._capturing:  # a scheduled step never reached its backward pass
            self._stop_capture(state)
        if self.budget.next_due(state.step, self.every) != state.step:
            return
        state.backend.capture_activations(True)
        self._capturing = True

    def on_backward_end(self, state: RunState) -> None:
        if not self._capturing:  # (captured from this step's batch on: a scheduled step)
            return
        try:
            with self.budget:
                self.budget.count()
                self._measure(state)
        finally:
            if self._capturing:
                self._stop_capture(state)

    def on_train_end(self, state: RunState) -> None:
        if self._capturing:
            self._stop_capture(state)

    # -- internals -----------------------------------------------------------------------------

    def _stop_capture(self, state: RunState) -> None:
        state.backend.capture_activations(False)
        self._capturing = False

    def _measure(self, state: RunState) -> None:
        backend, writer, step = state.backend, state.writer, state.step
        if self._layers is None:
            self._layers = [layer for layer in backend.layers() if layer.captured]
            self._ends = self._first_last_weights(backend.parameter_shapes())
            if backend.uncaptured_layers is not None:
                state.alerts.fire("activations.not_captured", "info", backend.uncaptured_layers,
                                  step, suggestion="for those statistics, watch a short run "
                                                   "of the model without torch.compile")
        kinds = {layer.name: layer.kind for layer in self._layers}
        skipped = {name for name, kind in kinds.items() if kind in SKIPPED_KINDS}

        # Everything in one read (on a GPU one transfer): the histograms, and statistics
        # from reductions only, made where the outputs live: the activations' histograms
        # give mean and std, the activation statistics the saturated and dead units.
        watched = {name: kind for name, kind in kinds.items() if name not in skipped
                   and (kind in SATURATING_KINDS or kind in RECTIFIER_KINDS)}
        needed = list(self.which) + [w for w in ("activations",) if w not in self.which]
        hists_of, stats = backend.distributions(needed, self.bins, watched,
                                                self.saturation_threshold)
        if backend.capture_error is not None:
            state.alerts.fire(
                "activations.capture_failed", "warning",
                f"copying the layer outputs for the histograms failed at step {step} "
                f"({backend.capture_error!r}); that step has no activation histograms or "
                f"dead/saturated statistics, and training went on", step,
                suggestion="on a GPU short of memory, capture less: HistogramMonitor(which="
                           "('weights', 'gradients')) or a larger every")
        for which in self.which:
            prefix = WHICH_PREFIX[which]
            per_layer = which in ("activations", "activation_gradients")
            for name, hist in hists_of[which].items():
                if not (per_layer and name in skipped):
                    writer.histogram(prefix + name, hist, step)
        activation_hists = hists_of["activations"]
        values: dict[str, float] = {}
        for name, h in activation_hists.items():
            if name in skipped or not h.num:
                continue
            mean = h.sum / h.num
            values[f"activations/{name}/mean"] = mean
            values[f"activations/{name}/std"] = math.sqrt(
                max(h.sum_squares / h.num - mean * mean, 0.0))
        output = self._layers[-1].name if self._layers else None
        for name, st in stats.items():
            kind = watched[name]
            if kind in SATURATING_KINDS:
                values[f"activations/{name}/saturated_fraction"] = st.saturated
                if name != output:  # (the model's own outputs saturate as it grows confident)
                    self._alert_saturated(state, name, kind, st.saturated)
            elif st.alive is not None and st.examples >= self.dead_min_batch:
                alive = st.alive
                values[f"activations/{name}/dead_fraction"] = (
                    (alive.size - np.count_nonzero(alive)) / alive.size)
                self._check_dead(state, name, alive, st.examples)

        ratio = self._gradient_ratio(backend, hists_of.get("gradients", {}))
        if ratio is not None:
            values["gradients/norm_ratio_first_last"] = ratio
            self._alert_ratio(state, ratio)
        if values:
            writer.scalars(values, step)

        figure_due = self.figure_every is not None and self._measured % self.figure_every == 0
        acts = ({k: v for k, v in backend.activations().items() if k not in skipped}
                if figure_due else {})
        if acts:
            shown = {k: v for k, v in acts.items()
                     if kinds.get(k) in SATURATING_KINDS | RECTIFIER_KINDS} or acts
            fig = activation_figure(dict(list(shown.items())[:12]), kinds, self.bins,
                                    self.saturation_threshold)
            writer.figure("activations/distribution", fig, step)
        self._measured += 1

    @staticmethod
    def _first_last_weights(shapes: Mapping[str, tuple[int, ...]]):
        weights = [(name, math.prod(shape)) for name, shape in shapes.items()
                   if len(shape) >= 2]
        if len(weights) < 2:
            return None
        return weights[0], weights[-1]

    def _gradient_ratio(self, backend, grad_hists: Mapping[str, HistogramData]) -> float | None:
        if self._ends is None:
            return None
        (first, first_size), (last, last_size) = self._ends
        hf, hl = grad_hists.get(first), grad_hists.get(last)
        if hf is not None and hl is not None and (hf.num, hl.num) == (first_size, last_size):
            # all finite: the norms are in the histograms' sums of squares (no other read)
            first_norm, last_norm = math.sqrt(hf.sum_squares), math.sqrt(hl.sum_squares)
        else:
            norms = backend.norms()
            if first not in norms or last not in norms:
                return None
            first_norm, last_norm = norms[first].grad, norms[last].grad
        ratio = gradient_rms_ratio(first_norm, first_size, last_norm, last_size)
        if math.isnan(ratio):
            return None
        return ratio

    def _alert_saturated(self, state: RunState, name: str, kind: str, sat: float) -> None:
        active = self._saturated.check(sat, key=name) == "high"
        t = self.saturation_threshold
        zone = f"|a| > {t:g}" if kind == "tanh" else f"a < {1 - t:.2g} or a > {t:g}"
        state.alerts.update(
            "activations.saturated", active, step=state.step, severity="warning", tensor=name,
            value=sat, suggestion=SATURATED_SUGGESTION,
            message=(f"{name}: {sat:.0%} of the {kind} outputs are saturated ({zone}); "
                     "their gradients are nearly zero" if active
                     else f"{name}: {sat:.0%} of the {kind} outputs saturated, back to normal"),
        )

    def _check_dead(self, state: RunState, name: str, alive: np.ndarray, batch: int) -> None:
        window = self._alive.get(name)
        if window is None or (window and window[0][0].shape != alive.shape):
            window = self._alive[name] = deque(maxlen=self.dead_window)
        window.append((alive, batch))
        if len(window) < self.dead_window:
            return
        ever = np.logical_or.reduce([m for m, _ in window])
        dead = (ever.size - np.count_nonzero(ever)) / ever.size
        examples = sum(n for _, n in window)
        active = self._dead.check(dead, key=name) == "high"
        batches = "the batch" if len(window) == 1 else f"the last {len(window)} measured batches"
        state.alerts.update(
            "activations.dead", active, step=state.step, severity="warning", tensor=name,
            value=dead, suggestion=DEAD_SUGGESTION,
            message=(f"{name}: {dead:.0%} of the units output 0 for all {examples} examples "
                     f"of {batches} (dead ReLUs: no gradient flows through them)" if active
                     else f"{name}: {dead:.0%} dead units, back to normal"),
        )

    def _alert_ratio(self, state: RunState, ratio: float) -> None:
        band = self._ratio.check(ratio)
        (first, _), (last, _) = self._ends  # type: ignore[misc]
        where = f"gradient RMS of {first} / {last} = {ratio:.2e}"
        # (exactly 0 is no gradient at all: a blocked path, not a shrinking one)
        vanishing = ("no gradient reaches the first layer at all" if ratio == 0.0 else
                     f"below {self.vanishing_ratio:g}: gradients vanish before reaching the "
                     "first layer")
        state.alerts.update(
            "gradients.vanishing", band == "low", step=state.step, severity="warning",
            value=ratio,
            suggestion=NO_GRADIENT_SUGGESTION if ratio == 0.0 else VANISHING_SUGGESTION,
            message=f"{where}, {vanishing}" if band == "low" else f"{where}, back to normal",
        )
        state.alerts.update(
            "gradients.exploding", band == "high", step=state.step, severity="warning",
            value=ratio, suggestion=EXPLODING_SUGGESTION,
            message=(f"{where}, above {self.exploding_ratio:g}: gradients explode toward "
                     "the first layer" if band == "high" else f"{where}, back to normal"),
        )
