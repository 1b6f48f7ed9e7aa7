"""How class probabilities become decisions: one rule for the metrics, their intervals and
every prediction written."""

from __future__ import annotations

import numpy as np

#: A binary prediction is positive when the positive class's probability is at least this.
DEFAULT_THRESHOLD = 0.5


def predict_labels(
    probs: np.ndarray, positive: int | None = None, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Class indices: ``positive`` where its probability >= ``threshold`` (binary), else argmax."""
    if positive is None:
        return probs.argmax(axis=1)
    negative = 1 - positive
    return np.where(probs[:, positive] >= threshold, positive, negative)
