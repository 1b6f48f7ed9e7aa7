"""The trainer end to end on CPU: a tiny CNN on a small generated set, the run folder, reloading,
resuming, cross-dataset evaluation, the CLI and its errors on bad manifests."""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from typer.testing import CliRunner

from fracture_curate.dataset_files import ScannedFile, content_id, scanned_files
from fracture_curate.manifest import read_manifest, read_provenance, write_manifest
from fracture_curate.model_input import Preprocessing
from fracture_curate.scan import scan_dataset
from fracture_curate.synthetic import generate_dataset
from fracture_train.checkpoint import (
    CheckpointError,
    RunConfig,
    load_model,
    read_run_config,
    write_run_config,
)
from fracture_train.cli import app
from fracture_train.config import TrainConfig
from fracture_train.data import ImageDataset, ImageStore, make_loader
from fracture_train.engine import Placement, predict
from fracture_train.evaluate import evaluate_run
from fracture_train.metrics import threshold_for_sensitivity
from fracture_train.rows import DataError, class_order, load_training_rows
from fracture_train.trainer import train_run

runner = CliRunner()
CNN = "fracture_train.models:two_block_cnn"
RUN_FILES = (
    "best.safetensors",
    "last.safetensors",
    "resume.safetensors",
    "config.json",
    "metrics.json",
    "history.csv",
    "predictions.parquet",
    "curves.png",
    "confusion_val.png",
    "confusion_test.png",
    "roc_val.png",
    "roc_test.png",
    "samples_test.png",
)


def easy_dataset(
    root: Path, classes: tuple[str, ...] = ("fractured", "not fractured"), n: int = 30, seed=0
) -> Path:
    """Generated phantoms whose fractures are exaggerated (a wide dark band across the image),
    so that a tiny CNN learns them in a few epochs on two CPU cores."""
    generate_dataset(
        root,
        layout="class",
        classes=list(classes),
        n_per_class=n,
        image_size=64,
        plant=False,
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    for label in classes[:1]:
        for path in sorted((root / label).iterdir()):
            with Image.open(path) as opened:
                image = opened.convert("L")
            centre = rng.uniform(16, 48, size=2)
            angle = rng.uniform(0, np.pi)
            reach = 64 * np.array([np.cos(angle), np.sin(angle)])
            ImageDraw.Draw(image).line(
                [tuple(centre - reach), tuple(centre + reach)], fill=0, width=6
            )
            image.save(path)
    return root


def split_manifest(root: Path, path: Path) -> Path:
    """A split manifest as `curate split` writes it: 3/5 train, 1/5 val, 1/5 test per label."""
    frame = scan_dataset(root, workers=1).frame
    frame = frame.sort_values("path", ignore_index=True)
    rank = frame.groupby("label").cumcount() % 5
    frame["split"] = np.select([rank < 3, rank == 3], ["train", "val"], "test")
    frame.loc[frame["status"] != "ok", "split"] = None
    frame["excluded_reason"] = np.where(frame["split"].isna(), "not an image", None)
    return write_manifest(frame, path, stage="split", params={"root": str(root)})


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    """The easy set's split manifest."""
    folder = tmp_path_factory.mktemp("easy")
    return split_manifest(easy_dataset(folder / "data"), folder / "split.parquet")


def config(manifest: Path, out: Path, **options) -> TrainConfig:
    """A small, fast CPU configuration of the tiny CNN."""
    defaults = dict(
        model=CNN,
        image_size=48,
        epochs=8,
        batch_size=12,
        lr=3e-3,
        augment="light",
        workers=0,
        warmup_epochs=0.5,
        patience=0,
    )
    return TrainConfig(manifest=manifest, out=out, **(defaults | options))


@pytest.fixture(scope="module")
def trained(easy, tmp_path_factory):
    """One finished run of the tiny CNN, shared by the tests that read a run folder."""
    out = tmp_path_factory.mktemp("runs") / "cnn"
    return train_run(config(easy, out))


def test_class_order_puts_the_fracture_class_last():
    assert class_order(["not fractured", "fractured"]) == (
        ["not fractured", "fractured"],
        "fractured",
    )
    assert class_order(["positive", "negative"]) == (["negative", "positive"], "positive")
    assert class_order(["normal", "abnormal"]) == (["normal", "abnormal"], "abnormal")
    assert class_order(["fractured", "non-fractured"])[1] == "fractured"
    assert class_order(["cat", "ant"]) == (["ant", "cat"], "cat")  # no hint: second sorted
    assert class_order(["b", "c", "a"]) == (["a", "b", "c"], None)


@pytest.mark.slow
def test_training_learns_and_writes_the_run_folder(trained):
    out = trained.out
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] >= 0.8  # chance is 0.5
    assert metrics["test"]["auroc"] >= 0.8
    assert metrics["positive_class"] == "fractured" and metrics["task"] == "binary"
    assert 0 < metrics["val_threshold"] < 1
    assert metrics["val"]["at_val_threshold"]["sensitivity"] >= 0.95
    assert set(metrics["test"]) >= {"cohen_kappa", "ece", "per_class", "confusion_matrix"}
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == list(range(1, 9))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert {"lr", "val_loss", "val_auroc", "images_per_s"} <= set(history.columns)
    run_config = json.loads((out / "config.json").read_text())
    assert run_config["class_names"] == ["not fractured", "fractured"]
    assert run_config["preprocessing"]["image_size"] == 48
    assert run_config["selection"]["best_epoch"] == metrics["selection"]["best_epoch"]
    assert set(load_file(out / "best.safetensors")) == set(load_file(out / "last.safetensors"))
    predictions = read_manifest(out / "predictions.parquet", stage="predict")
    assert len(predictions) == 24 and set(predictions["split"]) == {"val", "test"}
    assert {"path", "label", "predicted_label", "prob_fractured", "prob_not fractured"} <= set(
        predictions.columns
    )
    np.testing.assert_allclose(predictions.filter(like="prob_").sum(axis=1), 1.0)


@pytest.mark.slow
def test_a_reloaded_checkpoint_predicts_identically(trained, easy):
    model, run_config = load_model(trained.out)
    saved = pd.read_parquet(trained.out / "predictions.parquet")
    test = saved[saved["split"] == "test"]
    manifest = easy
    assert trained.metrics["manifest"] == easy.name  # no machine's folders in metrics.json
    root = Path(read_provenance(manifest)["params"]["root"])
    size = run_config.preprocessing.image_size
    scanned = read_manifest(manifest).set_index("path").loc[test["path"], "bytes"].reset_index()
    store = ImageStore(
        scanned_files(test.assign(bytes=scanned["bytes"].to_numpy()), root), size, "none"
    )
    targets = (test["label"] == "fractured").astype(int).to_numpy()
    preprocessing = run_config.preprocessing
    model = model.eval()
    # the run's own settings (batch 12, channels_last) give bit-identical probabilities;
    # another batch size and memory layout agree to float32 rounding
    for batch_size, channels_last, tolerance in ((12, True, 0.0), (7, False, 1e-6)):
        loader = make_loader(
            ImageDataset(store, np.arange(len(test)), targets),
            batch_size=batch_size,
            workers=0,
            pin_memory=False,
        )
        placement = Placement.create(
            torch.device("cpu"), preprocessing, amp=False, channels_last=channels_last
        )
        probs, _, _ = predict(placement.prepare(model), loader, placement)
        np.testing.assert_allclose(probs[:, 1], test["prob_fractured"], rtol=0, atol=tolerance)
        assert ((probs[:, 1] >= 0.5) == (test["predicted_label"] == "fractured")).all()


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(easy, tmp_path):
    straight = train_run(config(easy, tmp_path / "straight", epochs=3))

    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    interrupted = config(easy, tmp_path / "resumed", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train_run(interrupted, on_epoch=interrupt)
    assert pd.read_csv(tmp_path / "resumed/history.csv")["epoch"].tolist() == [1, 2]
    notes = []
    resumed = train_run(replace(interrupted, resume=True), log=notes.append)
    assert "resuming after epoch 2 (best so far: epoch 2)" in notes
    assert resumed.history["epoch"].tolist() == [1, 2, 3]
    expected = load_file(tmp_path / "straight/last.safetensors")
    got = load_file(tmp_path / "resumed/last.safetensors")
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=1e-6)
    assert resumed.metrics["test"]["accuracy"] == pytest.approx(
        straight.metrics["test"]["accuracy"]
    )

    with pytest.raises(CheckpointError, match=r"changed: --lr 0\.003 -> 0\.01"):
        train_run(replace(interrupted, resume=True, lr=0.01))
    with pytest.raises(CheckpointError, match="already holds a run"):
        train_run(interrupted)
    with pytest.raises(CheckpointError, match="holds no run to resume"):
        train_run(replace(interrupted, out=tmp_path / "nothing", resume=True))


def test_image_caches_agree_and_the_disk_cache_is_reused(easy, tmp_path):
    rows = load_training_rows(easy)
    files = scanned_files(rows.frame[:6], rows.root)
    stores = {mode: ImageStore(files, 40, mode, tmp_path) for mode in ("none", "memory", "disk")}
    assert stores["memory"].fill(workers=0) == 6
    assert stores["disk"].fill(workers=0) == 6
    assert ImageStore(files, 40, "disk", tmp_path).fill(workers=0) == 0  # reused
    assert len(list((tmp_path / "40px").glob("*.npy"))) == 6
    for position in range(6):
        expected = stores["none"][position]
        assert expected.shape == (40, 40, 3) and expected.dtype == np.uint8
        np.testing.assert_array_equal(stores["memory"][position], expected)
        np.testing.assert_array_equal(stores["disk"][position], expected)
    broken = b"\x89PNG\r\n\x1a\n" + bytes(100)
    (tmp_path / "broken.png").write_bytes(broken)
    file = ScannedFile(tmp_path, "broken.png", content_id(broken), len(broken))
    with pytest.raises(DataError, match=r"could not be decoded, e\.g\. broken\.png"):
        ImageStore([file], 40, "memory").fill(workers=0)


@pytest.fixture
def bad_manifests(easy, tmp_path):
    """Broken variants of the easy manifest, by what is wrong with them."""
    frame = read_manifest(easy)
    root = read_provenance(easy)["params"]["root"]
    data_copy = tmp_path / "data"
    shutil.copytree(root, data_copy)
    (data_copy / frame.loc[frame["split"] == "test", "path"].iloc[0]).unlink()
    variants = {
        r"lacks column\(s\) label": (frame.drop(columns="label"), root),
        "has no train rows": (frame.assign(split=frame["split"].replace("train", "val")), root),
        "'fractured' have no train rows": (
            frame[~((frame["label"] == "fractured") & (frame["split"] == "train"))],
            root,
        ),
        r"1 image file\(s\) listed in the manifest no longer exist": (frame, str(data_copy)),
        "status other than 'ok'": (frame.assign(status="corrupt"), root),
    }
    paths = {}
    for index, (message, (variant, variant_root)) in enumerate(variants.items()):
        path = tmp_path / f"bad{index}.parquet"
        write_manifest(variant, path, stage="split", params={"root": variant_root})
        paths[message] = path
    scan = tmp_path / "scan.parquet"
    write_manifest(frame, scan, stage="scan", params={"root": root})
    paths["written by stage 'scan', expected 'split'"] = scan
    return paths


def test_bad_manifests_are_one_line_errors_before_training(bad_manifests, tmp_path):
    for message, path in bad_manifests.items():
        out = tmp_path / "run"
        result = runner.invoke(app, ["--manifest", str(path), "--model", CNN, "--out", str(out)])
        assert result.exit_code == 2, (message, result.output)
        assert "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert re.search(message, lines[0]), (message, lines[0])
        assert not out.exists()


def test_cli_options_are_checked_before_training(easy, tmp_path):
    cases = {
        ("--model", "resnet_18"): "did you mean resnet18",
        ("--model", CNN, "--pretrained"): "no offline ImageNet weights",
        ("--model", CNN, "--optimizer", "lion"): "unknown optimizer 'lion'",
        ("--model", CNN, "--freeze", "9"): "has 3 stages",
        ("--model", CNN, "--resume"): "--resume needs --out",
    }
    for options, message in cases.items():
        out = [] if "--resume" in options else ["--out", str(tmp_path / "run")]
        result = runner.invoke(app, ["--manifest", str(easy), *options, *out])
        assert result.exit_code == 2 and message in result.stderr, (options, result.output)
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_trains_and_evaluates_another_dataset(easy, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "--manifest",
            str(easy),
            "--model",
            CNN,
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--workers",
            "0",
            "--out",
            str(out),
            "--batch-size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "test (n=12)" in result.output and "best epoch" in result.output
    assert "v.loss" in result.output  # the per-epoch table

    other = easy_dataset(tmp_path / "other", classes=("positive", "negative"), n=10, seed=1)
    other_manifest = split_manifest(other, tmp_path / "other.parquet")
    result = runner.invoke(
        app,
        ["evaluate", "--checkpoint", str(out), "--manifest", str(other_manifest), "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "positive -> fractured" in output and "all (n=20)" in output
    report = out / "evaluations" / "other-all"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["all"]["n"] == 20
    assert metrics["label_map"] == {"negative": "not fractured", "positive": "fractured"}
    assert (report / "roc_all.png").is_file() and (report / "predictions.parquet").is_file()


@pytest.mark.slow
def test_evaluate_refuses_labels_the_model_does_not_know(trained, tmp_path):
    other = easy_dataset(tmp_path / "three", classes=("gap", "oblique", "not fractured"), n=5)
    manifest = split_manifest(other, tmp_path / "three.parquet")
    with pytest.raises(DataError, match="the model does not know"):
        evaluate_run(trained.out, manifest, workers=0)


@pytest.mark.slow
def test_multiclass_training_with_other_options(tmp_path):
    data = easy_dataset(tmp_path / "data", classes=("gap", "oblique", "not fractured"), n=10)
    manifest = split_manifest(data, tmp_path / "split.parquet")
    result = train_run(
        config(
            manifest,
            tmp_path / "run",
            epochs=2,
            image_size=32,
            optimizer="sgd",
            schedule="plateau",
            balance="sampler",
            augment="strong",
            freeze="1",
            cache="disk",
            label_smoothing=0.1,
            select_metric="auroc",
        )
    )
    metrics = result.metrics
    assert metrics["task"] == "multiclass" and metrics["positive_class"] is None
    assert metrics["classes"] == ["gap", "not fractured", "oblique"]
    assert "auroc" in metrics["test"]["per_class"]["gap"] and "at_threshold" not in metrics["test"]
    assert len(list((tmp_path / "run/cache/32px").glob("*.npy"))) == 30
    model, _ = load_model(tmp_path / "run")
    assert model.head.out_features == 3


@pytest.mark.slow
def test_mobilenetv2_fine_tunes_from_imagenet_weights_through_the_trainer(easy, tmp_path):
    result = train_run(
        config(
            easy,
            tmp_path / "run",
            model="mobilenetv2_100",
            pretrained=True,
            epochs=1,
            image_size=64,
            schedule="step",
            balance="weights",
            freeze="backbone",
        )
    )
    run_config = json.loads((tmp_path / "run/config.json").read_text())
    assert run_config["initial_weights"].startswith("ImageNet: torchvision MobileNetV2")
    assert result.history["train_loss"].iloc[0] < 2  # a small fresh head, not timm's +-1 init
    assert result.metrics["test"]["n"] == 12


def test_a_run_config_round_trips_and_garbage_is_refused(tmp_path):
    config = RunConfig(
        model="resnet18",
        num_outputs=1,
        class_names=["not fractured", "fractured"],
        positive_class="fractured",
        preprocessing=Preprocessing(image_size=96),
        initial_weights="random initialisation",
        training={"lr": 0.001},
        manifest_provenance={"stage": "split"},
        val_threshold=0.25,
    )
    write_run_config(tmp_path, config)
    written = json.loads((tmp_path / "config.json").read_text())
    assert list(written)[:2] == ["format", "tool_version"] and written["task"] == "binary"
    assert read_run_config(tmp_path) == config
    (tmp_path / "config.json").write_text(json.dumps(written | {"format": "other/9"}))
    with pytest.raises(CheckpointError, match="not a fracture-train run config"):
        read_run_config(tmp_path)
    del written["class_names"]
    (tmp_path / "config.json").write_text(json.dumps(written))
    with pytest.raises(CheckpointError, match="lacks or garbles a field"):
        read_run_config(tmp_path)


@pytest.mark.slow
def test_the_decision_threshold_is_chosen_on_val_predictions_never_test(trained):
    predictions = pd.read_parquet(trained.out / "predictions.parquet")

    def chosen(split: str) -> float:
        rows = predictions[predictions["split"] == split]
        positives = (rows["label"] == "fractured").astype(int).to_numpy()
        return threshold_for_sensitivity(positives, rows["prob_fractured"].to_numpy(), 0.95)

    assert chosen("val") != chosen("test")  # else this test could not tell them apart
    assert trained.metrics["val_threshold"] == chosen("val")
    assert json.loads((trained.out / "config.json").read_text())["val_threshold"] == chosen("val")
    assert trained.metrics["val"]["at_val_threshold"]["sensitivity"] >= 0.95


@pytest.mark.slow
def test_early_stopping_stops_after_patience_epochs_without_improvement(easy, tmp_path):
    # lr 0: the model never changes, so no epoch after the first improves the val loss
    result = train_run(config(easy, tmp_path / "run", epochs=6, patience=2, lr=0.0))
    assert result.history["epoch"].tolist() == [1, 2, 3]
    selection = result.metrics["selection"]
    assert selection["stopped_early"] and selection["epochs_run"] == 3
    assert selection["best_epoch"] == 1


@pytest.mark.slow
def test_a_higher_target_sensitivity_chooses_a_lower_threshold(easy, tmp_path):
    thresholds = {}
    for target in (0.5, 1.0):
        run = train_run(
            config(easy, tmp_path / f"run{target}", epochs=3, target_sensitivity=target)
        )
        thresholds[target] = run.metrics["val_threshold"]
        assert run.metrics["val"]["at_val_threshold"]["sensitivity"] >= target
    assert thresholds[1.0] < thresholds[0.5]


@pytest.mark.slow
def test_evaluate_one_split_of_a_manifest(trained, easy, tmp_path):
    result = evaluate_run(trained.out, easy, split="test", out=tmp_path / "eval", workers=0)
    test_rows = int((read_manifest(easy)["split"] == "test").sum())
    assert result.metrics["test"]["n"] == test_rows
    assert set(pd.read_parquet(tmp_path / "eval" / "predictions.parquet")["split"]) == {"test"}
    command = ["evaluate", "--checkpoint", str(trained.out), "--manifest", str(easy)]
    command += ["--split", "val", "--out", str(tmp_path / "cli"), "--workers", "0"]
    cli = runner.invoke(app, command)
    assert cli.exit_code == 0, cli.output
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["val"]["n"] == int(
        (read_manifest(easy)["split"] == "val").sum()
    )
    for option, value, what in (("--split", "val.", "split"), ("--which", "first", "checkpoint")):
        refused = runner.invoke(app, [*command[:5], option, value])
        assert refused.exit_code == 2 and f"unknown {what} {value!r}" in refused.output
    assert not (trained.out / "evaluations").exists()  # refused before anything is written


def test_progress_is_written_as_lines_where_no_terminal_draws_the_bars():
    """`make demo > log`: an epoch of 54 s is not silent; a line every 10 s of a phase."""
    from rich.console import Console

    from fracture_curate.display import ProgressBars, make_progress

    progress = make_progress("img", output=Console(file=io.StringIO(), force_terminal=False))
    now = [0.0]
    bars = ProgressBars(progress, every=10.0, clock=lambda: now[0])
    for done in range(0, 65, 16):  # a batch of 16 every 4 s
        bars("epoch 1/6", done, 64, "loss 0.693" if done else "")
        now[0] += 4.0
    bars("validating", 0, 20)
    lines = progress.console.file.getvalue().splitlines()
    assert lines == [
        "epoch 1/6: 48/64 img, 4.0 img/s, loss 0.693",  # at 12 s
    ]
    terminal = make_progress("img", output=Console(file=io.StringIO(), force_terminal=True))
    drawn = ProgressBars(terminal, every=10.0, clock=lambda: now[0])
    for done in range(0, 65, 16):
        drawn("epoch 2/6", done, 64)
        now[0] += 4.0
    assert "epoch 2/6:" not in terminal.console.file.getvalue()  # the bar says it already


def test_a_split_without_a_class_says_why_its_metrics_are_missing():
    from fracture_train.display import absent_class_lines
    from fracture_train.metrics import classification_metrics

    targets = np.zeros(4, dtype=int)  # test holds only 'not fractured'
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    found = classification_metrics(targets, probs, ["not fractured", "fractured"], positive=1)
    assert np.isnan(found["auroc"])
    lines = absent_class_lines({"test": found}, "test")
    assert len(lines) == 1 and lines[0].startswith("test holds no 'fractured' image")
    both = classification_metrics(np.array([0, 1]), probs[:2], ["a", "b"], positive=1)
    assert absent_class_lines({"val": both}, "val") == []
