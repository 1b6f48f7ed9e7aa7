"""How a run is chosen on its validation split: the best epoch, early stopping, and the decision
threshold of a binary task. Test predictions never take part in either choice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fracture_train.metrics import threshold_for_sensitivity

if TYPE_CHECKING:
    from fracture_train.evaluate import SplitPredictions


@dataclass
class LoopState:
    """Where the epoch loop stands; saved with every epoch for ``resume``."""

    epoch: int = 0
    best_epoch: int = 0
    best_value: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False

    def record(self, epoch: int, value: float, metric: str, patience: int) -> bool:
        """Record an epoch's validation ``metric`` and return whether it is the best so far.

        The run stops early once ``patience`` epochs in a row have not improved (0: never).
        """
        improved = improves(value, self.best_value, metric)
        if improved:
            self.best_epoch, self.best_value, self.bad_epochs = epoch, value, 0
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        self.stopped_early = patience > 0 and self.bad_epochs >= patience
        return improved


def improves(value: float | None, best: float | None, metric: str) -> bool:
    """Whether ``value`` beats ``best`` (lower loss, higher anything else). NaN never does,
    except that the first epoch is always a best."""
    if value is None or math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value < best if metric == "loss" else value > best


def validation_threshold(
    results: Sequence[SplitPredictions], positive: int | None, target_sensitivity: float
) -> float | None:
    """The decision threshold chosen on the ``val`` predictions among ``results``: the highest
    whose sensitivity reaches ``target_sensitivity``. None for a task of several classes."""
    if positive is None:
        return None
    val = next(result for result in results if result.name == "val")
    return threshold_for_sensitivity(
        val.targets == positive, val.probs[:, positive], target_sensitivity
    )
