"""Bootstrap, Wilson and paired-AUROC intervals against scikit-learn, scipy and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from fracture_train import intervals
from fracture_train.intervals import (
    bootstrap_metrics,
    group_weights,
    paired_auroc_difference,
    percentile_interval,
    wilson_interval,
)
from fracture_train.metrics import classification_metrics

THRESHOLDS = (0.5, 0.3)


def tied_probabilities(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets and informative probabilities rounded to 1 decimal, so scores tie often."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), targets] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return targets, probs.round(1)


def sklearn_on_expanded(
    targets: np.ndarray, probs: np.ndarray, weights: np.ndarray, positive: int | None
) -> dict[str, float]:
    """The bootstrap's metrics from ``classification_metrics`` on the sample repeated by weight."""
    keep = np.repeat(np.arange(len(targets)), weights.astype(int))
    n_classes = probs.shape[1]
    names = [f"class{k}" for k in range(n_classes)]
    extra = THRESHOLDS[1] if positive is not None else None
    reference = classification_metrics(
        targets[keep], probs[keep], names, positive=positive, extra_threshold=extra
    )
    predicted_count = np.asarray(reference["confusion_matrix"]).sum(axis=0)
    expected = {
        key: reference[key] for key in ("accuracy", "balanced_accuracy", "cohen_kappa", "auroc")
    }
    for k, name in enumerate(names):
        per_class = reference["per_class"][name]
        # metrics.py reports precision 0 for a class never predicted; the bootstrap reports NaN.
        expected[f"precision/{k}"] = per_class["precision"] if predicted_count[k] else math.nan
        expected[f"recall/{k}"] = per_class["sensitivity"]
        expected[f"specificity/{k}"] = per_class["specificity"]
        if per_class["support"]:
            assert per_class["recall"] == pytest.approx(per_class["sensitivity"])
    if positive is not None:
        for index, key in enumerate(("at_threshold", "at_val_threshold")):
            expected[f"sensitivity@{index}"] = reference[key]["sensitivity"]
            expected[f"specificity@{index}"] = reference[key]["specificity"]
    return expected


def weight_rows(groups: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Bootstrap rows, the plain sample, and a row holding only class-0 images (edge cases)."""
    drawn = next(group_weights(groups, 25, seed=1, block=25))
    only_class_zero = (targets == 0).astype(np.float64)
    return np.vstack([drawn, np.ones(len(targets)), only_class_zero])


@pytest.mark.parametrize(("n_classes", "positive"), [(2, 1), (2, 0), (3, None), (4, None)])
def test_every_metric_of_a_resample_equals_sklearn_on_the_expanded_sample(n_classes, positive):
    targets, probs = tied_probabilities(24, n_classes, seed=n_classes)
    groups = np.arange(24) // 3  # 8 patients of 3 images
    weights = weight_rows(groups, targets)
    computed = intervals._weighted_metrics(
        targets, probs, weights, positive=positive, thresholds=THRESHOLDS
    )
    for row, row_weights in enumerate(weights):
        expected = sklearn_on_expanded(targets, probs, row_weights, positive)
        assert set(computed) == set(expected)
        for key, value in expected.items():
            assert computed[key][row] == pytest.approx(value, abs=1e-12, nan_ok=True), (row, key)


def test_bootstrap_metrics_returns_one_value_per_resample_for_each_key():
    targets, probs = tied_probabilities(30, 3, seed=0)
    result = bootstrap_metrics(targets, probs, np.arange(30), positive=None, n_resamples=37)
    assert {"accuracy", "auroc", "precision/2", "specificity/0"} <= set(result)
    assert not any(key.startswith("sensitivity@") for key in result)
    assert all(values.shape == (37,) for values in result.values())


def test_wilson_interval_matches_hand_computed_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(end) for end in wilson_interval(0, 0))


def test_wilson_interval_narrows_as_confidence_drops():
    wide, narrow = wilson_interval(8, 10, 0.99), wilson_interval(8, 10, 0.8)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_accuracy_interval_of_independent_images_agrees_with_scipy_bootstrap():
    targets, probs = tied_probabilities(300, 2, seed=5)
    correct = (probs[:, 1] >= 0.5) == (targets == 1)
    result = bootstrap_metrics(targets, probs, np.arange(300), positive=1, n_resamples=4000)
    ours = percentile_interval(result["accuracy"])
    scipy_result = stats.bootstrap(
        (correct.astype(float),),
        np.mean,
        method="percentile",
        n_resamples=4000,
        rng=np.random.default_rng(0),
    )
    reference = scipy_result.confidence_interval
    assert ours[0] == pytest.approx(reference.low, abs=0.02)
    assert ours[1] == pytest.approx(reference.high, abs=0.02)


def test_patients_are_resampled_as_units_so_clustered_outcomes_widen_the_interval():
    groups = np.repeat(np.arange(10), 30)  # 10 patients of 30 images
    targets = np.repeat(np.arange(10) % 2, 30)
    patient_correct = np.repeat(np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 0], dtype=bool), 30)
    predicted_positive = np.where(patient_correct, targets == 1, targets == 0)
    probs = np.column_stack([1 - predicted_positive * 0.8 - 0.1, predicted_positive * 0.8 + 0.1])

    def width(group_keys: np.ndarray) -> float:
        result = bootstrap_metrics(targets, probs, group_keys, positive=1, n_resamples=1000)
        low, high = percentile_interval(result["accuracy"])
        return high - low

    assert width(groups) >= 2 * width(np.arange(300))


def test_group_weights_give_images_of_one_group_the_same_weight():
    groups = np.array(["p1", "p2", "p1", "p3", "p2", "p1"])
    (weights,) = group_weights(groups, 50, seed=0, block=50)
    assert weights.shape == (50, 6) and weights.dtype == np.float64
    assert (weights[:, 0] == weights[:, 2]).all() and (weights[:, 0] == weights[:, 5]).all()
    assert (weights[:, 1] == weights[:, 4]).all()
    # Three groups drawn per resample: the group weights (one column per group) sum to 3.
    assert (weights[:, [0, 1, 3]].sum(axis=1) == 3).all()
    assert len(np.unique(weights, axis=0)) > 1


def test_group_weights_rows_do_not_depend_on_the_block_size():
    groups = np.arange(13) % 5
    whole = np.vstack(list(group_weights(groups, 40, seed=3, block=40)))
    blocks = list(group_weights(groups, 40, seed=3, block=7))
    assert [len(block) for block in blocks] == [7, 7, 7, 7, 7, 5]
    np.testing.assert_array_equal(np.vstack(blocks), whole)
    other_seed = np.vstack(list(group_weights(groups, 40, seed=4, block=40)))
    assert not np.array_equal(other_seed, whole)


def test_bootstrap_metrics_repeat_with_a_seed_and_ignore_the_block_size(monkeypatch):
    targets, probs = tied_probabilities(40, 2, seed=2)
    groups = np.arange(40) // 2

    def run(seed: int) -> dict[str, np.ndarray]:
        return bootstrap_metrics(targets, probs, groups, positive=1, n_resamples=200, seed=seed)

    first = run(seed=0)
    again = run(seed=0)
    monkeypatch.setattr(intervals, "_BLOCK_BYTES", 8 * 40 * 9)  # blocks of 9 resamples
    in_blocks = run(seed=0)
    other = run(seed=1)
    for key, values in first.items():
        np.testing.assert_array_equal(again[key], values)
        np.testing.assert_array_equal(in_blocks[key], values)
    assert not np.array_equal(other["accuracy"], first["accuracy"])


@pytest.fixture
def two_models():
    """Binary targets, a clearly good model (targets + noise) and a random one, 200 images."""
    rng = np.random.default_rng(7)
    targets = rng.integers(0, 2, size=200)
    good = targets + rng.normal(scale=0.6, size=200)
    random = rng.uniform(size=200)
    groups = np.arange(200) // 2
    return targets, good, random, groups


def test_a_model_against_itself_differs_by_exactly_zero(two_models):
    targets, good, _, groups = two_models
    differences = paired_auroc_difference(targets, good, good, groups, n_resamples=300)
    assert differences.shape == (300,)
    assert (differences == 0).all()


def test_a_clearly_better_model_has_an_auroc_difference_interval_above_zero(two_models):
    targets, good, random, groups = two_models
    differences = paired_auroc_difference(targets == 1, good, random, groups)
    low, _ = percentile_interval(differences)
    assert low > 0
    plain = roc_auc_score(targets, good) - roc_auc_score(targets, random)
    assert differences.mean() == pytest.approx(plain, abs=0.02)


def test_paired_difference_reverses_sign_when_the_models_swap(two_models):
    targets, good, random, groups = two_models
    forward = paired_auroc_difference(targets, good, random, groups, n_resamples=100, seed=2)
    backward = paired_auroc_difference(targets, random, good, groups, n_resamples=100, seed=2)
    np.testing.assert_allclose(forward, -backward, atol=1e-12)


def test_percentile_interval_is_undefined_when_most_resamples_are():
    values = np.r_[np.full(60, np.nan), np.linspace(0, 1, 40)]
    assert all(math.isnan(end) for end in percentile_interval(values))


def test_percentile_interval_leaves_out_nan_resamples():
    values = np.r_[np.arange(1001, dtype=float), np.full(1000, np.nan)]
    assert percentile_interval(values) == pytest.approx((25.0, 975.0))
    assert percentile_interval(np.arange(1001, dtype=float), 0.9) == pytest.approx((50.0, 950.0))
