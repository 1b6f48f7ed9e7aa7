"""Choosing on validation: the best epoch, early stopping, and the decision threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fracture_train.evaluate import SplitPredictions
from fracture_train.metrics import threshold_for_sensitivity
from fracture_train.selection import LoopState, improves, validation_threshold


def test_lower_loss_and_higher_scores_improve_and_nan_never_does():
    assert improves(0.4, 0.5, "loss") and not improves(0.5, 0.5, "loss")
    assert not improves(0.6, 0.5, "loss")
    assert improves(0.9, 0.8, "auroc") and not improves(0.8, 0.8, "accuracy")
    assert improves(0.1, None, "loss") and improves(math.nan, None, "auroc")  # the first epoch
    assert not improves(math.nan, 0.7, "auroc") and improves(0.7, math.nan, "auroc")


def test_the_loop_keeps_the_best_epoch_and_stops_after_patience_epochs_without_one():
    loop, bests = LoopState(), []
    for epoch, value in enumerate([0.9, 0.7, 0.8, 0.75, 0.71, 0.6], 1):  # 0.6 comes too late
        bests.append(loop.record(epoch, value, "loss", patience=3))
        if loop.stopped_early:
            break
    assert bests == [True, True, False, False, False]
    assert loop.stopped_early and loop.epoch == 5 and loop.bad_epochs == 3
    assert (loop.best_epoch, loop.best_value) == (2, 0.7)
    stops = LoopState()
    for epoch, value in enumerate([0.9, 0.95, 0.96], 1):
        stops.record(epoch, value, "loss", patience=2)
        if stops.stopped_early:
            break
    assert stops.epoch == 3 and stops.stopped_early  # two epochs after the best


def test_patience_zero_never_stops_and_an_improvement_resets_the_count():
    loop = LoopState()
    for epoch, value in enumerate([0.5] + [0.6] * 20, 1):
        loop.record(epoch, value, "loss", patience=0)
    assert not loop.stopped_early and loop.bad_epochs == 20
    again = LoopState()
    for epoch, value in enumerate([0.5, 0.6, 0.4, 0.6], 1):
        again.record(epoch, value, "loss", patience=2)
    assert not again.stopped_early and again.bad_epochs == 1 and again.best_epoch == 3


def predictions(name: str, seed: int, shift: float) -> SplitPredictions:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 80)
    positive = np.clip(0.3 * targets + rng.uniform(0, 0.7, 80) + shift, 0, 1)
    probs = np.column_stack([1 - positive, positive])
    return SplitPredictions(name, np.arange(80), probs, targets, 0.5)


def test_the_threshold_is_chosen_on_val_whatever_the_order_and_never_on_test():
    val, test = predictions("val", 1, 0.0), predictions("test", 2, 0.2)
    expected = threshold_for_sensitivity(val.targets, val.probs[:, 1], 0.9)
    assert expected != threshold_for_sensitivity(test.targets, test.probs[:, 1], 0.9)
    assert validation_threshold([val, test], 1, 0.9) == expected
    assert validation_threshold([test, val], 1, 0.9) == expected
    assert validation_threshold([val, test], None, 0.9) is None  # several classes: argmax


@pytest.mark.parametrize("target", [0.6, 0.8, 1.0])
def test_the_threshold_reaches_the_target_sensitivity_on_val(target):
    val = predictions("val", 3, 0.0)
    threshold = validation_threshold([val], 1, target)
    caught = val.probs[val.targets == 1, 1] >= threshold
    assert caught.mean() >= target


def test_patience_of_one_stops_at_the_first_epoch_without_improvement():
    loop = LoopState()
    assert loop.record(1, 0.5, "loss", patience=1)
    assert not loop.record(2, 0.6, "loss", patience=1) and loop.stopped_early


def test_a_missing_value_never_improves_on_a_best():
    assert not improves(None, 0.5, "loss") and improves(None, None, "loss")
