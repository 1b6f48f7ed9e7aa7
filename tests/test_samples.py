"""Sample predictions: the images picked per class and kind, and the grid they are drawn in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fracture_train.decisions import predict_labels
from fracture_train.samples import (
    SAMPLE_COLUMNS,
    _grid_cells,
    _short_name,
    plot_samples,
    select_samples,
)

BINARY = ["normal", "fracture"]
THREE = ["comminuted", "oblique", "transverse"]
RED = (214, 39, 40)  # matplotlib's tab:red, which marks wrong samples
GREEN = (44, 160, 44)  # tab:green, correct ones


def binary_example() -> tuple[pd.DataFrame, np.ndarray]:
    """8 rows; fracture probability per row. Every fracture is predicted correctly."""
    rows = [
        ("n3.png", "normal", 0.10),  # correct, 0.90: ties with n2, which sorts first by path
        ("n1.png", "normal", 0.20),  # correct, 0.80: third correct, left out
        ("n2.png", "normal", 0.10),  # correct, 0.90
        ("n4.png", "normal", 0.70),  # wrong, predicted fracture at 0.70
        ("f1.png", "fracture", 0.95),
        ("f2.png", "fracture", 0.60),
        ("f3.png", "fracture", 0.80),
        ("f4.png", "fracture", 0.85),
    ]
    frame = pd.DataFrame(rows, columns=["path", "label", "p_fracture"])
    p_fracture = frame.pop("p_fracture").to_numpy()
    return frame, np.column_stack([1 - p_fracture, p_fracture])


def gray_images(count: int) -> list[np.ndarray]:
    return [np.full((32, 32, 3), 128, dtype=np.uint8) for _ in range(count)]


def pixels_of(path) -> np.ndarray:
    with Image.open(path) as opened:
        assert opened.format == "PNG"
        return np.asarray(opened.convert("RGB"))


def has_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((pixels == colour).all(axis=-1).any())


def test_the_most_confident_correct_and_wrong_are_picked_per_class_with_ties_by_path():
    frame, probs = binary_example()
    predicted = predict_labels(probs, positive=1)
    samples = select_samples(frame, probs, predicted, BINARY)
    assert list(samples.columns) == SAMPLE_COLUMNS
    assert samples["path"].tolist() == ["n2.png", "n3.png", "n4.png", "f1.png", "f4.png"]
    assert samples["position"].tolist() == [2, 0, 3, 4, 7]
    assert samples["label"].tolist() == ["normal"] * 3 + ["fracture"] * 2
    assert samples["kind"].tolist() == ["correct", "correct", "wrong", "correct", "correct"]
    assert (
        samples["predicted_label"].tolist() == ["normal", "normal", "fracture"] + ["fracture"] * 2
    )
    assert samples["confidence"].tolist() == pytest.approx([0.9, 0.9, 0.7, 0.95, 0.85])
    assert samples["true_probability"].tolist() == pytest.approx([0.9, 0.9, 0.3, 0.95, 0.85])


def test_confidence_is_the_probability_of_the_class_predicted_at_the_threshold():
    frame, probs = binary_example()
    predicted = predict_labels(probs, positive=1, threshold=0.65)  # f2 at 0.60 becomes wrong
    samples = select_samples(frame, probs, predicted, BINARY, per_kind=1)
    assert samples["path"].tolist() == ["n2.png", "n4.png", "f1.png", "f2.png"]
    wrong_fracture = samples.iloc[3]
    assert wrong_fracture["kind"] == "wrong"
    assert wrong_fracture["predicted_label"] == "normal"
    assert wrong_fracture["confidence"] == pytest.approx(0.4)  # not the larger 0.60
    assert wrong_fracture["true_probability"] == pytest.approx(0.6)


def test_three_classes_with_argmax_predictions():
    rows = [
        ("b4.png", "oblique", [0.45, 0.10, 0.45]),  # argmax tie: comminuted, wrong at 0.45
        ("a1.png", "comminuted", [0.7, 0.2, 0.1]),
        ("t1.png", "transverse", [0.1, 0.8, 0.1]),  # the only transverse: wrong
        ("b1.png", "oblique", [0.6, 0.3, 0.1]),
        ("a4.png", "comminuted", [0.2, 0.1, 0.7]),
        ("a2.png", "comminuted", [0.5, 0.3, 0.2]),
        ("b3.png", "oblique", [0.3, 0.4, 0.3]),
        ("a3.png", "comminuted", [0.9, 0.05, 0.05]),
        ("b2.png", "oblique", [0.1, 0.2, 0.7]),
    ]
    frame = pd.DataFrame([row[:2] for row in rows], columns=["path", "label"])
    probs = np.array([row[2] for row in rows])
    samples = select_samples(frame, probs, predict_labels(probs), THREE)
    assert list(samples.itertuples(index=False, name=None)) == [
        (7, "a3.png", "comminuted", "correct", "comminuted", pytest.approx(0.9), 0.9),
        (1, "a1.png", "comminuted", "correct", "comminuted", pytest.approx(0.7), 0.7),
        (4, "a4.png", "comminuted", "wrong", "transverse", pytest.approx(0.7), 0.2),
        (6, "b3.png", "oblique", "correct", "oblique", pytest.approx(0.4), 0.4),
        (8, "b2.png", "oblique", "wrong", "transverse", pytest.approx(0.7), 0.2),
        (3, "b1.png", "oblique", "wrong", "comminuted", pytest.approx(0.6), 0.3),
        (2, "t1.png", "transverse", "wrong", "oblique", pytest.approx(0.8), 0.1),
    ]


def test_no_rows_or_no_samples_asked_for_give_an_empty_table():
    frame, probs = binary_example()
    predicted = predict_labels(probs, positive=1)
    assert select_samples(frame, probs, predicted, BINARY, per_kind=0).empty
    empty = select_samples(frame.iloc[:0], probs[:0], predicted[:0], BINARY)
    assert empty.empty and list(empty.columns) == SAMPLE_COLUMNS
    with pytest.raises(ValueError, match="per_kind"):
        select_samples(frame, probs, predicted, BINARY, per_kind=-1)


def test_a_two_class_grid_is_a_png_with_wrong_samples_in_red_and_correct_in_green(tmp_path):
    frame, probs = binary_example()
    samples = select_samples(frame, probs, predict_labels(probs, positive=1), BINARY)
    written = plot_samples(samples, gray_images(len(samples)), BINARY, tmp_path / "s.png", "val")
    assert written == tmp_path / "s.png"
    pixels = pixels_of(written)
    height, width, _ = pixels.shape
    assert width >= 3 * 200 and height >= 2 * 200  # 2 classes x (2 correct + 1 wrong) cells
    assert has_colour(pixels, RED) and has_colour(pixels, GREEN)

    correct_only = samples[samples["kind"] == "correct"]
    plot_samples(correct_only, gray_images(len(correct_only)), BINARY, tmp_path / "c.png", "val")
    assert not has_colour(pixels_of(tmp_path / "c.png"), RED)


def test_an_empty_table_still_writes_a_small_figure(tmp_path):
    frame, probs = binary_example()
    samples = select_samples(frame.iloc[:0], probs[:0], np.zeros(0, dtype=int), BINARY)
    written = plot_samples(samples, [], BINARY, tmp_path / "empty.png", "test (n=0)")
    height, width, _ = pixels_of(written).shape
    assert 100 <= width <= 800 and 50 <= height <= 400


def test_images_must_match_the_samples_one_to_one(tmp_path):
    frame, probs = binary_example()
    samples = select_samples(frame, probs, predict_labels(probs, positive=1), BINARY)
    with pytest.raises(ValueError, match="one per sample"):
        plot_samples(samples, gray_images(len(samples) - 1), BINARY, tmp_path / "s.png", "val")
    assert not (tmp_path / "s.png").exists()


def test_each_class_has_a_row_and_wrong_samples_start_in_the_same_column():
    samples = pd.DataFrame(
        {
            "label": ["comminuted", "comminuted", "oblique", "transverse", "transverse"],
            "kind": ["correct", "wrong", "correct", "correct", "correct"],
        }
    )
    cells, columns = _grid_cells(samples, THREE)
    assert cells == [(0, 0), (0, 2), (1, 0), (2, 0), (2, 1)]
    assert columns == 3
    only_wrong = samples.assign(kind="wrong")
    assert _grid_cells(only_wrong, THREE) == ([(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)], 2)


def test_long_file_names_keep_their_start_and_extension():
    assert _short_name("/data/set/short.png") == "short.png"
    name = "patient_0001_left_wrist_lateral_view.dcm"
    shown = _short_name(f"/data/{name}")
    assert len(shown) == 28
    assert shown.startswith("patient_0001") and shown.endswith("teral_view.dcm")
    assert "…" in shown
