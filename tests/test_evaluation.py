"""What an evaluation says its figures are worth: intervals that follow the patients, study-level
scores beside image-level ones, the sample predictions, and how they are printed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from test_train import easy_dataset, split_manifest

from fracture_curate.evaluation_tables import interval_note
from fracture_train.config import Uncertainty
from fracture_train.display import metrics_tables
from fracture_train.evaluate import evaluate_run, independent_units, per_study
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


def patients_alike(patients: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """10 images of each of (at most 12) patients, each patient's images predicted alike: 5 of
    each 6 patients right."""
    targets = np.repeat([1, 0] * 6, 10)[: 10 * patients]
    positive = np.repeat([0.9, 0.3, 0.7, 0.6, 0.4, 0.2, 0.8, 0.1, 0.65, 0.45, 0.55, 0.35], 10)
    return targets, np.stack([1 - positive, positive], axis=1)[: 10 * patients]


def test_independent_images_get_wilson_intervals_and_patients_a_wider_one():
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
    assert "intervals" not in classification_metrics(targets, probs, BINARY, positive=1)
    # 12 patients of 10 images each, every patient's images predicted alike: 12 observations,
    # not 120
    targets, probs = patients_alike()
    as_images, as_patients = (
        classification_metrics(targets, probs, BINARY, positive=1, groups=groups, resamples=500)[
            "intervals"
        ]
        for groups in (np.arange(120), np.arange(120) // 10)
    )
    assert as_patients["method"] == {
        "confidence": 0.95,
        "resamples": 500,
        "seed": 0,
        "units": 12,
        "bootstrapped": True,
        "proportions": "wilson, design effect",
    }
    for key in ("accuracy", "auroc"):
        width = as_patients[key][1] - as_patients[key][0]
        assert width > 2 * (as_images[key][1] - as_images[key][0]), key


def test_the_design_effect_is_the_variance_grouping_adds():
    from fracture_train.intervals import bootstrap_metrics, design_effect

    targets, probs = patients_alike()
    groups = np.arange(120) // 10
    spread = bootstrap_metrics(targets, probs, groups, positive=1, n_resamples=2000)
    assert 5 < design_effect(spread["accuracy"], 100, 120) < 15  # about the group size
    alone = bootstrap_metrics(targets, probs, np.arange(120), positive=1, n_resamples=2000)
    assert design_effect(alone["accuracy"], 100, 120) < 1.5
    assert design_effect(np.ones(100), 60, 60) == 1.0  # no spread: no effect
    # every patient right: the spread cannot show the design effect, each patient counts once
    right = classification_metrics(
        targets,
        np.eye(2)[targets],
        BINARY,
        positive=1,
        groups=groups,
        resamples=300,
    )["intervals"]
    assert right["accuracy"] == list(wilson_interval(12, 12))


def test_too_few_patients_for_a_bootstrap_leave_only_wilson_per_patient():
    targets, probs = patients_alike(patients=8)
    found = classification_metrics(
        targets, probs, BINARY, positive=1, groups=np.arange(80) // 10, resamples=300
    )
    intervals = found["intervals"]
    assert not intervals["method"]["bootstrapped"]
    assert np.isnan(intervals["auroc"]).all() and np.isnan(intervals["cohen_kappa"]).all()
    right = round(found["accuracy"] * 8)
    np.testing.assert_allclose(intervals["accuracy"], wilson_interval(right, 8))
    assert "too few for a bootstrap" in interval_note(found)


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


def tiny_run(manifest, out, seed=0):
    from fracture_train.config import TrainConfig
    from fracture_train.trainer import train_run

    config = TrainConfig(
        manifest=manifest,
        out=out,
        model="fracture_train.models:two_block_cnn",
        image_size=32,
        epochs=1,
        batch_size=8,
        workers=0,
        seed=seed,
        bootstrap=200,
    )
    return train_run(config).out


@pytest.mark.slow
def test_runs_on_one_test_split_compare_and_runs_on_another_are_refused(tmp_path):
    import shutil

    from fracture_curate.errors import ConfigError
    from fracture_train.compare import compare_runs

    manifest = split_manifest(easy_dataset(tmp_path / "data", n=20), tmp_path / "split.parquet")
    first, second = tiny_run(manifest, tmp_path / "a"), tiny_run(manifest, tmp_path / "b", 1)
    table, note = compare_runs([first, second], resamples=300)
    assert list(table.columns) == [str(first), str(second)]
    assert table.loc["n", str(first)] == "8"
    difference = table.loc[f"AUROC - {first.name}", str(second)]
    value, bounds = difference.split(" [")
    low, high = (float(bound) for bound in bounds.rstrip("]").split(", "))
    assert low <= float(value) <= high
    assert "paired" in note and "300 resamples" in note
    twin = shutil.copytree(first, tmp_path / "a-again")
    same, _ = compare_runs([first, twin], resamples=100)
    assert same.loc[f"AUROC - {first.name}", str(twin)] == "0.000 [0.000, 0.000]"
    other = split_manifest(easy_dataset(tmp_path / "other", n=25, seed=4), tmp_path / "o.parquet")
    with pytest.raises(ConfigError, match=r"tested on another test split than .*differ"):
        compare_runs([first, tiny_run(other, tmp_path / "c")])
    with pytest.raises(ConfigError, match="at least two run folders"):
        compare_runs([first])


@pytest.mark.slow
def test_the_leaky_split_tests_on_copies_of_train_images_and_the_curated_one_does_not(tmp_path):
    """The leakage command on a small generated set: the source's own split, copies kept,
    holds test images copied from train (those planted as cross-split copies among them); the
    curated split holds none; both runs' figures are shown side by side."""
    import shutil

    from typer.testing import CliRunner

    from fracture_curate.dedupe import run_dedupe
    from fracture_curate.embed import EmbedConfig, embed_manifest
    from fracture_curate.outliers import run_outliers
    from fracture_curate.scan import run_scan
    from fracture_curate.split import SplitConfig, run_split
    from fracture_curate.synthetic import generate_dataset
    from fracture_train.cli import app
    from fracture_train.leakage import cross_split_copies, leakage_report

    data, curated, leaky = tmp_path / "data", tmp_path / "manifests", tmp_path / "leaky"
    planted = generate_dataset(
        data, n_per_class=25, image_size=64, plant_counts={"cross_split": 6}, seed=2
    )
    run_scan(data, curated, workers=1)
    embed_manifest(curated, EmbedConfig(weights="random", image_size=32), workers=0)
    run_dedupe(curated)
    run_outliers(curated)
    shutil.copytree(curated, leaky)
    leaky_split = run_split(leaky, SplitConfig(keep_source_splits=True, keep_duplicates=True))
    curated_split = run_split(curated)
    copies = cross_split_copies(leaky_split)
    moved = planted[(planted["kind"] == "cross_split") & (planted["split"] == "test")]
    sources = planted.set_index("path").loc[moved["source_path"], "split"]
    planted_leaks = set(moved.loc[(sources == "train").to_numpy(), "path"])
    assert planted_leaks and planted_leaks <= set(copies["path"])
    shown = copies.set_index("path")
    for path in planted_leaks:  # each listed with the train image it copies
        source = moved.set_index("path").loc[path, "source_path"]
        copied = shown.loc[path, "copy_in_train"]
        assert (data / copied).read_bytes() == (data / source).read_bytes() or copied == source
    assert cross_split_copies(curated_split).empty
    leaky_run = tiny_run(leaky / "split.parquet", tmp_path / "runs/leaky")
    curated_run = tiny_run(curated / "split.parquet", tmp_path / "runs/curated")
    report = leakage_report(leaky_run, curated_run, resamples=200)
    assert list(report.figures.columns) == ["leaky split", "curated split"]
    copied_row = report.figures.loc["test images copied from train"]
    assert copied_row.tolist() == [str(len(copies)), "0"] and report.curated_copies == 0
    assert report.copies["predicted_right"].notna().all()
    memorised = report.memorised
    assert memorised.loc["copied from train", "images"] == str(len(copies))
    assert int(memorised["images"].astype(int).sum()) == int(report.figures.iloc[1, 0])
    result = CliRunner().invoke(app, ["leakage", str(leaky_run), str(curated_run)])
    assert result.exit_code == 0, result.output
    assert f"{len(copies)} leaky test image(s) are copies of train images" in result.output
