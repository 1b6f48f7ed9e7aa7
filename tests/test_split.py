"""`curate split` on tables made by hand: what each option promises, row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import curated_table, noise_image, save_gray, write_embeddings

from fracture_curate.dedupe import DedupeConfig, run_dedupe
from fracture_curate.errors import ConfigError
from fracture_curate.manifest import ManifestError, manifest_path, read_provenance, read_stage
from fracture_curate.outliers import OutlierConfig, run_outliers
from fracture_curate.scan import run_scan
from fracture_curate.schema import EXCLUSION_KINDS
from fracture_curate.split import (
    FRACTION_TOLERANCE,
    SplitConfig,
    SplitError,
    assign_splits,
    cover_every_label,
    exclusions,
    leakage_groups,
    make_split,
    missing_label_lines,
    missing_labels,
    run_split,
    split_summary,
    straddling_groups,
)


def counts(result: pd.DataFrame) -> pd.DataFrame:
    """Rows per split and label."""
    used = result[result["split"].notna()]
    return pd.crosstab(used["label"], used["split"])


def test_every_split_holds_each_label_in_proportion():
    labels = ["rare"] * 40 + ["common"] * 160  # 20% / 80%, every row its own group
    result = make_split(curated_table(labels), SplitConfig(seed=3))
    table = counts(result)
    for split in ("train", "val", "test"):
        size = table[split].sum()
        # a stratified fold holds each label within one row of its share
        assert abs(table.loc["rare", split] - 0.2 * size) <= 1, table
    shares = table.sum() / table.values.sum()
    assert shares["train"] == pytest.approx(0.70, abs=0.03)
    assert shares["val"] == pytest.approx(0.15, abs=0.03)
    assert shares["test"] == pytest.approx(0.15, abs=0.03)


def test_fractions_of_the_user_s_choosing_are_followed():
    labels = ["a", "b"] * 100
    result = make_split(curated_table(labels), SplitConfig(train=0.5, val=0.25, test=0.25))
    shares = result["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.5, abs=0.03)
    assert shares["val"] == pytest.approx(0.25, abs=0.03)
    assert shares["test"] == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        (
            (0.9, 0.5, 0.5),
            "--train 0.9 --val 0.5 --test 0.5 sum to 1.9; the fractions must sum to 1",
        ),
        ((2, 1, 1), "--train must be a number in (0, 1); got 2"),
        ((1, 0, 0), "--train must be a number in (0, 1); got 1"),
        ((0.8, 0, 0.2), "--val must be a number in (0, 1); got 0"),  # train selects on val
        ((0.85, 0.15, 0), "--test must be a number in (0, 1); got 0"),  # and reports on test
    ],
)
def test_fractions_that_are_not_three_shares_of_one_are_refused(fractions, message):
    train, val, test = fractions
    with pytest.raises(ConfigError) as refused:
        SplitConfig(train=train, val=val, test=test)
    assert str(refused.value).startswith(message)
    SplitConfig(train=0.7, val=0.2, test=0.1)  # 0.1 + 0.2 is not 0.3 in floating point: taken


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    frame = curated_table(["a", "b"] * 60)
    first = make_split(frame, SplitConfig(seed=1))["split"]
    assert first.equals(make_split(frame, SplitConfig(seed=1))["split"])
    assert not first.equals(make_split(frame, SplitConfig(seed=2))["split"])


def test_groups_join_rows_through_clusters_related_films_and_patients_transitively():
    frame = curated_table(
        ["a"] * 6,
        cluster_id=[1, 1, 2, 3, 4, 5],
        patient_id=["p", "q", "q", "r", None, None],
        related_group=[None, None, None, 7, 7, None],
    )
    groups = leakage_groups(frame)
    assert groups[0] == groups[1] == groups[2]  # 0-1 by cluster, 1-2 by patient
    assert groups[3] == groups[4]  # other films of one anatomy
    assert len({groups[0], groups[3], groups[5]}) == 3


def test_related_films_are_all_kept_in_one_split():
    labels = ["a", "b"] * 60
    related = [index // 4 if index < 40 else None for index in range(120)]  # groups of four
    frame = curated_table(labels, related_group=related)
    result = make_split(frame, SplitConfig(seed=3))
    assert result["split"].notna().all()  # related films are not copies: none left out
    assert (result.groupby("related_group")["split"].nunique() == 1).all()


def test_a_patient_or_a_duplicate_cluster_never_spans_two_splits():
    labels = ["a", "b"] * 60
    patients = [f"p{index // 3}" for index in range(120)]  # three images per patient
    clusters = [index // 2 for index in range(120)]  # and pairs sharing a cluster
    frame = curated_table(labels, patient_id=patients, cluster_id=clusters)
    result = make_split(frame, SplitConfig(seed=5))
    assert straddling_groups(result).empty
    for column in ("patient_id", "cluster_id"):
        assert (result.groupby(column)["split"].nunique() == 1).all(), column


def test_outliers_leave_the_split_only_when_asked():
    flagged = [index in (3, 7) for index in range(40)]
    reasons = ["colour, neighbours" if flag else None for flag in flagged]
    frame = curated_table(["a", "b"] * 20, is_outlier=flagged, outlier_reason=reasons)
    kept = make_split(frame, SplitConfig())
    assert kept.loc[[3, 7], "split"].notna().all()
    dropped = make_split(frame, SplitConfig(drop_outliers=True))
    assert dropped.loc[[3, 7], "split"].isna().all()
    assert (dropped.loc[[3, 7], "excluded_reason"] == "outlier").all()
    assert dropped.loc[3, "excluded_detail"] == "flagged by colour, neighbours"
    by_hand = frame.assign(
        outlier_reason=pd.array([None] * 40, dtype="string")
    )  # flags set by hand
    detail = make_split(by_hand, SplitConfig(drop_outliers=True)).loc[3, "excluded_detail"]
    assert detail == "flagged by curate outliers"
    assert dropped["split"].notna().sum() == 38


def test_each_exclusion_has_its_kind_and_its_detail():
    # Rows 6 and 7 have two reasons each; the first kind that applies wins.
    frame = curated_table(
        ["a", "a", "b", "b", None, "a", None, "b"],
        status=["ok", "ok", "ok", "truncated", "ok", "ok", "truncated", "ok"],
        reason=[None, None, None, "the data stops early", None, None, "cut", None],
        cluster_id=[0, 0, 2, 3, 4, 5, 6, 5],
        cluster_size=[2, 2, 1, 1, 1, 2, 1, 2],
        is_kept=[True, False, True, True, True, True, True, False],
        duplicate_of=[None, f"{0:064x}", None, None, None, None, None, f"{5:064x}"],
        label_conflict=[False, False, False, False, False, True, False, True],
    )
    reasons = exclusions(frame, drop_outliers=False)
    assert reasons["excluded_reason"].fillna("-").tolist() == [
        "-",
        "duplicate",
        "-",
        "truncated",
        "no_label",
        "label_conflict",
        "truncated",  # and no label
        "label_conflict",  # and a copy not kept
    ]
    assert reasons.loc[1, "excluded_detail"] == "copy of a/0000.png"
    assert reasons.loc[3, "excluded_detail"] == "the data stops early"
    assert reasons.loc[6, "excluded_detail"] == "cut"
    assert reasons.loc[5, "excluded_detail"] == "labels a, b in one duplicate cluster"
    assert set(reasons["excluded_reason"].dropna()) <= set(EXCLUSION_KINDS)


def test_keeping_the_source_splits_keeps_them_and_reports_their_leakage():
    frame = curated_table(
        ["a", "b"] * 10,
        source_split=["train", "val", "test", "train", "val"] * 4,
        patient_id=["p1", "p1"] + [None] * 18,  # one patient in train and in val
    )
    result = make_split(frame, SplitConfig(keep_source_splits=True))
    assert (result["split"] == result["source_split"]).all()
    straddling = straddling_groups(result)
    assert len(straddling) == 1 and straddling.iloc[0]["splits"] == "train, val"
    unknown = ["train", "val", "test", "holdout", None] * 8  # no split, or one not ours
    frame = curated_table(["a", "b"] * 20, source_split=unknown)
    result = make_split(frame, SplitConfig(keep_source_splits=True, seed=1))
    known = frame["source_split"].isin(["train", "val", "test"])
    assert (result.loc[known, "split"] == frame.loc[known, "source_split"]).all()
    assert result.loc[~known, "split"].isin(["train", "val", "test"]).all()  # split afresh
    assert result.loc[~known, "split"].nunique() > 1


def test_keeping_duplicates_lets_the_source_split_leak_copies_as_it_stands():
    frame = curated_table(
        ["a", "b"] * 10,
        source_split=["train", "val", "test", "train", "val"] * 4,
        cluster_id=[0, 1, 0, *range(3, 20)],  # rows 0 (train) and 2 (test): one picture
        cluster_size=[2, 1, 2, *[1] * 17],
        is_kept=[True, True, False, *[True] * 17],
    )
    curated = make_split(frame, SplitConfig(keep_source_splits=True))
    assert curated.loc[2, "excluded_reason"] == "duplicate" and pd.isna(curated.loc[2, "split"])
    leaky = make_split(frame, SplitConfig(keep_source_splits=True, keep_duplicates=True))
    assert leaky["excluded_reason"].isna().all()
    assert leaky.loc[[0, 2], "split"].tolist() == ["train", "test"]
    assert straddling_groups(leaky).iloc[0]["splits"] == "test, train"
    regrouped = make_split(frame, SplitConfig(keep_duplicates=True))
    assert regrouped.loc[0, "split"] == regrouped.loc[2, "split"]  # copies still grouped


def test_the_split_summary_counts_each_label_in_each_split():
    result = make_split(curated_table(["a"] * 20 + ["b"] * 40), SplitConfig())
    summary = split_summary(result)
    assert list(summary.columns) == ["train", "val", "test", "total"]
    assert summary.loc["total", "total"] == 60
    assert summary.loc["a", "total"] == 20
    for label in ("a", "b"):
        for split in ("train", "val", "test"):  # each cell under its own split's heading
            in_cell = ((result["label"] == label) & (result["split"] == split)).sum()
            assert summary.loc[label, split] == in_cell


def test_impossible_splits_are_clear_errors():
    with pytest.raises(SplitError, match="independent groups"):
        make_split(curated_table(["a", "b", "a"]), SplitConfig())
    nothing = curated_table(["a"] * 4, status="corrupt")
    with pytest.raises(SplitError, match=r"^no row is eligible for the split \(see excluded_"):
        make_split(nothing, SplitConfig())
    tiny = SplitConfig(train=0.5, val=5e-324, test=0.5)  # found by hypothesis: overflowed
    with pytest.raises(SplitError, match=r"e-324 val share needs at least 11"):
        make_split(curated_table(["a", "b"] * 10), tiny)
    few = curated_table(["a", "b"] * 7)  # small, but enough groups for 4 folds
    assert make_split(few, SplitConfig(train=0.5, val=0.25, test=0.25))["split"].notna().all()


def test_the_stage_leaves_out_files_gone_since_and_records_its_root(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for label in ("a", "b"):
        for index in range(15):
            save_gray(
                data / label / f"{index}.png", noise_image(index + (50 if label == "b" else 0))
            )
    scan = run_scan(data, manifests, workers=1).frame
    write_embeddings(manifests, scan)
    run_dedupe(manifests, DedupeConfig(geometry=False))
    run_outliers(manifests, OutlierConfig(n_estimators=50))
    (data / "a" / "3.png").unlink()
    result = run_split(manifests, SplitConfig(seed=1)).set_index("path")
    assert result.loc["a/3.png", ["status", "excluded_reason"]].tolist() == ["vanished"] * 2
    assert result["split"].notna().sum() == 29
    provenance = read_provenance(manifest_path(manifests, "split"))
    assert provenance["params"]["seed"] == 1 and provenance["params"]["root"] == str(data.resolve())
    other = run_split(manifests, SplitConfig(seed=2, train=0.5, val=0.25, test=0.25))
    assert read_stage(manifests, "split")[0]["split"].tolist() == other["split"].tolist()
    assert (other["split"] == "train").sum() < (result["split"] == "train").sum()  # its fractions
    run_outliers(manifests, OutlierConfig(n_estimators=50))  # a new outliers manifest
    with pytest.raises(ManifestError, match=r"split\.parquet was made from an older outliers"):
        read_stage(manifests, "split")
    moved = tmp_path / "moved"
    data.rename(moved)
    run_split(manifests, SplitConfig(seed=1), root=moved)
    assert read_provenance(manifest_path(manifests, "split"))["params"]["root"] == str(moved)


def test_rows_without_an_outlier_score_stay_when_outliers_are_dropped():
    frame = curated_table(
        ["a", "b"] * 10,
        outlier_score=[None] * 2 + [0.5] * 18,  # two rows had no embedding to score
        is_outlier=[None, None, True] + [False] * 17,
    )
    result = make_split(frame, SplitConfig(drop_outliers=True))
    assert result.loc[[0, 1], "split"].notna().all()
    assert result.loc[2, "excluded_reason"] == "outlier" and result["split"].notna().sum() == 19
    assert result["excluded_reason"].dtype == "string"
    assert result["excluded_detail"].dtype == "string"


def test_conflict_and_label_details_name_what_they_found():
    frame = curated_table(
        ["fractured", "normal", None],
        cluster_id=[0, 0, 2],
        cluster_size=[2, 2, 1],
        label_conflict=[True, True, False],
    )
    reasons = exclusions(frame, drop_outliers=False)
    assert reasons.loc[0, "excluded_detail"] == "labels fractured, normal in one duplicate cluster"
    assert reasons.loc[2, "excluded_detail"] == "the layout or labels CSV gives this file no label"


def test_a_half_test_share_is_two_folds():
    config = SplitConfig(train=0.25, val=0.25, test=0.5)
    result = make_split(curated_table(["a", "b"] * 50), config)
    assert result["split"].value_counts().to_dict() == {"test": 50, "train": 25, "val": 25}


def test_exactly_as_many_groups_as_folds_is_enough_and_one_fewer_is_not():
    seven = curated_table(["a"] * 7)  # test: 7 folds of 7 groups; val: 6 folds of the 6 left
    assert make_split(seven, SplitConfig())["split"].notna().all()
    with pytest.raises(SplitError, match="only 6 independent groups"):
        make_split(seven.iloc[:6], SplitConfig())
    two = curated_table(["a", "a"])  # the test fold takes one, val has one group left
    with pytest.raises(SplitError, match=r"only 1 independent groups .* val share"):
        make_split(two, SplitConfig(train=0.25, val=0.25, test=0.5))


def test_classes_too_small_for_the_folds_are_a_clear_error():
    five_each = curated_table(["a", "b"] * 5)  # enough groups for 7 folds, not per class
    with pytest.raises(SplitError, match=r"too few images per label for a 15% test share \("):
        make_split(five_each, SplitConfig())


def rare_patients(n_rare: int, films: int = 1) -> pd.DataFrame:
    """40 negative images of their own and ``n_rare`` positive patients of ``films`` each: a
    rare label held by a few groups, which stratified folds easily leave out of a split."""
    labels = ["negative"] * 40 + ["positive"] * (n_rare * films)
    patients = [f"n{i}" for i in range(40)] + [f"p{i // films}" for i in range(n_rare * films)]
    return curated_table(labels, patient_id=patients)


def test_every_split_holds_every_label_when_the_groups_allow():
    frame = rare_patients(4)
    raw = [
        assign_splits(
            frame["label"].to_numpy(object),
            leakage_groups(frame),
            SplitConfig(seed=seed),
        )
        for seed in range(10)
    ]
    lacking = [
        seed
        for seed, splits in enumerate(raw)
        if len(set(splits[frame["label"].to_numpy() == "positive"])) < 3
    ]
    assert lacking  # the folds alone leave a split without a positive patient
    for seed in range(10):
        result = make_split(frame, SplitConfig(seed=seed))
        assert missing_labels(result).empty, seed
        assert straddling_groups(result).empty  # whole patients moved, never split
        assert result.groupby("patient_id")["split"].nunique().max() == 1


def test_a_label_with_too_few_groups_is_reported_missing_from_a_split():
    result = make_split(rare_patients(2, films=3), SplitConfig(seed=0))
    gaps = missing_labels(result)
    assert gaps[["label", "groups"]].values.tolist() == [["positive", 2]]
    assert gaps["split"].iloc[0] in ("train", "val", "test")
    held = set(result.loc[result["label"] == "positive", "split"])
    assert gaps["split"].iloc[0] not in held and len(held) == 2


def test_groups_move_from_the_split_holding_most_of_the_label_and_never_empty_one():
    """Five 'b' groups: three in train, two in val, none in test; and 'a' everywhere."""
    labels = np.array(["a"] * 6 + ["b"] * 5, dtype=object)
    groups = np.arange(11)
    assigned = np.array(["train", "val", "test"] * 2 + ["train"] * 3 + ["val"] * 2, dtype=object)
    covered = cover_every_label(assigned, labels, groups)
    b = covered[labels == "b"]
    assert sorted(b) == ["test", "train", "train", "val", "val"]  # one of train's three
    assert (covered[labels == "a"] == assigned[labels == "a"]).all()  # nothing else moved
    # a donor with exactly two groups gives one; with one it gives none, even to fill a gap
    two = np.array(["train", "val", "test"] * 2 + ["train", "train"], dtype=object)
    labels = np.array(["a"] * 6 + ["b"] * 2, dtype=object)
    covered = cover_every_label(two, labels, np.arange(8))
    b = covered[labels == "b"]
    assert "train" in b and len(set(b)) == 2  # train keeps one; val or test still lacks 'b'


def test_missing_labels_name_the_split_and_the_label_or_an_empty_table():
    whole = make_split(curated_table(["a", "b"] * 20), SplitConfig(seed=0))
    assert list(missing_labels(whole).columns) == ["split", "label", "groups"]
    assert missing_labels(whole).empty and missing_label_lines(whole) == []
    lacking = make_split(rare_patients(2, films=3), SplitConfig(seed=0))
    (line,) = missing_label_lines(lacking)
    split = missing_labels(lacking)["split"].iloc[0]
    assert line == (
        f"{split} holds no 'positive' image: the label has 2 independent group(s) (patients, "
        "duplicate clusters, related films), too few for every split; metrics that need both "
        f"classes (AUROC, sensitivity) cannot be measured on {split}"
    )


def test_fractions_may_miss_1_by_the_tolerance_and_no_more():
    SplitConfig(train=0.5, val=0.25, test=0.25 + FRACTION_TOLERANCE)  # exact in binary
    with pytest.raises(ConfigError, match="sum to 1"):
        SplitConfig(train=0.5, val=0.25, test=0.25 + 2 * FRACTION_TOLERANCE)
