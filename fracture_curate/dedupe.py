"""``curate dedupe``: duplicate clusters in layers, cheap first, and which copy to keep.

Layers: identical bytes (``image_id``); identical pixels (``pixel_sha256``); a perceptual hash that
sees through flips and 90-degree rotations; cosine similarity of centred, L2-normalised MobileNetV2
embeddings. Clusters are the connected components of all matched pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fracture_curate.dataset_files import mark_problems, recheck, scanned_files
from fracture_curate.geometry import GEOMETRY_THRESHOLD, verify_pairs
from fracture_curate.graph import chain_pairs, connected_groups
from fracture_curate.manifest import dataset_root, folder_lock, read_stage, write_stage
from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.phash import HASH_BITS, phash_pairs, unpack_hashes
from fracture_curate.progress import ProgressCallback
from fracture_curate.schema import DEDUPE_COLUMNS, MATCH_KINDS, empty_columns
from fracture_curate.vectors import (
    centred_unit_rows,
    cosine_pairs,
    embedding_matrix,
    nearest_neighbours,
    unit_rows,
)

LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF"})
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
    geometry_threshold: int = GEOMETRY_THRESHOLD  #: min matched keypoints for a copy
    block: int = 2048  #: side of the similarity search's square tiles

    CONSTRAINTS: ClassVar[Constraints] = {
        "phash_radius": Interval(0, HASH_BITS, integer=True),
        "cosine_threshold": Interval(-1, 1),
        "use_embeddings": _FLAG,
        "geometry": _FLAG,
        "geometry_neighbours": Interval(1, integer=True),
        "geometry_floor": Interval(-1, 1),
        "geometry_threshold": Interval(1, integer=True),
        "block": Interval(1, integer=True),
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
    on_progress: ProgressCallback | None = None,
) -> Pairs:
    """Every matched pair among the rows of ``scan`` (positions), layer by layer.

    The geometry layer needs the images, so it runs only when ``root`` is given.
    """
    parts = [exact_pairs(scan["image_id"], "bytes"), exact_pairs(scan["pixel_sha256"], "pixels")]

    # pHash on one row per distinct picture.
    unique_pixels = scan.drop_duplicates("pixel_sha256").dropna(subset=["phash"])
    if len(unique_pixels) > 1:
        positions = scan.index.get_indexer(unique_pixels.index)
        hashes = unpack_hashes(unique_pixels["phash"].tolist())
        for i, j, bits in phash_pairs(hashes, config.phash_radius):
            parts.append(_layer_pairs(positions, i, j, "phash", 1.0 - bits / HASH_BITS))

    if embeddings is None or len(embeddings) < 2:
        return Pairs.concat(parts)
    # Embedding cosine, and geometric verification of each file's nearest neighbours.
    files = scan.drop_duplicates("image_id")
    files = files[files["image_id"].isin(embeddings["image_id"])]
    positions = scan.index.get_indexer(files.index)
    vectors = embedding_matrix(embeddings, files["image_id"])
    unit = centred_unit_rows(vectors)
    for i, j, similarity in cosine_pairs(unit, config.cosine_threshold, block=config.block):
        parts.append(_layer_pairs(positions, i, j, "embedding", similarity))
    if config.geometry and root is not None:
        # Neighbours by plain (uncentred) cosine: centring amplifies the texture differences
        # a turned copy has, and ranked some sources below their copy's 10th neighbour.
        i, j, _ = nearest_neighbours(
            unit_rows(vectors), config.geometry_neighbours, config.geometry_floor
        )
        scores = verify_pairs(scanned_files(files, root), i, j, on_progress=on_progress)
        i, j = i[scores >= config.geometry_threshold], j[scores >= config.geometry_threshold]
        similarity = np.einsum("ij,ij->i", unit[i], unit[j])
        parts.append(_layer_pairs(positions, i, j, "geometry", similarity))
    return Pairs.concat(parts)


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


def keep_order(frame: pd.DataFrame) -> pd.Series:
    """Rank for choosing the kept copy: largest resolution, lossless over lossy, then path."""
    ranked = pd.DataFrame(
        {
            "pixels": -(frame["width"] * frame["height"]),
            "lossy": ~frame["format"].isin(LOSSLESS_FORMATS),
            "path": frame["path"],  # unique: no two rows tie
        }
    )
    order = ranked.sort_values(["pixels", "lossy", "path"]).index
    return pd.Series(np.arange(len(order)), index=order).reindex(frame.index)


def deduplicate(
    scan: pd.DataFrame,
    embeddings: pd.DataFrame | None,
    config: DedupeConfig = DedupeConfig(),
    *,
    root: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """The scan table plus the dedupe columns (see ``manifests/README.md``).

    ``root`` is the dataset folder; without it the geometry layer is skipped.
    """
    result = empty_columns(scan, DEDUPE_COLUMNS)
    ok = scan[scan["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        return result
    root = Path(root) if root else None
    pairs = find_pairs(ok, embeddings, config, root=root, on_progress=on_progress)

    n = len(ok)
    n_clusters, components = connected_groups(n, pairs.left, pairs.right)
    sizes = np.bincount(components)
    kept_row = kept_rows(components, keep_order(ok).to_numpy(), n_clusters)
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
    )
    positions = scan.index[scan["status"] == "ok"]
    for column, dtype in DEDUPE_COLUMNS.items():
        result.loc[positions, column] = columns[column].astype(dtype).to_numpy()
    return result


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
        frame = deduplicate(scan, embeddings, config, root=root, on_progress=on_progress)
        params = asdict(config) | {"root": str(root)}
        write_stage(frame, directory, "dedupe", params=params, inputs=inputs)
    return frame
