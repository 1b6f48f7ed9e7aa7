"""`curate outliers` on embeddings made here: which rows are fitted, scored and flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import read_dicom_radiograph
from helpers import curated_table, noise_image, save_gray, write_embeddings
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from fracture_curate.dedupe import DedupeConfig, run_dedupe
from fracture_curate.manifest import manifest_path, read_provenance
from fracture_curate.outliers import (
    COLOURFUL,
    MIN_CLASS_SIZE,
    OutlierConfig,
    component_cap,
    isolation_scores,
    neighbour_distances,
    parse_contamination,
    principal_components,
    radiograph_checks,
    robust_flags,
    run_outliers,
    score_outliers,
    summarise_outliers,
)
from fracture_curate.scan import run_scan
from fracture_curate.vectors import unit_rows

FAST = {"n_estimators": 200}


def clusters(sizes: dict[str, int], seed: int = 0, dim: int = 24) -> tuple[list[str], np.ndarray]:
    """Labels and vectors: one tight cluster per label, around its own random centre."""
    rng = np.random.default_rng(seed)
    labels, vectors = [], []
    for label, size in sizes.items():
        centre = rng.gamma(1.0, 1.0, dim)
        labels += [label] * size
        vectors.append(centre + rng.normal(0, 0.05, (size, dim)))
    return labels, np.abs(np.concatenate(vectors)).astype(np.float32)


def table_and_embeddings(
    labels: list[str], vectors: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = curated_table(labels, stage="dedupe")
    embeddings = pd.DataFrame({"image_id": frame["image_id"], "embedding": list(vectors)})
    return frame, embeddings


def test_a_stranger_far_from_the_crowd_is_flagged_and_scored_highest():
    labels, vectors = clusters({"a": 60})
    vectors[7] = np.random.default_rng(9).gamma(1.0, 1.0, vectors.shape[1]) * 3
    frame, embeddings = table_and_embeddings(labels, vectors)
    scored = score_outliers(frame, embeddings, OutlierConfig(**FAST))
    assert scored["outlier_score"].idxmax() == 7 and scored.loc[7, "is_outlier"]
    assert scored["is_outlier"].sum() < 6  # and few others (the robust rule's false alarms)


def test_per_class_scoring_finds_an_image_unlike_its_own_class():
    labels, vectors = clusters({"fractured": 30, "normal": 30})
    labels[35] = "fractured"  # one normal-looking image filed as fractured: a label error
    frame, embeddings = table_and_embeddings(labels, vectors)
    overall = score_outliers(frame, embeddings, OutlierConfig(**FAST))
    assert not overall.loc[35, "is_outlier"]  # among the normal crowd, it looks ordinary
    per_class = score_outliers(frame, embeddings, OutlierConfig(per_class=True, **FAST))
    assert per_class.loc[35, "is_outlier"]
    assert per_class.loc[per_class["label"] == "fractured", "outlier_score"].idxmax() == 35


def test_classes_too_small_for_their_own_model_keep_the_overall_scores():
    labels, vectors = clusters({"big": 40, "small": MIN_CLASS_SIZE - 1})
    frame, embeddings = table_and_embeddings(labels, vectors)
    overall = score_outliers(frame, embeddings, OutlierConfig(**FAST))
    per_class = score_outliers(frame, embeddings, OutlierConfig(per_class=True, **FAST))
    small = per_class["label"] == "small"
    assert per_class.loc[small, "outlier_score"].equals(overall.loc[small, "outlier_score"])
    assert not per_class.loc[~small, "outlier_score"].equals(overall.loc[~small, "outlier_score"])


def test_a_contamination_fraction_flags_that_share_and_auto_is_scikit_learn_s():
    labels, vectors = clusters({"a": 50, "b": 50})
    frame, embeddings = table_and_embeddings(labels, vectors)
    flagged = score_outliers(frame, embeddings, OutlierConfig(contamination=0.1, **FAST))
    assert flagged["is_outlier"].sum() == 10
    top = flagged["outlier_score"].nlargest(10).index
    assert flagged.loc[top, "is_outlier"].all()
    auto = score_outliers(frame, embeddings, OutlierConfig(contamination="auto", **FAST))
    reduced = PCA(n_components=0.95, random_state=0).fit_transform(unit_rows(vectors))
    forest = IsolationForest(n_estimators=200, contamination="auto", random_state=0).fit(reduced)
    assert auto["is_outlier"].tolist() == (forest.predict(reduced) == -1).tolist()


@pytest.mark.parametrize("components", [1, 3, 7])
def test_a_whole_number_of_components_keeps_that_many(components):
    _, vectors = clusters({"a": 30, "b": 30})
    assert principal_components(vectors, components, 0).shape == (60, components)


def test_a_share_of_variance_keeps_what_explains_it_and_a_count_is_capped():
    _, vectors = clusters({"a": 30, "b": 30, "c": 30})
    expected = PCA(n_components=0.8).fit(vectors).n_components_
    assert principal_components(vectors, 0.8, 0).shape == (90, expected)
    assert principal_components(vectors[:5], 50, 0).shape == (5, 5)


def test_the_robust_rule_flags_scores_far_above_the_median():
    scores = np.array([0.40, 0.41, 0.42, 0.40, 0.43, 0.41, 0.90])
    assert robust_flags(scores, z=3.5).tolist() == [False] * 6 + [True]
    assert (
        robust_flags(np.full(5, 0.5), z=3.5).tolist() == [False] * 5
    )  # no spread, nothing strange
    assert robust_flags(np.array([0.5, 0.5, 0.5, 0.6]), z=3.5).tolist() == [
        False,
        False,
        False,
        True,
    ]


def test_copies_share_their_file_s_score_and_rows_without_a_vector_get_none():
    labels, vectors = clusters({"a": 30})
    frame, embeddings = table_and_embeddings(labels, vectors)
    copy = frame.iloc[[4]].assign(path="a/copy.png", is_kept=False)
    gone = frame.iloc[[5]].assign(path="a/gone.png", image_id="f" * 64)
    frame = pd.concat([frame, copy, gone], ignore_index=True)
    scored = score_outliers(frame, embeddings, OutlierConfig(**FAST))
    assert scored.loc[30, "outlier_score"] == scored.loc[4, "outlier_score"]
    assert pd.isna(scored.loc[31, "outlier_score"]) and pd.isna(scored.loc[31, "is_outlier"])
    assert scored["outlier_score"].notna().sum() == 31


def test_fewer_than_three_files_are_not_scored():
    labels, vectors = clusters({"a": 2})
    frame, embeddings = table_and_embeddings(labels, vectors)
    assert score_outliers(frame, embeddings, OutlierConfig(**FAST))["outlier_score"].isna().all()


def test_the_stage_scores_the_curated_folder_and_records_how(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(25):
        save_gray(data / "a" / f"{index}.png", noise_image(index))
    scan = run_scan(data, manifests, workers=1).frame
    write_embeddings(manifests, scan)
    run_dedupe(manifests, DedupeConfig(geometry=False))
    config = OutlierConfig(contamination=parse_contamination("0.2"), **FAST)
    scored = run_outliers(manifests, config)
    assert scored["outlier_score"].notna().all() and scored["is_outlier"].sum() == 5
    provenance = read_provenance(manifest_path(manifests, "outliers"))
    assert provenance["params"]["contamination"] == 0.2
    assert set(provenance["inputs"]) == {"dedupe", "embed"}
    assert provenance["params"]["root"] == str(data.resolve())


def test_contamination_from_a_command_line():
    assert parse_contamination("robust") == "robust" and parse_contamination("auto") == "auto"
    assert parse_contamination("0.05") == 0.05
    assert parse_contamination("lots") == "lots"  # the config says what is allowed


def test_scores_are_the_forest_s_with_the_configured_trees():
    labels, vectors = clusters({"a": 40})
    frame, embeddings = table_and_embeddings(labels, vectors)
    scored = score_outliers(frame, embeddings, OutlierConfig(n_estimators=37, components=4))
    reduced = PCA(n_components=4, random_state=0).fit_transform(unit_rows(vectors))
    forest = IsolationForest(n_estimators=37, random_state=0).fit(reduced)
    np.testing.assert_allclose(scored["outlier_score"], -forest.score_samples(reduced))


def test_a_count_given_as_a_command_line_number_works():
    _, vectors = clusters({"a": 30})
    assert principal_components(vectors, 1.0, 0).shape == (30, 1)  # typer gives floats
    assert principal_components(vectors, 2.0, 0).shape == (30, 2)


def test_the_projection_is_the_same_for_the_same_seed_however_large():
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(600, 520)).astype(np.float32)  # large: a randomised solver
    first = principal_components(vectors, 10, seed=3)
    assert np.array_equal(first, principal_components(vectors, 10, seed=3))
    config = OutlierConfig(components=10, n_estimators=20, seed=3)  # the seed reaches PCA too
    reduced = principal_components(unit_rows(vectors), 10, seed=3)
    forest = IsolationForest(n_estimators=20, random_state=3).fit(reduced)
    assert np.array_equal(isolation_scores(vectors, config)[0], -forest.score_samples(reduced))


def test_the_robust_rule_uses_the_spread_of_the_scores():
    spread_of_one = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # median 2, MAD exactly 1
    assert not robust_flags(spread_of_one, z=3.5).any()
    at_the_cut = np.array([-3.5, -0.6745, 0.0, 0.6745, 3.5])  # z-scores -3.5 ... 3.5 exactly
    assert not robust_flags(at_the_cut, z=3.5).any()  # flagged only above the cut-off
    assert robust_flags(np.append(at_the_cut[:-1], 3.51), z=3.5).tolist() == [False] * 4 + [True]


def test_three_files_are_enough_to_score_and_a_class_of_exactly_the_minimum_has_its_own():
    labels, vectors = clusters({"a": 3})
    frame, embeddings = table_and_embeddings(labels, vectors)
    assert score_outliers(frame, embeddings, OutlierConfig(**FAST))["outlier_score"].notna().all()
    labels, vectors = clusters({"big": 40, "exact": MIN_CLASS_SIZE})
    frame, embeddings = table_and_embeddings(labels, vectors)
    overall = score_outliers(frame, embeddings, OutlierConfig(**FAST))
    per_class = score_outliers(frame, embeddings, OutlierConfig(per_class=True, **FAST))
    exact = per_class["label"] == "exact"
    assert not per_class.loc[exact, "outlier_score"].equals(overall.loc[exact, "outlier_score"])


def test_unlabelled_files_are_a_class_of_their_own_when_scoring_per_class():
    labels, vectors = clusters({"a": 25, "b": 25})
    frame, embeddings = table_and_embeddings(labels, vectors)
    frame.loc[25:, "label"] = pd.NA
    config = OutlierConfig(per_class=True, **FAST)
    scored = score_outliers(frame, embeddings, config)
    own = isolation_scores(vectors[25:], config)[0]  # scored among themselves, not overall
    np.testing.assert_allclose(scored.loc[25:, "outlier_score"].to_numpy(float), own)


@pytest.fixture(scope="module")
def small_set_with_photos(tmp_path_factory):
    """Twenty images, as a user might drop them in one folder: a real ankle radiograph, 16
    phantom radiographs and 3 natural colour photographs; scanned, embedded (the real
    MobileNetV2), deduplicated."""
    from skimage import data

    from fracture_curate.embed import EmbedConfig, embed_manifest
    from fracture_curate.synthetic import draw_phantom

    root = tmp_path_factory.mktemp("small") / "data"
    manifests = root.parent / "manifests"
    (root / "xray").mkdir(parents=True)
    for index in range(16):
        rng = np.random.default_rng(100 + index)
        draw_phantom(rng, 256, index % 2 == 0).save(root / "xray" / f"phantom{index}.png")
    Image.fromarray(read_dicom_radiograph("RG3_UNCR.dcm")).save(root / "xray" / "ankle.png")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(root / "xray" / f"{name}.jpg", quality=90)
    run_scan(root, manifests)
    embed_manifest(manifests, EmbedConfig(), workers=0)
    run_dedupe(manifests, DedupeConfig(geometry=False))
    return manifests


def test_colour_photos_among_twenty_radiographs_are_all_flagged_with_their_reason(
    small_set_with_photos,
):
    frame = run_outliers(small_set_with_photos).set_index("path")
    photos = frame.loc[["xray/astronaut.jpg", "xray/coffee.jpg", "xray/chelsea.jpg"]]
    assert photos["is_outlier"].all()
    assert photos["outlier_reason"].str.contains("colour").all()
    radiographs = frame.drop(photos.index)
    assert radiographs["is_outlier"].sum() <= 1, radiographs.loc[radiographs["is_outlier"]]
    assert radiographs["outlier_reason"].str.contains("colour").sum() == 0
    flagged = frame[frame["is_outlier"]]
    assert (
        flagged["outlier_reason"].notna().all()
        and frame.loc[~frame["is_outlier"], "outlier_reason"].isna().all()
    )


def checks_table(**columns: object) -> pd.DataFrame:
    """Scan columns of ten 8-bit grayscale 400 x 300 images, with ``columns`` overriding."""
    values = {
        "colourfulness": [0.0] * 10,
        "std_intensity": [0.2] * 10,
        "bit_depth": [8] * 10,
        "width": [400] * 10,
        "height": [300] * 10,
    } | columns
    return pd.DataFrame(values)


def test_a_colourful_picture_is_flagged_only_among_mostly_grayscale_images():
    colour = [COLOURFUL, COLOURFUL * 0.99] + [0.0] * 8  # at the cut-off, and just under it
    assert (
        radiograph_checks(checks_table(colourfulness=colour))["colour"].tolist()
        == [True] + [False] * 9
    )
    mostly_colour = [0.3] * 5 + [0.0] * 5  # half the set colourful: colour is not strange here
    assert not radiograph_checks(checks_table(colourfulness=mostly_colour))["colour"].any()
    unknown = [None] * 9 + [0.3]  # a missing colourfulness counts as gray
    assert radiograph_checks(checks_table(colourfulness=unknown))["colour"].tolist() == [
        False
    ] * 9 + [True]


def test_a_blank_image_is_judged_against_the_images_of_its_bit_depth():
    contrast = [0.25] * 5 + [0.0499, 0.05, 0.051, 0.004, 0.003]  # 0.2 x median 0.25 = 0.05
    depth = [8] * 8 + [16, 16]  # two 16-bit images of equally faint contrast: their own median
    checks = radiograph_checks(checks_table(std_intensity=contrast, bit_depth=depth))
    assert checks["blank"].tolist() == [False] * 5 + [True] + [False] * 4
    colourful = radiograph_checks(
        checks_table(std_intensity=[0.2] * 9 + [0.001], colourfulness=[0.0] * 9 + [0.3])
    )
    assert checks["blank"].iloc[5] and not colourful["blank"].iloc[9]  # a colour flag instead
    assert colourful["colour"].iloc[9]


def test_a_thumbnail_or_a_banner_is_an_absurd_size():
    width = [400] * 6 + [79, 80, 81, 1200]  # a fifth of each side is 80 x 60; 1200 x 300 is 4:1
    height = [300] * 6 + [60, 60, 61, 300]
    checks = radiograph_checks(checks_table(width=width, height=height))
    assert checks["size"].tolist() == [False] * 6 + [True, False, False, False]
    banner = radiograph_checks(checks_table(width=[400] * 9 + [1201], height=[300] * 10))
    assert banner["size"].tolist() == [False] * 9 + [True]
    assert not radiograph_checks(checks_table(height=[400] * 10, width=[300] * 10))["size"].any()


def test_neighbour_distances_match_brute_force_in_tiles_and_cap_k():
    vectors = np.random.default_rng(8).gamma(1.0, 1.0, (23, 6)).astype(np.float32)
    unit = unit_rows(vectors)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = -np.sort(-similarity, axis=1)
    for k in (1, 3):
        expected = 1 - nearest[:, :k].mean(axis=1)
        assert np.allclose(neighbour_distances(vectors, k, block=5), expected, atol=1e-6)
    many = np.random.default_rng(9).normal(size=(300, 8)).astype(np.float32)
    many_unit = unit_rows(many)
    many_similarity = many_unit @ many_unit.T
    np.fill_diagonal(many_similarity, -np.inf)
    many_nearest = -np.sort(-many_similarity, axis=1)
    for k in (1, 2, 7):
        expected = 1 - many_nearest[:, :k].mean(axis=1)
        assert np.allclose(neighbour_distances(many, k, block=64), expected, atol=1e-6)
    whole = 1 - nearest[:, :22].mean(axis=1)  # k above n - 1 means every other row
    assert np.allclose(neighbour_distances(vectors, 50), whole, atol=1e-6)
    assert np.allclose(neighbour_distances(vectors, 3), neighbour_distances(vectors * 7.0, 3))


def test_the_component_cap_is_the_square_root_of_the_images_up_to_fifty():
    assert [component_cap(n) for n in (3, 20, 200, 1000, 2500, 2601, 10**6)] == [
        2,
        4,
        14,
        31,
        50,
        50,
        50,
    ]
    vectors = np.random.default_rng(1).normal(size=(30, 40))
    assert principal_components(vectors, 0.9999, 0).shape == (30, component_cap(30))
    assert principal_components(vectors, 12, 0).shape == (30, 12)  # a count is used as given


def test_copies_take_their_kept_copy_s_scores_and_an_unknown_cluster_speaks_for_itself():
    labels, vectors = clusters({"a": 30})
    vectors[29] = np.random.default_rng(5).gamma(1.0, 1.0, vectors.shape[1]) * 4  # a stranger
    frame, embeddings = table_and_embeddings(labels, vectors)
    copy = frame.loc[0].copy()  # a copy of the stranger in its cluster, that looks ordinary
    copy[["cluster_id", "is_kept", "image_id", "path"]] = [29, False, "f" * 64, "a/copy.png"]
    frame.loc[30] = copy
    embeddings.loc[30] = ["f" * 64, vectors[0]]
    scored = score_outliers(frame, embeddings, OutlierConfig(**FAST))
    assert scored.loc[30, "outlier_score"] == scored.loc[29, "outlier_score"]
    assert scored.loc[30, "is_outlier"] and scored.loc[29, "is_outlier"]
    unknown = frame.assign(
        cluster_id=pd.array([None] * len(frame), dtype="Int64"),
        is_kept=pd.array([None] * len(frame), dtype="boolean"),
    )
    alone = score_outliers(unknown, embeddings, OutlierConfig(**FAST))
    assert alone["outlier_score"].notna().all()
    assert alone.loc[30, "outlier_score"] != alone.loc[29, "outlier_score"]


def test_the_summary_counts_each_reason_once_per_distinct_image():
    frame = curated_table(
        ["a"] * 4,
        image_id=["1" * 64, "1" * 64, "2" * 64, "3" * 64],
        is_outlier=[True, True, True, False],
        outlier_reason=["colour, neighbours", "colour, neighbours", "isolation", None],
    )
    summary = summarise_outliers(frame)
    assert summary.index.name == "reason" and list(summary.columns) == ["images flagged"]
    counts = summary["images flagged"].to_dict()
    assert counts == {"colour": 1, "blank": 0, "size": 0, "isolation": 1, "neighbours": 1}


def test_reasons_are_joined_in_order_and_follow_each_row_whatever_the_index():
    """A stranger in colour (every view), a colour photo that looks ordinary (colour only), a
    byte-identical copy of the stranger, rows under an index that does not start at 0."""
    labels, vectors = clusters({"a": 40})
    vectors[5] = np.random.default_rng(3).gamma(1.0, 1.0, vectors.shape[1]) * 4
    frame, embeddings = table_and_embeddings(labels, vectors)
    colour = [0.0] * 40
    colour[5] = colour[9] = 0.3
    frame = frame.assign(
        colourfulness=pd.array(colour, dtype="Float64"),
        std_intensity=pd.array([0.2] * 40, dtype="Float64"),
        bit_depth=pd.array([8] * 40, dtype="Int64"),
    )
    twin = frame.loc[5].copy()  # the same bytes under another name, a copy not kept
    twin[["path", "is_kept"]] = ["a/twin.png", False]
    frame.loc[40] = twin
    frame.index = frame.index + 100
    scored = score_outliers(frame, embeddings, OutlierConfig(**FAST))
    stranger = scored.loc[105, "outlier_reason"].split(", ")
    assert stranger[0] == "colour" and "neighbours" in stranger and len(stranger) >= 2
    assert scored.loc[140, "outlier_reason"] == scored.loc[105, "outlier_reason"]
    alone = score_outliers(frame.drop(index=140), embeddings, OutlierConfig(**FAST))
    assert scored.loc[105, "neighbour_distance"] == alone.loc[105, "neighbour_distance"]
    assert scored.loc[109, "outlier_reason"] == "colour"
    unchecked = score_outliers(frame, embeddings, OutlierConfig(checks=False, **FAST))
    assert not unchecked.loc[109, "is_outlier"] and pd.isna(unchecked.loc[109, "outlier_reason"])
    assert "colour" not in unchecked.loc[105, "outlier_reason"]
    assert unchecked["is_outlier"].sum() <= 3


def test_neighbour_distances_in_tiles_of_one_row_when_the_set_is_wide(monkeypatch):
    """A tile holds at most TILE_ELEMENTS similarities: on a wide set it shrinks to a row."""
    vectors = np.random.default_rng(2).normal(size=(120, 8)).astype(np.float32)
    whole = neighbour_distances(vectors, 3)
    shapes = []
    real_partition = np.partition

    def spy(values, *args, **kwargs):
        shapes.append(values.shape)
        return real_partition(values, *args, **kwargs)

    monkeypatch.setattr("fracture_curate.vectors.TILE_ELEMENTS", 200)  # one row of 120 fits
    monkeypatch.setattr("fracture_curate.vectors.np.partition", spy)
    assert np.allclose(neighbour_distances(vectors, 3), whole, atol=1e-6)
    assert set(shapes) == {(1, 120)}
