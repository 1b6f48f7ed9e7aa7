"""curate report: the HTML built from a small real pipeline, and what headless Chromium renders."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import noise_image, save_gray
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from fracture_curate import __version__
from fracture_curate.cli import app
from fracture_curate.dedupe import run_dedupe
from fracture_curate.embed import EmbedConfig, embed_manifest
from fracture_curate.manifest import (
    ManifestError,
    manifest_path,
    read_provenance,
    read_stage,
    write_manifest,
)
from fracture_curate.outliers import run_outliers
from fracture_curate.report import SECTIONS, build_report
from fracture_curate.report.html import table as html_table
from fracture_curate.scan import run_scan
from fracture_curate.split import run_split
from fracture_curate.synthetic import generate_dataset, planted_vs_found
from fracture_train.metrics import classification_metrics

#: Screenshot and copy of the report rendered by the browser test (git-ignored).
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
ODD_NAME = 'odd "name" <b>&.png'  # a file name that needs escaping in text and attributes


class Page(HTMLParser):
    """The section ids, images and links of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(values["id"] or "")
        elif tag == "img":
            self.images.append(values)
        elif tag == "a":
            self.links.append(values["href"] or "")


def section(text: str, key: str) -> str:
    """The HTML of one section."""
    match = re.search(rf'<section id="{key}">(.*?)</section>', text, re.DOTALL)
    assert match, f"no section {key}"
    return match.group(1)


def fake_run(folder: Path) -> Path:
    """A run folder as the trainer writes it: metrics.json, history.csv and two PNG figures."""
    folder.mkdir()
    metrics = {
        "model": "mobilenetv2_100",
        "epochs": 2,
        "classes": ["fractured", "not fractured"],
        "positive_class": "fractured",
        "val_threshold": None,
        "test": {
            "n": 16,
            "accuracy": 0.8125,
            "auroc": 0.90625,
            "per_class": {
                "fractured": {"precision": 0.75, "recall": 0.875, "support": 8},
                "not fractured": {"precision": 0.857, "recall": 0.75, "support": 8},
            },
            "confusion_matrix": [[7, 1], [2, 6]],
            "at_threshold": {"threshold": 0.5, "sensitivity": 0.875, "specificity": 0.75},
        },
    }
    targets = np.array([0] * 8 + [1] * 8)
    positive = np.linspace(0.05, 0.95, 16)
    metrics["val"] = classification_metrics(  # as the trainer computes it, intervals included
        targets,
        np.stack([1 - positive, positive], axis=1),
        ["not fractured", "fractured"],
        positive=1,
        groups=np.arange(16),
        resamples=200,
    ) | {"samples": [{"path": "val/a.png", "label": "fractured", "kind": "wrong"}]}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    history = pd.DataFrame(
        {"epoch": [1, 2], "train_loss": [0.69, 0.52], "val_loss": [0.66, 0.58], "lr": [1e-3, 5e-4]}
    )
    history.to_csv(folder / "history.csv", index=False)
    for name, values in (("curves.png", [0.69, 0.52]), ("confusion_test.png", [7, 1, 2, 6])):
        figure = Figure(figsize=(3, 2))
        figure.subplots().plot(values, marker="o")
        figure.savefig(folder / name, format="png", dpi=60)
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A generated set with planted problems, run through every stage, and its report."""
    base = tmp_path_factory.mktemp("report")
    data, manifests = base / "data", base / "manifests"
    record = generate_dataset(data, layout="split-class", n_per_class=12, image_size=96, seed=1)
    originals = record[(record["kind"] == "original") & record["path"].str.endswith(".png")]
    shutil.copy(data / originals["path"].iloc[0], data / "train" / "fractured" / ODD_NAME)
    run_scan(data, manifests, workers=1)
    embed_manifest(manifests, EmbedConfig(weights="random", image_size=64), workers=0)
    run_dedupe(manifests)
    run_outliers(manifests)
    frame = run_split(manifests)
    run = fake_run(base / "run")
    report = build_report(manifests, base / "out" / "report.html", run=run)
    return {
        "base": base,
        "manifests": manifests,
        "record": record,
        "frame": frame,
        "report": report,
        "html": report.read_text(encoding="utf-8"),
    }


def test_every_section_is_present_in_order(pipeline):
    page = Page(pipeline["html"])
    assert page.sections == list(SECTIONS)
    assert page.links == [f"#{key}" for key in SECTIONS]


def test_images_are_inline_and_decode(pipeline):
    images = Page(pipeline["html"]).images
    thumbnails = [image for image in images if image["src"].startswith("data:image/jpeg;")]
    assert len(thumbnails) >= 10
    assert "files unreadable" not in pipeline["html"]
    for image in images:
        header, _, payload = image["src"].partition(",")
        assert re.fullmatch(r"data:image/(jpeg|png);base64", header)
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as decoded:
            decoded.load()
            assert min(decoded.size) > 0
            if image in thumbnails:
                assert max(decoded.size) <= 128


def test_nothing_is_fetched_from_the_network(pipeline):
    text = pipeline["html"]
    assert "http://" not in text and "https://" not in text
    assert "default-src 'none'" in text  # the page's CSP forbids fetching anything
    assert "<script" not in text and "<link" not in text


def test_dataset_summary_and_dropped_files(pipeline):
    summary = section(pipeline["html"], "summary")
    for caption in ("Files by status", "Files by format", "label by source split", "Manifests"):
        assert caption in summary
    dropped = section(pipeline["html"], "dropped")
    record = pipeline["record"]
    for kind in ("gif", "webp", "corrupt", "truncated", "zero_byte"):
        path = record.loc[record["kind"] == kind, "path"].iloc[0]
        assert html.escape(path) in dropped
    assert "dropped_format" in dropped and "zero-byte file" in dropped


def test_duplicates_conflicts_and_leakage(pipeline):
    text, frame = pipeline["html"], pipeline["frame"]
    duplicates = section(text, "duplicates")
    n_clusters = frame.loc[frame["cluster_size"] > 1, "cluster_id"].nunique()
    assert duplicates.count('<div class="cluster">') == n_clusters
    assert "kept</span>" in duplicates and "bytes 1.000" in duplicates
    conflicts = section(text, "label-conflicts")
    assert "fractured \u00d71, not fractured \u00d71" in conflicts
    assert "label conflict</span>" in conflicts
    leaks = section(text, "leakage")
    cross = pipeline["record"].query("kind == 'cross_split'").iloc[0]
    assert html.escape(cross["path"]) in leaks or html.escape(cross["source_path"]) in leaks


def test_outliers_map_and_split(pipeline):
    text, frame = pipeline["html"], pipeline["frame"]
    outliers = section(text, "outliers")
    flagged = frame.loc[frame["is_outlier"].fillna(False).astype(bool), "image_id"].nunique()
    assert outliers.count("flagged</span>") == min(flagged, 24)
    assert outliers.count('<figure class="thumb">') == 24
    assert 'alt="PCA map of the embeddings"' in section(text, "embedding-map")
    split = section(text, "split")
    assert "no duplicate cluster or patient spans two splits" in split
    assert "<th>label_conflict</th>" in split and "<th>duplicate</th>" in split
    assert html.escape("takes 'fractured' as the positive (finding) class") in split
    used = frame["split"].notna().sum()
    assert "<th>total</th><td>" in split and f"<td>{used}</td></tr>" in split


def test_training_run_is_embedded(pipeline):
    training = section(pipeline["html"], "training")
    assert training.count('<figure class="plot">') == 2
    for name in ("curves.png", "confusion_test.png"):
        assert f"<figcaption>{name}</figcaption>" in training
    assert "<td>mobilenetv2_100</td>" in training
    assert "<td>fractured, not fractured</td>" in training  # a list of scalars
    assert "<h4>test / per_class</h4>" in training and "<th>precision</th>" in training
    assert "<h4>test / confusion_matrix</h4>" in training  # a list of lists, one row each
    assert "<td>0.8125</td>" in training and "<td>0.0005</td>" in training
    metrics = json.loads((pipeline["base"] / "run" / "metrics.json").read_text())
    low, high = metrics["val"]["intervals"]["auroc"]
    assert "<caption>val (n=16)</caption>" in training and "<th>95% CI</th>" in training
    assert f"<td>[{low:.3f}, {high:.3f}]</td>" in training
    assert "95% intervals: Wilson for proportions" in training
    assert "val: the surest correct and wrong predictions (samples_val.png)" in training


def test_planted_against_found(pipeline):
    record, frame = pipeline["record"], pipeline["frame"]
    table = planted_vs_found(record, frame)
    planted = record.loc[record["kind"] != "original", "kind"].value_counts()
    assert table["planted"].to_dict() == planted.to_dict()
    for kind in ("exact_copy", "reencoded", "flipped", "other_class", "cross_split", "gif"):
        assert table.loc[kind, "found"] == table.loc[kind, "planted"], kind
    assert table.loc["zero_byte", "found when"] == "scan status is not ok"
    assert "Found without being planted" in section(pipeline["html"], "planted")
    for kind in planted.index:
        assert f"<th>{kind}</th>" in section(pipeline["html"], "planted")


def test_planted_against_found_before_dedupe(pipeline):
    record = pipeline["record"]
    table = planted_vs_found(record, pipeline["frame"][["path", "status"]])
    assert pd.isna(table.loc["exact_copy", "found"])
    assert "run curate dedupe" in table.loc["exact_copy", "found when"]
    assert table.loc["corrupt", "found"] == 1


def test_a_set_with_nothing_planted_has_an_empty_table(pipeline):
    originals = pipeline["record"][pipeline["record"]["kind"] == "original"]
    table = planted_vs_found(originals, pipeline["frame"])
    assert table.empty and "found" in table.columns


def test_paths_are_escaped(pipeline):
    text = pipeline["html"]
    escaped = html.escape(f"train/fractured/{ODD_NAME}", quote=True)
    assert f'alt="{escaped}"' in text and f'<div class="path">{escaped}</div>' in text
    assert ODD_NAME not in text and "<b>&" not in text
    assert html.escape("not fractured") in section(text, "summary")


def test_missing_manifests_and_files_degrade(pipeline, tmp_path):
    """Scan and dedupe only, with the dataset gone: the other sections say what to run, and
    thumbnails are placeholders that still decode."""
    manifests = tmp_path / "manifests"
    scan, provenance = read_stage(pipeline["manifests"], "scan")
    params = provenance["params"] | {"root": str(tmp_path / "moved-away")}
    write_manifest(scan, manifest_path(manifests, "scan"), stage="scan", params=params)
    dedupe, dedupe_provenance = read_stage(pipeline["manifests"], "dedupe")
    write_manifest(
        dedupe,
        manifest_path(manifests, "dedupe"),
        stage="dedupe",
        params=dedupe_provenance["params"],
        inputs={"scan": read_provenance(manifest_path(manifests, "scan"))},
    )
    report = build_report(manifests, tmp_path / "report.html", max_clusters=2)
    text = report.read_text()
    page = Page(text)
    assert page.sections == list(SECTIONS)
    assert page.images and {image["src"] for image in page.images} == {page.images[0]["src"]}
    with Image.open(io.BytesIO(base64.b64decode(page.images[0]["src"].partition(",")[2]))) as im:
        im.load()
    assert section(text, "duplicates").count('<div class="cluster">') == 2
    for key, stage in (("outliers", "outliers"), ("embedding-map", "embed"), ("split", "split")):
        assert f"Run `curate {stage}` to fill this section." in section(text, key)
    assert "No run folder given" in section(text, "training")
    assert "no planted.csv" in section(text, "planted")
    assert "files unreadable</span> their thumbnails are placeholders" in text


def test_scan_manifest_is_required(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        build_report(tmp_path, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------------------
# In a browser
# --------------------------------------------------------------------------------------

#: Injected before the report's CSP (so it may run): records, into the DOM, each section's
#: rendered height, images that did not decode, and any error or blocked request.
CHECKER = """<script>
const errors = [];
addEventListener("error", (e) => errors.push(String(e.message || e.target.alt)), true);
addEventListener("securitypolicyviolation", (e) => errors.push("CSP blocked " + e.blockedURI));
addEventListener("load", () => {
  const images = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.alt),
    sections: Array.from(document.querySelectorAll("section"), (s) => [s.id, s.offsetHeight]),
    errors,
  });
  document.body.append(out);
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (skip if that is impossible)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:  # stale package lists: refresh once and retry
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
            result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("installing chromium with apt-get timed out")
    if result.returncode != 0 or not CHROMIUM.exists():
        pytest.skip(f"cannot install chromium with apt-get: {result.stderr.strip()[-500:]}")
    return CHROMIUM


def headless(chromium: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a throwaway profile and nothing phoning home."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]
    result = subprocess.run(
        [str(chromium), *flags, *args], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_report_renders_in_headless_chromium(pipeline, chromium, tmp_path):
    page = tmp_path / "checked.html"
    page.write_text(pipeline["html"].replace("<head>", "<head>" + CHECKER, 1), encoding="utf-8")
    result = headless(
        chromium, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom",
        page.as_uri(),
    )  # fmt: skip
    found = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, result.stdout[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert [key for key, _ in check["sections"]] == list(SECTIONS)
    assert all(height > 40 for _, height in check["sections"]), check["sections"]
    assert check["images"] == len(Page(pipeline["html"]).images)
    assert check["broken"] == [] and check["errors"] == []
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    headless(
        chromium, tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,4000",
        f"--screenshot={screenshot}", pipeline["report"].as_uri(),
    )  # fmt: skip
    shutil.copy(pipeline["report"], ARTIFACTS / "report.html")
    with Image.open(screenshot) as shot:
        assert shot.size == (1280, 4000)
        low, high = shot.convert("L").getextrema()
        assert high - low > 100  # something was drawn


def test_table_cells_headers_and_captions_are_escaped():
    frame = pd.DataFrame(
        {"<b>label</b>": ['<script>alert("x")</script>', "a & b"]},
        index=pd.Index(["<i>row</i>", "ok"], name="<u>name</u>"),
    )
    text = html_table(frame, caption="<em>caption</em>")
    for raw in ("<script>", "<b>label", "<i>row", "<u>name", "<em>caption", "a & b"):
        assert raw not in text
    for escaped in ("&lt;script&gt;alert(&quot;x&quot;)", "&lt;b&gt;label", "a &amp; b"):
        assert escaped in text


def test_curate_report_and_synth_and_version_through_the_command_line(tmp_path, pipeline):
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"fracture-curate {__version__}"
    synth = runner.invoke(
        app, ["synth", str(tmp_path / "set"), "--per-class", "3", "--size", "64", "--seed", "2"]
    )
    assert synth.exit_code == 0, synth.output
    record = pd.read_csv(tmp_path / "set" / "planted.csv")
    assert (record["kind"] == "original").sum() == 6 and (tmp_path / "set" / "train").is_dir()
    out = tmp_path / "report.html"
    report = runner.invoke(
        app, ["report", "--manifests", str(pipeline["manifests"]), "--out", str(out)]
    )
    assert report.exit_code == 0, report.output
    assert Page(out.read_text(encoding="utf-8")).sections == list(SECTIONS)
    bad = runner.invoke(app, ["synth", str(tmp_path / "x"), "--layout", "nested"])
    assert bad.exit_code == 2 and "unknown layout 'nested'" in bad.output
    csv_set = tmp_path / "csv"
    command = ["synth", str(csv_set), "--layout", "csv", "--per-class", "3", "--size", "64"]
    told = "".join(runner.invoke(app, command).output.split())  # rich folds long paths
    assert f"curatescan{csv_set}--labels{csv_set / 'labels.csv'}" in told


def test_related_films_and_outlier_reasons_are_shown(tmp_path, chest_radiograph):
    """Three films of one real chest (two stand-ins for follow-ups): one related group of three
    distinct films, each kept, with its evidence; a colour photo flagged for its colour."""
    from skimage.data import coffee

    from fracture_curate.images import to_rgb8
    from fracture_curate.synthetic import draw_phantom
    from fracture_curate.synthetic.planting import follow_up_film

    data, manifests = tmp_path / "data" / "chest", tmp_path / "manifests"
    data.mkdir(parents=True)
    first = to_rgb8(chest_radiograph)[:, :, 0]
    rng = np.random.default_rng(11)
    for index, film in enumerate([first, *(follow_up_film(rng, first)[0] for _ in range(2))]):
        Image.fromarray(film).resize((512, 512)).save(data / f"film{index}.png")
    for index in range(8):
        draw_phantom(np.random.default_rng(index), 256, False).save(data / f"phantom{index}.png")
    Image.fromarray(coffee()).save(data / "coffee.jpg")
    run_scan(data.parent, manifests, workers=1)
    embed_manifest(manifests, EmbedConfig(weights="random", image_size=64), workers=0)
    run_dedupe(manifests)
    run_outliers(manifests)
    text = build_report(manifests, tmp_path / "report.html").read_text(encoding="utf-8")
    related = section(text, "related")
    assert "Related group" in related and "3 distinct films" in related
    assert related.count("kept</span>") == 3
    assert related.count("keypoints on one transform") == 3
    outliers = section(text, "outliers")
    assert "Flagged by" in outliers and "flagged</span> colour" in outliers


def test_layout_warnings_and_a_split_without_a_label_are_shown(tmp_path):
    """A rare label of two patients cannot reach all three splits, and one image lies outside
    the class folders: the report says both, where it would otherwise say all is well."""
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(20):
        save_gray(data / "negative" / f"{index}.png", noise_image(index))
    for index in range(2):
        save_gray(data / "positive" / f"{index}.png", noise_image(100 + index))
    save_gray(data / "stray.png", noise_image(200))
    run_scan(data, manifests, workers=1)
    embed_manifest(manifests, EmbedConfig(weights="random", image_size=64), workers=0)
    run_dedupe(manifests)
    run_outliers(manifests)
    run_split(manifests)
    text = build_report(manifests, tmp_path / "report.html").read_text(encoding="utf-8")
    summary = section(text, "summary")
    assert "Labels read with the class layout." in summary
    assert "1 of 23 kept images get no label from the class layout" in summary
    split = section(text, "split")
    assert "label missing</span>" in split
    assert html.escape("holds no 'positive' image: the label has 2 independent group(s)") in split
    # the command line says the same, and what its second run replaced
    run_outliers(manifests)  # split.parquet is now older than the outliers it was made from
    again = CliRunner().invoke(app, ["split", "--manifests", str(manifests)])
    assert again.exit_code == 0, again.output
    output = " ".join(again.output.split())  # rich wraps long lines
    assert "warning: " in output and "holds no 'positive' image" in output
    assert "replaced the split.parquet written 20" in output
