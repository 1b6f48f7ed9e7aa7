"""`curate dedupe` on small sets made here: each layer's threshold, which copy is kept, why."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from helpers import noise_image, save_gray, write_embeddings
from PIL import Image

from fracture_curate.dedupe import (
    DedupeConfig,
    Pairs,
    RelatedPairs,
    closest_orientations,
    deduplicate,
    filled_copies,
    find_pairs,
    leakage,
    related_columns,
    run_dedupe,
    summarise_dedupe,
)
from fracture_curate.geometry import MAX_KEYPOINTS, PairEvidence
from fracture_curate.images import to_rgb8, to_uint8
from fracture_curate.manifest import ManifestError, manifest_path, read_provenance
from fracture_curate.phash import (
    HASH_BITS,
    ORIENTATIONS,
    orient,
    orientation_bits,
    phash_distance,
    phash_pairs,
)
from fracture_curate.scan import run_scan, scan_dataset
from fracture_curate.split import leakage_groups
from fracture_curate.synthetic import draw_phantom
from fracture_curate.synthetic.planting import follow_up_film

_NO_MODELS = {"use_embeddings": False, "geometry": False}
PHASH_ONLY = DedupeConfig(**_NO_MODELS)


def phantom(seed: int, size: int = 160) -> Image.Image:
    return draw_phantom(np.random.default_rng(seed), size, False)


def scanned(root) -> pd.DataFrame:
    return scan_dataset(root, workers=1).frame


def embeddings_for(scan: pd.DataFrame, vectors: dict[str, np.ndarray]) -> pd.DataFrame:
    """An embeddings table giving each file (by path) the vector in ``vectors``."""
    ok = scan[scan["status"] == "ok"].set_index("path")
    return pd.DataFrame(
        {
            "image_id": [ok.loc[path, "image_id"] for path in vectors],
            "embedding": list(vectors.values()),
        }
    )


def random_embeddings(scan: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Unrelated random embeddings for every file: only the pixels can tell copies apart."""
    rng = np.random.default_rng(seed)
    return embeddings_for(
        scan, {path: rng.gamma(2.0, 1.0, 32).astype(np.float32) for path in scan["path"]}
    )


def three_phantoms(folder, first: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three different phantoms in ``folder`` (0.png, 1.png, 2.png), scanned, with unrelated
    random embeddings."""
    for index in range(3):
        phantom(first + index).save(folder / f"{index}.png")
    scan = scanned(folder)
    return scan, random_embeddings(scan, seed=seed)


def judged_evidence(inliers: np.ndarray, matches: np.ndarray) -> PairEvidence:
    """Geometric evidence of pairs whose images all held detail enough to judge."""
    return PairEvidence(inliers, matches, np.full(len(inliers), MAX_KEYPOINTS))


def by_path(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("path")


def turned(image: Image.Image, angle: float) -> Image.Image:
    """``image`` turned ``angle`` degrees on an expanded canvas, the corners it uncovers filled
    with the median grey of its border (as `curate synth` plants a small rotation)."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return image.rotate(
        angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=int(np.median(border))
    )


def darker(image: Image.Image, factor: float = 0.85) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) * factor
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def deduplicate_with_geometry(folder) -> pd.DataFrame:
    """The dedupe table of ``folder`` by path, with three other phantoms beside its files and
    the geometry layer checking every pair (random embeddings, no cosine match)."""
    for index in range(3):
        phantom(40 + index, size=256).save(folder / f"other{index}.png")
    scan = scanned(folder)
    config = DedupeConfig(cosine_threshold=1.0, geometry_floor=-1.0)
    return by_path(deduplicate(scan, random_embeddings(scan, seed=4), config, root=folder))


def test_the_kept_copy_is_lossless_over_lossy_then_the_largest(tmp_path):
    image = phantom(0)
    image.save(tmp_path / "a.jpg", quality=95)  # first by path, but lossy
    image.save(tmp_path / "b.png")
    result = by_path(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    assert result.loc["a.jpg", "cluster_id"] == result.loc["b.png", "cluster_id"]
    assert result.loc["b.png", "is_kept"] and not result.loc["a.jpg", "is_kept"]
    assert result.loc["a.jpg", "duplicate_of"] == result.loc["b.png", "image_id"]
    assert pd.isna(result.loc["b.png", "duplicate_of"])  # the kept copy is nobody's copy
    image.resize((320, 320), Image.Resampling.LANCZOS).save(tmp_path / "c.jpg", quality=95)
    image.resize((120, 120), Image.Resampling.LANCZOS).save(tmp_path / "a-small.png")
    result = by_path(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    assert result.loc["b.png", "is_kept"]  # lossless over more lossy pixels, then the largest
    assert result["is_kept"].sum() == 1 and (result["cluster_size"] == 4).all()


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_copy_turned_on_an_expanded_canvas_is_not_kept_over_its_smaller_original(
    tmp_path, suffix
):
    image = phantom(3, size=256)
    image.save(tmp_path / f"original.{suffix}")
    copy = turned(image, 4.0)
    copy.save(tmp_path / f"a-turned.{suffix}")  # first by path, and larger
    result = deduplicate_with_geometry(tmp_path)
    assert copy.width > image.width and copy.height > image.height
    assert (
        result.loc[f"a-turned.{suffix}", "cluster_id"]
        == result.loc[f"original.{suffix}", "cluster_id"]
    )
    assert result.loc[f"original.{suffix}", "is_kept"]
    assert not result.loc[f"a-turned.{suffix}", "is_kept"]


def test_a_jpeg_is_kept_over_a_png_of_exactly_its_pixels(tmp_path):
    phantom(6).save(tmp_path / "b.jpg", quality=80)
    with Image.open(tmp_path / "b.jpg") as jpeg:
        jpeg.save(tmp_path / "a.png")  # the JPEG re-saved: lossless, but of lossy pixels
        phantom(6).save(tmp_path / "c.jpg", quality=60)  # another lossy copy
    result = by_path(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    assert result.loc["a.png", "pixel_sha256"] == result.loc["b.jpg", "pixel_sha256"]
    assert result.loc["b.jpg", "is_kept"] and result["is_kept"].sum() == 1


def test_among_lossless_copies_of_one_size_the_most_grey_levels_is_kept(tmp_path):
    image = phantom(7)
    image.save(tmp_path / "b.png")
    darker(image).save(tmp_path / "a-darker.png")  # first by path; levels merged
    result = by_path(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    assert result.loc["a-darker.png", "cluster_id"] == result.loc["b.png", "cluster_id"]
    assert result.loc["a-darker.png", "colour_count"] < result.loc["b.png", "colour_count"]
    assert result.loc["b.png", "is_kept"]


@pytest.mark.parametrize("background", ["white", "black"])
def test_a_radiograph_with_a_flat_background_is_kept_over_its_turned_crop_and_darker_copies(
    tmp_path, ankle_radiograph, background
):
    """The real ankle film's collimated field is flat (white, or black when inverted) along much
    of its border: its own flat border must not count against it next to copies that share that
    background, and a crop that cuts into the anatomy must not look less filled."""
    pixels = to_uint8(ankle_radiograph)
    pixels = 255 - pixels if background == "black" else pixels
    image = Image.fromarray(pixels).resize((256, 256), Image.Resampling.LANCZOS)
    image.save(tmp_path / "original.png")
    image.crop((0, 10, 256, 243)).save(tmp_path / "a-crop.png")
    turned(image, 3.0).save(tmp_path / "a-turned.png")
    darker(image).save(tmp_path / "a-darker.png")
    result = deduplicate_with_geometry(tmp_path)
    copies = ["a-crop.png", "a-turned.png", "a-darker.png"]
    assert (result.loc[copies, "cluster_id"] == result.loc["original.png", "cluster_id"]).all()
    assert result.loc["original.png", "open_border"] > 0.3  # the leg runs off the top and bottom
    assert result.loc["original.png", "is_kept"] and not result.loc[copies, "is_kept"].any()


def test_a_copy_is_filled_when_its_border_is_far_more_closed_than_its_widest_mate():
    open_border = pd.Series([0.9, 0.05, 0.6, 0.2, 0.05, 0.3, None], dtype="Float64")
    clusters = np.array([0, 0, 0, 1, 1, 2, 2])
    # 0.05 is at most half of 0.9 and 0.85 below it; 0.6 keeps two thirds; in cluster 1, 0.05
    # is a quarter of 0.2 but only 0.15 below it: two nearly flat borders; null is never filled
    assert filled_copies(open_border, clusters).tolist() == [
        False,
        True,
        False,
        False,
        False,
        False,
        False,
    ]


def test_a_copy_exactly_at_both_cut_offs_is_filled():
    # 0.25 is exactly FILL_SHARE (0.5) of 0.5 and exactly FILL_MARGIN (0.25) below it; 0.5 of a
    # widest 0.8 is more than 0.5 x 0.8, though under 0.5 / 0.8: a share, not a ratio
    open_border = pd.Series([0.5, 0.25, 0.8, 0.5], dtype="Float64")
    assert filled_copies(open_border, np.array([0, 0, 1, 1])).tolist() == [
        False,
        True,
        False,
        False,
    ]


def test_the_strongest_layer_names_each_match(tmp_path):
    image = phantom(1)
    image.save(tmp_path / "a.png", compress_level=6)
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())  # same bytes
    image.save(tmp_path / "c.png", compress_level=1)  # another label; same pixels
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "d.png")
    save_gray(tmp_path / "e.png", np.asarray(phantom(2)))  # another picture
    result = by_path(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    assert result.loc["b.png", "match_kind"] == "bytes"
    assert result.loc["c.png", "match_kind"] == "pixels"
    assert result.loc["d.png", "match_kind"] == "phash"
    assert result.loc[["b.png", "c.png"], "similarity"].tolist() == [1.0, 1.0]
    assert pd.isna(result.loc["e.png", "match_kind"]) and result.loc["e.png", "cluster_size"] == 1
    summary = summarise_dedupe(result.reset_index())["counts"]["value"]
    assert summary["duplicate clusters"] == 1 and summary["copies not kept"] == 3


def test_the_phash_radius_decides_how_far_a_copy_may_be(tmp_path):
    image = phantom(3)
    image.save(tmp_path / "a.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "b.png")  # 0 bits apart
    brighter = np.clip(np.asarray(image, np.float32) * 1.15, 0, 255).astype(np.uint8)
    save_gray(tmp_path / "c.png", brighter)  # 2 bits away
    scan = scanned(tmp_path)
    default = by_path(deduplicate(scan, None, PHASH_ONLY))
    assert default["cluster_size"].eq(3).all()
    bits = phash_distance(*scan.set_index("path").loc[["c.png", "a.png"], "phash"])
    assert bits == 2 and default.loc["c.png", "similarity"] == 1 - bits / 256
    assert default.loc["a.png", "similarity"] == 1.0  # its best match, the flipped copy
    exact = by_path(deduplicate(scan, None, DedupeConfig(phash_radius=0, **_NO_MODELS)))
    assert exact.loc["a.png", "cluster_id"] == exact.loc["b.png", "cluster_id"]
    assert exact.loc["c.png", "cluster_size"] == 1
    two = by_path(deduplicate(scan, None, DedupeConfig(phash_radius=2, **_NO_MODELS)))
    assert two["cluster_size"].eq(3).all()


def test_the_cosine_threshold_decides_which_embeddings_match(tmp_path):
    for index in range(6):
        save_gray(tmp_path / f"{index}.png", noise_image(index))
    scan = scanned(tmp_path)
    rng = np.random.default_rng(0)
    vectors = {f"{index}.png": rng.gamma(0.5, 1.0, 64).astype(np.float32) for index in range(6)}
    vectors["1.png"] = vectors["0.png"] + rng.normal(0, 0.15, 64).astype(np.float32)
    embeddings = embeddings_for(scan, vectors)
    centred = np.stack(list(vectors.values()))
    centred -= centred.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    cosine = float(centred[0] @ centred[1])
    assert 0.8 < cosine < 0.99
    below = DedupeConfig(cosine_threshold=cosine - 0.01, geometry=False)
    matched = by_path(deduplicate(scan, embeddings, below))
    assert matched.loc["1.png", "match_kind"] == "embedding"
    assert matched.loc["1.png", "similarity"] == pytest.approx(cosine, abs=1e-5)
    above = DedupeConfig(cosine_threshold=cosine + 0.01, geometry=False)
    assert (by_path(deduplicate(scan, embeddings, above))["cluster_size"] == 1).all()


def test_geometry_checks_even_a_set_of_two_and_reports_its_progress(tmp_path):
    image = phantom(8, size=256)
    image.save(tmp_path / "a.png")
    image.rotate(-5, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=40).save(
        tmp_path / "b.png"
    )
    scan = scanned(tmp_path)
    embeddings = random_embeddings(scan, seed=2)
    calls = []
    result = by_path(
        deduplicate(
            scan, embeddings, DedupeConfig(), root=tmp_path, on_progress=lambda *c: calls.append(c)
        )
    )
    assert result.loc["b.png", "match_kind"] == "geometry"
    phases = [call[:3] for call in calls]
    assert phases[0] == ("screening pairs", 0, 2) and ("screening pairs", 2, 2) in phases
    assert phases[-1] == ("verifying geometry", 2, 2)


def test_the_geometry_layer_finds_a_turned_copy_only_when_on(tmp_path):
    image = phantom(4, size=256)
    image.save(tmp_path / "a.png")
    image.rotate(6, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=40).save(
        tmp_path / "b.png"
    )
    for index in range(3):
        phantom(10 + index, size=256).save(tmp_path / f"other{index}.png")
    scan = scanned(tmp_path)
    embeddings = random_embeddings(scan, seed=1)
    on = by_path(deduplicate(scan, embeddings, DedupeConfig(), root=tmp_path))
    assert on.loc["b.png", "cluster_id"] == on.loc["a.png", "cluster_id"]
    assert on.loc["b.png", "match_kind"] == "geometry"
    assert on.filter(like="other", axis=0)["cluster_size"].eq(1).all()
    off = by_path(deduplicate(scan, embeddings, DedupeConfig(geometry=False), root=tmp_path))
    assert off.loc["b.png", "cluster_size"] == 1 and "geometry" not in set(off["match_kind"])
    unscreened = DedupeConfig(geometry_screen=False)
    every_pair = by_path(deduplicate(scan, embeddings, unscreened, root=tmp_path))
    pd.testing.assert_frame_equal(every_pair, on)
    approximate = deduplicate(scan, embeddings, DedupeConfig(search="approximate"), root=tmp_path)
    pd.testing.assert_frame_equal(by_path(approximate), on)
    searches = approximate.attrs["similarity_search"].splitlines()
    assert [line.split(":")[0] for line in searches] == ["similarity search", "geometry neighbours"]
    assert all("approximate (IVF" in line for line in searches)


def test_a_geometry_score_at_the_threshold_is_a_match_and_one_below_is_not(tmp_path, monkeypatch):
    scan, embeddings = three_phantoms(tmp_path, first=30, seed=3)
    config = DedupeConfig(cosine_threshold=1.0, geometry_floor=-1.0)  # neighbours, no cosine match
    checked = {}

    def verify(files, i, j, orientation=None, screen=True, on_progress=None):
        """Keypoints on one transform: exactly the threshold for the first pair, one fewer for
        the rest; every match on the transform."""
        found = np.full(len(i), config.geometry_threshold - 1)
        found[0] = config.geometry_threshold
        checked["pairs"] = list(zip(i.tolist(), j.tolist(), strict=True))
        return judged_evidence(found, found)

    monkeypatch.setattr("fracture_curate.dedupe.verify_pairs", verify)
    result = deduplicate(scan, embeddings, config, root=tmp_path)
    first, second = checked["pairs"][0]  # rows of files, which are all distinct and ok here
    clustered = result.index[result["cluster_size"] > 1].tolist()
    assert sorted(clustered) == sorted([first, second])
    assert set(result.loc[clustered, "match_kind"]) == {"geometry"}


def test_copies_filed_under_two_labels_are_a_conflict_and_splits_a_leak(tmp_path):
    image = phantom(5)
    (tmp_path / "train" / "fractured").mkdir(parents=True)
    (tmp_path / "test" / "normal").mkdir(parents=True)
    image.save(tmp_path / "train" / "fractured" / "a.png")
    image.save(tmp_path / "test" / "normal" / "a.png")
    phantom(6).save(tmp_path / "train" / "fractured" / "b.png")
    result = deduplicate(scanned(tmp_path), None, PHASH_ONLY)
    rows = by_path(result)
    assert rows.loc[["train/fractured/a.png", "test/normal/a.png"], "label_conflict"].all()
    assert not rows.loc["train/fractured/b.png", "label_conflict"]
    leaks = leakage(result)
    assert len(leaks) == 1 and leaks.iloc[0]["splits"] == "test, train"
    assert leaks.iloc[0]["example"] == "test/normal/a.png | train/fractured/a.png"


def test_leakage_lists_clusters_across_splits_largest_first(tmp_path):
    layout = {  # picture -> the split folders its copies sit in
        9: ("test", "val"),  # the smaller leak comes first by path ...
        10: ("train", "val", "val", "train"),  # ... and must still be listed second
        11: ("train", "train"),  # copies within one split: no leak
    }
    for seed, splits in layout.items():
        for index, split in enumerate(splits):
            folder = tmp_path / split / "fractured"
            folder.mkdir(parents=True, exist_ok=True)
            phantom(seed).save(folder / f"{seed}-{index}.png")
    leaks = leakage(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    assert leaks["size"].tolist() == [4, 2] and leaks["n_splits"].tolist() == [2, 2]
    assert leaks.iloc[0]["example"].count(" | ") == 2  # three examples at most


def test_the_summary_counts_clusters_copies_conflicts_and_layers(tmp_path):
    image = phantom(12)
    for folder in ("fractured", "normal"):
        (tmp_path / folder).mkdir()
    image.save(tmp_path / "fractured" / "a.png")
    image.save(tmp_path / "normal" / "a.png", compress_level=1)  # another label; same pixels
    image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "fractured" / "b.png")
    image.save(tmp_path / "fractured" / "e.jpg", quality=95)
    other = phantom(13)
    other.save(tmp_path / "fractured" / "c.png")
    other.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "fractured" / "c_flip.png")
    (tmp_path / "fractured" / "d.png").write_bytes(b"")
    summary = summarise_dedupe(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    counts = summary["counts"]["value"].to_dict()
    assert counts == {
        "images": 6,
        "duplicate clusters": 2,  # one of four, one of two
        "copies not kept": 4,
        "label-conflict clusters": 1,
        "related groups (other films, all kept)": 0,
        "kept": 2,
    }
    assert summary["counts"].index.name == "dedupe"
    by_match = summary["copies_by_match"]
    assert by_match.index.name == "matched by" and list(by_match.columns) == ["copies"]
    # Strongest layer first, not the most common nor by name; a layer that matched nothing is
    # left out.
    assert list(by_match["copies"].items()) == [("pixels", 1), ("phash", 3)]
    assert pd.api.types.is_integer_dtype(by_match["copies"])


def test_files_the_scan_did_not_keep_take_no_part(tmp_path):
    phantom(7).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    result = by_path(deduplicate(scanned(tmp_path), None, PHASH_ONLY))
    assert pd.isna(result.loc["b.png", "cluster_id"]) and pd.isna(result.loc["b.png", "is_kept"])
    assert result.loc["a.png", "is_kept"]


def test_the_stage_marks_files_embed_could_not_read_and_files_gone_since_the_scan(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    (data / "a").mkdir(parents=True)
    for index in range(4):
        phantom(20 + index).save(data / "a" / f"{index}.png")
    scan = run_scan(data, manifests, workers=1).frame.set_index("path")
    changed = scan.loc["a/1.png", "image_id"]
    write_embeddings(manifests, scan.reset_index(), {changed: ["changed", "it changed"]})
    (data / "a" / "2.png").unlink()
    result = by_path(run_dedupe(manifests, DedupeConfig(geometry=False)))
    assert result.loc["a/1.png", ["status", "reason"]].tolist() == ["changed", "it changed"]
    assert result.loc["a/2.png", "status"] == "vanished"
    assert result.loc[["a/0.png", "a/3.png"], "status"].eq("ok").all()
    assert result.loc[["a/1.png", "a/2.png"], "cluster_id"].isna().all()
    provenance = read_provenance(manifest_path(manifests, "dedupe"))
    assert (
        provenance["params"]["root"] == str(data.resolve()) and not provenance["params"]["geometry"]
    )
    assert set(provenance["inputs"]) == {"scan", "embed"}
    alone = run_dedupe(manifests, DedupeConfig(use_embeddings=False, geometry=False))
    assert by_path(alone).loc["a/1.png", "status"] == "ok"  # embed's word is not read
    assert set(read_provenance(manifest_path(manifests, "dedupe"))["inputs"]) == {"scan"}
    moved = tmp_path / "moved"
    data.rename(moved)
    with pytest.raises(ManifestError, match="is missing; pass --root"):
        run_dedupe(manifests, DedupeConfig(geometry=False))
    found = run_dedupe(manifests, DedupeConfig(geometry=False), root=moved)
    assert by_path(found).loc["a/0.png", "status"] == "ok"
    assert read_provenance(manifest_path(manifests, "dedupe"))["params"]["root"] == str(moved)


def test_the_stage_gives_every_layer_its_settings_the_embeddings_and_the_images(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    (data / "a").mkdir(parents=True)
    image = phantom(40, size=256)
    image.save(data / "a" / "source.png")
    turned = image.rotate(6, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=40)
    turned.save(data / "a" / "turned.png")
    for index in range(3):
        phantom(41 + index, size=256).save(data / "a" / f"other{index}.png")
    scan = run_scan(data, manifests, workers=1).frame
    write_embeddings(manifests, scan)  # unrelated vectors
    calls = []
    everyone = DedupeConfig(geometry_floor=-1.0)  # every file a neighbour to check
    found = by_path(
        run_dedupe(manifests, everyone, on_progress=lambda *call: calls.append(call[0]))
    )
    assert found.loc["a/turned.png", "match_kind"] == "geometry"  # read from the dataset
    assert found["cluster_size"].tolist().count(2) == 2 and "verifying geometry" in calls
    any_two = DedupeConfig(cosine_threshold=-1.0, geometry=False)  # any two embeddings match
    matched = by_path(run_dedupe(manifests, any_two))
    assert matched["cluster_size"].eq(5).all()
    assert matched["match_kind"].value_counts().to_dict() == {"embedding": 5}


def test_other_films_of_one_anatomy_are_kept_grouped_and_split_together(tmp_path, chest_radiograph):
    """Two more films of a real chest (stand-ins: another projection, exposure and grain) are
    related, not copies: all three kept, one related group, one split group; a turned copy of
    one film is still a copy; phantoms beside them are in no related group."""
    eight_bit = to_rgb8(chest_radiograph)[:, :, 0]
    rng = np.random.default_rng(11)
    films = [eight_bit, *(follow_up_film(rng, eight_bit)[0] for _ in range(2))]
    for index, film in enumerate(films):
        Image.fromarray(film).save(tmp_path / f"film{index}.png")
    Image.fromarray(films[1]).rotate(4, expand=True).save(tmp_path / "film1_copy.jpg", quality=85)
    for index in range(3):
        phantom(60 + index, size=384).save(tmp_path / f"phantom{index}.png")
    scan = scanned(tmp_path)
    embeddings = random_embeddings(scan, seed=2)
    # Every pair checked, as a neighbour and as an embedding match.
    config = DedupeConfig(cosine_threshold=-1.0, geometry_floor=-1.0)
    frame = deduplicate(scan, embeddings, config, root=tmp_path)
    rows = by_path(frame)
    _, related, _ = find_pairs(scan.reset_index(drop=True), embeddings, config, root=tmp_path)
    # Each pair of the four films (the copy one of them) but the copy and its source, once.
    pairs = {*zip(related.left.tolist(), related.right.tolist(), strict=True)}
    assert len(related.left) == len(pairs) == 5
    films_rows = rows.loc[["film0.png", "film1.png", "film2.png"]]
    assert films_rows["cluster_id"].nunique() == 3  # three distinct films, none a copy
    assert rows.loc[["film0.png", "film2.png"], "is_kept"].all()
    assert films_rows["related_group"].nunique() == 1 and films_rows["related_group"].notna().all()
    assert films_rows["related_evidence"].str.contains("keypoints on one transform").all()
    assert set(films_rows["related_to"]) <= set(films_rows["image_id"])
    copies = rows.loc[["film1.png", "film1_copy.jpg"]]
    assert copies["cluster_id"].nunique() == 1 and copies["is_kept"].sum() == 1
    assert copies["related_group"].eq(films_rows["related_group"].iloc[0]).all()
    assert rows.filter(like="phantom", axis=0)["related_group"].isna().all()
    groups = pd.Series(leakage_groups(frame.reset_index(drop=True)), index=frame["path"])
    assert groups[["film0.png", "film1.png", "film2.png", "film1_copy.jpg"]].nunique() == 1
    assert groups[["film0.png", "phantom0.png", "phantom1.png"]].nunique() == 3


def test_the_share_of_matches_on_one_transform_tells_a_copy_from_another_film(
    tmp_path, monkeypatch
):
    scan, embeddings = three_phantoms(tmp_path, first=40, seed=3)
    config = DedupeConfig(cosine_threshold=1.0, geometry_floor=-1.0)

    def verify(files, i, j, orientation=None, screen=True, on_progress=None):
        """Every pair 40 keypoints on one transform: the first of 80 matches (a copy at the
        default share of one half), the others of 81 (another film)."""
        matches = np.full(len(i), 81)
        matches[0] = 80
        return judged_evidence(np.full(len(i), 40), matches)

    monkeypatch.setattr("fracture_curate.dedupe.verify_pairs", verify)
    frame = deduplicate(scan, embeddings, config, root=tmp_path)
    assert sorted(frame["cluster_size"].tolist()) == [1, 2, 2]
    assert frame["related_group"].notna().all() and frame["related_group"].nunique() == 1
    assert frame["is_kept"].sum() == 2

    def verify_one(files, i, j, orientation=None, screen=True, on_progress=None):
        """The first pair 40 of 80 matches on one transform, the others too few to relate."""
        inliers = np.full(len(i), 5)
        inliers[0] = 40
        return judged_evidence(inliers, np.full(len(i), 80))

    monkeypatch.setattr("fracture_curate.dedupe.verify_pairs", verify_one)
    stricter = replace(config, copy_share=0.6)  # 40 of 80 is no longer a copy, but related
    frame = deduplicate(scan, embeddings, stricter, root=tmp_path)
    assert frame["cluster_size"].eq(1).all() and frame["related_group"].notna().sum() == 2


def test_the_related_threshold_decides_which_other_films_are_related(tmp_path, monkeypatch):
    scan, embeddings = three_phantoms(tmp_path, first=50, seed=4)
    config = DedupeConfig(cosine_threshold=1.0, geometry_floor=-1.0)

    def verify(files, i, j, orientation=None, screen=True, on_progress=None):
        """The first pair exactly the related threshold of keypoints, the rest one fewer; almost
        every match on the transform, but too few keypoints for a copy."""
        inliers = np.full(len(i), config.related_threshold - 1)
        inliers[0] = config.related_threshold
        return judged_evidence(inliers, inliers + 1)

    monkeypatch.setattr("fracture_curate.dedupe.verify_pairs", verify)
    frame = deduplicate(scan, embeddings, config, root=tmp_path)
    assert frame["related_group"].notna().sum() == 2 and frame["cluster_size"].eq(1).all()


def related(left, right, inliers, matches) -> RelatedPairs:
    return RelatedPairs(
        np.array(left), np.array(right), judged_evidence(np.array(inliers), np.array(matches))
    )


def test_related_columns_group_clusters_name_the_strongest_partner_and_the_evidence():
    ids = pd.Series([f"id{k}" for k in range(6)])
    components = np.array([0, 0, 1, 2, 3, 4])  # rows 0 and 1 are copies of one another
    pairs = related([1, 2, 3], [2, 3, 0], [30, 66, 25], [120, 100, 50])
    columns = related_columns(components, pairs, ids)
    assert columns["related_group"].tolist()[:4] == [columns["related_group"][0]] * 4
    assert columns["related_group"].notna().tolist() == [True] * 4 + [False] * 2
    # row 2 is related to 1 (30 keypoints) and 3 (66): the stronger names it
    assert columns["related_to"].tolist()[:4] == ["id3", "id2", "id3", "id2"]
    assert columns["related_to"].iloc[4:].isna().all()
    assert columns.loc[2, "related_evidence"] == "66 keypoints on one transform, 66% of 100 matches"
    assert columns.loc[1, "related_evidence"] == "30 keypoints on one transform, 25% of 120 matches"
    assert columns.loc[0, "related_evidence"] == "25 keypoints on one transform, 50% of 50 matches"
    assert columns.loc[[4, 5], "related_evidence"].isna().all()


def test_related_columns_tie_on_keypoints_go_to_the_first_image_and_copies_are_not_related():
    ids = pd.Series(["b", "a", "c"])
    tie = related_columns(np.array([0, 1, 2]), related([2, 2], [0, 1], [20, 20], [90, 80]), ids)
    assert tie.loc[2, "related_to"] == "a"
    copies = related_columns(np.array([0, 0, 1]), related([0], [1], [30], [100]), ids)
    assert copies["related_group"].isna().all() and copies["related_to"].isna().all()
    single = related_columns(np.array([0, 1, 2]), related([0], [1], [30], [100]), ids)
    assert single["related_group"].notna().tolist() == [True, True, False]
    none = related_columns(np.array([0, 1, 2]), RelatedPairs.none(), ids)
    assert none["related_group"].isna().all() and none["related_evidence"].isna().all()


@pytest.mark.parametrize("index", range(len(ORIENTATIONS)))
def test_orient_turns_pixels_as_the_hash_orientations_turn_an_image(index):
    pixels = np.arange(12 * 3, dtype=np.uint8).reshape(3, 4, 3)  # no two orientations alike
    image = Image.fromarray(pixels)
    expected = image if ORIENTATIONS[index] is None else image.transpose(ORIENTATIONS[index])
    assert np.array_equal(orient(pixels, index), np.asarray(expected))
    assert np.array_equal(orient(pixels[:, :, 0], index), np.asarray(expected)[:, :, 0])
    deep = pixels[:, :, 0].astype(np.uint16) * 257  # a 16-bit radiograph turns the same way
    assert np.array_equal(
        orient(deep, index), np.asarray(expected)[:, :, 0].astype(np.uint16) * 257
    )


def test_phash_matches_stand_only_where_the_geometry_layer_finds_a_copy(tmp_path):
    """pHash proposes, geometry decides. At a radius that joins every picture, only the true
    copies (mirrored, turned 90 degrees, darker) stay in their source's cluster once each pHash
    pair is tested in the orientation it matched in; without the geometry layer, or for
    pictures too smooth for the test to judge, the pHash matches stand."""
    image = phantom(3, size=256)
    image.save(tmp_path / "source.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirrored.png")
    image.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned90.png")
    darker(image).save(tmp_path / "darker.png")
    copies = ["source.png", "mirrored.png", "turned90.png", "darker.png"]
    for index in range(3):
        phantom(40 + index, size=256).save(tmp_path / f"other{index}.png")
    scan = scanned(tmp_path)
    embeddings = random_embeddings(scan, seed=4)
    wide = DedupeConfig(phash_radius=HASH_BITS, cosine_threshold=1.0, geometry_floor=-1.0)
    hashed_only = by_path(deduplicate(scan, embeddings, replace(wide, geometry=False)))
    assert hashed_only["cluster_size"].eq(len(scan)).all()  # every picture, one cluster
    verified = by_path(deduplicate(scan, embeddings, wide, root=tmp_path))
    assert verified.loc[copies, "cluster_id"].nunique() == 1
    assert verified.loc[copies, "cluster_size"].eq(4).all()
    assert verified.loc[[f"other{k}.png" for k in range(3)], "cluster_size"].eq(1).all()
    # Checking a pHash match needs only the images.
    unembedded = deduplicate(scan, None, replace(wide, use_embeddings=False), root=tmp_path)
    assert by_path(unembedded)["cluster_size"].tolist() == verified["cluster_size"].tolist()

    ramp = np.linspace(40, 200, 64)[None, :] + np.zeros((64, 1))
    save_gray(tmp_path / "smooth" / "a.png", ramp.astype(np.uint8))
    save_gray(tmp_path / "smooth" / "b.png", (ramp + 3).astype(np.uint8))
    scan = scanned(tmp_path / "smooth")
    smooth = deduplicate(scan, random_embeddings(scan, seed=4), wide, root=tmp_path / "smooth")
    assert smooth["cluster_size"].eq(2).all() and set(smooth["match_kind"].dropna()) == {"phash"}


def test_embedding_matches_stand_only_where_the_geometry_layer_finds_a_copy(tmp_path):
    """Embeddings propose, geometry decides. With every two files an embedding match (and no
    pHash match, no neighbour), only the true copies (mirrored and cropped, turned 5 degrees,
    cropped) stay in their source's cluster, each tested with one picture turned as their
    hashes match; without the geometry layer, or for pictures too smooth to judge, the matches
    stand."""
    image = phantom(5, size=256)
    image.save(tmp_path / "source.png")
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((8, 8, 248, 248))
    mirrored.save(tmp_path / "mirrored.png")
    image.rotate(5, resample=Image.Resampling.BICUBIC, expand=True).save(tmp_path / "turned.png")
    image.crop((20, 16, 236, 240)).save(tmp_path / "cropped.png")
    copies = ["source.png", "mirrored.png", "turned.png", "cropped.png"]
    for index in range(3):
        phantom(50 + index, size=256).save(tmp_path / f"other{index}.png")
    scan = scanned(tmp_path)
    embeddings = random_embeddings(scan, seed=6)
    every = DedupeConfig(phash_radius=0, cosine_threshold=-1.0, geometry_floor=1.0)
    unchecked = by_path(deduplicate(scan, embeddings, replace(every, geometry=False)))
    assert unchecked["cluster_size"].eq(len(scan)).all()
    checked = by_path(deduplicate(scan, embeddings, every, root=tmp_path))
    assert checked.loc[copies, "cluster_id"].nunique() == 1
    assert checked.loc[copies, "cluster_size"].eq(4).all()
    assert set(checked.loc[copies, "match_kind"]) == {"embedding"}
    assert checked.loc[[f"other{k}.png" for k in range(3)], "cluster_size"].eq(1).all()

    ramp = np.linspace(40, 200, 64)[None, :] + np.zeros((64, 1))
    save_gray(tmp_path / "smooth" / "a.png", ramp.astype(np.uint8))
    y, x = np.mgrid[:64, :64]
    bowl = 40 + np.hypot(x - 32, y - 32) * 3  # another picture, just as smooth
    save_gray(tmp_path / "smooth" / "b.png", bowl.astype(np.uint8))
    scan = scanned(tmp_path / "smooth")
    smooth = deduplicate(scan, random_embeddings(scan, seed=6), every, root=tmp_path / "smooth")
    assert smooth["cluster_size"].eq(2).all()
    assert set(smooth["match_kind"].dropna()) == {"embedding"}


def test_an_embedding_match_is_turned_as_its_hashes_are_closest():
    """A pair is turned into the orientation nearest in pHash, the first of ties; a picture
    without a hash is taken as it is."""
    rng = np.random.default_rng(12)
    hashes = rng.integers(0, 2**63, size=(3, len(ORIENTATIONS), 4), dtype=np.uint64)
    hashes[1, 5] = hashes[0, 0] ^ np.uint64(0b111)  # 1 turned as FLIP_LEFT_RIGHT is 0, 3 bits off
    hashes[2, 0] = hashes[2, 3] = hashes[0, 0]  # 2 as it is and turned 270: ties, 0 first
    scan = pd.DataFrame({"phash": [h.tobytes() for h in hashes] + [None]})
    pairs = Pairs(np.array([0, 0, 0]), np.array([1, 2, 3]), np.zeros(3, int), np.ones(3))
    assert closest_orientations(scan, pairs).tolist() == [5, 0, 0]


def test_an_embedding_match_turned_by_chance_is_also_tested_as_it_is(tmp_path, monkeypatch):
    """A crop is far from its source in pHash in every orientation, and the closest of those
    can be a turn by chance (a near-symmetric radiograph): the match is tested as it is too."""
    image = phantom(7, size=256)
    image.save(tmp_path / "source.png")
    image.crop((20, 16, 236, 240)).save(tmp_path / "cropped.png")
    phantom(70, size=256).save(tmp_path / "other.png")
    scan = scanned(tmp_path)
    every = DedupeConfig(phash_radius=0, cosine_threshold=-1.0, geometry_floor=1.0)

    def mirrored(scan, pairs):
        return np.full(len(pairs.left), 5)  # FLIP_LEFT_RIGHT closest for every pair

    monkeypatch.setattr("fracture_curate.dedupe.closest_orientations", mirrored)
    frame = by_path(deduplicate(scan, random_embeddings(scan, seed=7), every, root=tmp_path))
    assert frame.loc[["source.png", "cropped.png"], "cluster_size"].eq(2).all()
    assert frame.loc["other.png", "cluster_size"] == 1


def brute_force_phash_pairs(hashes, radius):
    """Every pair i < j whose identity hash of i is within ``radius`` bits of some orientation
    of j, with the closest distance: every pair compared in numpy."""
    pairs = {}
    for i in range(len(hashes)):
        bits = np.bitwise_count(hashes[i, 0] ^ hashes[i + 1 :]).sum(axis=2).min(axis=1)
        for offset in np.nonzero(bits <= radius)[0]:
            pairs[(i, i + 1 + int(offset))] = int(bits[offset])
    return pairs


@pytest.mark.parametrize("block", [64, 65_536])
def test_hash_pairs_are_every_pair_within_the_radius_in_some_orientation(block):
    """Near copies planted in some orientation of another hash, up to 30 bits away: the binary
    index finds exactly the pairs and distances a comparison of every pair finds, in blocks."""
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, size=(1_500, len(ORIENTATIONS), 4), dtype=np.uint64)
    copies, sources = rng.choice(1_500, 200, replace=False), rng.integers(0, 1_500, 200)
    for copy, source in zip(copies, sources, strict=True):
        hashes[copy, 0] = hashes[source, rng.integers(0, len(ORIENTATIONS))]
        for bit in rng.choice(HASH_BITS, rng.integers(0, 31), replace=False):
            hashes[copy, 0, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    # Symmetric pictures: two orientations of a source within the radius of its copy, at
    # different distances, so a pair's bits must be the closest orientation's.
    for source in sources[:50]:
        hashes[source, 1] = hashes[source, 0] ^ np.uint64(0b1111)
    expected = brute_force_phash_pairs(hashes, 24)
    i, j, bits, turns = (
        np.concatenate(part) for part in zip(*phash_pairs(hashes, 24, block=block), strict=True)
    )
    pairs = zip(i.tolist(), j.tolist(), strict=True)
    assert dict(zip(pairs, bits.tolist(), strict=True)) == expected
    # The orientation of j that is that close to i's identity hash.
    assert (np.bitwise_count(hashes[i, 0] ^ hashes[j, turns]).sum(axis=1) == bits).all()
    assert (orientation_bits(hashes[i], hashes[j]).argmin(axis=1) == turns).all()
    assert 50 < len(expected) < 200  # some planted copies fall outside the radius
    assert (np.diff(i * len(hashes) + j) > 0).all()  # sorted by (i, j), each once
