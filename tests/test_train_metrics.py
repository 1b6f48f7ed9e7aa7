"""The trainer's metrics against scikit-learn on known inputs, and ECE/thresholds by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as sk

from fracture_train.decisions import predict_labels
from fracture_train.metrics import (
    auroc,
    classification_metrics,
    expected_calibration_error,
    rates_at,
    threshold_for_sensitivity,
)

CLASSES = ["comminuted", "oblique", "transverse"]


@pytest.fixture
def multiclass():
    """Probabilities for 60 samples of 3 classes, informative but imperfect."""
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 3, size=60)
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), targets] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return targets, probs


@pytest.fixture
def binary():
    """Fracture probabilities (class 1 positive) for 50 samples."""
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 2, size=50)
    positive = np.clip(0.35 * targets + rng.uniform(0, 0.65, size=50), 0, 1)
    return targets, np.column_stack([1 - positive, positive])


def test_multiclass_report_agrees_with_scikit_learn(multiclass):
    targets, probs = multiclass
    report = classification_metrics(targets, probs, CLASSES)
    predicted = probs.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(targets, predicted))
    assert report["balanced_accuracy"] == pytest.approx(
        sk.balanced_accuracy_score(targets, predicted)
    )
    assert report["cohen_kappa"] == pytest.approx(sk.cohen_kappa_score(targets, predicted))
    assert report["confusion_matrix"] == sk.confusion_matrix(targets, predicted).tolist()
    assert report["auroc"] == pytest.approx(
        sk.roc_auc_score(targets, probs, multi_class="ovr", average="macro")
    )
    precision, recall, f1, support = sk.precision_recall_fscore_support(targets, predicted)
    for index, name in enumerate(CLASSES):
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision[index])
        assert row["recall"] == pytest.approx(recall[index])
        assert row["f1"] == pytest.approx(f1[index])
        assert row["support"] == support[index]
        # one-vs-rest: sensitivity is the class's recall, specificity the recall of "the rest"
        rest = sk.recall_score(targets != index, predicted != index)
        assert row["sensitivity"] == pytest.approx(recall[index])
        assert row["specificity"] == pytest.approx(rest)
        assert row["auroc"] == pytest.approx(sk.roc_auc_score(targets == index, probs[:, index]))
    assert "at_threshold" not in report


def test_binary_report_uses_the_threshold_and_the_positive_class(binary):
    targets, probs = binary
    for threshold in (0.5, 0.3):
        report = classification_metrics(
            targets, probs, ["not fractured", "fractured"], positive=1, threshold=threshold
        )
        predicted = (probs[:, 1] >= threshold).astype(int)
        assert report["accuracy"] == pytest.approx(sk.accuracy_score(targets, predicted))
        assert report["confusion_matrix"] == sk.confusion_matrix(targets, predicted).tolist()
        rates = report["at_threshold"]
        assert rates["sensitivity"] == pytest.approx(sk.recall_score(targets, predicted))
        assert rates["specificity"] == pytest.approx(
            sk.recall_score(targets, predicted, pos_label=0)
        )
        assert report["auroc"] == pytest.approx(sk.roc_auc_score(targets, probs[:, 1]))
        assert report["per_class"]["fractured"]["precision"] == pytest.approx(
            sk.precision_score(targets, predicted)
        )


def test_positive_class_may_be_index_zero(binary):
    targets, probs = binary
    flipped = classification_metrics(
        1 - targets, probs[:, ::-1], ["fractured", "normal"], positive=0
    )
    straight = classification_metrics(targets, probs, ["normal", "fractured"], positive=1)
    assert flipped["auroc"] == pytest.approx(straight["auroc"])
    assert flipped["at_threshold"] == straight["at_threshold"]


def test_extra_threshold_is_reported_beside_the_decision_threshold(binary):
    targets, probs = binary
    report = classification_metrics(
        targets, probs, ["no", "fractured"], positive=1, extra_threshold=0.2
    )
    assert report["at_val_threshold"] == rates_at(targets, probs[:, 1], 0.2)
    assert report["at_val_threshold"]["sensitivity"] >= report["at_threshold"]["sensitivity"]


def test_auroc_skips_a_class_absent_from_the_targets(multiclass):
    targets, probs = multiclass
    keep = targets != 2
    areas = auroc(targets[keep], probs[keep], positive=None)
    assert math.isnan(areas["per_class"][2])
    expected = [sk.roc_auc_score(targets[keep] == c, probs[keep, c]) for c in (0, 1)]
    assert areas["auroc"] == pytest.approx(np.mean(expected))


def test_expected_calibration_error_by_hand():
    # Confidences 0.9, 0.9, 0.6, 0.6 (bins (0.867, 0.933] and (0.533, 0.6]); first bin all
    # correct (gap 0.1), second bin half correct (gap 0.1): ECE = 0.5 * 0.1 + 0.5 * 0.1 = 0.1.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    targets = np.array([0, 1, 0, 0])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.1)
    # Two bins: confidence 0.75 with 3/4 correct is perfectly calibrated.
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1]), n_bins=2) == 0.0
    # A confidence of exactly 0.5 falls in the first of two bins, (0, 0.5].
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert expected_calibration_error(probs, np.array([1, 0]), n_bins=2) == pytest.approx(0.25)


def test_threshold_for_sensitivity_is_the_highest_that_reaches_the_target():
    targets = np.array([1, 1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.2, 0.5, 0.3, 0.1])
    assert threshold_for_sensitivity(targets, scores, 0.75) == 0.4  # 3 of 4 positives
    assert threshold_for_sensitivity(targets, scores, 0.95) == 0.2  # all 4
    assert threshold_for_sensitivity(targets, scores, 0.5) == 0.8
    assert math.isnan(threshold_for_sensitivity(np.zeros(3, int), scores[:3], 0.9))
    rng = np.random.default_rng(0)
    targets, scores = rng.integers(0, 2, 200), rng.uniform(size=200)
    for target in (0.8, 0.9, 0.95):
        threshold = threshold_for_sensitivity(targets, scores, target)
        assert rates_at(targets, scores, threshold)["sensitivity"] >= target
        higher = np.nextafter(threshold, 1.0)
        assert rates_at(targets, scores, higher)["sensitivity"] < target


def test_predict_labels():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    assert predict_labels(probs, positive=1).tolist() == [0, 1, 1]
    assert predict_labels(probs, positive=1, threshold=0.65).tolist() == [0, 0, 0]
    assert predict_labels(probs, positive=0, threshold=0.45).tolist() == [0, 1, 0]
    three = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert predict_labels(three).tolist() == [1, 0]


def test_classes_absent_from_a_split_keep_their_row_and_column():
    targets = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    metrics = classification_metrics(targets, probs, CLASSES)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    absent = metrics["per_class"]["transverse"]
    assert absent["support"] == 0 and absent["precision"] == 0.0  # never predicted: 0, not 1
    assert math.isnan(absent["sensitivity"]) and absent["specificity"] == 1.0
    assert math.isnan(absent["auroc"])
    assert metrics["n"] == 4 and metrics["ece"] == pytest.approx(
        expected_calibration_error(probs, targets)
    )
    assert metrics["cohen_kappa"] == pytest.approx(sk.cohen_kappa_score(targets, [0, 1, 1, 1]))


def test_one_sample_and_constant_raters():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each value is defined (or NaN): nothing to warn about
        one = classification_metrics(
            np.array([1]), np.array([[0.2, 0.8]]), ["no", "yes"], positive=1
        )
        wrong = classification_metrics(
            np.zeros(4, int), np.tile([0.1, 0.9], (4, 1)), ["no", "yes"], positive=1
        )
    assert one["balanced_accuracy"] == 1.0 and one["accuracy"] == 1.0
    assert math.isnan(one["cohen_kappa"])  # one rater constant and agreeing: undefined
    assert wrong["balanced_accuracy"] == 0.0
    assert wrong["cohen_kappa"] == 0.0  # constant but always wrong: defined, and no agreement
    assert math.isnan(wrong["auroc"])  # a single outcome has no ROC curve


def test_rates_at_a_threshold_count_each_cell():
    positives = np.array([True, True, True, False, False])
    scores = np.array([0.9, 0.5, 0.2, 0.6, 0.1])
    assert rates_at(positives, scores, 0.5) == {
        "threshold": 0.5,
        "sensitivity": pytest.approx(2 / 3),
        "specificity": 0.5,
        "tp": 2,
        "fn": 1,
        "tn": 1,
        "fp": 1,
    }
    none = rates_at(np.zeros(3, bool), np.array([0.1, 0.7, 0.9]), 0.5)
    assert math.isnan(none["sensitivity"]) and none["specificity"] == pytest.approx(1 / 3)
    ones = positives.astype(int)  # targets compared with a class index come as 1 and 0 too
    assert rates_at(ones, scores, 0.5) == rates_at(positives, scores, 0.5)


def test_perfect_agreement_is_a_kappa_of_one_and_a_class_never_predicted_warns_nothing():
    targets = np.array([0, 1, 1, 0])
    perfect = classification_metrics(targets, np.eye(2)[targets] * 0.8 + 0.1, ["no", "yes"])
    assert perfect["cohen_kappa"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # precision of a class never predicted is 0, quietly
        never = classification_metrics(targets, np.tile([0.9, 0.1], (4, 1)), ["no", "yes"])
    assert never["per_class"]["yes"]["precision"] == 0.0


def test_a_tiny_target_still_keeps_the_most_certain_positive():
    targets, scores = np.array([1, 1, 0]), np.array([0.9, 0.3, 0.95])
    assert threshold_for_sensitivity(targets, scores, 1e-12) == 0.9


def test_the_auroc_of_a_binary_task_has_no_per_class_part_and_nan_means_none_defined():
    targets, probs = np.array([0, 1, 1]), np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    assert auroc(targets, probs, positive=1) == {"auroc": 1.0, "per_class": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of nothing
        single = auroc(np.zeros(3, int), np.tile([0.7, 0.3], (3, 1)), positive=None)
    assert math.isnan(single["auroc"]) and all(math.isnan(v) for v in single["per_class"].values())
