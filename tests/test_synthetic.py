"""Tests of the synthetic dataset generator: real files on disk, checked against the record."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, features

from fracture_curate.errors import ConfigError
from fracture_curate.scan import scan_dataset
from fracture_curate.synthetic import (
    FRACTURE_KINDS,
    GENERATED_LAYOUTS,
    PLANTED_KINDS,
    RECORD_COLUMNS,
    draw_outlier,
    draw_phantom,
    generate_dataset,
)
from fracture_curate.synthetic.planting import PLANTERS

SIZE = 128
CLASSES = ("fractured", "not fractured")
BROKEN_KINDS = {"corrupt", "truncated", "zero_byte"}
NAME = r"[0-9a-f]{10}\.(?:jpg|png|gif|webp)"
PATH_PATTERNS = {
    "class": rf"(?P<label>[^/]+)/{NAME}",
    "split-class": rf"(?P<split>train|val|test)/(?P<label>[^/]+)/{NAME}",
    "class-split": rf"(?P<label>[^/]+)/(?P<split>Train|Test)/{NAME}",
    "mura": r"(?P<split>train|valid)/XR_[A-Z]+/(?P<patient>patient\d{5})/"
    r"study\d+_(?P<label>positive|negative)/image\d+\.(?:jpg|png|gif|webp)",
    "csv": rf"images/{NAME}",
}


def files_under(root: Path) -> set[str]:
    """Relative POSIX paths of all files under root, without the generator's CSV files."""
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    return found - {"planted.csv", "labels.csv"}


def loads(path: Path) -> bool:
    """Whether Pillow can open and fully decode the file."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def lossless(*paths: Path) -> bool:
    return all(p.suffix == ".png" for p in paths)


@pytest.fixture(scope="module", params=GENERATED_LAYOUTS)
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    layout = request.param
    root = tmp_path_factory.mktemp(layout) / "data"
    record = generate_dataset(root, layout=layout, n_per_class=8, image_size=SIZE, seed=1)
    return layout, root, record


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A set with several copies of every sourced kind, from both PNG and JPEG originals."""
    root = tmp_path_factory.mktemp("copies") / "data"
    counts = dict.fromkeys(PLANTED_KINDS, 4)
    record = generate_dataset(
        root, n_per_class=20, image_size=SIZE, png_fraction=0.5, plant_counts=counts, seed=7
    )
    return root, record


def test_files_on_disk_equal_the_record(dataset) -> None:
    _, root, record = dataset
    assert list(record.columns) == list(RECORD_COLUMNS)
    assert files_under(root) == set(record["path"])
    assert record["path"].is_unique
    on_disk = pd.read_csv(root / "planted.csv", dtype=str, keep_default_na=False)
    expected = record.astype(object).where(record.notna(), "").astype(str)
    pd.testing.assert_frame_equal(on_disk, expected, check_dtype=False)
    assert not list(root.rglob("*.tmp"))


def test_files_sit_inside_the_layout(dataset) -> None:
    layout, root, record = dataset
    for row in record.itertuples():
        match = re.fullmatch(PATH_PATTERNS[layout], row.path)
        assert match, f"{row.path} does not fit the {layout} layout"
        groups = match.groupdict()
        if "label" in groups:
            assert groups["label"] == row.label
        if "split" in groups:
            assert groups["split"] == row.split
        if "patient" in groups:
            assert groups["patient"] == row.patient_id
    labels = ("positive", "negative") if layout == "mura" else CLASSES
    originals = record[record["kind"] == "original"]
    assert (originals["label"].value_counts() == 8).all()
    assert set(originals["label"]) == set(labels)
    if layout == "class":
        assert record["split"].isna().all()
    if layout == "split-class":
        assert originals["split"].value_counts().to_dict() == {"train": 12, "val": 2, "test": 2}
    if layout == "class-split":
        assert originals["split"].value_counts().to_dict() == {"Train": 12, "Test": 4}
    if layout == "csv":
        listed = pd.read_csv(root / "labels.csv", dtype=str)
        assert list(listed.columns) == ["path", "label", "split", "patient_id"]
        pd.testing.assert_frame_equal(
            listed, record[["path", "label", "split", "patient_id"]].astype(str)
        )
        # a patient's originals stay within one split
        assert (originals.groupby("patient_id")["split"].nunique() == 1).all()


def test_every_applicable_kind_is_planted(dataset) -> None:
    layout, _, record = dataset
    expected = set(PLANTED_KINDS) | {"original"}
    if layout == "class":
        expected.discard("cross_split")
    if not features.check("webp"):
        expected.discard("webp")
    assert set(record["kind"]) == expected
    assert (record["kind"].value_counts() >= 1).all()
    sourced = record[record["source_path"].notna()]
    assert set(sourced["source_path"]) <= set(record.loc[record["kind"] == "original", "path"])
    # different planted kinds come from different originals while there are enough
    assert sourced["source_path"].is_unique
    unsourced = {"outlier", "gif", "webp", "corrupt", "zero_byte"}
    assert record.loc[record["kind"].isin(unsourced), "source_path"].isna().all()


def test_files_open_as_their_kind(dataset) -> None:
    layout, root, record = dataset
    for row in record.itertuples():
        path = root / row.path
        if row.kind in BROKEN_KINDS:
            assert not loads(path), f"{row.kind} {row.path} should not load"
            continue
        assert loads(path), f"{row.kind} {row.path} should load"
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
        expected_fmt = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP"}
        assert fmt == expected_fmt[path.suffix]
        if row.kind == "gif":
            assert fmt == "GIF"
        elif row.kind == "webp":
            assert fmt == "WEBP"
        elif row.kind == "outlier":
            assert mode == "RGB"
        else:
            assert mode == "L"
        if row.kind == "original":
            assert img.size == (SIZE, SIZE)
            if layout == "mura":
                assert fmt == "PNG"
    assert (root / record.loc[record["kind"] == "zero_byte", "path"].iloc[0]).stat().st_size == 0


def test_mura_patients_and_studies(tmp_path: Path) -> None:
    record = generate_dataset(tmp_path / "mura", layout="mura", n_per_class=12, image_size=SIZE)
    originals = record[record["kind"] == "original"]
    assert set(originals["label"]) == {"positive", "negative"}
    assert (originals["true_label"] == originals["label"]).all()
    study = originals["path"].str.rsplit("/", n=1).str[0]
    assert all(s.endswith(f"_{label}") for s, label in zip(study, originals["label"], strict=True))
    assert study.value_counts().max() <= 3
    patients = originals.assign(study=study).groupby("patient_id")
    assert (patients["study"].nunique() <= 3).all()
    assert patients.ngroups >= 3
    # the images of a study are numbered 1..K, planted files included
    for folder, group in record.groupby(record["path"].str.rsplit("/", n=1).str[0]):
        numbers = sorted(int(re.search(r"image(\d+)", p).group(1)) for p in group["path"])
        assert numbers == list(range(1, len(group) + 1)), folder


@pytest.mark.parametrize("layout", ["class", "split-class", "class-split", "mura"])
def test_folder_layouts_scan_back_to_the_record(layout: str, tmp_path: Path) -> None:
    root = tmp_path / layout
    record = generate_dataset(root, layout=layout, n_per_class=6, image_size=64, seed=2)
    result = scan_dataset(root, workers=1)
    assert result.layout == layout
    scanned = result.frame.set_index("path")
    kept = scanned[scanned["status"] == "ok"]
    recorded = record.set_index("path").loc[kept.index]
    assert set(recorded["kind"]) >= {"original", "exact_copy", "other_class"}
    normalised = {"Train": "train", "Test": "test", "valid": "val"}
    expected_split = recorded["split"].replace(normalised).fillna("(none)")  # class: no splits
    assert kept["label"].tolist() == recorded["label"].tolist()
    assert kept["source_split"].fillna("(none)").tolist() == expected_split.tolist()


def test_exact_and_truncated_copies(copies) -> None:
    root, record = copies
    for row in record[record["kind"].isin(["exact_copy", "truncated"])].itertuples():
        data, source = (root / row.path).read_bytes(), (root / row.source_path).read_bytes()
        if row.kind == "exact_copy":
            assert data == source
        else:
            assert source.startswith(data)
            assert 0.39 <= len(data) / len(source) <= 0.61


def test_flipped_and_rotated90_copies(copies) -> None:
    root, record = copies
    rows = record[record["kind"].isin(["flipped", "rotated90"])]
    assert len(rows) == 8
    for row in rows.itertuples():
        path, source = root / row.path, root / row.source_path
        if row.kind == "flipped":
            axis = 1 if row.detail == "flip=horizontal" else 0
            expected = np.flip(pixels(source), axis=axis)
        else:
            angle = int(row.detail.removeprefix("angle="))
            expected = np.rot90(pixels(source), k=angle // 90)
        got = pixels(path)
        assert got.shape == expected.shape
        if lossless(path, source):
            assert np.array_equal(got, expected)
        else:
            assert mad(got, expected) < 3.0
            assert mad(got, pixels(source)) > 5.0  # the transform really happened


def test_resized_cropped_and_rotated_small_copies(copies) -> None:
    root, record = copies
    for row in record[record["kind"].isin(["resized", "cropped", "rotated_small"])].itertuples():
        got, source = pixels(root / row.path), pixels(root / row.source_path)
        value = float(row.detail.split("=")[1])
        if row.kind == "resized":
            assert 0.5 <= value <= 0.8
            assert got.shape == tuple(round(s * value) for s in source.shape)
            small = Image.fromarray(source.astype(np.uint8)).resize(got.shape[::-1])
            assert mad(got, np.asarray(small, dtype=np.float32)) < 4.0
        elif row.kind == "cropped":
            assert 0.03 <= value <= 0.10
            dh, dw = np.subtract(source.shape, got.shape)
            assert dh == dw == round(SIZE * value)
            # the copy is a window of the source
            best = min(
                mad(got, source[t : t + got.shape[0], left : left + got.shape[1]])
                for t, left in itertools.product(range(dh + 1), range(dw + 1))
            )
            assert best == 0.0 if lossless(root / row.path, root / row.source_path) else best < 3
        else:
            assert 2.0 <= abs(value) <= 10.0
            assert all(g > s for g, s in zip(got.shape, source.shape, strict=True))


def test_brightness_and_reencoded_copies(copies) -> None:
    root, record = copies
    for row in record[record["kind"].isin(["brightness", "reencoded"])].itertuples():
        path, source_path = root / row.path, root / row.source_path
        got, source = pixels(path), pixels(source_path)
        assert got.shape == source.shape
        if row.kind == "brightness":
            factor = float(row.detail.removeprefix("factor="))
            assert 0.8 <= factor <= 0.9 or 1.1 <= factor <= 1.2
            mid = (source > 30) & (source < 200)
            assert got[mid].mean() / source[mid].mean() == pytest.approx(factor, abs=0.03)
        else:
            assert path.read_bytes() != source_path.read_bytes()
            assert path.suffix == ".jpg" or source_path.suffix == ".jpg"
            assert mad(got, source) < 4.0


def test_label_conflicts_and_split_leaks_are_pixel_exact(copies) -> None:
    root, record = copies
    originals = record[record["kind"] == "original"].set_index("path")
    rows = record[record["kind"].isin(["other_class", "cross_split"])]
    assert len(rows) == 8
    for row in rows.itertuples():
        source = originals.loc[row.source_path]
        assert row.true_label == source["label"]
        if row.kind == "other_class":
            assert row.label != source["label"]
            assert row.split == source["split"]
        else:
            assert row.label == source["label"]
            assert row.split != source["split"]
        assert np.array_equal(pixels(root / row.path), pixels(root / row.source_path))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, bytes]:
        return {p: (root / p).read_bytes() for p in files_under(root) | {"planted.csv"}}

    args = {"layout": "class-split", "n_per_class": 4, "image_size": SIZE}
    generate_dataset(tmp_path / "a", seed=3, **args)
    generate_dataset(tmp_path / "b", seed=3, **args)
    generate_dataset(tmp_path / "c", seed=4, **args)
    a, b, c = (snapshot(tmp_path / name) for name in "abc")
    assert a == b
    assert set(a) != set(c)
    assert sorted(a.values()) != sorted(c.values())


def test_refuses_a_foreign_folder_but_regenerates_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"planted\.csv"):
        generate_dataset(foreign, n_per_class=2, image_size=SIZE)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    own = tmp_path / "own"
    generate_dataset(own, layout="class", n_per_class=3, image_size=SIZE, seed=0)
    (own / "fractured" / "stale.png").write_bytes(b"old")
    record = generate_dataset(own, layout="csv", n_per_class=2, image_size=SIZE, seed=1)
    assert files_under(own) == set(record["path"])


def test_plant_counts_and_unplanted_sets(tmp_path: Path) -> None:
    bare = generate_dataset(tmp_path / "bare", layout="class", n_per_class=3, plant=False)
    assert set(bare["kind"]) == {"original"}
    assert len(bare) == 6
    counts = {"exact_copy": 3, "cross_split": 2, "outlier": 2}
    record = generate_dataset(
        tmp_path / "counted", layout="class", n_per_class=3, image_size=SIZE, plant_counts=counts
    )
    # cross_split makes no sense without splits and is skipped
    assert record["kind"].value_counts().to_dict() == {"original": 6, "exact_copy": 3, "outlier": 2}


def test_class_names_choose_what_is_drawn(tmp_path: Path) -> None:
    classes = ("Transverse", "comminuted", "other break", "Normal")
    record = generate_dataset(
        tmp_path / "multi", layout="class", classes=classes, n_per_class=2, plant=False
    )
    fracture = record.set_index("path")["detail"].str.extract(r"fracture=(\w+)")[0]
    by_class = fracture.groupby(record.set_index("path")["label"]).agg(set)
    assert by_class["Transverse"] == {"transverse"}
    assert by_class["comminuted"] == {"comminuted"}
    assert by_class["Normal"] == {"none"}
    assert by_class["other break"] <= set(FRACTURE_KINDS)
    assert (tmp_path / "multi" / "other break").is_dir()


def test_abnormal_is_drawn_with_a_fracture_and_normal_without(tmp_path: Path) -> None:
    record = generate_dataset(
        tmp_path / "ab", layout="class", classes=("abnormal", "normal"), n_per_class=3, plant=False
    )
    fracture = record["detail"].str.extract(r"fracture=(\w+)")[0].groupby(record["label"])
    assert set(fracture.get_group("abnormal")) <= set(FRACTURE_KINDS)
    assert set(fracture.get_group("normal")) == {"none"}


def test_invalid_arguments_are_config_errors_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="choose one of class, split-class, class-split"):
        generate_dataset(tmp_path / "x", layout="nested")
    with pytest.raises(ConfigError, match="choose from exact_copy, reencoded"):
        generate_dataset(tmp_path / "x", plant_counts={"blurred": 1})
    with pytest.raises(ConfigError, match="at least 16x16"):
        generate_dataset(tmp_path / "x", image_size=8)
    with pytest.raises(ConfigError, match="choose one of transverse, oblique"):
        draw_phantom(np.random.default_rng(0), SIZE, True, fracture_kind="spiral")
    with pytest.raises(ConfigError, match="fracture_kind"):
        draw_phantom(np.random.default_rng(0), SIZE, False, fracture_kind="oblique")
    assert not (tmp_path / "x").exists()  # checked before anything is written


def test_every_planted_kind_has_a_planter() -> None:
    assert set(PLANTERS) == set(PLANTED_KINDS)
    assert all(callable(planter) for planter in PLANTERS.values())


def test_phantoms_differ_in_structure() -> None:
    drawn = [
        np.asarray(draw_phantom(np.random.default_rng(seed), SIZE, seed % 2 == 0), np.float32)
        for seed in range(16)
    ]
    for a, b in itertools.combinations(drawn, 2):
        assert mad(a, b) > 5.0
    # the same rng state gives the same image
    again = draw_phantom(np.random.default_rng(0), SIZE, True)
    assert np.array_equal(np.asarray(again, np.float32), drawn[0])


@pytest.mark.parametrize("kind", FRACTURE_KINDS)
def test_fracture_is_a_visible_local_break(kind: str) -> None:
    for seed in range(5):
        intact = draw_phantom(np.random.default_rng(seed), (160, SIZE), False)
        broken = draw_phantom(np.random.default_rng(seed), (160, SIZE), True, fracture_kind=kind)
        assert intact.mode == broken.mode == "L"
        assert intact.size == broken.size == (160, SIZE)
        diff = np.abs(np.asarray(intact, np.float32) - np.asarray(broken, np.float32))
        assert diff.max() > 40
        assert 0 < (diff > 0).mean() < 0.25


def test_outlier_is_colourful() -> None:
    outlier = draw_outlier(np.random.default_rng(0), (200, SIZE))
    assert outlier.mode == "RGB"
    assert outlier.size == (200, SIZE)
    saturation = np.asarray(outlier.convert("HSV"))[..., 1]
    assert saturation.mean() > 80
    phantom = draw_phantom(np.random.default_rng(0), SIZE, False).convert("RGB")
    assert np.asarray(phantom.convert("HSV"))[..., 1].max() == 0
