"""DICOM read by the one image loader: real radiographs of pydicom-data in every encoding they
come in, the pixel pipeline step by step, and every kind of broken file as a scan row."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from helpers import write_noise_images
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from fracture_curate.cli import app
from fracture_curate.dedupe import DedupeConfig, run_dedupe
from fracture_curate.dicom import DEFAULT_WINDOW, FULL_SCALE, Window, grayscale, is_dicom
from fracture_curate.errors import ConfigError
from fracture_curate.images import ImageLoadError, load_image
from fracture_curate.pseudonyms import KEY_FILE, pseudonym
from fracture_curate.report import build_report
from fracture_curate.scan import scan_dataset


def dicom_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as file:
        return file.read()


def saved(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_is_recognised_by_its_content_not_its_name():
    assert is_dicom(dicom_bytes("RG3_UNCR.dcm"))
    assert not is_dicom(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert not is_dicom(b"DICM")  # the marker counts only after the 128-byte preamble


def test_every_encoding_of_a_real_radiograph_gives_its_picture_bone_bright(ankle_radiograph):
    plain = load_image(dicom_bytes("RG3_UNCR.dcm"))
    assert (plain.format, plain.mode, plain.n_frames) == ("DICOM", "MONOCHROME1", 1)
    assert plain.pixels.dtype == np.uint16 and plain.pixels.shape == (1760, 1760)
    # its own window (centre 550, width 1024) maps the stored values linearly, then inverted
    inverted = ankle_radiograph.astype(float)  # the fixture: stored values, MONOCHROME1 undone
    assert np.corrcoef(plain.pixels.ravel(), inverted.ravel())[0, 1] > 0.999
    assert plain.pixels.max() == FULL_SCALE
    lossless = load_image(dicom_bytes("RG3_J2KR.dcm"))
    assert np.array_equal(lossless.pixels, plain.pixels)
    lossy = load_image(dicom_bytes("RG3_J2KI.dcm"))
    error = np.abs(lossy.pixels.astype(float) - plain.pixels) / FULL_SCALE
    assert 0 < error.mean() < 0.01


def test_monochrome1_is_inverted_back_to_the_intensities_of_its_monochrome2_twin():
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in dataset:
            delattr(dataset, keyword)
    original = load_image(saved(dataset)).pixels
    stored = dataset.pixel_array  # int16
    twin = stored.max().astype(np.int32) + stored.min() - stored
    dataset.PixelData = twin.astype(stored.dtype).tobytes()
    dataset.PhotometricInterpretation = "MONOCHROME1"
    loaded = load_image(saved(dataset))
    assert loaded.mode == "MONOCHROME1"
    assert np.abs(loaded.pixels.astype(int) - original).max() <= 1


def test_a_voi_lut_sequence_is_applied_before_the_window():
    dataset = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    windowed = load_image(saved(dataset)).pixels
    lut = Dataset()
    lut.LUTDescriptor = [1024, 0, 16]
    lut.LUTData = np.linspace(65535, 0, 1024).astype(np.uint16).tobytes()  # a falling ramp
    dataset.VOILUTSequence = Sequence([lut])
    reversed_ = load_image(saved(dataset)).pixels
    assert np.corrcoef(reversed_.ravel(), windowed.ravel())[0, 1] < -0.99


def windowed(values: np.ndarray, low: float, high: float, *, inverted: bool) -> np.ndarray:
    """What a linear window from ``low`` to ``high`` makes of modality ``values``, worked out
    here independently of the loader."""
    scaled = np.clip((values.astype(float) - low) / (high - low), 0, 1)
    pixels = np.rint(scaled * FULL_SCALE)
    return FULL_SCALE - pixels if inverted else pixels


def test_window_chooses_a_preset_a_percentile_range_or_the_whole_range():
    dataset = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))  # MONOCHROME1, no rescale
    dataset.WindowCenter, dataset.WindowWidth = [550, 300], [1024, 201]
    dataset = pydicom.dcmread(io.BytesIO(saved(dataset)))
    values = dataset.pixel_array

    def decoded(text: str) -> tuple[np.ndarray, str]:
        return grayscale(values, dataset, Window.parse(text))

    first, applied = decoded("preset:1")
    assert applied == "window 1 of 2"
    # centre 550, width 1024: from 549.5 - 511.5 to 549.5 + 511.5 (PS3.3 C.11.2.1.2)
    assert np.array_equal(first, windowed(values, 38, 1061, inverted=True))
    assert np.array_equal(load_image(saved(dataset)).pixels, first)  # the default
    second, applied = decoded("preset:2")
    assert applied == "window 2 of 2"
    assert np.array_equal(second, windowed(values, 199.5, 399.5, inverted=True))
    missing, applied = decoded("preset:3")
    assert applied == "window 1 of 2 (no preset 3)" and np.array_equal(missing, first)
    low, high = np.percentile(values, [1, 99])
    ranged, applied = decoded("percentile:1,99")
    assert applied == "percentile 1-99"
    assert np.array_equal(ranged, windowed(values, low, high, inverted=True))
    whole, applied = decoded("full")
    assert applied == "full range"
    assert np.array_equal(whole, windowed(values, values.min(), values.max(), inverted=True))
    del dataset.WindowCenter, dataset.WindowWidth
    bare, applied = grayscale(values, dataset, DEFAULT_WINDOW)
    assert applied == "full range (no preset)" and np.array_equal(bare, whole)


def test_window_picks_among_voi_lut_sequence_items():
    dataset = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ramps = []
    for ramp in (np.linspace(65535, 0, 1024), np.linspace(0, 65535, 1024)):
        lut = Dataset()
        lut.LUTDescriptor = [1024, 0, 16]
        lut.LUTData = ramp.astype(np.uint16).tobytes()
        ramps.append(lut)
    dataset.VOILUTSequence = Sequence(ramps)
    falling = load_image(saved(dataset))
    rising = load_image(saved(dataset), window=Window.parse("preset:2"))
    assert (falling.window, rising.window) == ("VOI LUT 1 of 2", "VOI LUT 2 of 2")
    assert np.corrcoef(falling.pixels.ravel(), rising.pixels.ravel())[0, 1] < -0.99


@pytest.mark.parametrize("text", ["preset:1", "preset:12", "percentile:0.5,99.5", "full"])
def test_a_window_reads_back_from_its_own_text(text):
    assert str(Window.parse(text)) == text


@pytest.mark.parametrize(
    "text", ["", "preset", "preset:0", "preset:x", "percentile:99,1", "percentile:5", "full:1"]
)
def test_a_window_that_is_not_one_is_refused_with_the_forms_accepted(text):
    with pytest.raises(ConfigError, match=r"use preset:N .*percentile:LOW,HIGH .* or full$"):
        Window.parse(text)


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda: dicom_bytes("rtplan.dcm"), "not_image", "DICOM without pixel data (RT Plan"),
        (lambda: dicom_bytes("RG3_UNCR.dcm")[:3_000_000], "truncated", "cannot decode DICOM"),
        (lambda: dicom_bytes("RG3_J2KR.dcm")[:400_000], "truncated", "DICOM"),
        (lambda: dicom_bytes("RG3_UNCR.dcm")[:200], "truncated", "ends before its pixel data"),
    ],
)
def test_a_dicom_that_cannot_be_shown_says_why(make, status, reason):
    with pytest.raises(ImageLoadError) as refused:
        load_image(make())
    assert refused.value.status == status and reason in refused.value.reason


def test_a_transfer_syntax_no_decoder_reads_is_unsupported():
    dataset = pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"))
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2
    with pytest.raises(ImageLoadError) as refused:
        load_image(saved(dataset))
    assert refused.value.status == "unsupported"
    assert (
        refused.value.reason == "no installed decoder reads DICOM MPEG2 Main Profile / Main Level"
    )


def test_jpeg_lossless_and_colour_dicom_decode():
    lossless = load_image(dicom_bytes("JPEG-LL.dcm"))  # process 14: GDCM's
    assert lossless.pixels.dtype == np.uint16 and lossless.pixels.shape == (1024, 256)
    colour = load_image(dicom_bytes("SC_rgb_jpeg.dcm"))
    assert colour.pixels.shape == (256, 256, 3) and colour.pixels.dtype == np.uint8


def test_a_folder_of_dicom_encodings_scans_and_dedupes_as_copies(tmp_path):
    data = tmp_path / "data"
    (data / "ankle").mkdir(parents=True)
    for name in ("RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"):
        shutil.copy(get_testdata_file(name), data / "ankle" / name.removesuffix(".dcm"))
    shutil.copy(get_testdata_file("rtplan.dcm"), data / "ankle" / "plan.dcm")
    frame = scan_dataset(data, workers=1).frame.set_index("path")
    assert frame.loc["ankle/plan.dcm", "status"] == "not_image"
    kept = frame[frame["status"] == "ok"]
    assert (kept["format"] == "DICOM").all() and len(kept) == 3  # no extension needed
    assert kept["lossy"].to_dict() == {
        "ankle/RG3_J2KI": True,
        "ankle/RG3_J2KR": False,
        "ankle/RG3_UNCR": False,
    }
    assert kept.loc["ankle/RG3_J2KR", "pixel_sha256"] == kept.loc["ankle/RG3_UNCR", "pixel_sha256"]
    manifests = tmp_path / "manifests"
    from fracture_curate.scan import run_scan

    run_scan(data, manifests, workers=1)
    result = run_dedupe(manifests, DedupeConfig(use_embeddings=False, geometry=False)).set_index(
        "path"
    )
    cluster = result.loc[["ankle/RG3_UNCR", "ankle/RG3_J2KR", "ankle/RG3_J2KI"]]
    assert cluster["cluster_id"].nunique() == 1
    assert cluster.loc["ankle/RG3_J2KR", "match_kind"] in ("pixels", "bytes")
    assert not cluster.loc["ankle/RG3_J2KI", "is_kept"]  # a lossless encoding is kept


def test_every_stage_decodes_a_dicom_with_the_window_the_scan_chose(tmp_path):
    from fracture_curate.embed import EmbedConfig, embed_manifest
    from fracture_curate.manifest import manifest_path, read_provenance
    from fracture_curate.outliers import run_outliers
    from fracture_curate.report.inputs import Thumbnails
    from fracture_curate.scan import ScanConfig, run_scan
    from fracture_curate.split import run_split
    from fracture_curate.synthetic import generate_dataset
    from fracture_train.rows import load_training_rows

    data = tmp_path / "data"
    generate_dataset(data, layout="class", n_per_class=10, image_size=64, plant=False, seed=1)
    shutil.copy(get_testdata_file("RG3_UNCR.dcm"), data / "fractured" / "ankle.dcm")
    embeddings, thumbnails = {}, {}
    for text, applied in (("preset:1", "window 1 of 1"), ("full", "full range")):
        manifests = tmp_path / text.replace(":", "-")
        scan = run_scan(data, manifests, ScanConfig(window=Window.parse(text)), workers=1).frame
        ankle = scan.set_index("path").loc["fractured/ankle.dcm"]
        assert ankle["window"] == applied
        assert scan.loc[scan["format"] != "DICOM", "window"].isna().all()
        embed = embed_manifest(manifests, EmbedConfig(weights="random", image_size=32), workers=0)
        embeddings[text] = dict(zip(embed.frame["image_id"], embed.frame["embedding"], strict=True))
        run_dedupe(manifests)
        run_outliers(manifests)
        run_split(manifests)
        for stage in ("scan", "embed", "dedupe", "outliers", "split"):
            assert read_provenance(manifest_path(manifests, stage))["params"]["window"] == text
        assert load_training_rows(manifests / "split.parquet").window == Window.parse(text)
        thumbnail = Thumbnails(data, 64, Window.parse(text))
        thumbnails[text] = thumbnail(ankle.to_dict() | {"path": "fractured/ankle.dcm"})
    dicom_id = ankle["image_id"]
    preset, full = embeddings["preset:1"][dicom_id], embeddings["full"][dicom_id]
    assert np.abs(preset - full).max() > 0.01 * np.abs(preset).max()
    others = [image_id for image_id in embeddings["full"] if image_id != dicom_id]
    assert all(np.array_equal(embeddings["full"][i], embeddings["preset:1"][i]) for i in others)
    assert thumbnails["preset:1"] != thumbnails["full"]
    # the same folder scanned again with another window: no embedding of the old one is reused
    run_scan(data, manifests, ScanConfig(window=Window.parse("percentile:1,99")), workers=1)
    again = embed_manifest(manifests, EmbedConfig(weights="random", image_size=32), workers=0)
    assert again.reused == 0 and again.embedded == len(embed.frame)


def test_scan_refuses_a_window_it_cannot_read_in_one_line(tmp_path):
    write_noise_images(tmp_path / "data", ["a.png"])
    out = tmp_path / "manifests"
    result = CliRunner().invoke(
        app, ["scan", str(tmp_path / "data"), "--out", str(out), "--window", "p1-99"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--window 'p1-99' is not a window: use preset:N" in result.output
    assert not out.exists()


def readable(path: Path) -> bytes:
    """A file's bytes, a Parquet table's cells and metadata decompressed (its pages may be)."""
    if path.suffix != ".parquet":
        return path.read_bytes()
    table = pq.read_table(path)
    metadata = b"".join(table.schema.metadata.values()) if table.schema.metadata else b""
    return table.to_pandas().map(str).to_csv().encode() + metadata


#: What the test radiographs' headers say about their patients (RG3, RG1): IDs, names, birth
#: dates, accession numbers. None may reach an output.
IDENTIFIERS = ("11RG3", "9RG1", "CompressedSamples", "19790408", "19400305", "FUJI95706")


@pytest.mark.slow
def test_a_mixed_dicom_and_png_set_curates_trains_and_names_no_patient(tmp_path):
    """Phantoms as PNG and real radiographs as DICOM in one class folder set: every stage and
    the trainer take both, the DICOM copies are clustered and kept out of the split, and no
    output (manifests, report, run folder, command-line output, log) names a patient."""
    from fracture_curate.embed import EmbedConfig, embed_manifest
    from fracture_curate.outliers import run_outliers
    from fracture_curate.scan import run_scan
    from fracture_curate.split import run_split
    from fracture_curate.synthetic import generate_dataset
    from fracture_train.config import TrainConfig
    from fracture_train.evaluate import evaluate_run
    from fracture_train.trainer import train_run

    data, manifests = tmp_path / "data", tmp_path / "manifests"
    generate_dataset(data, layout="class", n_per_class=12, image_size=64, plant=False, seed=3)
    for name in ("RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"):
        shutil.copy(get_testdata_file(name), data / "fractured" / name)
    for name in ("RG1_UNCR.dcm", "RG1_J2KI.dcm"):
        shutil.copy(get_testdata_file(name), data / "not fractured" / name)
    from fracture_curate.scan import ScanConfig

    window = Window.parse("percentile:1,99")  # another window than the default, all the way
    run_scan(data, manifests, ScanConfig(window=window), workers=1)
    embed_manifest(manifests, EmbedConfig(weights="random", image_size=64), workers=0)
    run_dedupe(manifests)
    run_outliers(manifests)
    split = run_split(manifests).set_index("path")
    ankle = split.loc[[f"fractured/RG3_{e}.dcm" for e in ("UNCR", "J2KR", "J2KI")]]
    assert ankle["cluster_id"].nunique() == 1 and ankle["split"].notna().sum() == 1
    assert not ankle.loc[ankle["is_kept"].astype(bool), "lossy"].any()  # a lossless encoding
    assert ankle.loc["fractured/RG3_J2KI.dcm", "excluded_reason"] == "duplicate"
    chest = split.loc[["not fractured/RG1_UNCR.dcm", "not fractured/RG1_J2KI.dcm"]]
    assert chest["cluster_id"].nunique() == 1
    assert chest.loc["not fractured/RG1_UNCR.dcm", "is_kept"]  # lossless over lossy
    logged: list[str] = []
    result = train_run(
        TrainConfig(
            manifest=manifests / "split.parquet",
            out=tmp_path / "run",
            model="fracture_train.models:two_block_cnn",
            image_size=48,
            epochs=1,
            batch_size=8,
            workers=0,
            cache="disk",
            cache_dir=tmp_path / "cache",
        ),
        log=logged.append,
    )
    # the trainer decoded the DICOM rows with the scan's window: its cache holds them so
    from fracture_curate.dataset_files import content_id
    from fracture_curate.model_input import preprocess

    trained_on = ankle.index[ankle["split"].notna()][0]  # the one encoding in the split
    film = (data / trained_on).read_bytes()
    cached = tmp_path / "cache" / "48px-percentile-1,99" / f"{content_id(film)}.npy"
    expected = preprocess(film, 48, "stretch", window)
    assert not np.array_equal(expected, preprocess(film, 48, "stretch"))  # the window matters
    np.testing.assert_array_equal(np.load(cached), expected)
    assert result.metrics["test"]["n"] > 0
    from fracture_train.checkpoint import read_run_config

    assert read_run_config(tmp_path / "run").preprocessing.window == str(window)
    evaluated = evaluate_run(tmp_path / "run", manifests / "split.parquet", workers=0)
    used = split["split"].notna().sum()
    assert evaluated.metrics["all"]["n"] == used  # DICOM rows and PNG rows alike
    report = build_report(manifests, tmp_path / "report.html", run=tmp_path / "run")
    summary = report.read_text(encoding="utf-8")
    assert "Kept DICOM files: modality, body part, view" in summary
    assert "<th>CR / EXTREMITY / AP</th><td>3</td>" in summary
    cli = CliRunner().invoke(app, ["scan", str(data), "--out", str(tmp_path / "again")])
    assert cli.exit_code == 0, cli.output
    # de-identification: no patient id, name, birth date or accession number in any output
    outputs = [p for p in tmp_path.rglob("*") if p.is_file() and data not in p.parents]
    outputs = [p for p in outputs if p.name != KEY_FILE]
    assert len(outputs) > 10
    texts = [readable(p) for p in outputs] + [cli.output.encode(), "\n".join(logged).encode()]
    for secret in IDENTIFIERS:
        assert not any(secret.encode() in text for text in texts), secret


def test_header_columns_are_read_and_identifiers_pseudonymised(tmp_path):
    data = tmp_path / "data"
    (data / "ankle").mkdir(parents=True)
    for name in ("RG3_UNCR.dcm", "RG3_J2KI.dcm"):
        shutil.copy(get_testdata_file(name), data / "ankle" / name)
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), data / "ankle" / "chest.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), data / "ankle" / "ct.dcm")  # another modality
    from fracture_curate.scan import run_scan, summarise_scan

    write_noise_images(tmp_path / "plain", ["a.png"])
    run_scan(tmp_path / "plain", tmp_path / "plain-manifests", workers=1)
    assert not (tmp_path / "plain-manifests" / KEY_FILE).exists()  # no DICOM, no key to keep
    result = run_scan(data, tmp_path / "manifests", workers=1)
    assert summarise_scan(result.frame)["imaged"]["files"].to_dict() == {
        "CR / CHEST / PA": 1,
        "CR / EXTREMITY / AP": 2,
        "CT / (none) / (none)": 1,
    }
    key_file = tmp_path / "manifests" / KEY_FILE
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = bytes.fromhex(key_file.read_text().strip())
    frame = result.frame.set_index("path")
    ankle = frame.loc["ankle/RG3_UNCR.dcm"]
    assert ankle[["modality", "body_region", "view_position", "bits_stored"]].tolist() == [
        "CR",
        "EXTREMITY",
        "AP",
        10,
    ]
    assert ankle["manufacturer"] == "FUJI PHOTO FILM CO. LTD."
    assert ankle["patient_id"] == pseudonym(key, "11RG3") != "11RG3"
    assert frame.loc["ankle/RG3_J2KI.dcm", "patient_id"] == ankle["patient_id"]
    assert frame.loc["ankle/chest.dcm", "patient_id"] == pseudonym(key, "9RG1")
    assert ankle["study_id"] == pseudonym(key, "1.3.6.1.4.1.5962.1.2.11.20040826185059.5457")
    assert [s.name for s in result.patient_sources] == ["dicom"]
    again = run_scan(data, tmp_path / "manifests", workers=1).frame  # the same key, kept
    assert again["patient_id"].equals(result.frame["patient_id"])
    other = tmp_path / "other.key"
    other.write_text("ab" * 32)
    renamed = run_scan(data, tmp_path / "elsewhere", workers=1, key_file=other).frame
    assert not (renamed["patient_id"].dropna() == result.frame["patient_id"].dropna()).any()
