"""Hostile input and faults, each case as a user met it: malicious run folders, concurrent
commands, symlinks out of the dataset, files changed after the scan, stale or tampered
manifests, names that are not UTF-8, class names matplotlib would parse, kill -9, odd images."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import noise_image, png_header_only, processes_running, save_gray
from PIL import Image
from typer.testing import CliRunner

from fracture_curate.cli import app as curate
from fracture_curate.dedupe import DedupeConfig, deduplicate, run_dedupe
from fracture_curate.embed import EmbedConfig, embed_manifest
from fracture_curate.manifest import (
    ManifestError,
    folder_lock,
    manifest_path,
    read_manifest,
    read_provenance,
    write_manifest,
)
from fracture_curate.model_input import Preprocessing
from fracture_curate.outliers import run_outliers
from fracture_curate.report import build_report
from fracture_curate.scan import ScanConfig, run_scan, scan_dataset
from fracture_curate.split import run_split
from fracture_train.checkpoint import CheckpointError, RunConfig, write_run_config
from fracture_train.cli import app as train
from fracture_train.config import TrainConfig
from fracture_train.evaluate import evaluate_run
from fracture_train.trainer import train_run

runner = CliRunner()
FAST = EmbedConfig(weights="random", image_size=32)


def write_images(folder: Path, count: int, start: int = 0, size=(48, 40)) -> list[Path]:
    return [
        save_gray(folder / f"{index:03d}.png", noise_image(index, size=size))
        for index in range(start, start + count)
    ]


def one_line_error(result) -> str:
    """The one ``error:`` line a command printed, checked to be exactly that."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


# --------------------------------------------------------------------------------------
# 1. A run folder never runs code
# --------------------------------------------------------------------------------------


def malicious_run(folder: Path, model: str) -> Path:
    write_run_config(
        folder,
        RunConfig(
            model=model,
            num_outputs=1,
            class_names=["normal", "fractured"],
            positive_class="fractured",
            preprocessing=Preprocessing(image_size=32),
            initial_weights="random",
            training={},
            manifest_provenance={},
        ),
    )
    return folder


@pytest.mark.parametrize("model", ["evilmod:factory", "this:anything"])
def test_a_run_folder_naming_code_is_refused_without_importing_it(tmp_path, monkeypatch, model):
    marker = tmp_path / "ran"
    (tmp_path / "evilmod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n"
        "def factory(n):\n    return None\n"
    )
    monkeypatch.chdir(tmp_path)  # the module sits in the working folder, as in the attack
    run = malicious_run(tmp_path / "run", model)
    modules = set(sys.modules)
    with pytest.raises(CheckpointError, match="never runs on its own; if you trust it"):
        evaluate_run(run, tmp_path / "split.parquet", workers=0)
    assert not marker.exists()
    assert not {"evilmod", "this"} & (set(sys.modules) - modules)
    line = one_line_error(
        runner.invoke(train, ["evaluate", "--checkpoint", str(run), "--manifest", "x.parquet"])
    )
    assert f"--model {model}" in line and not marker.exists()


def test_a_run_folder_naming_no_timm_model_is_refused(tmp_path):
    run = malicious_run(tmp_path / "run", "os.system")
    with pytest.raises(CheckpointError, match=r"'os\.system', which is not a timm model"):
        evaluate_run(run, tmp_path / "split.parquet", workers=0)


# --------------------------------------------------------------------------------------
# 2. One writer per manifests folder
# --------------------------------------------------------------------------------------


def test_a_second_command_on_a_busy_manifests_folder_stops_and_loses_nothing(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    write_images(data / "a", 6)
    run_scan(data, manifests, workers=1)
    with folder_lock(manifests):  # a first `curate embed` is running
        line = one_line_error(
            runner.invoke(curate, ["embed", "--manifests", str(manifests), "--weights", "random"])
        )
        assert f"(pid {os.getpid()}) is writing to the manifests folder" in line
        with pytest.raises(ManifestError, match="is writing to the manifests folder"):
            run_dedupe(manifests, DedupeConfig(use_embeddings=False))
        assert not manifest_path(manifests, "embed").exists()
    result = embed_manifest(manifests, FAST, workers=0)  # the lock went with its holder
    assert result.embedded == 6 and len(read_manifest(manifest_path(manifests, "embed"))) == 6


# --------------------------------------------------------------------------------------
# 3. Nothing outside the dataset root is read
# --------------------------------------------------------------------------------------


def test_symlinks_are_followed_inside_the_root_only_and_the_rest_reported(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    write_images(root / "a", 2)
    write_images(outside / "b", 2, start=10)
    (outside / "secret.txt").write_text("root:x:0:0")
    (root / "a" / "passwd").symlink_to(outside / "secret.txt")
    (root / "a" / "outside.png").symlink_to(outside / "b" / "010.png")
    (root / "b").symlink_to(outside / "b", target_is_directory=True)  # a class folder outside
    (root / "c").symlink_to(root / "a", target_is_directory=True)  # a class folder inside
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    sibling = write_images(tmp_path / "data-private", 1)[0]  # its path starts with the root's
    (root / "a" / "sibling.png").symlink_to(sibling)
    frame = scan_dataset(root, workers=1).frame.set_index("path")
    outside_rows = frame.loc[["a/outside.png", "a/passwd", "b", "a/sibling.png"]]
    assert (outside_rows["status"] == "outside_root").all()
    assert outside_rows["image_id"].isna().all() and outside_rows["bytes"].isna().all()
    assert "outside the dataset root" in frame.loc["b", "reason"]
    assert frame.loc["a/loop", "status"] == "unreadable" and "loop" in frame.loc["a/loop", "reason"]
    followed = frame.loc[["c/000.png", "c/001.png"]]
    assert (followed["status"] == "ok").all() and (followed["label"] == "c").all()
    assert frame.loc["a/000.png", "image_id"] == frame.loc["c/000.png", "image_id"]


def test_a_link_retargeted_out_of_the_root_after_the_scan_is_never_read(tmp_path):
    root, manifests = tmp_path / "data", tmp_path / "manifests"
    (root / "a").mkdir(parents=True)
    target = write_images(root / "store", 1)[0]
    (root / "a" / "x.png").symlink_to(target)
    run_scan(root, manifests, workers=1)
    outside = write_images(tmp_path / "outside", 1)[0]
    (root / "a" / "x.png").unlink()
    (root / "a" / "x.png").symlink_to(outside)
    result = embed_manifest(manifests, FAST, workers=0)
    assert {status for status, _ in result.failed.values()} == {"outside_root"}


# --------------------------------------------------------------------------------------
# 4. Files changed or gone after the scan
# --------------------------------------------------------------------------------------


def test_files_changed_or_gone_after_the_scan_get_a_status_and_are_not_split(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for label in ("a", "b"):
        write_images(data / label, 12, start=0 if label == "a" else 50)
    run_scan(data, manifests, workers=1)
    scanned = read_manifest(manifest_path(manifests, "scan")).set_index("path")
    same_size = bytearray((data / "a/000.png").read_bytes())
    same_size[len(same_size) // 2] ^= 0xFF  # other content, the same size
    (data / "a/000.png").write_bytes(same_size)
    (data / "a/001.png").write_bytes(b"\x89PNG" + bytes(50))  # another size
    (data / "b/050.png").unlink()
    expected = {"a/000.png": "changed", "a/001.png": "changed", "b/050.png": "vanished"}
    result = embed_manifest(manifests, FAST, workers=0)
    statuses = {scanned.loc[path, "image_id"]: status for path, status in expected.items()}
    assert {image_id: failure[0] for image_id, failure in result.failed.items()} == statuses
    stored = read_manifest(manifest_path(manifests, "embed"))
    assert not set(statuses) & set(stored["image_id"])  # no vector under the old SHA-256
    run_dedupe(manifests, DedupeConfig(geometry=False))
    run_outliers(manifests)
    split = run_split(manifests).set_index("path")
    for path, status in expected.items():
        assert split.loc[path, "status"] == status
        assert split.loc[path, "excluded_reason"] == status and pd.isna(split.loc[path, "split"])
    (data / "b/051.png").unlink()  # gone after dedupe: the split still notices
    split = run_split(manifests).set_index("path")
    assert split.loc["b/051.png", "excluded_reason"] == "vanished"


# --------------------------------------------------------------------------------------
# 5. Stale chains are refused everywhere
# --------------------------------------------------------------------------------------


@pytest.fixture
def curated(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for label in ("fractured", "normal"):
        write_images(data / label, 15, start=0 if label == "fractured" else 100)
    Image.fromarray(noise_image(7)).save(data / "normal" / "extra.jpg", quality=90)
    run_scan(data, manifests, workers=1)
    embed_manifest(manifests, FAST, workers=0)
    run_dedupe(manifests, DedupeConfig(geometry=False))
    run_outliers(manifests)
    run_split(manifests)
    return data, manifests


def test_a_new_scan_under_old_tables_is_refused_by_every_later_reader(curated, tmp_path):
    data, manifests = curated
    run_scan(data, manifests, ScanConfig(formats=("JPEG",)), workers=1)  # a re-scan
    for stage in ("dedupe", "outliers", "split"):  # one, two and three stages on
        line = one_line_error(runner.invoke(curate, [stage, "--manifests", str(manifests)]))
        assert "was made from an older scan.parquet" in line, (stage, line)
    line = one_line_error(runner.invoke(train, ["--manifest", str(manifests / "split.parquet")]))
    assert "was made from an older scan.parquet" in line
    text = build_report(manifests, tmp_path / "report.html").read_text()
    split_section = text[text.index('id="split"') : text.index('id="training"')]
    assert "Not available" in split_section and "no duplicate cluster" not in split_section
    assert "not used: " in text


# --------------------------------------------------------------------------------------
# 6. Names that are not UTF-8
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="arbitrary name bytes need a Linux filesystem")
def test_names_that_are_not_utf8_are_rows_not_a_crash(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    write_images(data / "a", 2)
    raw = os.fsencode(data)
    with open(os.path.join(raw, b"a", b"caf\xe9.png"), "wb") as handle:
        handle.write((data / "a" / "000.png").read_bytes())
    os.makedirs(os.path.join(raw, b"\xff"))
    with open(os.path.join(raw, b"\xff", b"x.png"), "wb") as handle:
        handle.write((data / "a" / "001.png").read_bytes())
    result = runner.invoke(curate, ["scan", str(data), "--out", str(manifests), "--workers", "1"])
    assert result.exit_code == 0, result.output
    frame = read_manifest(manifest_path(manifests, "scan"), stage="scan").set_index("path")
    assert frame.loc["a/caf\\xe9.png", "status"] == "bad_name"
    assert frame.loc["\\xff/x.png", "status"] == "bad_name"
    assert "not valid UTF-8" in frame.loc["a/caf\\xe9.png", "reason"]
    assert (frame.loc[["a/000.png", "a/001.png"], "status"] == "ok").all()


# --------------------------------------------------------------------------------------
# 7. Class names reach plots as plain text
# --------------------------------------------------------------------------------------


def test_class_names_matplotlib_would_parse_cost_no_finished_run(tmp_path):
    names = ("$\\fractured$", "not $frac\\tured$")  # mathtext cannot parse either
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index, label in enumerate(names):
        write_images(data / label, 10, start=20 * index, size=(32, 32))
    frame = scan_dataset(data, workers=1).frame
    rank = frame.groupby("label").cumcount() % 5
    frame["split"] = np.select([rank < 3, rank == 3], ["train", "val"], "test")
    params = {"root": str(data)}
    manifest = write_manifest(frame, tmp_path / "split.parquet", stage="split", params=params)
    out = tmp_path / "run"
    train_run(
        TrainConfig(
            manifest=manifest,
            out=out,
            model="fracture_train.models:two_block_cnn",
            image_size=32,
            epochs=1,
            batch_size=8,
            workers=0,
            device="cpu",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["not $frac\\tured$", "$\\fractured$"]  # [normal, finding]
    assert (out / "confusion_test.png").is_file() and (out / "roc_test.png").is_file()
    run_scan(data, manifests, workers=1)
    embed_manifest(manifests, FAST, workers=0)
    build_report(manifests, tmp_path / "report.html", run=out)  # the embedding map's legend


# --------------------------------------------------------------------------------------
# 8. kill -9 of scan leaves no worker behind
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill_9_of_scan_leaves_no_worker_process(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    write_images(data / "a", 200, size=(300, 300))
    command = [sys.executable, "-m", "fracture_curate.cli", "scan", str(data)]
    command += ["--out", str(manifests), "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(processes_running(str(manifests))) < 3 and time.monotonic() < deadline:
        assert process.poll() is None, "the scan finished before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while processes_running(str(manifests)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_running(str(manifests))
    assert not manifest_path(manifests, "scan").exists()


# --------------------------------------------------------------------------------------
# 9. Tampered inputs are one line
# --------------------------------------------------------------------------------------


def test_tampered_manifests_are_one_line_naming_the_column(curated):
    _, manifests = curated
    scan_file = manifest_path(manifests, "scan")
    frame, provenance = read_manifest(scan_file), read_provenance(scan_file)
    for tampered, column in (
        (frame.drop(columns="status"), r"lacks column\(s\) status"),
        (frame.assign(bytes=frame["bytes"].astype(str)), r"bytes is \w*string, not Int64"),
    ):
        write_manifest(tampered, scan_file, stage="scan", params=provenance["params"])
        for stage in ("embed", "dedupe"):
            line = one_line_error(runner.invoke(curate, [stage, "--manifests", str(manifests)]))
            assert re.search(column, line), (stage, line)


def test_wrong_or_garbage_weights_and_torn_parts(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    write_images(data / "a", 5)
    run_scan(data, manifests, workers=1)
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(3)}, wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    cases = ((wrong, "do not fit torchvision's MobileNetV2"), (garbage, "cannot be loaded"))
    for weights, expected in cases:
        command = ["embed", "--manifests", str(manifests), "--weights", str(weights)]
        line = one_line_error(runner.invoke(curate, command))
        assert expected in line and "weights_only=False" not in line
    parts = manifests / ".embeddings.parts"
    parts.mkdir()
    (parts / "part-000000.parquet").write_bytes(b"PAR1 torn")
    result = runner.invoke(curate, ["embed", "--manifests", str(manifests), "--weights", "random"])
    assert result.exit_code == 0, result.output
    assert "1 damaged part file(s) of an earlier run were discarded" in " ".join(
        result.output.split()
    )
    assert len(read_manifest(manifest_path(manifests, "embed"))) == 5


def test_max_pixels_is_honoured_both_ways(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "huge.png").write_bytes(png_header_only(12_000, 10_000))  # 120 Mpx
    save_gray(tmp_path / "a" / "small.png", noise_image(1))  # 64 x 48
    default = scan_dataset(tmp_path, workers=1).frame.set_index("path")
    assert default.loc["a/huge.png", "status"] == "too_large"
    assert "exceeds the 89,478,485-pixel guard" in default.loc["a/huge.png", "reason"]
    raised = scan_dataset(tmp_path, ScanConfig(max_pixels=200_000_000), workers=1).frame
    raised = raised.set_index("path")
    assert raised.loc["a/huge.png", "status"] != "too_large"  # decoded: its data stops early
    assert raised.loc["a/huge.png", "width"] == 12_000
    lowered = scan_dataset(tmp_path, ScanConfig(max_pixels=1_000), workers=1).frame
    assert lowered.set_index("path").loc["a/small.png", "status"] == "too_large"


# --------------------------------------------------------------------------------------
# 10. Quiet oddities
# --------------------------------------------------------------------------------------


def test_names_with_brackets_print_as_they_are_and_a_bad_folder_is_one_line(tmp_path):
    data = tmp_path / "xrays [2019]"
    for label in ("a [x]", "[bold]b"):
        for index in range(2):
            save_gray(data / label / f"{index}.png", noise_image(index + len(label)))
    result = runner.invoke(curate, ["scan", str(data), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "a [x]" in result.output and "[bold]b" in result.output  # labels in the table, whole
    missing = tmp_path / "manifests [old]"
    result = runner.invoke(curate, ["dedupe", "--manifests", str(missing)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error:" in result.output and "manifests [old]" in " ".join(result.output.split())


def test_an_empty_dataset_is_warned_about(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(curate, ["scan", str(tmp_path / "empty"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0 and "warning: no file under" in " ".join(result.output.split())


def test_degenerate_images_get_a_status_and_match_nothing(tmp_path):
    data = tmp_path / "data"
    save_gray(data / "a/tiny.png", np.full((1, 1), 128, np.uint8))
    save_gray(data / "a/line.png", noise_image(3, size=(40, 6000)))
    save_gray(data / "a/black.png", np.zeros((300, 300), np.uint8))
    save_gray(data / "a/grey.png", np.full((300, 300), 128, np.uint8))
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(data / "a/black2.png", compress_level=1)
    write_images(data / "a", 3)
    scan = scan_dataset(data, workers=1).frame
    frame = scan.set_index("path")
    blank = ["a/black.png", "a/black2.png", "a/grey.png"]
    odd = frame.loc[["a/tiny.png", "a/line.png", *blank]]
    assert (odd["status"] == "degenerate").all(), odd[["status", "reason"]]
    assert "smaller than 32" in odd.loc["a/tiny.png", "reason"]
    assert "longer than 10 times" in odd.loc["a/line.png", "reason"]
    assert odd.loc[blank, "reason"].str.contains("blank").all()
    pixels_only = DedupeConfig(use_embeddings=False, geometry=False)
    deduped = deduplicate(scan, None, pixels_only).set_index("path")
    assert deduped.loc[blank, "cluster_id"].isna().all()  # the two black files are no copies


def test_a_report_on_the_current_folder_names_it_and_keeps_its_messages_whole(
    curated, tmp_path, monkeypatch
):
    _, manifests = curated
    here = tmp_path / "here"
    shutil.copytree(manifests, here)
    shutil.copy(here / "scan.parquet", here / "split.parquet")  # a split written by scan
    monkeypatch.chdir(here)
    gone = tmp_path / "gone" / "run"
    page = build_report(Path("."), tmp_path / "report.html", run=gone).read_text()
    assert "split.parquet was written by stage &#x27;scan&#x27;" in page
    assert "Run folder run does not exist" in page and str(tmp_path) not in page


def test_shared_outputs_hold_no_absolute_path_unless_asked(curated, tmp_path):
    data, manifests = curated
    quiet = build_report(manifests, tmp_path / "quiet.html").read_text()
    assert str(tmp_path) not in quiet and str(data.resolve()) not in quiet
    assert f"<code>{data.name}</code>" in quiet
    loud = build_report(manifests, tmp_path / "loud.html", show_paths=True).read_text()
    assert str(data.resolve()) in loud
