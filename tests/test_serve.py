"""serve: the local prediction page of a trained run, through Flask's test client and in headless
Chromium; its model card, its results against ``train predict``'s, its limits and its care with
the client's file names."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import flask
import numpy as np
import pandas as pd
import pytest
import werkzeug.formparser
from PIL import Image
from test_report import chromium  # noqa: F401  (the fixture)
from test_train import easy_dataset, split_manifest
from typer.testing import CliRunner
from werkzeug.test import EnvironBuilder

from fracture_curate.errors import ConfigError
from fracture_curate.manifest import read_manifest, write_manifest
from fracture_train.checkpoint import read_run_config
from fracture_train.config import TrainConfig
from fracture_train.explain import side_by_side
from fracture_train.predict import (
    ensemble_heatmaps,
    explainers,
    load_ensemble,
    predict_files,
    predict_sources,
    predicted_classes,
)
from fracture_train.serve import (
    INTENDED_USE,
    InMemoryRequest,
    UploadResult,
    app,
    create_app,
    describe_split,
    metrics_table,
    removed_by_curation,
    result_card,
    training_set_section,
)
from fracture_train.trainer import train_run

runner = CliRunner()
CNN = "fracture_train.models:two_block_cnn"
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The easy generated set: "fractured" phantoms carry a wide dark band."""
    return easy_dataset(tmp_path_factory.mktemp("serve") / "data")


@pytest.fixture(scope="module")
def run(data) -> Path:
    """One tiny trained run (two epochs of a small CNN on the easy set)."""
    folder = data.parent
    manifest = split_manifest(data, folder / "split.parquet")
    config = TrainConfig(
        manifest=manifest,
        out=folder / "run",
        model=CNN,
        image_size=48,
        epochs=2,
        batch_size=16,
        workers=0,
    )
    return train_run(config).out


@pytest.fixture(scope="module")
def page_app(run) -> flask.Flask:
    return create_app([run], device="cpu")


@pytest.fixture
def client(page_app):
    return page_app.test_client()


def upload(client, files: list[tuple[bytes, str]]):
    """POST ``files`` ((content, client file name) each) through the form's field."""
    sent = {"images": [(io.BytesIO(content), name) for content, name in files]}
    return client.post("/", data=sent, content_type="multipart/form-data")


def shown(page: str, field: str) -> list[str]:
    """The text of every result card's ``field`` (label, probability, threshold, name)."""
    return re.findall(rf'class="{field}">([^<]*)<', page)


def test_the_page_shows_the_form_and_the_model_card(client, run):
    answer = client.get("/")
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert '<input type="file" name="images" multiple>' in page
    assert 'method="post" enctype="multipart/form-data"' in page
    assert CNN in page
    metrics = json.loads((run / "metrics.json").read_text())
    rates = metrics["test"]["at_val_threshold"]
    sensitivity = f"{rates['sensitivity']:.3f} ({rates['tp']}/{rates['tp'] + rates['fn']})"
    specificity = f"{rates['specificity']:.3f} ({rates['tn']}/{rates['tn'] + rates['fp']})"
    assert f"<td>{sensitivity}</td>" in page and f"<td>{specificity}</td>" in page
    assert f"<td>{metrics['test']['auroc']:.3f}</td>" in page
    assert html.escape(INTENDED_USE) in page and "not a medical device" in page
    assert f">= {metrics['val_threshold']:.3f}" in html.unescape(page)
    assert "target sensitivity of 0.950" in page
    split = read_manifest(read_run_config(run).training["manifest"])
    train_images = int((split["split"] == "train").sum())
    assert train_images == 36
    assert f"<th>train</th><td>{train_images}</td>" in page
    assert f"<th>total</th><td>{split['split'].notna().sum()}</td>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "Results" not in page


def test_uploaded_files_get_the_predictions_and_explanations_of_train_predict(client, run, data):
    ensemble = load_ensemble([run], device="cpu")
    every, _ = predict_files(ensemble, [data])
    ranked = every.dropna(subset=["prob_fractured"]).sort_values("prob_fractured")
    files = [Path(ranked["path"].iloc[-1]), Path(ranked["path"].iloc[0])]  # most, least likely
    frame, prediction = predict_files(ensemble, files)
    assert frame["predicted_label"].tolist() == ["fractured", "not fractured"]
    answer = upload(client, [(file.read_bytes(), file.name) for file in files])
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert shown(page, "name") == [file.name for file in files]
    assert shown(page, "label") == frame["predicted_label"].tolist()
    assert re.findall(r"<dt>(p\([^<]*\))</dt>", page) == ["p(fractured)"] * 2  # the finding's
    assert shown(page, "probability") == [f"{p:.3f}" for p in frame["prob_fractured"]]
    assert shown(page, "threshold") == [f"{ensemble.threshold:.3f}"] * 2
    arrays = [prediction.images[index] for index in range(len(files))]
    maps = ensemble_heatmaps(
        ensemble, explainers(ensemble), arrays, predicted_classes(ensemble, prediction.probs)
    )
    uris = re.findall(r'<img class="heatmap" src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 2
    for uri, items, heatmap in zip(uris, arrays, maps, strict=True):
        drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))
        expected = np.asarray(side_by_side(items[0], heatmap))
        assert drawn.shape == expected.shape == (48, 96, 3)
        assert np.abs(drawn.astype(int) - expected).max() <= 2


def test_an_upload_over_the_limit_is_refused_with_413_and_a_message(run):
    small = create_app([run], device="cpu", max_upload_mb=0.5).test_client()
    answer = upload(small, [(b"\0" * 1_000_000, "big.png")])
    assert answer.status_code == 413
    assert "The upload is larger than 0.5 MB" in answer.get_data(as_text=True)
    assert upload(small, [(b"\0" * 100_000, "fine.png")]).status_code == 200


def test_a_file_that_is_no_image_gets_its_reason_in_its_card(client, data, run):
    image = sorted((data / "fractured").glob("*.png"))[0]
    answer = upload(client, [(b"hello", "notes.png"), (image.read_bytes(), image.name)])
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    status, reason = predict_sources(load_ensemble([run], device="cpu"), [b"hello"]).failures[0]
    assert f"({html.escape(status)}): {html.escape(reason)}" in page
    assert shown(page, "name") == ["notes.png", image.name]
    assert len(shown(page, "label")) == 1  # the image still gets its prediction


def test_a_form_sent_without_a_file_gets_a_message(client):
    for answer in (upload(client, []), upload(client, [(b"", "")])):
        assert answer.status_code == 200
        page = answer.get_data(as_text=True)
        assert "No file was uploaded" in page and 'class="result"' not in page


def snapshot(*roots: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``roots`` with its size and modification time."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots
        for path in root.rglob("*")
        if path.is_file()
    }


def test_client_file_names_are_shown_escaped_and_never_used_as_paths(
    client, run, data, tmp_path, monkeypatch
):
    here = tmp_path / "work" / "here"  # ../../x.png from here lands inside tmp_path
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    absolute = Path("/tmp/abs.png")
    existed = absolute.exists() and absolute.stat().st_mtime_ns
    before = snapshot(tmp_path, run, data)
    content = sorted((data / "fractured").glob("*.png"))[0].read_bytes()
    names = ["../../x.png", str(absolute), "<img src=x onerror=alert(1)>.png"]
    answer = upload(client, [(content, name) for name in names])
    assert answer.status_code == 200
    assert snapshot(tmp_path, run, data) == before
    assert not (tmp_path / "x.png").exists()
    assert (absolute.exists() and absolute.stat().st_mtime_ns) == existed
    page = answer.get_data(as_text=True)
    assert [html.unescape(name) for name in shown(page, "name")] == names
    assert html.escape(names[2]) in page and names[2] not in page
    assert len(shown(page, "label")) == 3


def test_large_uploads_stay_in_memory_where_werkzeug_would_spool_them_to_disk(client, monkeypatch):
    spooled = []
    real = werkzeug.formparser.SpooledTemporaryFile

    def recording(*args, **kwargs):
        spooled.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", recording)
    body = {"images": (io.BytesIO(b"\1" * 2_000_000), "large.png")}
    plain = flask.Request(EnvironBuilder(method="POST", data=body).get_environ())
    assert plain.files["images"].read(1) == b"\1" and spooled  # Werkzeug's own would spool
    spooled.clear()
    body = {"images": (io.BytesIO(b"\1" * 2_000_000), "large.png")}
    kept = InMemoryRequest(EnvironBuilder(method="POST", data=body).get_environ())
    assert isinstance(kept.files["images"].stream, io.BytesIO) and not spooled
    assert upload(client, [(b"\1" * 2_000_000, "large.png")]).status_code == 200
    assert not spooled


def test_the_training_set_is_counted_per_split_with_patients_and_groups():
    frame = pd.DataFrame(
        {
            "split": ["train", "train", "train", "val", "test", None, None],
            "label": ["a", "b", "a", "b", "a", "b", "a"],
            "patient_id": ["p1", "p1", None, "p2", None, "p3", None],
            "group_id": pd.array([1, 1, None, 2, None, 3, None], dtype="Int64"),
            "excluded_reason": [None, None, None, None, None, "duplicate", "empty"],
        }
    )
    summary = describe_split(frame)
    assert summary.index.tolist() == ["train", "val", "test", "total"]
    assert summary.loc["train"].tolist() == [3, 2, 1, 1, 2]
    assert summary.loc["val"].tolist() == [1, 0, 1, 1, 1]
    assert summary.loc["test"].tolist() == [1, 1, 0, 0, 1]
    assert summary.loc["total"].tolist() == [5, 3, 2, 2, 4]
    assert summary.columns.tolist() == ["images", "a", "b", "patients", "independent groups"]
    assert removed_by_curation(frame).to_dict() == {"duplicate": 1, "empty": 1}


def test_the_card_says_when_the_training_manifest_is_gone_or_was_rewritten(run, tmp_path):
    config = read_run_config(run)
    gone = replace(config, training=config.training | {"manifest": str(tmp_path / "gone.parquet")})
    assert "is no longer there" in training_set_section([run], [gone])
    rewritten = tmp_path / "split.parquet"
    frame = read_manifest(config.training["manifest"])
    write_manifest(frame, rewritten, stage="split", params={})
    again = replace(config, training=config.training | {"manifest": str(rewritten)})
    section = training_set_section([run], [again])
    assert "was written again after" in section and "<table>" not in section
    assert "<table>" in training_set_section([run], [config])


def test_test_metrics_show_each_rate_with_its_counts_and_interval():
    binary = {
        "n": 54,
        "accuracy": 0.926,
        "auroc": 0.9448,
        "at_threshold": {"threshold": 0.5, "sensitivity": 0.84, "tp": 21, "fn": 4, "tn": 29},
        "at_val_threshold": {
            "threshold": 0.82,
            "sensitivity": 0.72,
            "specificity": 1.0,
            "tp": 18,
            "fn": 7,
            "tn": 29,
            "fp": 0,
        },
        "intervals": {
            "auroc": [0.854, 1.0],
            "accuracy": [0.81, 0.97],
            "at_val_threshold": {"sensitivity": [0.495, 0.8709], "specificity": [0.857, 1.0]},
        },
    }
    table = metrics_table(binary, binary=True)
    assert table.loc["sensitivity at 0.820"].tolist() == ["0.720 (18/25)", "[0.495, 0.871]"]
    assert table.loc["specificity at 0.820"].tolist() == ["1.000 (29/29)", "[0.857, 1.000]"]
    assert table.loc["accuracy at 0.820"].tolist() == ["0.870 (47/54)", ""]  # not 0.5's
    assert table.loc["AUROC"].tolist() == ["0.945", "[0.854, 1.000]"]
    several = {
        "n": 13,
        "accuracy": 9 / 13,
        "auroc": 0.8,
        "per_class": {"a": {}, "b": {}, "c": {}},
        "confusion_matrix": [[3, 1, 0], [0, 2, 2], [1, 0, 4]],
    }
    table = metrics_table(several, binary=False)
    assert table.columns.tolist() == ["value"]  # no intervals measured
    assert table.loc["sensitivity of b", "value"] == "0.500 (2/4)"
    assert table.loc["accuracy", "value"] == "0.692 (9/13)"


def test_a_card_of_several_classes_shows_the_predicted_class_probability_without_threshold():
    result = UploadResult(
        "a&b.png", label="wrist", probability=0.61234, scored_class="wrist", explanation=b"png"
    )
    card = result_card(result, None)
    assert '<h3 class="name">a&amp;b.png</h3>' in card
    assert "<dt>p(wrist)</dt>" in card and '<dd class="probability">0.612</dd>' in card
    assert '<dd class="threshold">none: the most probable class</dd>' in card
    assert (
        f'<img class="heatmap" src="data:image/png;base64,{base64.b64encode(b"png").decode()}"'
        in card
    )
    failed = result_card(UploadResult("<x>", failure=("not_image", "not <an> image")), 0.5)
    assert "(not_image): not &lt;an&gt; image" in failed and "heatmap" not in failed


def test_the_command_line_fits_80_columns_and_reports_errors_in_one_line(tmp_path, run):
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert max(map(len, result.output.splitlines())) <= 80 and "…" not in result.output
    for option in ("--host", "--port", "--max-upload-mb", "--device", "--which", "--model"):
        assert option in result.output
    result = runner.invoke(app, [str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "error:" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ConfigError, match="positive"):
        create_app([run], max_upload_mb=0)
    with pytest.raises(ConfigError, match="best or last"):
        create_app([run], checkpoint="worst")


@pytest.mark.slow
def test_a_browser_uploads_a_dicom_radiograph_and_sees_its_prediction_and_heatmap(
    chromium,  # noqa: F811
    page_app,
    run,
):
    from playwright.sync_api import sync_playwright
    from pydicom.data import get_testdata_file
    from werkzeug.serving import make_server

    radiograph = get_testdata_file("RG3_UNCR.dcm")
    server = make_server("127.0.0.1", 0, page_app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    errors: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(f"http://127.0.0.1:{server.server_port}/", timeout=20_000)
                page.set_input_files('input[name="images"]', radiograph)
                with page.expect_navigation(timeout=30_000):
                    page.click('button[type="submit"]')
                page.wait_for_selector("img.heatmap", timeout=10_000)
                label = page.inner_text("dd.label")
                width = page.evaluate("() => document.querySelector('img.heatmap').naturalWidth")
                name = page.inner_text("h3.name")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert label in read_run_config(run).class_names
    assert width == 96  # the 48 px input beside its overlay
    assert name == "RG3_UNCR.dcm"
    assert errors == []
