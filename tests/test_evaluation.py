"""What an evaluation says its figures are worth: intervals that follow the patients, study-level
scores beside image-level ones, the sample predictions, and how they are printed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from test_train import easy_dataset, split_manifest

from fracture_train.display import interval_note, metrics_tables
from fracture_train.evaluate import Uncertainty, evaluate_run, independent_units, per_study
from fracture_train.intervals import wilson_interval
from fracture_train.metrics import classification_metrics

BINARY = ["not fractured", "fractured"]


def study_frame() -> pd.DataFrame:
    """Six images: study s1 (two, one of them fractured), s2 (three normal), and one image
    without a study."""
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(6)],
            "study_id": pd.array(["s1", "s2", "s1", "s2", None, "s2"], dtype="string"),
            "group_id": pd.array([1, 2, 1, 2, 3, 2], dtype="Int64"),
            "target": [1, 0, 0, 0, 1, 0],
        }
    )


def test_studies_take_their_images_mean_or_most_suspicious_image():
    frame = study_frame()
    positive = np.array([0.9, 0.2, 0.3, 0.4, 0.7, 0.3])
    probs = np.stack([1 - positive, positive], axis=1)
    mean = per_study(frame, probs, positive=1, aggregate="mean")
    np.testing.assert_allclose(mean.probs[:, 1], [0.6, 0.3, 0.7])  # s1, s2, the lone image
    assert mean.targets.tolist() == [1, 0, 1]  # s1 holds a fracture: the study is positive
    assert mean.groups.tolist() == ["group 1", "group 2", "group 3"] and mean.images == 6
    most = per_study(frame, probs, positive=1, aggregate="max")
    np.testing.assert_allclose(most.probs, [[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])
    assert per_study(frame.assign(study_id=pd.NA), probs, 1, "mean") is None


def test_several_classes_take_the_most_frequent_label_and_the_surest_image():
    frame = study_frame().assign(target=[2, 0, 2, 1, 1, 1])
    probs = np.array(
        [
            [0.1, 0.1, 0.8],
            [0.2, 0.5, 0.3],
            [0.5, 0.2, 0.3],
            [0.1, 0.8, 0.1],
            [0.3, 0.4, 0.3],
            [0.4, 0.3, 0.3],
        ]
    )
    most = per_study(frame, probs, positive=None, aggregate="max")
    assert most.targets.tolist() == [2, 1, 1]
    np.testing.assert_allclose(most.probs, probs[[0, 3, 4]])


def test_units_are_the_split_groups_or_else_the_images():
    frame = study_frame().assign(group_id=pd.array([1, 1, None, 2, None, 2], dtype="Int64"))
    assert independent_units(frame).tolist() == [
        "group 1",
        "group 1",
        "image i2",
        "group 2",
        "image i4",
        "group 2",
    ]


def noisy_predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, n)
    positive = np.clip(0.5 + (targets - 0.5) * 0.6 + rng.normal(0, 0.25, n), 0, 1)
    return targets, np.stack([1 - positive, positive], axis=1)


def test_independent_images_get_wilson_intervals_and_patients_a_wider_bootstrap():
    targets, probs = noisy_predictions(60, seed=1)
    alone = classification_metrics(
        targets, probs, BINARY, positive=1, groups=np.arange(60), resamples=500
    )
    intervals = alone["intervals"]
    assert intervals["method"]["proportions"] == "wilson"
    correct = round(alone["accuracy"] * 60)
    assert intervals["accuracy"] == list(wilson_interval(correct, 60))
    rates = alone["at_threshold"]
    sensitivity = wilson_interval(rates["tp"], rates["tp"] + rates["fn"])
    assert intervals["at_threshold"]["sensitivity"] == list(sensitivity)
    low, high = intervals["auroc"]
    assert low < alone["auroc"] < high  # AUROC is bootstrapped either way
    # the same predictions from 6 patients of 10 images each: the units are the patients
    patients = classification_metrics(
        targets, probs, BINARY, positive=1, groups=np.arange(60) // 10, resamples=500
    )
    grouped = patients["intervals"]
    assert grouped["method"] == {
        "confidence": 0.95,
        "resamples": 500,
        "seed": 0,
        "units": 6,
        "proportions": "bootstrap",
    }
    assert grouped["accuracy"] != intervals["accuracy"]
    assert "intervals" not in classification_metrics(targets, probs, BINARY, positive=1)


def test_printed_tables_give_each_figure_its_interval_and_the_studies_their_own_table():
    targets, probs = noisy_predictions(40, seed=2)
    found = classification_metrics(
        targets,
        probs,
        BINARY,
        positive=1,
        extra_threshold=0.4,
        groups=np.arange(40),
        resamples=200,
    )
    found["per_study"] = found | {"n": 20, "images": 40, "aggregate": "mean"}
    metrics = {"positive_class": "fractured", "test": found}
    console = Console(width=100, record=True)
    for table in metrics_tables(metrics, "test"):
        console.print(table)
    text = " ".join(console.export_text().split())  # titles wrap
    low, high = found["intervals"]["auroc"]
    assert f"[{low:.3f}, {high:.3f}]" in text and "95% CI" in text
    assert "test: per class, 95% intervals" in text
    assert "test per study (n=20 studies of 40 images, mean of their images' probabilities)" in text
    assert interval_note(found).startswith("95% intervals: Wilson for proportions")


@pytest.mark.slow
def test_evaluation_scores_studies_and_shows_its_surest_mistakes(tmp_path):
    from fracture_train.config import TrainConfig
    from fracture_train.trainer import train_run

    data = easy_dataset(tmp_path / "data", n=20)
    manifest = split_manifest(data, tmp_path / "split.parquet")
    run = train_run(
        TrainConfig(
            manifest=manifest,
            out=tmp_path / "run",
            model="fracture_train.models:two_block_cnn",
            image_size=32,
            epochs=1,
            batch_size=8,
            workers=0,
            bootstrap=300,
        )
    )
    assert run.metrics["test"]["intervals"]["method"]["resamples"] == 300
    assert "per_study" not in run.metrics["test"]  # no study ids: images only
    samples = run.metrics["test"]["samples"]
    assert samples and {s["kind"] for s in samples} <= {"correct", "wrong"}
    # the same images as studies of two views each: scored per study too
    frame = pd.read_parquet(manifest)
    pairs = frame.groupby(["label", "split"], dropna=False).cumcount() // 2
    frame["study_id"] = frame["label"] + "/" + frame["split"].fillna("-") + "/" + pairs.astype(str)
    from fracture_curate.manifest import read_provenance, write_manifest

    studied = write_manifest(
        frame,
        tmp_path / "studies.parquet",
        stage="split",
        params=read_provenance(manifest)["params"],
    )
    result = evaluate_run(
        run.out, studied, split="test", workers=0, uncertainty=Uncertainty(200, "max")
    )
    found = json.loads((result.out / "metrics.json").read_text())["test"]
    study = found["per_study"]
    assert study["images"] == found["n"] and study["aggregate"] == "max"
    assert study["n"] == found["n"] / 2  # two images of one label and split a study
    assert (result.out / "samples_test.png").is_file()
