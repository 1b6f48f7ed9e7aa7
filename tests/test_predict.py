"""`train predict`: a trained run (or an ensemble) on new files, the same numbers its evaluation
gives, a row with a reason for a file it cannot read, and Grad-CAM overlays on request."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_evaluation import tiny_run
from test_train import easy_dataset, split_manifest
from typer.testing import CliRunner

from fracture_curate.errors import ConfigError
from fracture_curate.manifest import read_manifest
from fracture_train.cli import app
from fracture_train.evaluate import evaluate_run
from fracture_train.predict import (
    find_files,
    load_ensemble,
    predict_files,
    split_arguments,
    write_predictions,
)

runner = CliRunner()
PROBS = ["prob_not fractured", "prob_fractured"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs (seeds 0 and 1) on one generated set, and that set."""
    base = tmp_path_factory.mktemp("predict")
    data = easy_dataset(base / "data", n=20)
    manifest = split_manifest(data, base / "split.parquet")
    trained = [tiny_run(manifest, base / f"run{seed}", seed) for seed in (0, 1)]
    return {"runs": trained, "data": data, "manifest": manifest, "base": base}


def test_predictions_are_the_ones_the_evaluation_made(runs):
    run = runs["runs"][0]
    evaluated = read_manifest(run / "predictions.parquet", stage="predict")
    test = evaluated[evaluated["split"] == "test"]
    ensemble = load_ensemble([run], device="cpu")
    files = [runs["data"] / path for path in test["path"]]
    frame, _ = predict_files(ensemble, files, workers=0)
    assert (frame["status"] == "ok").all() and frame["image_id"].tolist() == test[
        "image_id"
    ].tolist()
    np.testing.assert_allclose(frame[PROBS].to_numpy(), test[PROBS].to_numpy(), atol=1e-6)
    chosen = test["predicted_label_val_threshold"].tolist()
    assert frame["predicted_label"].tolist() == chosen
    assert frame["predicted_label_at_0.5"].tolist() == test["predicted_label"].tolist()
    assert (frame["threshold"] == ensemble.threshold).all() and ensemble.val_threshold is not None


def test_a_file_that_is_no_image_is_a_row_with_its_reason(runs, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    source = next((runs["data"] / "fractured").glob("*.png"))
    shutil.copy(source, folder / "film.png")
    (folder / "notes.txt").write_text("hello")
    (folder / "cut.png").write_bytes(source.read_bytes()[:200])
    (folder / ".hidden.png").write_bytes(source.read_bytes())  # hidden files are skipped
    frame, _ = predict_files(load_ensemble(runs["runs"][:1], device="cpu"), [folder], workers=0)
    rows = frame.assign(name=frame["path"].map(lambda p: p.rsplit("/", 1)[-1])).set_index("name")
    assert sorted(rows.index) == ["cut.png", "film.png", "notes.txt"]
    assert rows.loc["film.png", "status"] == "ok" and rows.loc["film.png", PROBS].notna().all()
    assert rows.loc["notes.txt", "status"] == "not_image"
    assert rows.loc["cut.png", "status"] in ("truncated", "corrupt")
    for name in ("notes.txt", "cut.png"):
        assert rows.loc[name, "reason"] and pd.isna(rows.loc[name, "predicted_label"])
    with pytest.raises(ConfigError, match="does not exist"):
        find_files([tmp_path / "missing"])


def test_an_ensemble_averages_its_runs_and_refuses_other_classes(runs, tmp_path):
    files = sorted((runs["data"] / "not fractured").glob("*"))[:6]
    alone = [
        predict_files(load_ensemble([run], device="cpu"), files, workers=0)[0][PROBS].to_numpy()
        for run in runs["runs"]
    ]
    ensemble = load_ensemble(runs["runs"], device="cpu")
    together, _ = predict_files(ensemble, files, workers=0)
    np.testing.assert_allclose(together[PROBS].to_numpy(), np.mean(alone, axis=0), atol=1e-6)
    thresholds = [load_ensemble([run]).val_threshold for run in runs["runs"]]
    assert ensemble.threshold == pytest.approx(np.mean(thresholds))
    other = easy_dataset(tmp_path / "other", classes=("gap", "oblique", "plain"), n=10)
    three = tiny_run(split_manifest(other, tmp_path / "o.parquet"), tmp_path / "three")
    with pytest.raises(ConfigError, match="an ensemble needs runs of the same classes"):
        load_ensemble([runs["runs"][0], three])


def test_an_ensemble_is_evaluated_as_one_model(runs, tmp_path):
    single = [
        evaluate_run(run, runs["manifest"], split="test", workers=0, out=tmp_path / run.name)
        for run in runs["runs"]
    ]
    both = evaluate_run(runs["runs"], runs["manifest"], split="test", workers=0)
    assert both.out.name.endswith("-test-ensemble") and both.out.parent.parent == runs["runs"][0]
    assert both.metrics["runs"] == [run.name for run in runs["runs"]]
    probs = [
        pd.read_parquet(result.out / "predictions.parquet")["prob_fractured"].to_numpy()
        for result in single
    ]
    together = pd.read_parquet(both.out / "predictions.parquet")["prob_fractured"].to_numpy()
    np.testing.assert_allclose(together, np.mean(probs, axis=0), atol=1e-9)


def test_the_command_line_predicts_writes_the_table_and_explains(runs, tmp_path):
    run, folder = runs["runs"][0], runs["data"] / "fractured"
    out, explain = tmp_path / "predictions.csv", tmp_path / "explained"
    result = runner.invoke(
        app,
        ["predict", str(run), str(folder), "--out", str(out), "--explain", str(explain)],
    )
    assert result.exit_code == 0, result.output
    assert "Predictions: fractured when p(fractured) >=" in " ".join(result.output.split())
    table = pd.read_csv(out)
    assert len(table) == len(find_files([folder])) and (table["status"] == "ok").all()
    written = sorted(explain.glob("*.png"))
    assert len(written) == len(table) and set(table["explanation"]) == set(map(str, written))
    with Image.open(written[0]) as picture:
        assert picture.size == (64, 32)  # the 32 px input beside its overlay
    wrong = runner.invoke(app, ["predict", str(run), str(folder), "--out", str(tmp_path / "x.txt")])
    assert wrong.exit_code != 0 and "name a .csv or .parquet file" in wrong.output
    assert "Traceback" not in wrong.output
    no_run = runner.invoke(app, ["predict", str(folder)])
    assert no_run.exit_code != 0 and "must be a run folder" in no_run.output


def test_arguments_split_into_runs_then_paths(runs, tmp_path):
    first, second = runs["runs"]
    assert split_arguments([first, second, tmp_path]) == ([first, second], [tmp_path])
    with pytest.raises(ConfigError, match="name the files or folders to predict"):
        split_arguments([first])
    frame = pd.DataFrame({"path": ["a"], "status": ["ok"]})
    assert write_predictions(frame, tmp_path / "t.parquet").exists()


def test_each_explanation_is_the_predicted_class_map_beside_the_input(runs, tmp_path):
    from fracture_train.explain import side_by_side
    from fracture_train.predict import (
        ensemble_heatmaps,
        explainers,
        predicted_classes,
        write_explanations,
    )

    ensemble = load_ensemble(runs["runs"][:1], device="cpu")
    files = sorted((runs["data"] / "fractured").glob("*"))[:4]
    frame, prediction = predict_files(ensemble, files, workers=0)
    written = write_explanations(ensemble, frame, prediction, tmp_path / "explained")
    classes = predicted_classes(ensemble, prediction.probs)
    for index in range(len(files)):
        arrays = prediction.images[index]
        heatmap = ensemble_heatmaps(ensemble, explainers(ensemble), [arrays], [classes[index]])
        other = ensemble_heatmaps(ensemble, explainers(ensemble), [arrays], [1 - classes[index]])
        with Image.open(written[index]) as picture:
            drawn = np.asarray(picture)
        # a batch of one rounds a little differently from the batch of four written
        same = np.abs(drawn.astype(int) - np.asarray(side_by_side(arrays[0], heatmap[0])))
        wrong = np.abs(drawn.astype(int) - np.asarray(side_by_side(arrays[0], other[0])))
        assert same.max() <= 2 and wrong.mean() > 10 * max(same.mean(), 0.1)
