"""Outlier detection on a grid of set sizes and foreign shares, with foreign images phantoms lack.

    .venv/bin/python benchmarks/outlier_grid.py [--sizes 20,50,200,1000,5000] [--shares 0,0.02,0.15]
        [--draws 3] [--seeds 0] [--components 0.95] [--contamination robust] [--per-class]
        [--n-estimators 1000] [--config-seed 0]

From Python (with ``benchmarks/`` on ``sys.path``): ``outlier_grid(...)`` returns one row per
draw, ``summarise_grid`` one row per cell with its worst and mean figures.

Measures :func:`fracture_curate.outliers.score_outliers` where tuning to one generated set cannot
pass: every cell of the grid (set size x foreign share) is drawn ``--draws`` times from one pool,
and a cell's figure is its worst draw (printed with the median draw: ``worst / median``). Draw
``d`` of a cell is drawn by ``default_rng([seed, size, share x 10,000, d])``, so ``--seed S
--draws 3`` measures draws 0-2 of seed S; ``--seeds A-B`` runs the grid once per seed and judges
each cell by its worst draw over all of them.

The pool (built once, cached under ``benchmarks/out/outlier_grid/``), labelled as two classes:

- inliers: 5,880 bone-radiograph phantoms (``generate_dataset(layout="class", plant=False)``,
  256 px, PNG, both classes) and 1,500 films of the one real extremity radiograph installed
  (RG3, an ankle: views of it made into other films of its anatomy; see :mod:`foreign_images`),
  20% of the inliers, so that real radiographs are a population of the set, not a rarity;
- foreign images, 300 of each kind: natural colour photos, other modalities and body parts (CT,
  MR, NM, ultrasound, a chest radiograph), near-blank grey frames (see :mod:`foreign_images`).
  Each goes into one of the two class folders at random, as a stray file would.

The pool is scanned and embedded once (``run_scan``, then ``embed_manifest`` with the default
MobileNetV2 settings; scanned again, the embeddings kept, when the scan schema gains a column).
A draw of a cell takes ``share x size`` foreign images (at least one when the share is above
zero), split equally among the kinds, the remainder going to the kinds in turn from draw to draw
so that every kind appears in small cells; the rest are inliers, ``max(1, 20%)`` of them real
radiograph films. Each draw is curated as the pipeline curates it: ``deduplicate`` (without the
geometry layer, which would read every image again) clusters the near-copies a draw holds (the
frames of one ultrasound loop, overlapping crops of one photo), then ``score_outliers`` scores it.
A planted image counts as found when its row is flagged (a copy shares its kept copy's flag).
With 7,380 inliers and 900 foreign images in the pool, even the draws of the 5,000-image cells
differ.

On the project's 2-core CPU machine, building the pool takes a few minutes, once (the run prints
each step's time); the default grid (45 draws) scored in 136 s on 2026-11-30.

Targets: in every cell of 50 images or more, recall (foreign flagged / foreign) >= 0.9 and at most
2% of clean images flagged; every colour photo flagged at every size. The verdict is printed;
the exit status is 0 either way: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from foreign_images import FOREIGN_GENERATORS, FOREIGN_KINDS, radiograph_views
from seeds import parse_seeds, seed_range

from fracture_curate.dedupe import DedupeConfig, deduplicate
from fracture_curate.embed import EmbedConfig, embed_manifest
from fracture_curate.manifest import manifest_path, read_manifest
from fracture_curate.outliers import OutlierConfig, parse_contamination, score_outliers
from fracture_curate.progress import ProgressCallback
from fracture_curate.scan import run_scan
from fracture_curate.schema import SCAN_COLUMNS, flags
from fracture_curate.synthetic import generate_dataset

OUT = Path(__file__).parent / "out" / "outlier_grid"
SIZES = (20, 50, 200, 1000, 5000)
SHARES = (0.0, 0.02, 0.15)
INLIER_KINDS = ("phantom", "radiograph")
CLASSES = ("fractured", "not fractured")

RECALL_TARGET = 0.9
CLEAN_TARGET = 0.02  #: the largest share of clean images flagged
TARGET_MIN_SIZE = 50  #: recall and clean-flag targets hold from this set size up
LEGEND = """\
  photo, modality, blank recall: foreign images of that kind flagged / drawn; all recall: of all
  kinds; clean flagged: share of the inliers (phantoms and real radiograph films) flagged;
  phantoms flagged: the same for the phantoms alone; real flagged: real radiograph films flagged
  / drawn, over the draws; all photos: photos missed / drawn, over the draws; outlier_score AUC:
  the chance that a foreign image's outlier_score is above a clean image's (how well that score
  ranks, whatever the cut-off)"""


@dataclass(frozen=True)
class PoolSpec:
    """What the cached pool holds; a different spec rebuilds it."""

    phantoms_per_class: int = 2940
    radiographs: int = 1500  #: films of the real ankle radiograph, 20% of the inliers
    per_foreign_kind: int = 300
    image_size: int = 256
    seed: int = 0
    version: int = 2  #: raised whenever the images are made differently


@dataclass(frozen=True)
class Pool:
    """The scanned, embedded pool: one row per usable image with its kind, and the embeddings."""

    rows: pd.DataFrame  #: scan rows (status ok) with ``kind``, ``source`` and ``detail``
    embeddings: pd.DataFrame
    timings: dict[str, float]  #: seconds per build step run now (empty when all was cached)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_images(data: Path, spec: PoolSpec) -> pd.DataFrame:
    """Generate the phantoms, then add the real views and foreign images to the class folders at
    random; the record of every file written (path, kind, label, source, detail)."""
    planted = generate_dataset(
        data,
        layout="class",
        plant=False,
        n_per_class=spec.phantoms_per_class,
        image_size=spec.image_size,
        png_fraction=1.0,
        seed=spec.seed,
    )
    record = [
        {"path": path, "kind": "phantom", "label": label, "source": "", "detail": detail}
        for path, label, detail in zip(
            planted["path"], planted["label"], planted["detail"], strict=True
        )
    ]
    rng = np.random.default_rng([spec.seed, 1])
    batches = [("radiograph", radiograph_views(spec.radiographs, rng))] + [
        (kind, generate(spec.per_foreign_kind, rng))
        for kind, generate in FOREIGN_GENERATORS.items()
    ]
    for kind, images in batches:
        for index, rendered in enumerate(images):
            label = str(rng.choice(CLASSES))
            path = f"{label}/{kind}-{index:04d}.{rendered.extension}"
            (data / path).write_bytes(rendered.encode())
            record.append(
                {
                    "path": path,
                    "kind": kind,
                    "label": label,
                    "source": rendered.source,
                    "detail": rendered.detail,
                }
            )
    return pd.DataFrame(record)


def progress_printer() -> ProgressCallback:
    """A progress callback that logs each phase every 1,000 items and at its end."""
    reported: dict[str, int] = {}

    def report(phase: str, done: int, total: int, note: str = "") -> None:
        thousands = done // 1000
        if done == total or thousands > reported.get(phase, 0):
            reported[phase] = thousands
            log(f"  {phase}: {done}/{total}")

    return report


def build_pool(spec: PoolSpec = PoolSpec(), out: Path = OUT) -> Pool:
    """Write, scan and embed the pool, each step only when its cached result is missing."""
    data, manifests = out / "data", out / "manifests"
    spec_file, record_file = out / "pool.json", out / "pool.csv"
    timings: dict[str, float] = {}
    if not spec_file.exists() or json.loads(spec_file.read_text()) != asdict(spec):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        log(f"writing the pool under {out} ...")
        start = time.perf_counter()
        write_images(data, spec).to_csv(record_file, index=False)
        spec_file.write_text(json.dumps(asdict(spec), indent=1))
        timings["write images"] = time.perf_counter() - start
    scan_file = manifest_path(manifests, "scan")
    if not scan_file.exists() or set(SCAN_COLUMNS) - set(pq.read_schema(scan_file).names):
        log("scanning the pool ...")
        start = time.perf_counter()
        run_scan(data, manifests, on_progress=progress_printer())
        timings["scan"] = time.perf_counter() - start
    start = time.perf_counter()
    result = embed_manifest(manifests, EmbedConfig(), on_progress=progress_printer())
    if result.embedded:
        timings["embed"] = time.perf_counter() - start
    scan = read_manifest(manifest_path(manifests, "scan"))
    embeddings = read_manifest(manifest_path(manifests, "embed"))
    record = pd.read_csv(record_file, keep_default_na=False)
    rows = scan.merge(record[["path", "kind", "source", "detail"]], on="path")
    unusable = rows[(rows["status"] != "ok") | ~rows["image_id"].isin(embeddings["image_id"])]
    if len(unusable):
        log(
            f"left out, not scanned ok or not embedded: {unusable['kind'].value_counts().to_dict()}"
        )
    rows = rows.drop(unusable.index).drop_duplicates("image_id").reset_index(drop=True)
    return Pool(rows, embeddings, timings)


def foreign_counts(count: int, draw: int) -> dict[str, int]:
    """``count`` foreign images split equally among the kinds; the remainder goes to the kinds in
    turn, starting from a different kind at each draw."""
    base, remainder = divmod(count, len(FOREIGN_KINDS))
    counts = dict.fromkeys(FOREIGN_KINDS, base)
    for step in range(remainder):
        counts[FOREIGN_KINDS[(draw + step) % len(FOREIGN_KINDS)]] += 1
    return counts


def draw_cell(pool: Pool, size: int, share: float, draw: int, seed: int) -> pd.DataFrame:
    """The pool rows of one draw of a cell (see the module docstring)."""
    rng = np.random.default_rng([seed, size, round(share * 10_000), draw])
    by_kind = {kind: rows.index.to_numpy() for kind, rows in pool.rows.groupby("kind")}
    foreign = 0 if share == 0 else max(1, round(share * size))
    inliers = size - foreign
    radiograph_share = len(by_kind["radiograph"]) / (
        len(by_kind["radiograph"]) + len(by_kind["phantom"])
    )
    radiographs = min(max(1, round(radiograph_share * inliers)), inliers)
    wanted = foreign_counts(foreign, draw) | {
        "radiograph": radiographs,
        "phantom": inliers - radiographs,
    }
    chosen = []
    for kind, count in wanted.items():
        available = by_kind.get(kind, np.array([], dtype=int))
        if count > len(available):
            raise ValueError(
                f"a set of {size} at {share:.0%} foreign needs {count} {kind} images and the "
                f"pool has {len(available)}; build a larger PoolSpec"
            )
        chosen.append(rng.choice(available, count, replace=False))
    return pool.rows.loc[np.sort(np.concatenate(chosen))]


def measure_draw(rows: pd.DataFrame, embeddings: pd.DataFrame, config: OutlierConfig) -> dict:
    """Score one drawn set and count what was flagged, by kind (and by reason, where the result
    says which check flagged a row)."""
    subset = embeddings[embeddings["image_id"].isin(rows["image_id"])]
    scan = rows.drop(columns=["kind", "source", "detail"])
    frame = deduplicate(scan, subset, DedupeConfig(geometry=False))
    start = time.perf_counter()
    result = score_outliers(frame, subset, config)
    seconds = time.perf_counter() - start
    flagged = flags(result["is_outlier"]).to_numpy()
    kinds = rows["kind"].to_numpy()
    clean = np.isin(kinds, INLIER_KINDS)
    measures: dict = {"images": len(rows), "foreign": int((~clean).sum())}
    for kind in FOREIGN_KINDS:
        present = kinds == kind
        measures[f"n_{kind}"] = int(present.sum())
        measures[f"found_{kind}"] = int((flagged & present).sum())
        measures[f"recall_{kind}"] = flagged[present].mean() if present.any() else np.nan
    measures["found"] = int((flagged & ~clean).sum())
    measures["recall"] = flagged[~clean].mean() if (~clean).any() else np.nan
    measures["clean"] = int(clean.sum())
    measures["clean_flagged"] = int((flagged & clean).sum())
    measures["clean_flagged_share"] = flagged[clean].mean()
    measures["phantoms_flagged_share"] = flagged[kinds == "phantom"].mean()
    measures["radiographs"] = int((kinds == "radiograph").sum())
    measures["radiographs_flagged"] = int((flagged & (kinds == "radiograph")).sum())
    measures["photos_missed"] = int((~flagged & (kinds == "photo")).sum())
    missed = ~flagged & ~clean
    measures["missed_sources"] = Counter(
        f"{kind} {source}".strip()
        for kind, source in zip(kinds[missed], rows["source"].to_numpy()[missed], strict=True)
    )
    scores = result["outlier_score"].astype("Float64").fillna(-np.inf).to_numpy(dtype=float)
    measures["auc"] = ranking_auc(scores[~clean], scores[clean])
    reasons: dict[str, Counter[str]] = {}
    named_column = result.get("outlier_reason")
    if named_column is not None and named_column[flagged].notna().any():
        named = named_column.astype("string").fillna("(none)").to_numpy()
        for row_reasons, kind in zip(named[flagged], kinds[flagged], strict=True):
            for reason in row_reasons.split(","):
                reasons.setdefault(reason.strip(), Counter())[kind] += 1
    measures["reasons"] = reasons
    measures["seconds"] = seconds
    return measures


def ranking_auc(foreign: np.ndarray, clean: np.ndarray) -> float:
    """The chance that a foreign image scores above a clean one (ties count half): how well the
    scores rank, whatever the cut-off. NaN without foreign images."""
    if not len(foreign) or not len(clean):
        return np.nan
    above = (foreign[:, None] > clean[None, :]).sum()
    ties = (foreign[:, None] == clean[None, :]).sum()
    return float((above + ties / 2) / (len(foreign) * len(clean)))


def outlier_grid(
    sizes: Sequence[int] = SIZES,
    shares: Sequence[float] = SHARES,
    draws: int = 3,
    seed: int = 0,
    config: OutlierConfig = OutlierConfig(),
    pool: Pool | None = None,
    on_draw: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """One row per draw of every cell: what ``score_outliers`` flagged, by kind.

    Args:
        sizes: images per set.
        shares: foreign share of a set (0 to 1).
        draws: sets drawn per cell.
        seed: seed of the draws (the pool is always built with ``PoolSpec()``'s seed).
        config: the outlier settings scored with.
        pool: a built pool (default: :func:`build_pool`, cached).
        on_draw: called with each row as it is measured.
    """
    pool = build_pool() if pool is None else pool
    rows = []
    for size in sizes:
        for share in shares:
            for draw in range(draws):
                drawn = draw_cell(pool, size, share, draw, seed)
                row = {"size": size, "share": share, "draw": draw}
                row |= measure_draw(drawn, pool.embeddings, config)
                rows.append(row)
                if on_draw is not None:
                    on_draw(row)
    return pd.DataFrame(rows)


def summarise_grid(grid: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: worst and mean over its draws, and whether it meets the targets."""
    cells = []
    for (size, share), draws in grid.groupby(["size", "share"], sort=False):
        cell = {"size": size, "share": share, "draws": len(draws)}
        cell["foreign"] = "/".join(str(count) for count in sorted(draws["foreign"].unique()))
        for column in [f"recall_{kind}" for kind in FOREIGN_KINDS] + ["recall", "auc"]:
            cell[f"{column}_worst"] = draws[column].min()
            cell[f"{column}_mean"] = draws[column].mean()
            cell[f"{column}_median"] = draws[column].median()
        cell["clean_flagged_worst"] = draws["clean_flagged_share"].max()
        cell["clean_flagged_mean"] = draws["clean_flagged_share"].mean()
        cell["clean_flagged_median"] = draws["clean_flagged_share"].median()
        worst = draws.loc[draws["clean_flagged_share"].idxmax()]
        cell["clean_flagged_worst_of"] = f"{worst['clean_flagged']} of {worst['clean']}"
        cell["phantoms_flagged_worst"] = draws["phantoms_flagged_share"].max()
        cell["phantoms_flagged_mean"] = draws["phantoms_flagged_share"].mean()
        cell["phantoms_flagged_median"] = draws["phantoms_flagged_share"].median()
        cell["radiographs"] = int(draws["radiographs"].sum())
        cell["radiographs_flagged"] = int(draws["radiographs_flagged"].sum())
        cell["photos"] = int(draws["n_photo"].sum())
        cell["photos_missed"] = int(draws["photos_missed"].sum())
        reasons: dict[str, Counter[str]] = {}
        for by_reason in draws["reasons"]:
            for reason, by_kind in by_reason.items():
                reasons.setdefault(reason, Counter()).update(by_kind)
        cell["reasons"] = reasons
        cell["seconds"] = draws["seconds"].sum()
        cell["missed"] = missed_targets(cell)
        cells.append(cell)
    return pd.DataFrame(cells)


def missed_targets(cell: dict) -> list[str]:
    """The targets one summarised cell misses (empty when it meets them all)."""
    missed = []
    if cell["size"] >= TARGET_MIN_SIZE:
        if cell["share"] > 0 and not cell["recall_worst"] >= RECALL_TARGET:
            missed.append(f"recall {cell['recall_worst']:.2f}")
        if cell["clean_flagged_worst"] > CLEAN_TARGET:
            missed.append(
                f"clean flagged {cell['clean_flagged_worst']:.2%}, {cell['clean_flagged_worst_of']}"
            )
    if cell["photos_missed"]:
        missed.append(f"{cell['photos_missed']} of {cell['photos']} photos missed")
    return missed


def worst_mean(worst: float, mean: float, percent: bool = False) -> str:
    """``worst / typical`` (the median or the mean draw) as printed, ``-`` where no draw had the
    kind."""
    if np.isnan(worst):
        return "-"
    if percent:
        return f"{worst:.1%} / {mean:.1%}"
    return f"{worst:.2f} / {mean:.2f}"


def format_summary(summary: pd.DataFrame) -> str:
    """The per-cell table as printed."""
    table = pd.DataFrame(
        {
            "images": summary["size"],
            "share": [f"{share:.0%}" for share in summary["share"]],
            "foreign": summary["foreign"],
            **{
                f"{kind} recall": [
                    worst_mean(worst, mean)
                    for worst, mean in zip(
                        summary[f"recall_{kind}_worst"],
                        summary[f"recall_{kind}_median"],
                        strict=True,
                    )
                ]
                for kind in FOREIGN_KINDS
            },
            "all recall": [
                worst_mean(worst, mean)
                for worst, mean in zip(
                    summary["recall_worst"], summary["recall_median"], strict=True
                )
            ],
            "outlier_score AUC": [
                worst_mean(worst, mean)
                for worst, mean in zip(summary["auc_worst"], summary["auc_median"], strict=True)
            ],
            "clean flagged": [
                worst_mean(worst, mean, percent=True)
                for worst, mean in zip(
                    summary["clean_flagged_worst"], summary["clean_flagged_median"], strict=True
                )
            ],
            "phantoms flagged": [
                worst_mean(worst, mean, percent=True)
                for worst, mean in zip(
                    summary["phantoms_flagged_worst"],
                    summary["phantoms_flagged_median"],
                    strict=True,
                )
            ],
            "real flagged": [
                f"{flagged}/{total}"
                for flagged, total in zip(
                    summary["radiographs_flagged"], summary["radiographs"], strict=True
                )
            ],
            "all photos": [
                "-" if not photos else "yes" if not missed else f"no, {missed}/{photos} missed"
                for photos, missed in zip(summary["photos"], summary["photos_missed"], strict=True)
            ],
            "met": ["yes" if not missed else "NO" for missed in summary["missed"]],
        }
    )
    return table.to_string(index=False)


def format_reasons(summary: pd.DataFrame) -> str | None:
    """Images flagged by each reason, over a cell's draws, with how many of them were clean; None
    when the scores name no reason (an image flagged for two reasons counts under both)."""
    names = list(dict.fromkeys(name for reasons in summary["reasons"] for name in reasons))
    if not names:
        return None
    table = pd.DataFrame(
        {"images": summary["size"], "share": [f"{v:.0%}" for v in summary["share"]]}
    )
    for name in names:
        column = []
        for reasons in summary["reasons"]:
            by_kind = reasons.get(name, Counter())
            clean = sum(by_kind[kind] for kind in INLIER_KINDS)
            column.append(f"{by_kind.total()} ({clean} clean)" if by_kind else "-")
        table[name] = column
    return table.to_string(index=False)


def verdict(summary: pd.DataFrame) -> str:
    """``all targets met`` or ``targets missed: <cells>``."""
    missed = [
        f"{row.size}@{row.share:.0%} ({'; '.join(row.missed)})"
        for row in summary.itertuples()
        if row.missed
    ]
    return "all targets met" if not missed else f"targets missed: {', '.join(missed)}"


def parse_list(text: str, kind: type) -> list:
    return [kind(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="images per set")
    parser.add_argument("--shares", default=",".join(map(str, SHARES)), help="foreign shares")
    parser.add_argument("--draws", type=int, default=3, help="sets drawn per cell")
    parser.add_argument(
        "--seeds", default="0", help="seeds of the draws, A-B, A,B,C or A: the grid once per seed"
    )
    parser.add_argument("--components", type=float, help="OutlierConfig.components")
    parser.add_argument("--contamination", help="OutlierConfig.contamination")
    parser.add_argument("--n-estimators", type=int, help="OutlierConfig.n_estimators")
    parser.add_argument("--per-class", action="store_true", help="OutlierConfig.per_class")
    parser.add_argument("--config-seed", type=int, help="OutlierConfig.seed")
    args = parser.parse_args()
    changes = {
        "components": args.components,
        "contamination": None
        if args.contamination is None
        else parse_contamination(args.contamination),
        "n_estimators": args.n_estimators,
        "per_class": args.per_class or None,
        "seed": args.config_seed,
    }
    config = replace(
        OutlierConfig(), **{key: value for key, value in changes.items() if value is not None}
    )

    start = time.perf_counter()
    pool = build_pool()
    for step, seconds in pool.timings.items():
        print(f"pool: {step} took {seconds:.0f} s")
    counts = pool.rows["kind"].value_counts()
    print(
        f"pool: {len(pool.rows)} images, "
        + ", ".join(f"{counts.get(kind, 0)} {kind}" for kind in INLIER_KINDS + FOREIGN_KINDS)
    )
    print(f"pool ready in {time.perf_counter() - start:.0f} s\n{config}")

    def report(row: dict) -> None:
        log(
            f"  {row['size']} images, {row['share']:.0%} foreign, draw {row['draw']}: recall "
            f"{row['recall']:.2f}, clean flagged {row['clean_flagged_share']:.1%} "
            f"({row['seconds']:.1f} s)"
        )

    start = time.perf_counter()
    seeds = parse_seeds(args.seeds)
    grid = pd.concat(
        [
            outlier_grid(
                parse_list(args.sizes, int),
                parse_list(args.shares, float),
                args.draws,
                seed,
                config,
                pool,
                on_draw=report,
            ).assign(seed=seed)
            for seed in seeds
        ],
        ignore_index=True,
    )
    summary = summarise_grid(grid)
    print(f"grid: {len(grid)} draws scored in {time.perf_counter() - start:.0f} s")
    drawn = (
        f"draws 0-{args.draws - 1} of {seed_range(seeds)}"
        if args.draws > 1
        else f"draw 0 of {seed_range(seeds)}"
    )
    print(
        f"\nworst / median over the {args.draws * len(seeds)} draws of each cell ({drawn}; "
        "a cell is judged by its worst draw)"
    )
    print(format_summary(summary))
    print(LEGEND)
    reasons = format_reasons(summary)
    if reasons is not None:
        print(f"\nimages flagged by each reason, over the {args.draws * len(seeds)} draws")
        print(reasons)
    print(
        f"\ntargets: recall >= {RECALL_TARGET} and <= {CLEAN_TARGET:.0%} clean flagged at "
        f"{TARGET_MIN_SIZE}+ images; every colour photo flagged at every size"
    )
    print(verdict(summary))
    judged = summary[summary["size"] >= TARGET_MIN_SIZE]
    foreign = judged[judged["share"] > 0]
    print(
        f"cells of {TARGET_MIN_SIZE}+ images ({drawn}): recall worst cell "
        f"{foreign['recall_worst'].min():.3f} (median draw of that cell "
        f"{foreign.loc[foreign['recall_worst'].idxmin(), 'recall_median']:.3f}); clean flagged "
        f"worst cell {judged['clean_flagged_worst'].max():.1%} (median draw of that cell "
        f"{judged.loc[judged['clean_flagged_worst'].idxmax(), 'clean_flagged_median']:.1%}); "
        f"photos missed at any size: {summary['photos_missed'].sum()} of {summary['photos'].sum()}"
    )


if __name__ == "__main__":
    main()
