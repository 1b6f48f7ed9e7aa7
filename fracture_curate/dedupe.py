"""``curate dedupe``: duplicate clusters in layers, cheap first, and which copy to keep.

Layers: identical bytes (``image_id``); identical pixels (``pixel_sha256``); a perceptual hash that
sees through flips and 90-degree rotations; cosine similarity of centred, L2-normalised MobileNetV2
embeddings; geometric verification of nearest neighbours (crops, small turns), which also decides
each pHash and embedding match, the one picture turned back as the hashes match it. Clusters are
the connected components of all matched pairs, and one copy of each is kept.

Geometric verification also finds related images: other films of the same anatomy (a follow-up,
a second exposure) that are not copies. They are all kept, and grouped (``related_group``) so that
the split keeps them together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fracture_curate.ann import (
    NEIGHBOUR_PROBES,
    PAIR_PROBES,
    SEARCH_METHODS,
    Partition,
    SearchReport,
    neighbour_pairs,
    similar_pairs,
)
from fracture_curate.dataset_files import mark_problems, recheck, scanned_files
from fracture_curate.dicom import DEFAULT_WINDOW, Window
from fracture_curate.geometry import (
    COPY_INLIERS,
    COPY_SHARE,
    RELATED_INLIERS,
    PairEvidence,
    verify_pairs,
)
from fracture_curate.graph import chain_pairs, connected_groups
from fracture_curate.manifest import (
    dataset_root,
    folder_lock,
    read_stage,
    recorded_window,
    write_stage,
)
from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.phash import HASH_BITS, orientation_bits, phash_pairs, unpack_hashes
from fracture_curate.progress import ProgressCallback
from fracture_curate.schema import DEDUPE_COLUMNS, MATCH_KINDS, empty_columns
from fracture_curate.vectors import UnitRows, embedding_matrix

#: A copy is filled (its extra canvas flat fill) when its ``open_border`` is at most FILL_SHARE of
#: the widest in its cluster and FILL_MARGIN below it. Measured on planted copies: copies turned
#: on an expanded canvas (median border grey fill), 2-10 degrees, of 40 phantoms (`curate synth
#: --per-class 400`) and, 1-5 degrees, of two real radiographs (RG1 chest; RG3 ankle, with its
#: flat collimated field; 256 and 512 px; PNG, JPEG q50 and q85) keep at most 0.45 of their
#: original's open border and lose at least 0.42 of it; the cropped, reduced, re-encoded, flipped
#: and brightened copies keep at least 0.76 and lose at most 0.18 (a crop can open a side, not
#: close one).
FILL_SHARE = 0.5
FILL_MARGIN = 0.25
_FLAG = Options((True, False))


@dataclass(frozen=True)
class DedupeConfig:
    """Thresholds of the matching layers (defaults from benchmarks/curation_quality.py)."""

    phash_radius: int = 24  #: max differing bits of the 256-bit pHash, any orientation
    cosine_threshold: float = 0.95  #: min cosine of centred, normalised embeddings
    use_embeddings: bool = True
    geometry: bool = True  #: verify nearest neighbours with SIFT + RANSAC (crops, small turns)
    geometry_neighbours: int = 16  #: nearest neighbours per file checked geometrically
    geometry_floor: float = 0.5  #: min plain embedding cosine for a neighbour to be checked
    geometry_threshold: int = COPY_INLIERS  #: min keypoints on one transform for a copy
    #: screen pairs on small images first; verify at full size only those the screen passes
    geometry_screen: bool = True
    copy_share: float = COPY_SHARE  #: min share of the matches on that transform for a copy
    related_threshold: int = RELATED_INLIERS  #: min keypoints on one transform for related films
    block: int = 2048  #: side of the similarity search's square tiles
    #: "auto" (exact up to ``ann.EXACT_LIMIT`` images, an inverted file beyond), "exact" or
    #: "approximate"; ``probes``: lists of the inverted file each image is compared with for
    #: the pairs, ``neighbour_probes`` for the geometry layer's neighbours
    search: str = "auto"
    probes: int = PAIR_PROBES
    neighbour_probes: int = NEIGHBOUR_PROBES

    CONSTRAINTS: ClassVar[Constraints] = {
        "phash_radius": Interval(0, HASH_BITS, integer=True),
        "cosine_threshold": Interval(-1, 1),
        "use_embeddings": _FLAG,
        "geometry": _FLAG,
        "geometry_neighbours": Interval(1, integer=True),
        "geometry_floor": Interval(-1, 1),
        "geometry_threshold": Interval(1, integer=True),
        "geometry_screen": _FLAG,
        "copy_share": Interval(0, 1),
        "related_threshold": Interval(1, integer=True),
        "block": Interval(1, integer=True),
        "search": Options(SEARCH_METHODS),
        "probes": Interval(1, integer=True),
        "neighbour_probes": Interval(1, integer=True),
    }

    def __post_init__(self) -> None:
        check_params(self, self.CONSTRAINTS)


@dataclass(frozen=True)
class Pairs:
    """Matched pairs of row positions, with how and how strongly they matched."""

    left: np.ndarray
    right: np.ndarray
    kind: np.ndarray  #: index into MATCH_KINDS
    similarity: np.ndarray

    @classmethod
    def concat(cls, parts: list[Pairs]) -> Pairs:
        """The pairs of every part, in order (``parts`` is never empty: the exact layers always
        give one, if empty, part each)."""
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )

    @classmethod
    def empty(cls) -> Pairs:
        """No pairs."""
        none = np.empty(0, dtype=np.int64)
        return cls(none, none, none, np.empty(0, dtype=np.float64))

    def take(self, rows: np.ndarray) -> Pairs:
        """Some of the pairs (a mask or positions)."""
        return Pairs(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class RelatedPairs:
    """Pairs of row positions that show the same anatomy without being copies, with the
    geometric evidence."""

    left: np.ndarray
    right: np.ndarray
    evidence: PairEvidence

    @classmethod
    def none(cls) -> RelatedPairs:
        empty = np.empty(0, dtype=np.int64)
        return cls(empty, empty, PairEvidence(empty, empty, empty))


def exact_pairs(keys: pd.Series, kind: str) -> Pairs:
    """Pairs of rows that share a key (bytes or pixel hash): similarity 1."""
    left, right = chain_pairs(keys)
    return Pairs(left, right, np.full(len(left), MATCH_KINDS.index(kind)), np.ones(len(left)))


def find_pairs(
    scan: pd.DataFrame,
    embeddings: pd.DataFrame | None,
    config: DedupeConfig,
    *,
    root: Path | None = None,
    window: Window = DEFAULT_WINDOW,
    on_progress: ProgressCallback | None = None,
) -> tuple[Pairs, RelatedPairs, list[SearchReport]]:
    """Every matched pair among the rows of ``scan`` (positions), layer by layer, the pairs of
    related images the geometry layer found, and how the embedding searches ran (none when
    they did not).

    The geometry layer needs the images (a DICOM decoded with ``window``), so it runs only when
    ``root`` is given. It tests each file's nearest neighbours (with embeddings) and every pHash
    and embedding match: among thousands of look-alike radiographs, different films collide in
    both signatures (two plain shafts, one the other's transpose), so a match that the test can
    judge stands only where it finds a copy.
    """
    exact = [exact_pairs(scan["image_id"], "bytes"), exact_pairs(scan["pixel_sha256"], "pixels")]
    hashed, turns = _phash_layer(scan, config.phash_radius)
    check = config.geometry and root is not None
    embedded, neighbours, reports = _embedding_layers(scan, embeddings, config, neighbours=check)
    if not check:
        return Pairs.concat([*exact, hashed, embedded]), RelatedPairs.none(), reports
    # One test of each candidate, the right picture turned as its hash matched the left one's:
    # a neighbour as it is, an embedding match as its hashes are closest and, where that is a
    # turn, as it is too (far apart in every orientation, the closest is chance).
    closest = closest_orientations(scan, embedded)
    turned = closest != 0
    candidates = Pairs.concat([neighbours, hashed, embedded, embedded.take(turned)])
    orientation = np.concatenate(
        [
            np.zeros(len(neighbours.left), np.int64),
            turns,
            closest,
            np.zeros(int(turned.sum()), np.int64),
        ]
    )
    rows, items = np.unique(
        np.concatenate([candidates.left, candidates.right]), return_inverse=True
    )
    evidence = verify_pairs(
        scanned_files(scan.iloc[rows], root, window),
        items[: len(candidates.left)],
        items[len(candidates.left) :],
        orientation=orientation,
        screen=config.geometry_screen,
        on_progress=on_progress,
    )
    copies = evidence.copies(config.geometry_threshold, config.copy_share)
    proposed = candidates.kind != MATCH_KINDS.index("geometry")  # pHash and embedding matches
    stands = copies | (proposed & ~evidence.judged())
    linked = evidence.related(
        config.related_threshold, config.geometry_threshold, config.copy_share
    )
    # A related pair found as a neighbour and as a match is one pair (left < right in both).
    _, first = np.unique(
        np.stack([candidates.left[linked], candidates.right[linked]], axis=1),
        axis=0,
        return_index=True,
    )
    linked = np.flatnonzero(linked)[np.sort(first)]
    related = RelatedPairs(candidates.left[linked], candidates.right[linked], evidence.take(linked))
    return Pairs.concat([*exact, candidates.take(stands)]), related, reports


def _embedding_layers(
    scan: pd.DataFrame, embeddings: pd.DataFrame | None, config: DedupeConfig, *, neighbours: bool
) -> tuple[Pairs, Pairs, list[SearchReport]]:
    """The embedding matches and, with ``neighbours``, each file's nearest neighbours (pairs of
    kind "geometry", for the geometry layer to test), and how the searches ran."""
    if embeddings is None or len(embeddings) < 2:
        return Pairs.empty(), Pairs.empty(), []
    files = scan.drop_duplicates("image_id")
    files = files[files["image_id"].isin(embeddings["image_id"])]
    positions = scan.index.get_indexer(files.index)
    vectors = embedding_matrix(embeddings, files["image_id"])
    centred, plain = UnitRows.centred(vectors), UnitRows(vectors)
    # Approximate searches share one partition of the plain rows (built only if one needs it).
    partition = Partition(plain, max(config.probes, config.neighbour_probes))
    i, j, similarity, report = similar_pairs(
        centred,
        config.cosine_threshold,
        search=config.search,
        probes=config.probes,
        block=config.block,
        partition=partition,
    )
    embedded = _layer_pairs(positions, i, j, "embedding", similarity)
    if not neighbours:
        return embedded, Pairs.empty(), [report]
    # Neighbours by plain (uncentred) cosine: centring amplifies the texture differences a
    # turned copy has, and ranked some sources below their copy's 10th neighbour.
    i, j, _, searched = neighbour_pairs(
        plain,
        config.geometry_neighbours,
        config.geometry_floor,
        search=config.search,
        probes=config.neighbour_probes,
        partition=partition,
    )
    near = _layer_pairs(positions, i, j, "geometry", centred.cosines(i, j))
    return embedded, near, [report, searched]


def _phash_layer(scan: pd.DataFrame, radius: int) -> tuple[Pairs, np.ndarray]:
    """The pHash matches among one row per distinct picture, and the orientation each matched
    in (the right one turned as ``phash.ORIENTATIONS[o]`` looks like the left)."""
    unique_pixels = scan.drop_duplicates("pixel_sha256").dropna(subset=["phash"])
    empty = np.empty(0, dtype=np.int64)
    found = [(empty, empty, empty, empty)]
    if len(unique_pixels) > 1:
        hashes = unpack_hashes(unique_pixels["phash"].tolist())
        found += list(phash_pairs(hashes, radius))
    i, j, bits, turns = (np.concatenate(part) for part in zip(*found, strict=True))
    positions = scan.index.get_indexer(unique_pixels.index)
    return _layer_pairs(positions, i, j, "phash", 1.0 - bits / HASH_BITS), turns


def closest_orientations(scan: pd.DataFrame, pairs: Pairs) -> np.ndarray:
    """For each pair of rows of ``scan``, the orientation in which its right picture's pHash is
    closest to its left one's (the first of ties; 0 where a picture has no hash)."""
    turns = np.zeros(len(pairs.left), dtype=np.int64)
    blobs = scan["phash"].to_numpy()
    hashed = scan["phash"].notna().to_numpy()
    both = hashed[pairs.left] & hashed[pairs.right]
    if both.any():
        bits = orientation_bits(
            unpack_hashes(blobs[pairs.left[both]].tolist()),
            unpack_hashes(blobs[pairs.right[both]].tolist()),
        )
        turns[both] = bits.argmin(axis=1)
    return turns


def _layer_pairs(
    positions: np.ndarray, i: np.ndarray, j: np.ndarray, kind: str, similarity: np.ndarray
) -> Pairs:
    """Pairs found among a layer's subset of rows, mapped back to row positions."""
    return Pairs(
        positions[i],
        positions[j],
        np.full(len(i), MATCH_KINDS.index(kind)),
        np.asarray(similarity, dtype=np.float64),
    )


def kept_rows(components: np.ndarray, rank: np.ndarray, n_clusters: int) -> np.ndarray:
    """For each row, the row kept for its cluster: the one with the lowest rank."""
    order = np.lexsort((rank, components))
    starts = np.r_[0, np.flatnonzero(np.diff(components[order])) + 1]
    kept = np.empty(n_clusters, dtype=np.int64)
    kept[components[order[starts]]] = order[starts]
    return kept[components]


def filled_copies(open_border: pd.Series, clusters: np.ndarray) -> np.ndarray:
    """Which rows are copies whose extra canvas is flat fill: rows whose ``open_border`` is at
    most FILL_SHARE of, and FILL_MARGIN below, the widest of their cluster (``clusters``: each
    row's cluster). A null ``open_border`` (a table scanned by hand) is never filled.

    A copy turned with an expanded canvas (or padded all round) is larger than its original, but
    its picture no longer reaches any side: the fill lines them all. Comparing within the cluster
    spares an original whose own background is flat (a dark or collimated border): it is as open
    as its copies, or more.
    """
    widest = open_border.groupby(clusters).transform("max")
    filled = (open_border <= FILL_SHARE * widest) & (widest - open_border >= FILL_MARGIN)
    return filled.fillna(False).to_numpy(dtype=bool)


def keep_order(frame: pd.DataFrame, clusters: np.ndarray) -> pd.Series:
    """Rank for choosing the kept copy, 0 first: the original, when the cluster holds one.

    In order: lossless over lossy (a PNG holding exactly a JPEG's pixels is that JPEG re-saved,
    so it ranks as lossy and, next to the JPEG, after it); no fill over a copy whose extra canvas
    is flat fill (:func:`filled_copies`: a turn with an expanded canvas, padding); the most
    pixels (a crop or a reduced copy has fewer); among lossless copies, the most grey levels
    (a point operation such as a brightness or contrast change can only merge levels); then the
    path. ``clusters`` gives each row's cluster.
    """
    ranked = pd.DataFrame(
        {
            "lossy": frame["lossy"].fillna(True).astype(bool),  # unknown: no better than lossy
            "pixels": -(frame["width"] * frame["height"]),
            "path": frame["path"],  # unique: no two rows tie
        }
    )
    lossy_pixels = frame.loc[ranked["lossy"], "pixel_sha256"]
    ranked["resaved"] = ~ranked["lossy"] & frame["pixel_sha256"].isin(lossy_pixels)
    ranked["lossy"] |= ranked["resaved"]
    ranked["filled"] = filled_copies(frame["open_border"], clusters)
    # JPEG noise adds levels of its own, so only lossless copies are ranked by them (the lossy
    # ones all get a null, which ties).
    ranked["levels"] = -frame["colour_count"].where(~ranked["lossy"])
    order = ranked.sort_values(["lossy", "filled", "pixels", "levels", "resaved", "path"]).index
    return pd.Series(np.arange(len(order)), index=order).reindex(frame.index)


def deduplicate(
    scan: pd.DataFrame,
    embeddings: pd.DataFrame | None,
    config: DedupeConfig = DedupeConfig(),
    *,
    root: str | Path | None = None,
    window: Window = DEFAULT_WINDOW,
    on_progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """The scan table plus the dedupe columns (see ``manifests/README.md``).

    ``root`` is the dataset folder, ``window`` the one its DICOM files were scanned with;
    without ``root`` the geometry layer is skipped.
    """
    result = empty_columns(scan, DEDUPE_COLUMNS)
    ok = scan[scan["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        return result
    root = Path(root) if root else None
    pairs, related, searches = find_pairs(
        ok, embeddings, config, root=root, window=window, on_progress=on_progress
    )
    if searches:  # the command line says how the searches ran
        result.attrs["similarity_search"] = "\n".join(search.line() for search in searches)

    n = len(ok)
    n_clusters, components = connected_groups(n, pairs.left, pairs.right)
    sizes = np.bincount(components)
    kept_row = kept_rows(components, keep_order(ok, components).to_numpy(), n_clusters)
    is_kept = kept_row == np.arange(n)

    # Each row's strongest match: the most certain kind, then the highest similarity.
    edges = pd.DataFrame(
        {
            "row": np.concatenate([pairs.left, pairs.right]),
            "kind": np.tile(pairs.kind, 2),
            "similarity": np.tile(pairs.similarity, 2),
        }
    ).sort_values(["kind", "similarity"], ascending=[True, False])
    best = edges.drop_duplicates("row").set_index("row")  # rows of a cluster of one have none

    columns = pd.DataFrame(
        {
            "cluster_id": components,
            "cluster_size": sizes[components],
            "is_kept": is_kept,
            "duplicate_of": np.where(is_kept, None, ok["image_id"].to_numpy()[kept_row]),
            "match_kind": best["kind"].map(dict(enumerate(MATCH_KINDS))),
            "similarity": best["similarity"],
            "label_conflict": ok["label"].groupby(components).transform("nunique") > 1,
        },
        index=ok.index,  # rows without a match get nulls
    ).join(related_columns(components, related, ok["image_id"]))
    positions = scan.index[scan["status"] == "ok"]
    for column, dtype in DEDUPE_COLUMNS.items():
        result.loc[positions, column] = columns[column].astype(dtype).to_numpy()
    return result


def related_columns(
    components: np.ndarray, related: RelatedPairs, image_ids: pd.Series
) -> pd.DataFrame:
    """``related_group``, ``related_to`` and ``related_evidence`` for rows whose duplicate
    cluster holds another film of the same anatomy as another cluster (rows of ``image_ids``;
    ``components`` are their duplicate clusters).

    A related group joins the clusters that related pairs link, copies included; each row of a
    related pair names its most strongly related partner and the evidence.
    """
    apart = components[related.left] != components[related.right]  # copies after all
    left, right = related.left[apart], related.right[apart]
    inliers, matches = related.evidence.inliers[apart], related.evidence.matches[apart]
    columns = pd.DataFrame(index=image_ids.index, columns=["related_group"], dtype="Int64")
    if len(left) == 0:
        return columns.assign(related_to=pd.NA, related_evidence=pd.NA)
    _, groups = connected_groups(int(components.max()) + 1, components[left], components[right])
    linked = np.zeros(len(groups), dtype=bool)
    linked[groups[components[left]]] = True
    row_groups = groups[components]
    columns["related_group"] = pd.Series(row_groups, index=image_ids.index, dtype="Int64").where(
        linked[row_groups]
    )
    edges = pd.DataFrame(
        {
            "row": np.concatenate([left, right]),
            "partner": image_ids.to_numpy()[np.concatenate([right, left])],
            "inliers": np.tile(inliers, 2),
            "matches": np.tile(matches, 2),
        }
    ).sort_values(["inliers", "partner"], ascending=[False, True])
    best = edges.drop_duplicates("row").set_index("row")
    columns["related_to"] = best["partner"]
    columns["related_evidence"] = (
        best["inliers"].astype(str)
        + " keypoints on one transform, "
        + (100 * best["inliers"] / best["matches"]).round().astype(int).astype(str)
        + "% of "
        + best["matches"].astype(str)
        + " matches"
    )
    return columns


def leakage(frame: pd.DataFrame) -> pd.DataFrame:
    """Duplicate clusters whose members sit in more than one source split, largest first."""
    members = frame[frame["cluster_size"] > 1].dropna(subset=["source_split"])  # null: not
    groups = members.groupby("cluster_id")
    spread = pd.DataFrame(
        {
            "splits": groups["source_split"].agg(lambda s: ", ".join(sorted(s.unique()))),
            "n_splits": groups["source_split"].nunique(),
            "size": groups.size(),
            "example": groups["path"].agg(lambda p: " | ".join(p.iloc[:3])),
        }
    )
    return spread[spread["n_splits"] > 1].sort_values("size", ascending=False)


def summarise_dedupe(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Counts for the end-of-stage summary, and copies not kept by the layer that matched them."""
    clustered = frame[frame["cluster_size"] > 1]
    copies = clustered[~clustered["is_kept"]]
    conflicts = frame[frame["label_conflict"]]
    counts = pd.Series(
        {
            "images": int((frame["status"] == "ok").sum()),
            "duplicate clusters": clustered["cluster_id"].nunique(),
            "copies not kept": len(copies),
            "label-conflict clusters": conflicts["cluster_id"].nunique(),
            "related groups (other films, all kept)": frame["related_group"].nunique(),
            "kept": int(frame["is_kept"].sum()),
        }
    )
    strength = {kind: index for index, kind in enumerate(MATCH_KINDS)}  # strongest layer first
    by_match = copies["match_kind"].value_counts().sort_index(key=lambda k: k.map(strength))
    return {
        "counts": counts.rename_axis("dedupe").to_frame("value"),
        "copies_by_match": by_match.rename_axis("matched by").to_frame("copies"),
    }


def run_dedupe(
    directory: str | Path,
    config: DedupeConfig = DedupeConfig(),
    *,
    root: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Read ``scan`` (and ``embeddings``), deduplicate, write ``dedupe.parquet``.

    ``root`` overrides the dataset folder recorded in the scan (for a dataset that moved). Rows
    whose file embed could not read, or that is gone or resized since the scan, get that status
    (``changed``, ``vanished``, ...) and take no part.
    """
    with folder_lock(directory):
        scan, provenance = read_stage(directory, "scan")
        root = dataset_root(provenance, root)
        embeddings, inputs = None, {"scan": provenance}
        if config.use_embeddings:
            embeddings, inputs["embed"] = read_stage(directory, "embed")
            scan = mark_problems(scan, inputs["embed"]["details"].get("failed", {}))
        scan = recheck(scan, root)
        window = recorded_window(provenance)
        frame = deduplicate(
            scan, embeddings, config, root=root, window=window, on_progress=on_progress
        )
        params = asdict(config) | {
            "root": str(root),
            "similarity_search": frame.attrs.get("similarity_search"),
        }
        write_stage(frame, directory, "dedupe", params=params, inputs=inputs)
    return frame
