"""Curation quality on generated sets with planted problems: recall per kind, pair precision.

    .venv/bin/python benchmarks/curation_quality.py [--per-class 150] [--alike 400]

Set A: a split-class set with every kind of planted copy and outlier, and other films of some
originals' anatomy. A planted copy is found when it lands in its source's duplicate cluster; a
planted outlier when it is flagged; another film when it is kept apart from its source's cluster.
Precision counts grouped pairs whose members come from different originals.
Set B: every image a different phantom of the same kind and nothing planted, so every grouped pair
is a false one and every flag a false alarm.
Also prints the similarity quantiles used to choose the defaults.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fracture_curate.dedupe import DedupeConfig, deduplicate
from fracture_curate.embed import EmbedConfig, embed_manifest
from fracture_curate.manifest import manifest_path, read_manifest
from fracture_curate.outliers import OutlierConfig, parse_contamination, score_outliers
from fracture_curate.phash import phash_distance
from fracture_curate.scan import run_scan
from fracture_curate.schema import flags
from fracture_curate.synthetic import (
    DUPLICATE_KINDS,
    generate_dataset,
    planted_vs_found,
    read_record,
    source_families,
)
from fracture_curate.vectors import centred_unit_rows, embedding_matrix

OUT = Path(__file__).parent / "out" / "quality"
TARGETS = {kind: 0.99 for kind in DUPLICATE_KINDS} | {
    "cropped": 0.9,
    "rotated_small": 0.9,
    "brightness": 0.9,
    "outlier": 0.9,
    "follow_up": 0.99,  # another film of an original's anatomy: kept apart, not called a copy
}


def build(name: str, **generate: object) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, Path]:
    """Generate, scan and embed one set (cached): scan table, embeddings, planted record, root."""
    data, manifests = OUT / name / "data", OUT / name / "manifests"
    if not manifest_path(manifests, "embed").exists():
        shutil.rmtree(OUT / name, ignore_errors=True)
        generate_dataset(data, **generate)
        run_scan(data, manifests)
        embed_manifest(manifests, EmbedConfig())
    scan = read_manifest(manifest_path(manifests, "scan"))
    embeddings = read_manifest(manifest_path(manifests, "embed"))
    planted = read_record(data)
    return scan, embeddings, planted, data


def grouped_pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """Every pair of paths that share a duplicate cluster."""
    clustered = frame[frame["cluster_size"] > 1]
    pairs = set()
    for _, members in clustered.groupby("cluster_id")["path"]:
        pairs.update(itertools.combinations(sorted(members), 2))
    return pairs


def evaluate(frame: pd.DataFrame, planted: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Recall per planted kind (the planted-vs-found rules the report uses too), and pair precision
    (grouped pairs from different originals are wrong)."""
    found = planted_vs_found(planted, frame)
    recall = found.loc[found.index.isin(TARGETS), ["planted", "found"]].astype(int)
    recall["recall"] = recall["found"] / recall["planted"]
    recall["target"] = [TARGETS[kind] for kind in recall.index]
    family = source_families(planted)
    pairs = grouped_pairs(frame)
    wrong = sum(family.get(a, a) != family.get(b, b) for a, b in pairs)
    originals = planted.loc[planted["kind"] == "original", "path"]
    flagged_clean = flags(frame.set_index("path").loc[originals, "is_outlier"])
    scores = {
        "grouped pairs": len(pairs),
        "wrong pairs": wrong,
        "pair precision": 1 - wrong / len(pairs) if pairs else 1.0,
        "clean images flagged": float(flagged_clean.mean()),
    }
    return recall, scores


def pair_similarities(
    scan: pd.DataFrame, embeddings: pd.DataFrame, left: list[str], right: list[str]
) -> pd.DataFrame:
    """Centred cosine and pHash bits between rows named by path (the layers' raw scores)."""
    ok = scan[scan["status"] == "ok"].set_index("path")
    vectors = embedding_matrix(embeddings, ok["image_id"])
    unit = pd.Series(list(centred_unit_rows(vectors)), index=ok.index)
    return pd.DataFrame(
        {
            "cosine": [float(unit[a] @ unit[b]) for a, b in zip(left, right, strict=True)],
            "phash_bits": [
                phash_distance(ok.loc[a, "phash"], ok.loc[b, "phash"])
                for a, b in zip(left, right, strict=True)
            ],
        }
    )


def calibration(scan: pd.DataFrame, embeddings: pd.DataFrame, planted: pd.DataFrame) -> None:
    """How the defaults were chosen: each layer's score for planted copies and for strangers."""
    copies = planted[planted["kind"].isin(DUPLICATE_KINDS)]
    ok = set(scan.loc[scan["status"] == "ok", "path"])
    copies = copies[copies["path"].isin(ok) & copies["source_path"].isin(ok)]
    scores = pair_similarities(
        scan, embeddings, copies["path"].tolist(), copies["source_path"].tolist()
    )
    scores["kind"] = copies["kind"].to_numpy()
    print("planted copies against their source (min cosine, max pHash bits):")
    print(scores.groupby("kind").agg(cosine=("cosine", "min"), phash_bits=("phash_bits", "max")))
    originals = planted.loc[planted["kind"] == "original", "path"]
    rng = np.random.default_rng(0)
    a, b = rng.choice(originals, 3000), rng.choice(originals, 3000)
    different = a != b
    strangers = pair_similarities(scan, embeddings, list(a[different]), list(b[different]))
    print(
        "distinct originals (3000 random pairs): max cosine "
        f"{strangers['cosine'].max():.3f}, min pHash bits {strangers['phash_bits'].min()}"
    )


def run(
    dedupe: DedupeConfig, outliers: OutlierConfig, per_class: int, alike: int, seed: int
) -> tuple[pd.DataFrame, dict[str, float], dict[str, float]]:
    scan, embeddings, planted, root = build(
        f"planted-{seed}" if seed else "planted",
        layout="split-class",
        n_per_class=per_class,
        image_size=256,
        plant_counts={kind: 20 for kind in DUPLICATE_KINDS} | {"outlier": 8, "follow_up": 20},
        seed=1 + seed,
    )
    frame = deduplicate(scan, embeddings, dedupe, root=root)
    frame = score_outliers(frame, embeddings, outliers)
    recall, scores = evaluate(frame, planted)
    calibration(scan, embeddings, planted)

    scan_b, embeddings_b, planted_b, root_b = build(
        f"alike-{seed}" if seed else "alike",
        layout="class",
        classes=("not fractured",),
        n_per_class=alike,
        image_size=256,
        plant=False,
        seed=2 + seed,
    )
    frame_b = deduplicate(scan_b, embeddings_b, dedupe, root=root_b)
    frame_b = score_outliers(frame_b, embeddings_b, outliers)
    _, scores_b = evaluate(frame_b, planted_b)
    calibration(scan_b, embeddings_b, planted_b)
    return recall, scores, scores_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=150, help="originals per class, set A")
    parser.add_argument("--alike", type=int, default=400, help="images in set B")
    parser.add_argument("--seed", type=int, default=0, help="offset of the generators' seeds")
    parser.add_argument("--phash-radius", type=int, default=DedupeConfig.phash_radius)
    parser.add_argument("--cosine-threshold", type=float, default=DedupeConfig.cosine_threshold)
    parser.add_argument("--contamination", default=OutlierConfig.contamination)
    args = parser.parse_args()
    dedupe = replace(
        DedupeConfig(), phash_radius=args.phash_radius, cosine_threshold=args.cosine_threshold
    )
    outliers = replace(OutlierConfig(), contamination=parse_contamination(args.contamination))
    recall, scores, scores_b = run(dedupe, outliers, args.per_class, args.alike, args.seed)
    print(f"\nthresholds: {dedupe}\n            {outliers}")
    print("\nSet A: planted problems")
    print(recall.to_string(float_format=lambda v: f"{v:.3f}"))
    for name, value in scores.items():
        print(f"{name:>22}: {value:.4g}")
    print(f"\nSet B: {args.alike} different phantoms of one kind, nothing planted")
    for name, value in scores_b.items():
        print(f"{name:>22}: {value:.4g}")
    failures = recall[recall["recall"] < recall["target"]].index.tolist()
    failures += ["precision A"] if scores["pair precision"] < 0.99 else []
    failures += ["precision B"] if scores_b["pair precision"] < 0.99 else []
    failures += ["clean flagged A"] if scores["clean images flagged"] > 0.02 else []
    print("\nall targets met" if not failures else f"\ntargets missed: {', '.join(failures)}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
