"""dedupe, outliers and split on a generated set with planted problems and real radiographs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import noise_image, save_gray
from typer.testing import CliRunner

from fracture_curate.cli import app
from fracture_curate.dedupe import (
    DedupeConfig,
    deduplicate,
    filled_copies,
    leakage,
    run_dedupe,
)
from fracture_curate.embed import EmbedConfig, embed_manifest
from fracture_curate.manifest import manifest_path, read_manifest, read_provenance
from fracture_curate.outliers import OutlierConfig, robust_flags, run_outliers, score_outliers
from fracture_curate.scan import ScanConfig, run_scan, scan_dataset
from fracture_curate.schema import EMBEDDING_COLUMNS, EXCLUSION_KINDS, table_columns
from fracture_curate.split import (
    SplitConfig,
    SplitError,
    make_split,
    run_split,
    straddling_groups,
)
from fracture_curate.synthetic import DUPLICATE_KINDS, generate_dataset
from fracture_curate.vectors import cosine_pairs

runner = CliRunner()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A small split-class set with planted copies, scanned and embedded (real weights)."""
    root = tmp_path_factory.mktemp("curation")
    data, manifests = root / "data", root / "manifests"
    record = generate_dataset(data, layout="split-class", n_per_class=24, image_size=160, seed=3)
    frame = run_scan(data, manifests, workers=1).frame
    embed_manifest(manifests, EmbedConfig(), workers=0)
    embeddings = read_manifest(manifest_path(manifests, "embed"))
    return {
        "record": record,
        "scan": frame,
        "embeddings": embeddings,
        "manifests": manifests,
        "root": data,
    }


@pytest.fixture(scope="module")
def deduped(planted):
    frame = deduplicate(planted["scan"], planted["embeddings"], root=planted["root"])
    return frame.set_index("path", drop=False)


def same_cluster(frame, kind, record):
    copies = record[record["kind"] == kind]
    return (
        frame.loc[copies["path"], "cluster_id"].to_numpy()
        == frame.loc[copies["source_path"], "cluster_id"].to_numpy()
    )


@pytest.mark.parametrize("kind", DUPLICATE_KINDS)
def test_planted_copies_join_their_source(deduped, planted, kind):
    assert same_cluster(deduped, kind, planted["record"]).all()


def test_every_cluster_keeps_exactly_one_best_copy(deduped):
    clustered = deduped[deduped["cluster_size"] > 1]
    kept = clustered.groupby("cluster_id")["is_kept"].sum()
    assert (kept == 1).all()
    for _, members in clustered.groupby("cluster_id"):
        best = members[members["is_kept"].astype(bool)].iloc[0]
        lossy = members["format"] != "PNG"  # a PNG of exactly a JPEG's pixels is that JPEG
        lossy |= members["pixel_sha256"].isin(members.loc[lossy, "pixel_sha256"])
        one = np.zeros(len(members), dtype=int)
        filled = pd.Series(filled_copies(members["open_border"], one), index=members.index)
        assert not lossy[best.name] or lossy.all()  # lossless over lossy
        peers = members[lossy == lossy[best.name]]
        assert not filled[best.name] or filled[peers.index].all()  # not turned or padded
        peers = peers[filled[peers.index] == filled[best.name]]
        assert best["width"] * best["height"] == (peers["width"] * peers["height"]).max()
        others = members[~members["is_kept"].astype(bool)]
        assert (others["duplicate_of"] == best["image_id"]).all()
        assert others["match_kind"].notna().all() and (others["similarity"] > 0).all()


def test_label_conflicts_are_flagged_not_resolved(deduped, planted):
    record = planted["record"]
    conflicts = record[record["kind"] == "other_class"]
    flagged = deduped.loc[conflicts["path"], "label_conflict"]
    assert flagged.all()
    sources = deduped.loc[conflicts["source_path"], "label_conflict"]
    assert sources.all()  # both sides of the conflict, no winner picked
    assert not deduped.loc[record.loc[record["kind"] == "flipped", "path"], "label_conflict"].any()


def test_leakage_report_finds_cross_split_copies(deduped, planted):
    record = planted["record"]
    report = leakage(deduped.reset_index(drop=True))
    cross = record[record["kind"] == "cross_split"]
    leaking = set(deduped.loc[cross["path"], "cluster_id"])
    assert leaking <= set(report.index)
    assert (report["n_splits"] > 1).all()


def test_distinct_phantoms_are_not_grouped(deduped, planted):
    record = planted["record"]
    originals = record.loc[record["kind"] == "original", "path"]
    counts = deduped.loc[originals].groupby("cluster_id").size()
    assert (counts == 1).all(), "two different originals share a cluster"


def test_bad_files_get_no_cluster(deduped):
    bad = deduped[deduped["status"] != "ok"]
    assert bad["cluster_id"].isna().all() and bad["is_kept"].isna().all()


def test_real_radiograph_and_its_lossy_encoding_are_one_cluster(
    tmp_path, ankle_radiograph, ankle_radiograph_lossy
):
    save_gray(tmp_path / "ankle/lossless.png", ankle_radiograph)
    save_gray(tmp_path / "ankle/lossy.png", ankle_radiograph_lossy)
    flipped = np.ascontiguousarray(ankle_radiograph_lossy[:, ::-1])
    save_gray(tmp_path / "ankle/flipped-small.png", flipped[::4, ::4])
    frame = deduplicate(scan_dataset(tmp_path, workers=1).frame, None)
    assert frame["cluster_id"].nunique() == 1
    kept = frame[frame["is_kept"].astype(bool)]
    assert kept["path"].tolist() == ["ankle/lossless.png"]  # largest, then by path


def test_cosine_search_is_exact_against_brute_force():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 64))
    vectors = centres[rng.integers(0, 40, 3000)] + rng.normal(scale=0.6, size=(3000, 64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float32)
    found = set()
    for i, j, _ in cosine_pairs(vectors, 0.8, block=256):
        found.update(zip(i.tolist(), j.tolist(), strict=True))
    similarity = vectors @ vectors.T
    expected = {(i, j) for i, j in zip(*np.nonzero(similarity >= 0.8), strict=True) if i < j}
    assert found == expected and len(expected) > 100


def test_outliers_flag_colour_photos(planted, deduped):
    scored = score_outliers(deduped, planted["embeddings"], OutlierConfig())
    record = planted["record"]
    outliers = record.loc[record["kind"] == "outlier", "path"]
    flagged = scored.set_index("path").loc[outliers]
    assert flagged["is_outlier"].all() and flagged["outlier_reason"].str.contains("colour").all()
    clean = scored[scored["status"].eq("ok") & ~scored["path"].isin(outliers)]
    assert clean["is_outlier"].mean() <= 0.05, clean.loc[clean["is_outlier"], "outlier_reason"]
    assert scored.loc[scored["status"] != "ok", "outlier_score"].isna().all()
    per_class = score_outliers(deduped, planted["embeddings"], OutlierConfig(per_class=True))
    assert per_class["outlier_score"].notna().sum() == (scored["status"] == "ok").sum()


def split_input(deduped, planted):
    return score_outliers(deduped, planted["embeddings"]).reset_index(drop=True)


def test_no_cluster_or_patient_spans_two_splits(deduped, planted):
    frame = split_input(deduped, planted)
    frame["patient_id"] = [f"p{i % 17}" for i in range(len(frame))]  # patients with many images
    result = make_split(frame, SplitConfig(seed=5))
    used = result[result["split"].notna()]
    assert used.groupby("patient_id")["split"].nunique().max() == 1
    assert used.groupby("cluster_id")["split"].nunique().max() == 1
    assert straddling_groups(result).empty
    assert set(used["split"]) == {"train", "val", "test"}


def test_same_seed_same_split_other_seed_other_split(deduped, planted):
    frame = split_input(deduped, planted)
    first = make_split(frame, SplitConfig(seed=1))["split"]
    assert first.equals(make_split(frame, SplitConfig(seed=1))["split"])
    assert not first.equals(make_split(frame, SplitConfig(seed=2))["split"])


def test_split_is_stratified_and_near_the_fractions(deduped, planted):
    result = make_split(split_input(deduped, planted), SplitConfig())
    used = result[result["split"].notna()]
    shares = used["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.1)
    assert shares["test"] == pytest.approx(0.15, abs=0.07)
    by_label = pd.crosstab(used["label"], used["split"], normalize="index")
    assert (by_label["test"] > 0.05).all()


def test_excluded_rows_stay_with_their_reason(deduped, planted):
    frame = split_input(deduped, planted)
    frame.loc[frame.index[:3], "is_outlier"] = True
    result = make_split(frame, SplitConfig(drop_outliers=True))
    assert len(result) == len(frame)
    excluded = result[result["split"].isna()]
    assert excluded["excluded_reason"].notna().all()
    reasons = excluded["excluded_reason"]
    assert set(reasons) <= set(EXCLUSION_KINDS)
    assert {"duplicate", "label_conflict", "truncated", "empty", "outlier"} <= set(reasons)
    assert result["excluded_reason"].notna().sum() >= (frame["status"] != "ok").sum()
    assert excluded["excluded_detail"].notna().all()
    by_path = result.set_index("path")
    for row in excluded[reasons == "duplicate"].itertuples():
        kept = by_path.loc[row.excluded_detail.removeprefix("copy of ")]
        assert kept["is_kept"] and kept["image_id"] == row.duplicate_of
    scan_failures = excluded[excluded["status"] != "ok"]
    assert (scan_failures["excluded_reason"] == scan_failures["status"]).all()
    assert (scan_failures["excluded_detail"] == scan_failures["reason"]).all()


def test_keep_source_splits_keeps_them(deduped, planted):
    result = make_split(split_input(deduped, planted), SplitConfig(keep_source_splits=True))
    used = result[result["split"].notna()]
    assert (used["split"] == used["source_split"]).all()


def test_too_few_groups_is_a_clear_error(tmp_path):
    for index in range(3):
        save_gray(tmp_path / f"{index}.png", noise_image(index))
    frame = deduplicate(scan_dataset(tmp_path, ScanConfig(layout="none"), workers=1).frame, None)
    frame["label"] = "a"
    frame = frame.assign(outlier_score=0.0, is_outlier=False)
    with pytest.raises(SplitError, match="independent groups"):
        make_split(frame, SplitConfig())
    many = pd.concat([frame.iloc[:1]] * 10, ignore_index=True)
    many = many.assign(cluster_id=range(10), is_kept=True, label=["a", "b"] * 5)
    with pytest.raises(SplitError, match="too few images per label"):  # 5 a, 5 b, 7 folds
        make_split(many, SplitConfig())


def test_cli_runs_the_stages_in_order_with_clear_errors(planted, tmp_path):
    manifests = planted["manifests"]
    missing = runner.invoke(app, ["split", "--manifests", str(tmp_path)])
    assert missing.exit_code == 2 and "outliers.parquet does not exist" in missing.output
    for stage in ("dedupe", "outliers", "split"):
        result = runner.invoke(app, [stage, "--manifests", str(manifests)])
        assert result.exit_code == 0, result.output
    split = read_manifest(manifest_path(manifests, "split"), stage="split")
    assert len(split) == len(planted["scan"])
    provenance = read_provenance(manifest_path(manifests, "split"))
    assert provenance["params"]["seed"] == 0 and provenance["params"]["root"]
    assert "straddle" in runner.invoke(app, ["dedupe", "--manifests", str(manifests)]).output
    stale = runner.invoke(app, ["split", "--manifests", str(manifests)])  # two stages back
    assert stale.exit_code == 2
    assert "outliers.parquet was made from an older dedupe.parquet" in stale.output
    for level in ("x", "0.9"):
        command = ["outliers", "--manifests", str(manifests), "--contamination", level]
        wrong = runner.invoke(app, command)
        assert wrong.exit_code == 2 and "Traceback" not in wrong.output
        assert "--contamination must be 'robust', 'auto' or a number in (0, 0.5]" in wrong.output


def test_dedupe_without_embeddings_still_finds_exact_and_flipped(planted):
    frame = deduplicate(planted["scan"], None, DedupeConfig(use_embeddings=False))
    frame = frame.set_index("path", drop=False)
    assert same_cluster(frame, "flipped", planted["record"]).all()
    assert (frame["match_kind"] != "embedding").all()


def test_robust_flags_pick_scores_far_above_the_crowd():
    rng = np.random.default_rng(0)
    crowd = rng.normal(0.45, 0.01, 500)
    scores = np.concatenate([crowd, [0.50, 0.52, 0.55]])
    flags = robust_flags(scores, z=3.5)
    assert flags[-3:].all()
    assert flags[:-3].mean() < 0.01
    assert not robust_flags(np.full(10, 0.4), z=3.5).any()  # no spread: nothing stands out


def test_a_stage_made_from_an_older_input_is_a_clear_error(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    generate_dataset(data, layout="class", n_per_class=12, image_size=64, plant=False, seed=4)
    run_scan(data, manifests, workers=1)
    embed_manifest(manifests, EmbedConfig(weights="random", image_size=32), workers=0)
    assert runner.invoke(app, ["dedupe", "--manifests", str(manifests)]).exit_code == 0
    run_scan(data, manifests, workers=1)  # a new scan under the old embeddings and dedupe
    result = runner.invoke(app, ["outliers", "--manifests", str(manifests)])
    assert result.exit_code == 2
    assert "dedupe.parquet was made from an older scan.parquet" in result.output
    embed_manifest(manifests, EmbedConfig(weights="random", image_size=32), workers=0)
    for stage in ("dedupe", "outliers", "split"):
        assert runner.invoke(app, [stage, "--manifests", str(manifests)]).exit_code == 0


def test_every_manifest_has_exactly_the_schema_s_columns_and_dtypes(planted, tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(planted["manifests"], manifests)
    run_dedupe(manifests, DedupeConfig(geometry=False))
    run_outliers(manifests)
    run_split(manifests)
    for stage in ("scan", "dedupe", "outliers", "split"):
        frame = read_manifest(manifest_path(manifests, stage), stage=stage)
        expected = table_columns(stage)
        assert list(frame.columns) == list(expected), stage
        for column, dtype in expected.items():
            if dtype != "object":  # object columns (the pHash bytes) are whatever pandas reads
                assert frame[column].dtype == pd.Series(dtype=dtype).dtype, (stage, column)
    embeddings = read_manifest(manifest_path(manifests, "embed"), stage="embed")
    assert list(embeddings.columns) == list(EMBEDDING_COLUMNS)
