"""Patient keys from file paths: `--patient-pattern`, the public naming schemes read on their
own, which source wins, and the report's patients-by-split table."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from helpers import curated_table, write_embeddings, write_noise_images
from typer.testing import CliRunner

from fracture_curate.cli import app
from fracture_curate.dedupe import DedupeConfig, run_dedupe
from fracture_curate.errors import ConfigError
from fracture_curate.layouts import PATIENT_SCHEMES, compile_patient_pattern, patient_keys
from fracture_curate.manifest import manifest_path, read_provenance
from fracture_curate.outliers import OutlierConfig, run_outliers
from fracture_curate.report import build_report
from fracture_curate.report.curation import patients_by_split
from fracture_curate.scan import ScanConfig, run_scan, scan_dataset
from fracture_curate.split import SplitConfig, run_split

runner = CliRunner()
SCHEMES = {scheme.key: scheme for scheme in PATIENT_SCHEMES}


def kermany_paths(n_patients=10, per_patient=3):
    """Kermany's names: pneumonia patients ``personN_{bacteria,virus}_K``, NORMAL patients
    ``IM-NNNN-KKKK`` and ``NORMAL2-IM-NNNN-KKKK``; patient -> its paths."""
    patients = {}
    for number in range(1, n_patients + 1):
        kind = "bacteria" if number % 2 else "virus"
        patients[f"person{number}"] = [
            f"train/PNEUMONIA/person{number}_{kind}_{number * 10 + image}.jpeg"
            for image in range(per_patient)
        ]
        normal = f"IM-{number:04d}" if number % 2 else f"NORMAL2-IM-{number:04d}"
        patients[normal] = [
            f"train/NORMAL/{normal}-{image + 1:04d}.jpeg" for image in range(per_patient)
        ]
    return patients


def nih_paths(n_patients=10, per_patient=3):
    """NIH ChestX-ray14 names: 8-digit patient, 3-digit follow-up; patient -> its paths."""
    return {
        f"{number:08d}": [f"images/{number:08d}_{visit:03d}.png" for visit in range(per_patient)]
        for number in range(1, 2 * n_patients + 1)
    }


def split_through_the_pipeline(data, manifests, config=ScanConfig()):
    """scan -> (hand-made embeddings) -> dedupe -> outliers -> split; the split table."""
    scan = run_scan(data, manifests, config, workers=1).frame
    write_embeddings(manifests, scan)
    run_dedupe(manifests, DedupeConfig(geometry=False))
    run_outliers(manifests, OutlierConfig(n_estimators=50))
    return run_split(manifests, SplitConfig(seed=0))


def assert_each_patient_in_one_split(result, patients):
    """Every planted patient's images all took part, each patient in a single split."""
    result = result.set_index("path")
    for patient, paths in patients.items():
        assert result.loc[paths, "patient_id"].tolist() == [patient] * len(paths)
        splits = result.loc[paths, "split"]
        assert splits.notna().all() and splits.nunique() == 1, (patient, splits.tolist())
    assert result["split"].nunique() == 3  # the patients were spread, not all put in one split


# --- the naming schemes, one file name at a time ------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "path", "keys"),
    [
        (
            "kermany",
            "chest_xray/train/PNEUMONIA/person1946_bacteria_4874.jpeg",
            ("person1946", None),
        ),
        ("kermany", "person1_virus_6.jpeg", ("person1", None)),
        ("kermany", "chest_xray/test/NORMAL/IM-0115-0001.jpeg", ("IM-0115", None)),
        ("kermany", "NORMAL2-IM-1427-0001.jpeg", ("NORMAL2-IM-1427", None)),
        ("nih-chestxray14", "images_001/images/00000001_000.png", ("00000001", "00000001/000")),
        (
            "chexpert",
            "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg",
            ("patient00001", "patient00001/study1"),
        ),
    ],
)
def test_each_known_scheme_reads_the_patient_from_its_own_names(scheme, path, keys):
    assert SCHEMES[scheme].keys(path) == keys
    others = [other.key for other in PATIENT_SCHEMES if other.keys(path)]
    assert others == [scheme]


@pytest.mark.parametrize(
    "path",
    [
        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png",  # MURA, not CheXpert
        "fractured/person1946.jpeg",
        "fractured/IM-0115.jpeg",
        "images/0000001_000.png",  # seven digits
        "images/00000001_000_copy.png",
        "train/fractured/a.png",
    ],
)
def test_names_outside_the_schemes_name_no_patient(path):
    assert [scheme.key for scheme in PATIENT_SCHEMES if scheme.keys(path)] == []


def test_a_pattern_s_study_is_made_unique_per_patient_and_an_empty_patient_is_no_match():
    pattern = compile_patient_pattern(r"(?P<patient>P\d*)(?:_(?P<study>S\d+))?/")
    assert patient_keys(pattern, "x/P7_S2/a.png") == ("P7", "P7/S2")
    assert patient_keys(pattern, "x/P7/a.png") == ("P7", None)  # the study is optional
    assert patient_keys(compile_patient_pattern(r"(?P<patient>\d*)/"), "x/a.png") is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(?P<patient>", "is not a valid regular expression: missing ), unterminated"),
        (r"P\d+", r"has no (?P<patient>...) group"),
        (r"(?P<patient>P\d+)_(?P<eye>[LR])", "has named group(s) eye; only patient and study"),
        ("", "has no (?P<patient>...) group"),
    ],
)
def test_a_bad_pattern_is_refused_when_the_config_is_built(pattern, message):
    with pytest.raises(ConfigError) as raised:
        ScanConfig(patient_pattern=pattern)
    assert message in str(raised.value) and "--patient-pattern" in str(raised.value)


# --- whole sets, scanned and split ---------------------------------------------------------


def test_kermany_names_keep_each_patient_in_one_split(tmp_path):
    patients = kermany_paths()
    data = tmp_path / "data"
    write_noise_images(data, [path for paths in patients.values() for path in paths])
    result = split_through_the_pipeline(data, tmp_path / "manifests")
    assert_each_patient_in_one_split(result, patients)
    assert result["study_id"].isna().all()  # Kermany names no study
    params = read_provenance(manifest_path(tmp_path / "manifests", "scan"))["params"]
    assert params["patient_sources"] == {"kermany": 60}
    assert params["auto_patients"] is True and params["patient_pattern"] is None


def test_nih_names_keep_each_patient_in_one_split(tmp_path):
    patients = nih_paths()
    data = tmp_path / "data"
    paths = [path for paths in patients.values() for path in paths]
    write_noise_images(data, paths)
    labels = pd.DataFrame(
        {"path": paths, "label": ["Effusion" if i % 2 else "No Finding" for i in range(60)]}
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)  # labels, but no patient_id column
    config = ScanConfig(labels_csv=tmp_path / "labels.csv")
    result = split_through_the_pipeline(data, tmp_path / "manifests", config)
    assert_each_patient_in_one_split(result, patients)
    assert result.set_index("path").loc["images/00000002_001.png", "study_id"] == "00000002/001"
    params = read_provenance(manifest_path(tmp_path / "manifests", "scan"))["params"]
    assert params["patient_sources"] == {"nih-chestxray14": 60}


def test_chexpert_names_give_patient_and_study(tmp_path):
    paths = [
        "train/patient00001/study1/view1_frontal.jpg",
        "train/patient00001/study1/view2_lateral.jpg",
        "train/patient00001/study2/view1_frontal.jpg",
        "valid/patient64541/study1/view1_frontal.jpg",
    ]
    write_noise_images(tmp_path, paths)
    result = scan_dataset(tmp_path, ScanConfig(layout="none"), workers=1)
    frame = result.frame.set_index("path").loc[paths]
    assert frame["patient_id"].tolist() == ["patient00001"] * 3 + ["patient64541"]
    assert frame["study_id"].tolist() == [
        "patient00001/study1",
        "patient00001/study1",
        "patient00001/study2",
        "patient64541/study1",
    ]
    [source] = result.patient_sources
    assert (source.name, source.images, source.patients) == ("chexpert", 4, 2)


def test_a_pattern_sets_patient_and_study(tmp_path):
    paths = ["fractured/P012_S1_a.png", "fractured/P012_S2_b.png", "intact/P013_S1_c.png"]
    write_noise_images(tmp_path, [*paths, "intact/unnamed.png"])
    config = ScanConfig(patient_pattern=r"(?P<patient>P\d+)_(?P<study>S\d+)_")
    result = scan_dataset(tmp_path, config, workers=1)
    frame = result.frame.set_index("path")
    assert frame.loc[paths, "patient_id"].tolist() == ["P012", "P012", "P013"]
    assert frame.loc[paths, "study_id"].tolist() == ["P012/S1", "P012/S2", "P013/S1"]
    assert frame.loc[["intact/unnamed.png"], ["patient_id", "study_id"]].isna().all(axis=None)
    assert result.pattern_matched == 3
    assert [(s.name, s.images, s.patients) for s in result.patient_sources] == [("pattern", 3, 2)]


def test_a_scheme_matching_under_half_of_the_images_is_not_used(tmp_path):
    fitting = ["a/person1_virus_1.jpeg", "a/person1_virus_2.jpeg"]
    write_noise_images(tmp_path, [*fitting, "a/x.png", "a/y.png", "a/z.png"])
    result = scan_dataset(tmp_path, workers=1)
    assert result.frame["patient_id"].isna().all() and result.patient_sources == ()
    write_noise_images(tmp_path / "more", ["person2_bacteria_3.jpeg"])  # now 3 of 6: half
    result = scan_dataset(tmp_path, workers=1)
    frame = result.frame.set_index("path")
    assert frame.loc[fitting, "patient_id"].tolist() == ["person1", "person1"]
    assert frame.loc["more/person2_bacteria_3.jpeg", "patient_id"] == "person2"
    assert frame.loc[["a/x.png", "a/y.png", "a/z.png"], "patient_id"].isna().all()


def test_the_half_is_counted_among_the_images_still_without_a_patient(tmp_path):
    paths = ["a/person1_virus_1.jpeg", "a/x1.png", "a/x2.png", "a/x3.png"]
    write_noise_images(tmp_path, paths)
    config = ScanConfig(patient_pattern=r"/(?P<patient>x\d)\.")
    result = scan_dataset(tmp_path, config, workers=1)
    frame = result.frame.set_index("path").loc[paths]
    assert frame["patient_id"].tolist() == ["person1", "x1", "x2", "x3"]  # 1 of 1 left: Kermany
    assert [(s.name, s.images) for s in result.patient_sources] == [("pattern", 3), ("kermany", 1)]


def test_auto_patients_switched_off_leaves_the_patient_null(tmp_path):
    patients = kermany_paths(n_patients=2)
    write_noise_images(tmp_path / "data", [path for paths in patients.values() for path in paths])
    result = scan_dataset(tmp_path / "data", ScanConfig(auto_patients=False), workers=1)
    assert result.frame["patient_id"].isna().all() and result.patient_sources == ()
    out = tmp_path / "manifests"
    command = ["scan", str(tmp_path / "data"), "--out", str(out), "--workers", "1"]
    cli = runner.invoke(app, [*command, "--no-auto-patients"])
    assert cli.exit_code == 0, cli.output
    assert "patients:" not in cli.output
    params = read_provenance(manifest_path(out, "scan"))["params"]
    assert params["auto_patients"] is False and params["patient_sources"] == {}


# --- which source wins ---------------------------------------------------------------------


def test_a_pattern_beats_the_labels_csv_which_beats_a_naming_scheme(tmp_path):
    paths = ["a/person1_virus_1.jpeg", "a/person1_virus_2.jpeg", "a/person2_virus_3.jpeg"]
    write_noise_images(tmp_path, paths)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label,patient_id,study_id\n"
        "a/person1_virus_1.jpeg,pneumonia,C1,C1/s1\n"
        "a/person1_virus_2.jpeg,pneumonia,C2,\n"
        "a/person2_virus_3.jpeg,pneumonia,,\n"
    )
    result = scan_dataset(tmp_path, ScanConfig(labels_csv=csv), workers=1)
    frame = result.frame.set_index("path").loc[paths]
    assert frame["patient_id"].tolist() == ["C1", "C2", "person2"]  # the CSV first, then Kermany
    assert frame["study_id"].tolist()[0] == "C1/s1"
    assert [(s.name, s.images) for s in result.patient_sources] == [("csv", 2), ("kermany", 1)]

    pattern = r"person(?P<patient>\d+)_(?P<study>[a-z]+)"
    result = scan_dataset(tmp_path, ScanConfig(labels_csv=csv, patient_pattern=pattern), workers=1)
    frame = result.frame.set_index("path").loc[paths]
    assert frame["patient_id"].tolist() == ["1", "1", "2"]
    assert frame["study_id"].tolist() == ["1/virus", "1/virus", "2/virus"]  # the CSV's is gone
    assert [(s.name, s.images) for s in result.patient_sources] == [("pattern", 3)]


def test_a_pattern_beats_the_mura_layout_which_beats_a_naming_scheme(tmp_path):
    paths = [  # MURA folders around Kermany-like file names
        "train/XR_WRIST/patient00001/study1_positive/person7_virus_1.jpeg",
        "train/XR_WRIST/patient00002/study1_negative/person7_virus_2.jpeg",
    ]
    write_noise_images(tmp_path, paths)
    result = scan_dataset(tmp_path, workers=1)
    assert result.layout == "mura"
    frame = result.frame.set_index("path").loc[paths]
    assert frame["patient_id"].tolist() == ["patient00001", "patient00002"]
    assert frame["study_id"].tolist() == ["patient00001/study1", "patient00002/study1"]
    assert [s.name for s in result.patient_sources] == ["mura"]

    config = ScanConfig(patient_pattern=r"(?P<patient>person\d+)_")
    frame = scan_dataset(tmp_path, config, workers=1).frame.set_index("path").loc[paths]
    assert frame["patient_id"].tolist() == ["person7", "person7"]
    assert frame["study_id"].isna().all()  # MURA's study belonged to MURA's patient
    assert frame["label"].tolist() == ["positive", "negative"]  # labels still from the layout


# --- the command line ----------------------------------------------------------------------


def test_the_scan_summary_says_where_the_patients_came_from(tmp_path):
    patients = kermany_paths(n_patients=2)
    write_noise_images(tmp_path / "data", [path for paths in patients.values() for path in paths])
    out = tmp_path / "manifests"
    command = ["scan", str(tmp_path / "data"), "--out", str(out), "--workers", "1"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "patients: 4 read from file names (Kermany naming) (12 images)" in result.output

    pattern = ["--patient-pattern", r"/(?P<patient>IM-\d+)-"]
    result = runner.invoke(app, [*command, *pattern])
    assert result.exit_code == 0, result.output
    assert "patients: 1 read from file paths (--patient-pattern) (3 images)" in result.output
    # the other nine images still fall back on the naming scheme
    assert "patients: 3 read from file names (Kermany naming) (9 images)" in result.output
    params = read_provenance(manifest_path(out, "scan"))["params"]
    assert params["patient_sources"] == {"pattern": 3, "kermany": 9}
    assert params["patient_pattern"] == r"/(?P<patient>IM-\d+)-"


def test_a_pattern_that_matches_nothing_is_a_warning(tmp_path):
    write_noise_images(tmp_path / "data", ["fractured/a.png", "intact/b.png"])
    command = ["scan", str(tmp_path / "data"), "--out", str(tmp_path / "m"), "--workers", "1"]
    result = runner.invoke(app, [*command, "--patient-pattern", r"(?P<patient>P\d+)"])
    assert result.exit_code == 0, result.output
    assert "warning: --patient-pattern matched no kept image" in result.output
    assert "'fractured/a.png'" in result.output  # a path to check the pattern against
    result = runner.invoke(app, [*command, "--patient-pattern", r"(?P<patient>[ab])\.png"])
    assert "warning" not in result.output


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(?P<patient>P[0-9+", "is not a valid regular expression"),
        (r"P\d+/", "has no (?P<patient>...) group"),
    ],
)
def test_a_bad_pattern_on_the_command_line_is_one_line(tmp_path, pattern, message):
    write_noise_images(tmp_path / "data", ["fractured/a.png"])
    command = ["scan", str(tmp_path / "data"), "--out", str(tmp_path / "m")]
    result = runner.invoke(app, [*command, "--patient-pattern", pattern])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith("error: --patient-pattern") and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m" / "scan.parquet").exists()


# --- the report ----------------------------------------------------------------------------


def test_patients_by_split_counts_images_patients_studies_and_the_unknown():
    frame = curated_table(
        ["a"] * 7,
        stage="split",
        split=["train", "train", "train", "val", "test", "test", None],
        patient_id=["p1", "p1", "p2", "p3", None, None, "p4"],
        study_id=["p1/s1", "p1/s2", None, "p3/s1", None, None, "p4/s1"],
    )
    table = patients_by_split(frame)
    assert table.index.tolist() == ["train", "val", "test", "total"]
    assert table.columns.tolist() == ["images", "patients", "studies", "no patient id"]
    assert table.loc["train"].tolist() == [3, 2, 2, 0]
    assert table.loc["test"].tolist() == [2, 0, 0, 2]  # unknown patients are not counted
    assert table.loc["total"].tolist() == [6, 3, 3, 2]  # the row outside the split is not
    without_studies = patients_by_split(frame.assign(study_id=pd.NA).astype(frame.dtypes))
    assert "studies" not in without_studies.columns


def test_the_report_shows_patients_by_split(tmp_path):
    patients = kermany_paths()
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    write_noise_images(data, [path for paths in patients.values() for path in paths])
    result = split_through_the_pipeline(data, manifests)
    html = build_report(manifests, tmp_path / "report.html").read_text(encoding="utf-8")
    split = re.search(r'<section id="split">(.*?)</section>', html, re.DOTALL).group(1)
    assert "Patients by split (patient ids from kermany)" in split
    assert "counted under &#x27;no patient id&#x27;, not as a patient" in split
    for name in ("train", "val", "test"):
        members = result[result["split"] == name]
        patient_count = members["patient_id"].nunique()
        cells = f"<th>{name}</th><td>{len(members)}</td><td>{patient_count}</td>"
        assert cells in split
    assert "<th>total</th><td>60</td><td>20</td><td>0</td></tr>" in split
