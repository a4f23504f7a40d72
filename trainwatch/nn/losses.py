"""Data losses: ``forward(scores, targets)`` gives the batch MEAN as a float, ``backward()`` its
gradient with respect to the scores (same shape and dtype as the scores).

Regularisation is not part of a loss; ``Sequential.regularization_loss`` reports it.
"""

from __future__ import annotations

import numpy as np


class Loss:
    """Base class. Subclasses set ``kind`` and implement ``forward`` and ``backward``."""

    kind: str = "loss"

    def forward(self, scores: np.ndarray, targets: np.ndarray) -> float:
        """Mean loss over the batch; caches what ``backward`` needs."""
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        """Gradient of the last ``forward``'s mean loss with respect to its scores."""
        raise NotImplementedError

    def kink_signature(self) -> np.ndarray | None:
        """The pattern of the last forward that changes when a kink is crossed (None: smooth)."""
        return None

    def expected_initial_loss(self, num_classes: int) -> float | None:
        """The loss for scores near 0 (small random weights), or None if it has no fixed value."""
        return None


def _class_targets(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Validate scores (N, C) and integer class targets (N,) in [0, C); return the targets."""
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected shape (N, C), got {scores.shape}")
    if targets.shape != scores.shape[:1] or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(
            f"targets: expected integer shape ({scores.shape[0]},), got "
            f"{targets.dtype} {targets.shape}"
        )
    if targets.size and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets: class indices must be in [0, {scores.shape[1]})")
    return targets


def _matching_targets(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Targets with as many elements as the scores, reshaped to them, in the scores' dtype."""
    targets = np.asarray(targets)
    if targets.size != scores.size:
        raise ValueError(
            f"targets: expected {scores.size} values for scores {scores.shape}, "
            f"got shape {targets.shape}"
        )
    return targets.reshape(scores.shape).astype(scores.dtype, copy=False)


class SoftmaxCrossEntropy(Loss):
    """``-log softmax(s)[y]`` averaged over the batch; scores (N, C), targets int (N,).

    Computed with log-sum-exp after subtracting each row's max, so large scores are safe.
    """

    kind = "softmax_cross_entropy"

    def forward(self, scores: np.ndarray, targets: np.ndarray) -> float:
        targets = _class_targets(scores, targets)
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(targets))
        self._probs, self._targets = np.exp(log_probs), targets
        return float(-log_probs[rows, targets].mean())

    def backward(self) -> np.ndarray:
        n = len(self._targets)
        dscores = self._probs.copy()
        dscores[np.arange(n), self._targets] -= 1
        return dscores / n

    def expected_initial_loss(self, num_classes: int) -> float | None:
        """``ln C``: uniform probabilities 1/C."""
        return float(np.log(num_classes))


class MulticlassSVM(Loss):
    """Weston-Watkins hinge loss ``sum_{j != y} max(0, s_j - s_y + margin)``, batch mean.

    Scores (N, C), targets int (N,). Kinks where a margin crosses 0; the signature is the
    boolean (N, C) mask of positive margins (always False at the correct class).
    """

    kind = "multiclass_svm"

    def __init__(self, margin: float = 1.0) -> None:
        if not margin > 0:
            raise ValueError(f"margin: must be > 0, got {margin!r}")
        self.margin = float(margin)
        self._positive: np.ndarray | None = None

    def forward(self, scores: np.ndarray, targets: np.ndarray) -> float:
        targets = _class_targets(scores, targets)
        rows = np.arange(len(targets))
        margins = scores - scores[rows, targets][:, None] + self.margin
        margins[rows, targets] = 0
        self._positive, self._targets, self._dtype = margins > 0, targets, scores.dtype
        return float(np.maximum(margins, 0).sum(axis=1).mean())

    def backward(self) -> np.ndarray:
        n = len(self._targets)
        dscores = self._positive.astype(self._dtype)
        dscores[np.arange(n), self._targets] = -self._positive.sum(axis=1)
        return dscores / n

    def kink_signature(self) -> np.ndarray | None:
        """Boolean (N, C) mask of margins > 0 from the last forward."""
        return self._positive

    def expected_initial_loss(self, num_classes: int) -> float | None:
        """``(C - 1) * margin``: every wrong class sits exactly at the margin."""
        return float((num_classes - 1) * self.margin)


class SigmoidBinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits, batch mean; scores (N,) or (N, 1), targets 0/1 (N,).

    Uses ``max(s, 0) - s*t + log(1 + exp(-|s|))``, which never overflows.
    """

    kind = "sigmoid_bce"

    def forward(self, scores: np.ndarray, targets: np.ndarray) -> float:
        if not (scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1)):
            raise ValueError(f"scores: expected shape (N,) or (N, 1), got {scores.shape}")
        targets = _matching_targets(scores, targets)
        self._scores, self._targets = scores, targets
        losses = np.maximum(scores, 0) - scores * targets + np.log1p(np.exp(-np.abs(scores)))
        return float(losses.mean())

    def backward(self) -> np.ndarray:
        probs = 0.5 * (np.tanh(0.5 * self._scores) + 1)  # sigmoid, overflow-free
        return (probs - self._targets) / self._scores.shape[0]

    def expected_initial_loss(self, num_classes: int) -> float | None:
        """``ln 2``: probability 1/2 for logits near 0 (``num_classes`` is ignored)."""
        return float(np.log(2))


class MeanSquaredError(Loss):
    """Mean over ALL elements of ``(s - t)²`` (no 1/2 factor); targets reshaped to the scores.

    For scores (N, K) this is the per-example sum of squares divided by ``N * K``.
    """

    kind = "mse"

    def forward(self, scores: np.ndarray, targets: np.ndarray) -> float:
        self._diff = scores - _matching_targets(scores, targets)
        return float(np.mean(self._diff**2))

    def backward(self) -> np.ndarray:
        return 2 * self._diff / self._diff.size
