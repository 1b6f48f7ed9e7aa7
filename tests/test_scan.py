"""``curate scan`` on real files: every layout, every kind of bad input, the manifest it writes."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import noise_image, png_header_only, save_gray, write_noise_images
from PIL import Image
from typer.testing import CliRunner

from fracture_curate.cli import app
from fracture_curate.layouts import (
    FileLabels,
    LayoutError,
    detect_layout,
    labels_from_path,
    layout_folder,
)
from fracture_curate.manifest import read_manifest, read_provenance
from fracture_curate.scan import ScanConfig, scan_dataset
from fracture_curate.schema import SCAN_COLUMNS

runner = CliRunner()


@pytest.mark.parametrize(
    ("layout", "paths", "expected"),
    [
        (
            "class",
            ["fractured/a.png", "not fractured/b.png"],
            [("fractured", None), ("not fractured", None)],
        ),
        (
            "split-class",
            ["train/fractured/a.png", "Valid/not fractured/b.png", "TEST/fractured/c.png"],
            [("fractured", "train"), ("not fractured", "val"), ("fractured", "test")],
        ),
        (
            "class-split",
            ["Comminuted/Train/a.jpg", "Greenstick/Test/b.jpg", "Greenstick/Train/c.jpg"],
            [("Comminuted", "train"), ("Greenstick", "test"), ("Greenstick", "train")],
        ),
    ],
)
def test_folder_layouts_are_detected_and_labelled(tmp_path, layout, paths, expected):
    write_noise_images(tmp_path, paths)
    result = scan_dataset(tmp_path, workers=1)
    assert result.layout == layout
    frame = result.frame.set_index("path").loc[paths]
    splits = [None if pd.isna(split) else split for split in frame["source_split"]]
    assert list(zip(frame["label"], splits, strict=True)) == expected
    assert (frame["status"] == "ok").all()


def test_mura_layout_gives_patient_study_and_region(tmp_path):
    paths = [
        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png",
        "MURA-v1.1/train/XR_WRIST/patient00001/study2_negative/image1.png",
        "MURA-v1.1/valid/XR_ELBOW/patient11185/study1_negative/image2.png",
    ]
    write_noise_images(tmp_path, paths)
    result = scan_dataset(tmp_path, workers=1)
    assert result.layout == "mura"
    frame = result.frame.set_index("path").loc[paths]
    assert frame["label"].tolist() == ["positive", "negative", "negative"]
    assert frame["source_split"].tolist() == ["train", "train", "val"]
    assert frame["patient_id"].tolist() == ["patient00001", "patient00001", "patient11185"]
    assert frame["study_id"].tolist() == [
        "patient00001/study1",
        "patient00001/study2",
        "patient11185/study1",
    ]
    assert frame["body_region"].tolist() == ["WRIST", "WRIST", "ELBOW"]


def test_labels_csv(tmp_path):
    write_noise_images(tmp_path / "images", ["a.png", "b.png", "c.png"])
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label,split,patient_id\n"
        "images/a.png,fractured,train,p1\n"
        "images/b.png,not fractured,Test,p2\n"
        "images/missing.png,fractured,train,p3\n"
    )
    result = scan_dataset(tmp_path, ScanConfig(labels_csv=csv), workers=1)
    assert result.layout == "csv"
    frame = result.frame.set_index("path")
    assert frame.loc["images/a.png", "label"] == "fractured"
    assert frame.loc["images/b.png", "source_split"] == "test"
    assert frame.loc["images/b.png", "patient_id"] == "p2"
    assert pd.isna(frame.loc["images/c.png", "label"])  # found but not in the CSV
    assert frame.loc["labels.csv", "status"] == "table"  # found, so recorded, as what it is
    assert result.unmatched_labels == ["images/missing.png"]


def test_labels_csv_without_label_column_is_a_clear_error(tmp_path):
    write_noise_images(tmp_path, ["a.png"])
    csv = tmp_path / "labels.csv"
    csv.write_text("path,diagnosis\na.png,fractured\n")
    with pytest.raises(LayoutError, match="lacks column"):
        scan_dataset(tmp_path, ScanConfig(labels_csv=csv), workers=1)


def test_forced_layout_overrides_detection(tmp_path):
    write_noise_images(tmp_path, ["train/fractured/a.png", "train/fractured/b.png"])
    assert detect_layout(["train/fractured/a.png"]) == "split-class"
    result = scan_dataset(tmp_path, ScanConfig(layout="class"), workers=1)
    assert result.frame["label"].tolist() == ["train", "train"]


def fracatlas_style(root: Path) -> list[str]:
    """Images in one folder, their labels in a CSV at the root (FracAtlas' shape)."""
    names = [f"images/IMG{i:04d}.png" for i in range(4)]
    write_noise_images(root, names)
    rows = [f"{name},{'fractured' if i % 2 else 'not fractured'}" for i, name in enumerate(names)]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return names


def test_a_labels_csv_at_the_root_refuses_the_folder_layout_detected(tmp_path):
    fracatlas_style(tmp_path)
    with pytest.raises(LayoutError, match=r"one class.*labels\.csv names 4 of the files.*--labels"):
        scan_dataset(tmp_path, workers=1)
    result = runner.invoke(app, ["scan", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0  # one line, naming the option to pass
    assert f"--labels {tmp_path / 'labels.csv'}" in result.output.replace("\n", "")
    assert not (tmp_path / "m" / "scan.parquet").exists()


def test_the_labels_csv_read_as_told_is_a_table_row_and_labels_every_image(tmp_path):
    names = fracatlas_style(tmp_path)
    result = scan_dataset(tmp_path, ScanConfig(labels_csv=tmp_path / "labels.csv"), workers=1)
    frame = result.frame.set_index("path")
    assert frame.loc["labels.csv", "status"] == "table"
    assert frame.loc[names, "label"].notna().all()
    assert result.layout_warnings == ()
    assert result.layout_explained == "csv, labels from the labels CSV (--labels)"


def test_a_forced_layout_against_the_evidence_is_warned_about(tmp_path):
    fracatlas_style(tmp_path)
    result = scan_dataset(tmp_path, ScanConfig(layout="class"), workers=1)
    assert result.layout_explained.startswith("class, as forced with --layout")
    assert result.layout_warnings == (
        "one class only ('images'): a classifier needs two or more; is this the right layout "
        "(--layout, --labels)?",
    )
    write_noise_images(tmp_path / "more", ["fractured/a.png", "not fractured/b.png"])
    result = scan_dataset(tmp_path / "more", ScanConfig(layout="mura"), workers=1)
    assert result.frame["label"].isna().all()
    assert len(result.layout_warnings) == 1
    assert result.layout_warnings[0].startswith(
        "2 of 2 kept images get no label from the mura layout: their paths do not fit "
        ".../XR_<REGION>/patient<ID>/study<N>_{positive,negative}/..."
    )
    output = runner.invoke(
        app, ["scan", str(tmp_path / "more"), "--layout", "mura", "--out", str(tmp_path / "m")]
    ).output
    assert "warning: 2 of 2 kept images get no label from the mura layout" in output


def test_the_detected_layout_is_explained_and_image_lists_do_not_block_it(tmp_path):
    paths = [
        "train/XR_WRIST/patient00001/study1_positive/image1.png",
        "train/XR_WRIST/patient00002/study1_negative/image1.png",
    ]
    write_noise_images(tmp_path / "MURA", paths)
    # MURA's own path lists name every image, from the folder above the root
    (tmp_path / "MURA" / "train_image_paths.csv").write_text(
        "".join(f"MURA-v1.1/{path}\n" for path in paths)
    )
    result = scan_dataset(tmp_path / "MURA", workers=1)
    assert result.layout == "mura"
    assert result.layout_explained == (
        "mura, detected: 2 of 2 files fit "
        ".../XR_<REGION>/patient<ID>/study<N>_{positive,negative}/... (--layout forces another)"
    )
    assert result.frame.set_index("path").loc["train_image_paths.csv", "status"] == "table"
    assert result.layout_warnings == ()


def test_a_csv_that_names_no_image_stays_not_an_image(tmp_path):
    write_noise_images(tmp_path, ["fractured/a.png", "not fractured/b.png"])
    (tmp_path / "notes.csv").write_text("reader,comment\nA,fine\nB,blurred\n")
    result = scan_dataset(tmp_path, workers=1)
    assert result.frame.set_index("path").loc["notes.csv", "status"] == "not_image"
    assert result.layout == "class"


def bad_files(root):
    """One file of every bad kind, with the status it must get."""
    good = io.BytesIO()
    Image.fromarray(noise_image(7, size=(200, 200))).save(good, format="JPEG", quality=90)
    png = io.BytesIO()
    Image.fromarray(noise_image(8, size=(200, 200))).save(png, format="PNG")
    damaged = bytearray(png.getvalue())
    damaged[300:400] = bytes(100)
    files = {
        "fractured/zero.png": (b"", "empty"),
        "fractured/truncated.jpg": (good.getvalue()[:2000], "truncated"),
        "fractured/truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "truncated"),
        "fractured/damaged.png": (bytes(damaged), "corrupt"),
        "fractured/notes.jpg": (b"radiologist notes, not an image\n", "not_image"),
        "fractured/random.jpeg": (np.random.default_rng(0).bytes(5000), "not_image"),
        "fractured/bomb.png": (png_header_only(40_000, 40_000), "too_large"),
    }
    for relative, (data, _) in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    gif = root / "not fractured/anim.gif"
    gif.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(noise_image(i)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    Image.fromarray(noise_image(9)).save(root / "not fractured/photo.webp")
    files["not fractured/anim.gif"] = (b"", "dropped_format")
    files["not fractured/photo.webp"] = (b"", "dropped_format")
    os.symlink(root / "nowhere.png", root / "fractured/broken-link.png")
    files["fractured/broken-link.png"] = (b"", "unreadable")
    os.mkfifo(root / "fractured/pipe.png")
    files["fractured/pipe.png"] = (b"", "unreadable")
    save_gray(root / "fractured/good.jpg", noise_image(10), quality=90)
    files["fractured/good.jpg"] = (b"", "ok")
    return {relative: status for relative, (_, status) in files.items()}


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_input_never_stops_the_scan(tmp_path, workers):
    expected = bad_files(tmp_path)
    result = scan_dataset(tmp_path, workers=workers)
    frame = result.frame.set_index("path")
    assert len(frame) == len(expected)  # one row per file found
    assert frame["status"].to_dict() == expected
    bad = frame[frame["status"] != "ok"]
    assert bad["reason"].notna().all() and (bad["reason"].str.len() > 5).all()
    assert not bad["reason"].str.contains("\n").any()
    assert frame.loc["not fractured/anim.gif", "format"] == "GIF"
    assert frame.loc["fractured/zero.png", "bytes"] == 0


def test_a_file_the_system_refuses_to_read_is_unreadable(tmp_path, monkeypatch):
    write_noise_images(tmp_path, ["fractured/a.png", "fractured/b.png"])
    refused = (tmp_path / "fractured/a.png").resolve()
    read_bytes = Path.read_bytes

    def denied(path: Path) -> bytes:  # what chmod 0 does, for users other than root
        if path == refused:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    frame = scan_dataset(tmp_path, workers=1).frame
    assert frame["status"].tolist() == ["unreadable", "ok"]
    assert frame.loc[0, "reason"] == "permission denied"


def test_format_is_read_from_content_not_name(tmp_path):
    save_gray(tmp_path / "fractured/looks-like.jpg", noise_image(1), format="PNG")
    frame = scan_dataset(tmp_path, ScanConfig(formats=("JPEG",)), workers=1).frame
    assert frame.loc[0, "format"] == "PNG"
    assert frame.loc[0, "extension"] == "jpg"
    assert frame.loc[0, "status"] == "dropped_format"


def test_stats_on_real_radiographs(tmp_path, ankle_radiograph, ankle_radiograph_lossy):
    save_gray(tmp_path / "ankle/lossless.png", ankle_radiograph)
    save_gray(tmp_path / "ankle/lossy-as-png.png", ankle_radiograph_lossy)
    save_gray(tmp_path / "ankle/copy.png", ankle_radiograph, compress_level=1)
    rgb = np.repeat((ankle_radiograph >> 2).astype(np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "ankle/rgb.png")
    frame = scan_dataset(tmp_path, workers=1).frame.set_index("path")
    lossless = frame.loc["ankle/lossless.png"]
    assert (lossless["width"], lossless["height"], lossless["bit_depth"]) == (1760, 1760, 16)
    assert lossless["is_grayscale"] and lossless["mode"] == "I;16"
    assert lossless["colour_count"] == len(np.unique(ankle_radiograph))
    assert lossless["mean_intensity"] == pytest.approx(ankle_radiograph.mean() / 65535)
    # Different bytes, identical pixels: different image_id, same pixel hash.
    copy = frame.loc["ankle/copy.png"]
    assert copy["image_id"] != lossless["image_id"]
    assert copy["pixel_sha256"] == lossless["pixel_sha256"]
    assert frame.loc["ankle/lossy-as-png.png", "pixel_sha256"] != lossless["pixel_sha256"]
    rgb_row = frame.loc["ankle/rgb.png"]
    assert rgb_row["is_grayscale"] and rgb_row["bit_depth"] == 8 and rgb_row["mode"] == "RGB"


def test_cli_writes_a_manifest_with_provenance(tmp_path):
    data = tmp_path / "data"
    write_noise_images(data, ["train/fractured/a.png", "val/not fractured/b.png"])
    shutil.copy(data / "train/fractured/a.png", data / "train/fractured/a-copy.png")
    (data / "train/fractured/empty.png").write_bytes(b"")
    out = tmp_path / "manifests"
    result = runner.invoke(app, ["scan", str(data), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "split-class" in result.output and "Files by status" in result.output
    frame = read_manifest(out / "scan.parquet", stage="scan")
    assert list(frame.columns) == list(SCAN_COLUMNS)
    assert len(frame) == 4
    assert str(frame["width"].dtype) == "Int64" and str(frame["is_grayscale"].dtype) == "boolean"
    assert frame["mean_intensity"].dtype.kind == "f"
    copies = frame[frame["path"].str.contains("/a")]
    assert copies["image_id"].nunique() == 1
    provenance = read_provenance(out / "scan.parquet")
    assert provenance["stage"] == "scan"
    assert provenance["params"]["layout"] == "split-class"
    assert provenance["tool_version"]
    assert not list(out.glob(".*.tmp"))  # no temp file left behind


def test_cli_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["scan", str(tmp_path), "--layout", "bogus"])
    assert result.exit_code == 2
    assert "unknown layout 'bogus'" in result.output
    assert "Traceback" not in result.output


def test_output_folder_inside_root_is_not_scanned(tmp_path):
    write_noise_images(tmp_path, ["fractured/a.png"])
    out = tmp_path / "manifests"
    for _ in range(2):
        assert runner.invoke(app, ["scan", str(tmp_path), "--out", str(out)]).exit_code == 0
    assert read_manifest(out / "scan.parquet")["path"].tolist() == ["fractured/a.png"]


@pytest.mark.parametrize(
    ("layout", "folder_args", "labels"),
    [
        ("class", ("not fractured",), FileLabels(label="not fractured")),
        ("split-class", ("fractured", "Valid"), FileLabels("fractured", "val")),
        ("class-split", ("Greenstick", "Train"), FileLabels("Greenstick", "train")),
        (
            "mura",
            ("positive", "valid"),
            FileLabels("positive", "val", "patient00007", "patient00007/study2", "WRIST"),
        ),
    ],
)
def test_a_layout_s_folder_reads_back_as_its_labels(layout, folder_args, labels):
    extra = {"region": "WRIST", "patient": "patient00007", "study": "study2"}
    folder = layout_folder(layout, *folder_args, **(extra if layout == "mura" else {}))
    assert labels_from_path(f"{folder}/image1.png", layout) == labels
    with pytest.raises(LayoutError):
        layout_folder("csv", "fractured")


def test_scan_reports_progress_through_the_callback(tmp_path):
    write_noise_images(tmp_path, [f"a/{index}.png" for index in range(3)])
    calls = []
    scan_dataset(tmp_path, workers=1, on_progress=lambda *call: calls.append(call))
    assert [call[:3] for call in calls] == [("scanning", done, 3) for done in range(4)]


def test_intensity_statistics_are_fractions_of_full_scale(tmp_path):
    half = np.zeros((40, 40), np.uint8)
    half[:, 20:] = 255  # mean 0.5, standard deviation 0.5 (a variance would read 0.25)
    save_gray(tmp_path / "a" / "half.png", half)
    deep = np.full((40, 40), 1000, np.uint16)
    deep[:20] = 3000
    save_gray(tmp_path / "a" / "deep.png", deep)
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 0] = 255  # pure red: luminance 0.299
    Image.fromarray(colour).save(tmp_path / "a" / "red.png")
    frame = scan_dataset(tmp_path, workers=1).frame.set_index("path")
    assert frame.loc["a/half.png", "mean_intensity"] == pytest.approx(0.5)
    assert frame.loc["a/half.png", "std_intensity"] == pytest.approx(0.5)
    assert frame.loc["a/half.png", "colour_count"] == 2 and frame.loc["a/half.png", "is_grayscale"]
    assert frame.loc["a/deep.png", "mean_intensity"] == pytest.approx(2000 / 65535)
    assert frame.loc["a/deep.png", "std_intensity"] == pytest.approx(1000 / 65535)
    assert frame.loc["a/deep.png", "bit_depth"] == 16
    assert frame.loc["a/red.png", "mean_intensity"] == pytest.approx(0.299, abs=1e-3)
    assert (
        not frame.loc["a/red.png", "is_grayscale"] and frame.loc["a/red.png", "colour_count"] == 1
    )


def test_a_flat_folder_with_a_labels_csv_is_refused_for_giving_no_labels(tmp_path):
    write_noise_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "train.csv").write_text("image,finding\na.png,fractured\nb.png,normal\n")
    with pytest.raises(LayoutError, match=r"\(none layout\) give no labels, and train\.csv"):
        scan_dataset(tmp_path, workers=1)
    forced = scan_dataset(tmp_path, ScanConfig(layout="none"), workers=1)
    assert forced.layout_warnings == ()  # no labels asked for, none missing


def test_the_open_border_is_the_share_of_the_most_open_side_that_the_picture_reaches(tmp_path):
    rng = np.random.default_rng(0)
    picture = rng.integers(60, 200, (64, 64), dtype=np.uint8)  # runs off every side
    framed = np.zeros_like(picture)
    framed[8:56, 8:56] = picture[8:56, 8:56]  # a flat black frame all round
    half = np.zeros_like(picture)
    half[:, 32:] = picture[:, 32:]  # open on the right, half open on top and bottom
    for name, pixels in {"picture": picture, "framed": framed, "half": half}.items():
        save_gray(tmp_path / "a" / f"{name}.png", pixels)
    turned = Image.fromarray(picture).rotate(5, expand=True, fillcolor=30)
    turned.save(tmp_path / "a" / "turned.png")  # the picture touches each side at one point
    grain = rng.integers(0, 200, (64, 64)).astype(np.uint16)  # under a grey level of 255
    deep = 1000 + grain
    deep[8:56, 8:56] = picture[8:56, 8:56].astype(np.uint16) * 257
    save_gray(tmp_path / "a" / "deep.png", deep)
    frame = scan_dataset(tmp_path, workers=1).frame.set_index("path")
    assert frame.loc["a/picture.png", "open_border"] > 0.9
    assert frame.loc["a/framed.png", "open_border"] == 0.0
    assert frame.loc["a/half.png", "open_border"] > 0.9  # the most open side, not the mean
    assert frame.loc["a/turned.png", "open_border"] < 0.1
    assert frame.loc["a/deep.png", "open_border"] == 0.0  # in grey levels of 255, at any depth


def test_a_table_naming_files_by_their_bare_names_is_found_too(tmp_path):
    """FracAtlas' dataset.csv names IMG0000019.jpg; the file is images/Fractured/IMG0000019.jpg."""
    write_noise_images(tmp_path, ["images/Fractured/IMG1.png", "images/Fractured/IMG2.png"])
    (tmp_path / "dataset.csv").write_text("image_id,fractured\nIMG1.png,1\nIMG2.png,0\n")
    with pytest.raises(LayoutError, match=r"one class, and dataset\.csv names 2 of the files"):
        scan_dataset(tmp_path, workers=1)
