"""The one class rule: which class names mean a finding, on the names real datasets use."""

from __future__ import annotations

import pytest

from fracture_curate.classes import FINDING, NORMAL, UNKNOWN, class_reading, positive_class
from fracture_train.rows import class_order

#: Class names as the public sets and the seed projects write them.
READINGS = {
    # Bone Fracture Multi-Region X-ray Data (Kaggle) and the seed projects
    "fractured": FINDING,
    "not fractured": NORMAL,
    "Fractured": FINDING,
    "Not Fractured": NORMAL,
    "non-fractured": NORMAL,
    "Non_fractured": NORMAL,  # FracAtlas
    "nonfractured": NORMAL,
    "no fracture": NORMAL,
    "fracture-free": NORMAL,
    "unbroken": NORMAL,
    # MURA study labels
    "positive": FINDING,
    "negative": NORMAL,
    "abnormal": FINDING,
    "normal": NORMAL,
    "NORMAL": NORMAL,
    # Bone Break Classification: ten fracture types, all findings
    "Avulsion fracture": FINDING,
    "Comminuted fracture": FINDING,
    "Fracture Dislocation": FINDING,
    "Greenstick fracture": FINDING,
    "Hairline Fracture": FINDING,
    "Impacted fracture": FINDING,
    "Longitudinal fracture": FINDING,
    "Oblique fracture": FINDING,
    "Pathological fracture": FINDING,
    "Spiral Fracture": FINDING,
    "broken": FINDING,
    # names that say neither
    "transverse": UNKNOWN,
    "PNEUMONIA": UNKNOWN,
    "cat": UNKNOWN,
}


@pytest.mark.parametrize(("name", "reading"), READINGS.items())
def test_class_names_read_as_the_datasets_mean_them(name, reading):
    assert class_reading(name) == reading


@pytest.mark.parametrize(
    ("names", "positive"),
    [
        (["not fractured", "fractured"], "fractured"),
        (["Non_fractured", "Fractured"], "Fractured"),
        (["negative", "positive"], "positive"),
        (["normal", "abnormal"], "abnormal"),  # abnormal is the finding, not "normal"
        (["NORMAL", "PNEUMONIA"], "PNEUMONIA"),  # the other of the one that reads as normal
        (["cat", "ant"], "cat"),  # no hint: the second in sorted order, always the same
        (["a", "b", "c"], None),  # not a binary task
    ],
)
def test_the_positive_class_of_a_binary_task(names, positive):
    assert positive_class(names) == positive
    assert positive_class(list(reversed(names))) == positive


def test_the_trainer_puts_the_rule_s_positive_class_last():
    assert class_order(["abnormal", "normal"]) == (["normal", "abnormal"], "abnormal")
    assert class_order(["b", "c", "a"]) == (["a", "b", "c"], None)
