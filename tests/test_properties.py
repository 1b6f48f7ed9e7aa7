"""Properties that are the claim, checked on many generated inputs (hypothesis): dedupe does not
depend on the order of the files, a split never puts one group in two splits, the metrics are
scikit-learn's, and the loader gives back every supported mode's pixels."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from helpers import curated_table
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from sklearn import metrics as sk

from fracture_curate.dedupe import DedupeConfig, deduplicate
from fracture_curate.images import load_image
from fracture_curate.phash import HASH_BITS, ORIENTATIONS
from fracture_curate.split import SplitConfig, SplitError, make_split, straddling_groups
from fracture_train.metrics import classification_metrics

HASH_BYTES = HASH_BITS // 8 * len(ORIENTATIONS)
DEDUPE = DedupeConfig(use_embeddings=False, geometry=False)


@st.composite
def scan_tables(draw: st.DrawFn) -> pd.DataFrame:
    """Scan tables of a few pictures, each filed several times: as the same bytes, as the same
    pixels in other bytes, or as a near copy whose perceptual hash differs in a few bits (or
    many: a stranger). What one file or one set of pixels is, it is in every row."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pictures = rng.integers(0, 256, (draw(st.integers(1, 5)), HASH_BYTES), dtype=np.uint8)
    pixels = []  # (picture, perceptual hash) of each distinct set of pixels
    for _ in range(draw(st.integers(1, 10))):
        picture = int(rng.integers(0, len(pictures)))
        hashed = pictures[picture].copy()
        flips = rng.choice(HASH_BITS, size=int(rng.integers(0, 40)), replace=False)
        hashed[flips // 8] ^= (1 << (flips % 8)).astype(np.uint8)
        pixels.append(bytes(hashed))
    files = rng.integers(0, len(pixels), draw(st.integers(1, 12)))  # each file's pixels
    rows = rng.integers(0, len(files), draw(st.integers(2, 18)))  # each row's file
    return curated_table(
        [str(rng.choice(["a", "b"])) for _ in rows],
        stage="scan",
        image_id=[f"{file:064x}" for file in rows],
        pixel_sha256=[f"{files[file]:064x}" for file in rows],
        phash=[pixels[files[file]] for file in rows],
        width=[64 * (1 + files[file] % 2) for file in rows],
        height=64,
        format=["PNG" if files[file] % 3 else "JPEG" for file in rows],
        source_split=rng.choice(["train", "test"], len(rows)).tolist(),
    )


def clusters_by_path(frame: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(group) for _, group in frame.groupby("cluster_id")["path"]}


@given(scan_tables(), st.randoms(use_true_random=False))
def test_dedupe_does_not_depend_on_the_order_of_the_files(scan, random):
    order = list(range(len(scan)))
    random.shuffle(order)
    shuffled = scan.iloc[order].reset_index(drop=True)
    first = deduplicate(scan, None, DEDUPE)
    second = deduplicate(shuffled, None, DEDUPE)
    assert clusters_by_path(first) == clusters_by_path(second)
    columns = ["is_kept", "duplicate_of", "match_kind", "similarity", "label_conflict"]
    left = first.set_index("path")[columns].sort_index()
    right = second.set_index("path")[columns].sort_index()
    pd.testing.assert_frame_equal(left, right)


@st.composite
def outliers_tables(draw: st.DrawFn) -> pd.DataFrame:
    """Tables of labelled rows joined at random by duplicate clusters and by patients."""
    rows = draw(st.integers(20, 90))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    classes = draw(st.integers(2, 3))
    patients = [f"p{value}" if value >= 0 else None for value in rng.integers(-5, rows // 3, rows)]
    return curated_table(
        [f"class{value}" for value in rng.integers(0, classes, rows)],
        cluster_id=rng.integers(0, max(rows - 10, 1), rows).tolist(),
        patient_id=patients,
    )


fractions = st.floats(0.01, 0.35, allow_nan=False)


@given(outliers_tables(), st.integers(0, 1000), fractions, fractions)
def test_a_split_never_puts_a_group_in_two_splits(frame, seed, val, test):
    config = SplitConfig(train=1 - val - test, val=val, test=test, seed=seed)
    try:
        result = make_split(frame, config)
    except SplitError:
        assume(False)  # too few groups for those fractions: a clear error, not a split
        return
    assert straddling_groups(result).empty
    for column in ("cluster_id", "patient_id"):
        assert (result.groupby(column)["split"].nunique() <= 1).all()
    assert result["split"].isin(["train", "val", "test"]).all()
    assert result["split"].equals(make_split(frame, config)["split"])  # the seed decides


@st.composite
def predictions(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Targets of every class and probabilities of ``classes`` classes for some samples."""
    classes = draw(st.integers(2, 4))
    samples = draw(st.integers(classes * 2, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    targets = np.concatenate([np.arange(classes), rng.integers(0, classes, samples - classes)])
    scores = rng.gamma(1.0, 1.0, (samples, classes)) + 1e-3
    return targets, scores / scores.sum(axis=1, keepdims=True)


@given(predictions())
def test_the_metrics_are_scikit_learn_s(prediction):
    targets, probs = prediction
    names = [f"c{index}" for index in range(probs.shape[1])]
    binary = probs.shape[1] == 2
    found = classification_metrics(targets, probs, names, positive=1 if binary else None)
    predicted = (probs[:, 1] >= 0.5).astype(int) if binary else probs.argmax(axis=1)
    assert np.isclose(found["accuracy"], sk.accuracy_score(targets, predicted))
    assert np.isclose(found["balanced_accuracy"], sk.balanced_accuracy_score(targets, predicted))
    assert (
        found["confusion_matrix"]
        == sk.confusion_matrix(targets, predicted, labels=range(len(names))).tolist()
    )
    kappa = sk.cohen_kappa_score(targets, predicted)
    assert np.isclose(found["cohen_kappa"], kappa) or (
        np.isnan(kappa) and np.isnan(found["cohen_kappa"])
    )
    expected = (
        sk.roc_auc_score(targets, probs[:, 1])
        if binary
        else sk.roc_auc_score(targets, probs, multi_class="ovr", average="macro")
    )
    assert np.isclose(found["auroc"], expected)


def encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


sizes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@given(sizes.flatmap(lambda shape: arrays(np.uint8, shape)))
def test_grey_pixels_come_back_as_they_were(pixels):
    np.testing.assert_array_equal(load_image(encoded(Image.fromarray(pixels))).pixels, pixels)


@given(sizes.flatmap(lambda shape: arrays(np.uint16, shape)))
def test_sixteen_bit_pixels_keep_their_depth(pixels):
    loaded = load_image(encoded(Image.fromarray(pixels)))
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.pixels, pixels)


@given(sizes.flatmap(lambda shape: arrays(np.uint8, (*shape, 4))))
def test_colour_with_or_without_alpha_comes_back_without_it(pixels):
    rgb = pixels[..., :3]
    loaded = load_image(encoded(Image.fromarray(pixels, mode="RGBA"))).pixels
    grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    np.testing.assert_array_equal(loaded, rgb[..., 0] if grey else rgb)
    np.testing.assert_array_equal(load_image(encoded(Image.fromarray(rgb))).pixels, loaded)


@given(
    sizes.flatmap(lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 3))),
    arrays(np.uint8, (4, 3)),
)
def test_a_palette_image_comes_back_as_its_colours(indices, palette):
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist() + [0] * (768 - palette.size))
    colours = palette[indices]
    grey = (colours[..., 0] == colours[..., 1]).all() and (colours[..., 1] == colours[..., 2]).all()
    expected = colours[..., 0] if grey else colours
    np.testing.assert_array_equal(load_image(encoded(image)).pixels, expected)


@given(sizes.flatmap(lambda shape: arrays(np.bool_, shape)))
def test_a_one_bit_image_comes_back_black_and_white(bits):
    loaded = load_image(encoded(Image.fromarray(bits))).pixels
    np.testing.assert_array_equal(loaded, bits.astype(np.uint8) * 255)
