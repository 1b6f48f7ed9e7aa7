"""The ``curate`` command line: thin wrappers over the stage functions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fracture_curate import __version__
from fracture_curate.dedupe import DedupeConfig, leakage, run_dedupe, summarise_dedupe
from fracture_curate.display import (
    clean_errors,
    console,
    error_console,
    frame_table,
    make_progress,
)
from fracture_curate.images import DEFAULT_MAX_PIXELS
from fracture_curate.layouts import LAYOUTS, LayoutError
from fracture_curate.manifest import ManifestError, manifest_path
from fracture_curate.outliers import OutlierConfig, parse_contamination, run_outliers
from fracture_curate.scan import DEFAULT_FORMATS, run_scan, summarise_scan
from fracture_curate.split import (
    SplitConfig,
    SplitError,
    run_split,
    split_summary,
    straddling_groups,
)

app = typer.Typer(
    help="Curate a folder of bone X-rays into an honest, leakage-free training set.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ManifestDir = Annotated[
    Path,
    typer.Option(
        "--manifests", help="Folder holding the manifests (read and written).", file_okay=False
    ),
]
RootOption = Annotated[
    Path | None,
    typer.Option(help="Dataset folder, when it moved since the scan.", file_okay=False),
]
OutDir = Annotated[
    Path, typer.Option("--out", help="Folder the manifest is written to.", file_okay=False)
]


def _version(value: bool) -> None:
    if value:
        console.print(f"fracture-curate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Staged curation: scan -> embed -> dedupe -> outliers -> split, each a Parquet manifest."""


@app.command()
def scan(
    root: Annotated[
        Path, typer.Argument(help="Dataset folder to walk.", exists=True, file_okay=False)
    ],
    out: OutDir = Path("manifests"),
    layout: Annotated[
        str,
        typer.Option(
            help="Folder layout the labels are read from: "
            + ", ".join(LAYOUTS)
            + ". 'auto' detects it; --labels implies 'csv'.",
        ),
    ] = "auto",
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV with columns path,label (optional split,patient_id); paths relative to ROOT.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    formats: Annotated[
        str, typer.Option(help="Comma-separated image formats to keep; others are dropped.")
    ] = ",".join(DEFAULT_FORMATS),
    workers: Annotated[
        int, typer.Option(help="Worker processes (default: all cores).", min=1)
    ] = os.cpu_count() or 1,
    max_pixels: Annotated[
        int, typer.Option(help="Decompression-bomb guard: larger images are refused.", min=1)
    ] = DEFAULT_MAX_PIXELS,
) -> None:
    """Walk ROOT and write OUT/scan.parquet: every file, its labels, status and image stats."""
    with clean_errors(LayoutError, NotADirectoryError, ManifestError, OSError):
        with make_progress("files") as progress:
            result = run_scan(
                root,
                out,
                layout=layout,
                labels_csv=labels,
                formats=[f.strip().upper() for f in formats.split(",") if f.strip()],
                workers=workers,
                max_pixels=max_pixels,
                progress=progress,
            )
        path = manifest_path(out, "scan")
    console.print(f"layout: [bold]{result.layout}[/]")
    summary = summarise_scan(result.frame)
    console.print(frame_table(summary["status"], "Files by status"))
    console.print(frame_table(summary["format"], "Files by format"))
    console.print(frame_table(summary["label_by_split"], "Kept images: label by source split"))
    if result.unmatched_labels:
        console.print(
            f"[yellow]warning:[/] {len(result.unmatched_labels)} labels CSV row(s) name files that "
            f"were not found, e.g. {result.unmatched_labels[0]!r}"
        )
    console.print(f"wrote {path} ({len(result.frame)} rows)")


@app.command()
def embed(
    manifests: ManifestDir = Path("manifests"),
    layer: Annotated[
        str,
        typer.Option(
            help="'pool' (1280-d global-pooled features) or 'logits' (1000-d ImageNet logits)."
        ),
    ] = "pool",
    image_size: Annotated[int, typer.Option(help="Input side in pixels.", min=32)] = 224,
    resize: Annotated[
        str,
        typer.Option(
            help="'stretch' resizes the whole image (nothing cut off); 'crop' resizes the short "
            "side and centre-crops, as ImageNet evaluation does.",
        ),
    ] = "stretch",
    weights: Annotated[
        str,
        typer.Option(
            help="'imagenet' (offline: hub cache, then the offline weights package), a state-dict "
            "PATH, or 'random' (tests only).",
        ),
    ] = "imagenet",
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or cuda:N (bf16 autocast on CUDA).")
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option(help="Images per batch (0: 4 on CPU, 256 on CUDA).", min=0)
    ] = 0,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes (-1: one per core). On a CPU each decodes and embeds batches "
            "of its own on one thread; on CUDA they decode for the GPU. 0: all in this process.",
            min=-1,
        ),
    ] = -1,
    root: RootOption = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Save finished embeddings every N images (resume point).", min=1)
    ] = 2048,
) -> None:
    """Embed every kept image of MANIFESTS/scan.parquet into MANIFESTS/embeddings.parquet.

    Resumable: embeddings are keyed by the file's SHA-256, so a re-run (or a run after a crash)
    embeds only what is missing, and identical files are embedded once.
    """
    from fracture_curate.embed import EmbedConfig, embed_manifest  # torch loads only when needed
    from fracture_curate.weights import WeightsError

    with clean_errors(ValueError, ManifestError, WeightsError, OSError):
        config = EmbedConfig(layer=layer, image_size=image_size, resize=resize, weights=weights)
        try:
            with make_progress("img") as progress:
                tasks = []
                result = embed_manifest(
                    manifests,
                    config,
                    root=root,
                    device=device,
                    batch_size=batch_size or None,
                    workers=None if workers < 0 else workers,
                    checkpoint_every=checkpoint_every,
                    on_start=lambda total: tasks.append(
                        progress.add_task("embedding", total=total)
                    ),
                    on_batch=lambda n: progress.advance(tasks[0], n),
                )
        except KeyboardInterrupt:
            error_console.print(
                "[bold red]interrupted:[/] the embeddings saved so far are kept; "
                "the same command goes on from them"
            )
            raise typer.Exit(code=130) from None
    params = result.params
    console.print(
        f"weights: {params['weights']} (sha256 {str(params['weights_sha256'])[:12]}...), "
        f"layer {layer} ({params['dim']}-d), {image_size}px {resize}"
    )
    console.print(
        f"embedded {result.embedded}, reused {result.reused}, "
        f"{len(result.frame)} in {manifest_path(manifests, 'embed')}"
    )
    if result.failed:
        image_id, reason = next(iter(result.failed.items()))
        console.print(
            f"[yellow]warning:[/] {len(result.failed)} image(s) could not be loaded and have no "
            f"embedding (a re-run retries them), e.g. {image_id[:12]}: {reason}"
        )


@app.command()
def dedupe(
    manifests: ManifestDir = Path("manifests"),
    phash_radius: Annotated[
        int,
        typer.Option(
            help="Max differing bits (of 256) between perceptual hashes, in any of the 8 "
            "flips/rotations, for a match.",
            min=0,
            max=256,
        ),
    ] = DedupeConfig.phash_radius,
    cosine_threshold: Annotated[
        float,
        typer.Option(
            help="Min cosine similarity of centred, normalised embeddings for a match "
            "(catches crops, small rotations, brightness changes).",
            min=-1.0,
            max=1.0,
        ),
    ] = DedupeConfig.cosine_threshold,
    embeddings: Annotated[
        bool, typer.Option(help="Use the embedding layers (needs `curate embed` first).")
    ] = True,
    geometry: Annotated[
        bool,
        typer.Option(
            help="Check each file's nearest neighbours for a rotated, scaled or cropped copy "
            "(SIFT keypoints + RANSAC); reads the images again.",
        ),
    ] = True,
    geometry_threshold: Annotated[
        int,
        typer.Option(help="Min keypoints one similarity transform must match for a copy.", min=1),
    ] = DedupeConfig.geometry_threshold,
    root: RootOption = None,
) -> None:
    """Find duplicate clusters in MANIFESTS/scan.parquet and write MANIFESTS/dedupe.parquet.

    Layers, cheap first: identical bytes, identical pixels, perceptual hash invariant to flips and
    90-degree rotations, embedding cosine, and a geometric check (SIFT + RANSAC) of each file's
    nearest neighbours for crops and small rotations. The kept copy is the largest, lossless
    over lossy.
    Clusters whose copies carry different labels are flagged as label conflicts.
    """
    config = DedupeConfig(
        phash_radius=phash_radius,
        cosine_threshold=cosine_threshold,
        use_embeddings=embeddings,
        geometry=geometry,
        geometry_threshold=geometry_threshold,
    )
    with clean_errors(ManifestError, OSError), make_progress("img") as progress:
        frame = run_dedupe(manifests, config, root=root, progress=progress)
    summary = summarise_dedupe(frame)
    console.print(frame_table(summary["counts"], "Duplicates"))
    if not summary["copies_by_match"].empty:
        console.print(frame_table(summary["copies_by_match"], "Copies by match"))
    leaks = leakage(frame)
    if frame["source_split"].notna().any():
        console.print(
            f"leakage in the source splits: [bold]{len(leaks)}[/] duplicate cluster(s) straddle "
            "train/val/test"
        )
        if not leaks.empty:
            console.print(frame_table(leaks.head(5).drop(columns="n_splits"), "Examples"))
    console.print(f"wrote {manifest_path(manifests, 'dedupe')}")


@app.command()
def outliers(
    manifests: ManifestDir = Path("manifests"),
    components: Annotated[
        float,
        typer.Option(
            help="PCA: explained variance to keep (below 1) or a number of components (1 or more).",
            min=0.0,
        ),
    ] = OutlierConfig.components,
    contamination: Annotated[
        str,
        typer.Option(
            help="How scores become flags: 'robust' (modified z-score of the score > 3.5), "
            "'auto' (Isolation Forest's fixed offset) or an expected outlier fraction.",
        ),
    ] = "robust",
    per_class: Annotated[
        bool,
        typer.Option(help="Score each class on its own: finds images unlike their own class."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed of the forest and PCA.")] = 0,
) -> None:
    """Score every image for strangeness (PCA + Isolation Forest) into MANIFESTS/outliers.parquet.

    Outliers are flagged only; `curate split --drop-outliers` leaves them out of the split.
    """
    with clean_errors(ManifestError, OSError, ValueError):
        config = OutlierConfig(
            components=components,
            contamination=parse_contamination(contamination),
            per_class=per_class,
            seed=seed,
        )
        frame = run_outliers(manifests, config)
    flagged = frame[frame["is_outlier"].fillna(False).astype(bool)]
    flagged = flagged.sort_values("outlier_score", ascending=False)
    console.print(
        f"{len(flagged)} outlier(s) flagged among {int(frame['is_outlier'].notna().sum())} images"
    )
    if not flagged.empty:
        top = flagged.set_index("path")[["label", "outlier_score"]].head(10)
        console.print(frame_table(top, "Strangest images"))
    console.print(f"wrote {manifest_path(manifests, 'outliers')}")


@app.command()
def split(
    manifests: ManifestDir = Path("manifests"),
    train: Annotated[float, typer.Option(help="Train fraction.", min=0.0)] = SplitConfig.train,
    val: Annotated[float, typer.Option(help="Validation fraction.", min=0.0)] = SplitConfig.val,
    test: Annotated[float, typer.Option(help="Test fraction.", min=0.0)] = SplitConfig.test,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same split.")] = 0,
    drop_outliers: Annotated[
        bool, typer.Option(help="Leave flagged outliers out of the split.")
    ] = False,
    keep_source_splits: Annotated[
        bool,
        typer.Option(help="Keep the source's own split where it had one, and report its leakage."),
    ] = False,
) -> None:
    """Assign train/val/test into MANIFESTS/split.parquet, stratified and leakage-free.

    Stratified by label and grouped so that no duplicate cluster and no patient spans two
    splits. Excluded rows stay in the table, with split null and an excluded_reason.
    """
    with clean_errors(ManifestError, SplitError, OSError):
        config = SplitConfig(
            train=train,
            val=val,
            test=test,
            seed=seed,
            drop_outliers=drop_outliers,
            keep_source_splits=keep_source_splits,
        )
        frame = run_split(manifests, config)
    console.print(frame_table(split_summary(frame), "Label by split"))
    excluded = frame["excluded_reason"].dropna().str.split(":| of ", regex=True).str[0]
    if not excluded.empty:
        console.print(
            frame_table(
                excluded.value_counts().rename_axis("excluded").to_frame("rows"), "Excluded"
            )
        )
    straddling = straddling_groups(frame)
    if keep_source_splits or not straddling.empty:
        console.print(
            f"groups (duplicate cluster or patient) spanning two splits: [bold]{len(straddling)}[/]"
        )
    console.print(f"wrote {manifest_path(manifests, 'split')}")


@app.command()
def report(
    manifests: ManifestDir = Path("manifests"),
    run: Annotated[
        Path | None,
        typer.Option(help="A training run folder (from `train`) to include.", file_okay=False),
    ] = None,
    out: Annotated[Path, typer.Option(help="The HTML file to write.", dir_okay=False)] = Path(
        "report.html"
    ),
) -> None:
    """Write one self-contained HTML report of the dataset and its curation (and a run)."""
    from fracture_curate.report import build_report

    with clean_errors(ManifestError, OSError):
        path = build_report(manifests, out, run=run)
    console.print(f"wrote report {path.resolve()}")


@app.command()
def synth(
    root: Annotated[Path, typer.Argument(help="Folder to write the generated dataset into.")],
    layout: Annotated[
        str, typer.Option(help="Folder layout: class, split-class, class-split, mura or csv.")
    ] = "split-class",
    classes: Annotated[
        str, typer.Option(help="Comma-separated class names (ignored by the mura layout).")
    ] = "fractured,not fractured",
    per_class: Annotated[int, typer.Option(help="Original images per class.", min=1)] = 40,
    size: Annotated[int, typer.Option(help="Image side in pixels.", min=32)] = 256,
    plant: Annotated[
        bool, typer.Option(help="Plant duplicates, outliers and broken files, and record them.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
) -> None:
    """Generate a synthetic radiograph-like dataset (with planted problems) for demos and tests."""
    from fracture_curate.synthetic import LAYOUTS as SYNTH_LAYOUTS
    from fracture_curate.synthetic import generate_dataset

    if layout not in SYNTH_LAYOUTS:
        with clean_errors(ValueError):
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(SYNTH_LAYOUTS)}")
    with clean_errors(FileExistsError, OSError):
        record = generate_dataset(
            root,
            layout=layout,
            classes=[c.strip() for c in classes.split(",") if c.strip()],
            n_per_class=per_class,
            image_size=size,
            plant=plant,
            seed=seed,
        )
    counts = record["kind"].value_counts().rename_axis("kind").to_frame("files")
    console.print(frame_table(counts, f"Generated {len(record)} files in {root} ({layout})"))
    console.print(f"record of planted problems: {root / 'planted.csv'}")


if __name__ == "__main__":
    app()
