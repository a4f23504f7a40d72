"""Small numeric helpers shared by the backends, the gradient-check engine and the outputs."""

from __future__ import annotations

import numpy as np

#: OpenBLAS runs a dot product of more than 10,000 entries on its worker threads, which then
#: spin for a while beside the training's own threads (a torch CPU loop measured 5 ms stalls
#: on each of the ~40 steps after one gradient check); chunks this long stay on the caller's
DOT_CHUNK = 8192


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """``a · b`` of two 1-D arrays, as a float, without waking BLAS worker threads."""
    if a.size <= DOT_CHUNK:
        return float(np.dot(a, b))
    return float(sum(np.dot(a[i:i + DOT_CHUNK], b[i:i + DOT_CHUNK])
                     for i in range(0, a.size, DOT_CHUNK)))
