"""The ``curate`` command line: thin wrappers over the stage functions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fracture_curate import __version__
from fracture_curate.ann import EXACT_LIMIT, NEIGHBOUR_EXACT_LIMIT
from fracture_curate.dedupe import DedupeConfig, leakage, run_dedupe, summarise_dedupe
from fracture_curate.dicom import DEFAULT_WINDOW
from fracture_curate.display import (
    ProgressBars,
    clean_errors,
    console,
    emphasised,
    error_console,
    frame_table,
    interrupted,
    make_progress,
    warning,
)
from fracture_curate.distributed import RAY_EXTRA, RayCluster, ray_cluster
from fracture_curate.embed import EmbedConfig, embed_manifest
from fracture_curate.geometry import SCREEN_INLIERS, SCREEN_KEYPOINTS
from fracture_curate.layouts import LAYOUTS
from fracture_curate.manifest import manifest_path, replaced_lines, written_before
from fracture_curate.outliers import (
    ISOLATION_Z,
    MAX_COMPONENTS,
    OutlierConfig,
    parse_contamination,
    run_outliers,
    summarise_outliers,
)
from fracture_curate.pseudonyms import KEY_ENV, KEY_FILE
from fracture_curate.scan import ScanConfig, patient_lines, run_scan, summarise_scan
from fracture_curate.schema import flags
from fracture_curate.split import (
    SplitConfig,
    missing_label_lines,
    run_split,
    split_summary,
    straddling_groups,
)
from fracture_curate.synthetic import (
    FRACTURE_KINDS,
    GENERATED_LAYOUTS,
    LABELS_CSV,
    PLANTED_CSV,
    generate_dataset,
)

app = typer.Typer(
    help="Curate a folder of bone X-rays into an honest, leakage-free training set.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wraps to the terminal, never cuts a name
)

ManifestDir = Annotated[
    Path,
    typer.Option("--manifests", help="Folder holding the manifests.", file_okay=False),
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


def wrote(directory: Path, stage: str, before: str | None, detail: str = "") -> None:
    """Print the manifest a stage wrote, and what it replaced (see ``replaced_lines``)."""
    console.print(f"wrote {manifest_path(directory, stage)}{detail}")
    for line, is_warning in replaced_lines(directory, stage, before):
        console.print(warning(line) if is_warning else line)


@contextmanager
def _on_ray(address: str | None) -> Iterator[RayCluster | None]:
    """:func:`~fracture_curate.distributed.ray_cluster`, saying which cluster it joined."""
    with ray_cluster(address) as cluster:
        if cluster is not None:
            console.print(cluster.description)
        yield cluster


RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="auto|ADDRESS",
        help="Run on Ray: 'auto' (the running cluster, else a local Ray instance) or a "
        "cluster's ADDRESS (host:port, ray://host:port). Workers read the files where they "
        "are: the dataset folder must be visible to every worker at the same path. Needs "
        f"{RAY_EXTRA}. Default: no Ray, this machine only.",
    ),
]


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
    ] = ScanConfig.layout,
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
    ] = ",".join(ScanConfig.formats),
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes (default: all cores); with --ray, Ray runs a task per CPU.",
            min=1,
        ),
    ] = os.cpu_count() or 1,
    max_pixels: Annotated[
        int, typer.Option(help="Decompression-bomb guard: larger images are refused.")
    ] = ScanConfig.max_pixels,
    patient_pattern: Annotated[
        str | None,
        typer.Option(
            help="Regex searched in each path relative to ROOT, with a group (?P<patient>...) "
            "and optionally (?P<study>...): sets the patient (and study) of the files it "
            "matches, over the labels CSV, the layout and the known naming schemes.",
        ),
    ] = ScanConfig.patient_pattern,
    auto_patients: Annotated[
        bool,
        typer.Option(
            help="Read patients from the file names of known public sets (Kermany pediatric "
            "chest X-ray, NIH ChestX-ray14, CheXpert) when most files follow one.",
        ),
    ] = ScanConfig.auto_patients,
    pseudonym_key: Annotated[
        Path | None,
        typer.Option(
            help="File holding the key (hex) that pseudonymises DICOM patient, study and series "
            f"ids; default ${KEY_ENV}, else a random key kept in OUT/{KEY_FILE} once a DICOM "
            "file is found (keep it private: never share it with the manifests).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    window: Annotated[
        str,
        typer.Option(
            help="How a grayscale DICOM's values become grey levels, here and in every later "
            "stage: preset:N (its Nth VOI LUT, else its Nth window centre/width; its first when "
            "it has fewer), percentile:LOW,HIGH (a window between two percentiles of the "
            "image's values, e.g. percentile:1,99) or full (its whole range).",
        ),
    ] = str(DEFAULT_WINDOW),
    ray: RayOption = None,
) -> None:
    """Walk ROOT and write OUT/scan.parquet: every file, its labels, status and image stats."""
    with clean_errors():
        config = ScanConfig(
            layout=layout,
            labels_csv=labels,
            formats=tuple(f for f in formats.split(",") if f.strip()),
            max_pixels=max_pixels,
            patient_pattern=patient_pattern,
            auto_patients=auto_patients,
            window=window,
        )
        before = written_before(out, "scan")
        with _on_ray(ray) as cluster, make_progress("files") as progress:
            result = run_scan(
                root,
                out,
                config,
                workers=workers,
                on_progress=ProgressBars(progress),
                key_file=pseudonym_key,
                map_files=cluster.map_files if cluster is not None else None,
            )
    console.print(emphasised("layout: ", result.layout_explained))
    for line in result.layout_warnings:
        console.print(warning(line))
    for line, is_warning in patient_lines(result):
        console.print(warning(line) if is_warning else line)
    kept = int((result.frame["status"] == "ok").sum())
    if kept == 0:
        found = f"{len(result.frame)} file(s)" if len(result.frame) else "no file"
        console.print(warning(f"{found} under {root} and no usable image in them"))
    summary = summarise_scan(result.frame)
    console.print(frame_table(summary["status"], "Files by status"))
    console.print(frame_table(summary["format"], "Files by format"))
    console.print(frame_table(summary["label_by_split"], "Kept images: label by source split"))
    if "imaged" in summary:
        console.print(frame_table(summary["imaged"], "Kept DICOM images: modality, body, view"))
    if result.unmatched_labels:
        console.print(
            warning(
                f"{len(result.unmatched_labels)} labels CSV row(s) name files that were not "
                f"found, e.g. {result.unmatched_labels[0]!r}"
            )
        )
    wrote(out, "scan", before, f" ({len(result.frame)} rows)")


@app.command()
def embed(
    manifests: ManifestDir = Path("manifests"),
    layer: Annotated[
        str,
        typer.Option(
            help="'pool' (1280-d global-pooled features) or 'logits' (1000-d ImageNet logits)."
        ),
    ] = EmbedConfig.layer,
    image_size: Annotated[int, typer.Option(help="Input side in pixels (32 or more).")] = (
        EmbedConfig.image_size
    ),
    resize: Annotated[
        str,
        typer.Option(
            help="'stretch' resizes the whole image (nothing cut off); 'crop' resizes the short "
            "side and centre-crops, as ImageNet evaluation does.",
        ),
    ] = EmbedConfig.resize,
    weights: Annotated[
        str,
        typer.Option(
            help="'imagenet' (offline: hub cache, then the offline weights package), a state-dict "
            "PATH, or 'random' (tests only).",
        ),
    ] = EmbedConfig.weights,
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
            "of its own on one thread; on CUDA they decode for the GPU. 0: all in this process. "
            "With --ray: model actors (-1: one per GPU of the cluster, else one per CPU).",
            min=-1,
        ),
    ] = -1,
    root: RootOption = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Save finished embeddings every N images (resume point).", min=1)
    ] = 2048,
    ray: RayOption = None,
) -> None:
    """Embed every kept image of MANIFESTS/scan.parquet into MANIFESTS/embeddings.parquet.

    Resumable: embeddings are keyed by the file's SHA-256, so a re-run (or a run after a crash)
    embeds only what is missing, and identical files are embedded once.
    """
    with clean_errors():
        config = EmbedConfig(layer=layer, image_size=image_size, resize=resize, weights=weights)
        try:
            with _on_ray(ray) as cluster, make_progress("img") as progress:
                result = embed_manifest(
                    manifests,
                    config,
                    root=root,
                    device=device,
                    batch_size=batch_size or None,
                    workers=None if workers < 0 else workers,
                    checkpoint_every=checkpoint_every,
                    on_progress=ProgressBars(progress),
                    embed_files=cluster.embed_files if cluster is not None else None,
                )
        except KeyboardInterrupt:
            error_console.print(
                interrupted(
                    "the embeddings saved so far are kept; the same command goes on from them"
                )
            )
            raise typer.Exit(code=130) from None
    params = result.params
    console.print(
        f"weights: {params['weights']} (sha256 {str(params['weights_sha256'])[:12]}...), "
        f"layer {layer} ({params['dim']}-d), {image_size}px {resize}"
        + (f"; device: {result.device}" if result.device else "")
    )
    console.print(
        f"embedded {result.embedded}, reused {result.reused}, "
        f"{len(result.frame)} in {manifest_path(manifests, 'embed')}"
    )
    if result.discarded:
        console.print(
            f"note: {len(result.discarded)} damaged part file(s) of an earlier run were "
            f"discarded and their images embedded again ({result.discarded[0]}, ...)"
        )
    if result.failed:
        image_id, (status, reason) = next(iter(result.failed.items()))
        console.print(
            warning(
                f"{len(result.failed)} image(s) could not be loaded and have no embedding; "
                f"`curate dedupe` marks their rows (a re-run retries them), e.g. "
                f"{image_id[:12]}: {status}: {reason}"
            )
        )


@app.command()
def dedupe(
    manifests: ManifestDir = Path("manifests"),
    phash_radius: Annotated[
        int,
        typer.Option(
            help="Max differing bits (of 256) between perceptual hashes, in any of the 8 "
            "flips/rotations, for a match (0-256).",
        ),
    ] = DedupeConfig.phash_radius,
    cosine_threshold: Annotated[
        float,
        typer.Option(
            help="Min cosine similarity of centred, normalised embeddings for a match "
            "(re-encoded, resized or brightened copies that the hash misses).",
        ),
    ] = DedupeConfig.cosine_threshold,
    embeddings: Annotated[
        bool, typer.Option(help="Use the embedding layers (needs `curate embed` first).")
    ] = DedupeConfig.use_embeddings,
    geometry: Annotated[
        bool,
        typer.Option(
            help="Check each file's nearest neighbours for a rotated, scaled or cropped copy "
            "(SIFT keypoints + RANSAC), and each pHash and embedding match with one picture "
            "turned as their hashes match (it stands only if a copy is found, or a picture is "
            "too plain to judge); reads the images again. The neighbours come from the "
            "embeddings: with --no-embeddings only the pHash matches are checked (a warning "
            "says so).",
        ),
    ] = DedupeConfig.geometry,
    geometry_threshold: Annotated[
        int,
        typer.Option(help="Min keypoints one similarity transform must match for a copy."),
    ] = DedupeConfig.geometry_threshold,
    screen: Annotated[
        bool,
        typer.Option(
            help="Screen each candidate pair on half-size images first "
            f"({SCREEN_KEYPOINTS} keypoints) and verify at full size only the pairs whose screen "
            f"finds {SCREEN_INLIERS} or more keypoints on one transform (or that are too plain "
            "to judge there): 1.4x faster on 256 px phantoms, more on large images. "
            "--no-screen verifies every candidate at full size.",
        ),
    ] = DedupeConfig.geometry_screen,
    copy_share: Annotated[
        float,
        typer.Option(
            help="Min share of the keypoint matches on that transform for a copy (0-1); "
            "another film of the same anatomy matches fewer of them.",
        ),
    ] = DedupeConfig.copy_share,
    related_threshold: Annotated[
        int,
        typer.Option(
            help="Min keypoints on one transform for two films to be related (kept, split "
            "together) when they are not copies.",
        ),
    ] = DedupeConfig.related_threshold,
    search: Annotated[
        str,
        typer.Option(
            help="Embedding similarity search: 'exact' (every pair, grows as n^2), "
            "'approximate' (an inverted file: each image against the lists nearest it; the "
            "recall against exact search on 1,000 sampled images is printed) or 'auto' "
            f"(exact up to {EXACT_LIMIT:,} images; the geometry layer's neighbours exact up "
            f"to {NEIGHBOUR_EXACT_LIMIT:,}).",
        ),
    ] = DedupeConfig.search,
    probes: Annotated[
        int,
        typer.Option(
            help="Approximate search of the pairs above --cosine-threshold: lists of the "
            "inverted file each image is compared with (more: slower, fewer missed pairs).",
            min=1,
        ),
    ] = DedupeConfig.probes,
    neighbour_probes: Annotated[
        int,
        typer.Option(
            help="Approximate search of the geometry layer's neighbours: lists each image "
            "probes (more: slower, fewer missed neighbours).",
            min=1,
        ),
    ] = DedupeConfig.neighbour_probes,
    root: RootOption = None,
) -> None:
    """Find duplicate clusters in MANIFESTS/scan.parquet and write MANIFESTS/dedupe.parquet.

    Layers, cheap first: identical bytes, identical pixels, perceptual hash invariant to flips and
    90-degree rotations, embedding cosine, and a geometric check (SIFT + RANSAC) of each file's
    nearest neighbours for crops and small rotations, which also decides each pHash and embedding
    match. The kept copy is the original when the cluster holds one: lossless over lossy, then
    not turned or padded (no flat fill lining its border), then the most pixels (not cropped or
    reduced), then the most grey levels.
    Clusters whose copies carry different labels are flagged as label conflicts.
    The geometric check also finds related images: other films of the same anatomy (a
    follow-up, a second exposure). They are not copies: all are kept, in one related group that
    the split keeps together.
    """
    with clean_errors():
        config = DedupeConfig(
            phash_radius=phash_radius,
            cosine_threshold=cosine_threshold,
            use_embeddings=embeddings,
            geometry=geometry,
            geometry_threshold=geometry_threshold,
            geometry_screen=screen,
            copy_share=copy_share,
            related_threshold=related_threshold,
            search=search,
            probes=probes,
            neighbour_probes=neighbour_probes,
        )
        if geometry and not embeddings:
            error_console.print(
                warning(
                    "the geometry layer finds crops and small rotations among each file's "
                    "embedding neighbours: with --no-embeddings it only checks the pHash "
                    "matches (crops and small rotations go unfound)"
                )
            )
        before = written_before(manifests, "dedupe")
        with make_progress("img") as progress:
            frame = run_dedupe(manifests, config, root=root, on_progress=ProgressBars(progress))
    summary = summarise_dedupe(frame)
    if "similarity_search" in frame.attrs:
        console.print(frame.attrs["similarity_search"], highlight=False)
    console.print(frame_table(summary["counts"], "Duplicates"))
    if not summary["copies_by_match"].empty:
        console.print(frame_table(summary["copies_by_match"], "Copies by match"))
    leaks = leakage(frame)
    if frame["source_split"].notna().any():
        console.print(
            emphasised(
                "leakage in the source splits: ",
                len(leaks),
                " duplicate cluster(s) straddle train/val/test",
            )
        )
        if not leaks.empty:
            console.print(frame_table(leaks.head(5).drop(columns="n_splits"), "Examples"))
    wrote(manifests, "dedupe", before)


@app.command()
def outliers(
    manifests: ManifestDir = Path("manifests"),
    components: Annotated[
        float,
        typer.Option(
            help="PCA: explained variance to keep (below 1; at most the square root of the "
            f"number of images, and {MAX_COMPONENTS}) or a number of components (1 or more).",
        ),
    ] = OutlierConfig.components,
    contamination: Annotated[
        str,
        typer.Option(
            help="How Isolation Forest scores become flags: 'robust' (modified z-score > "
            f"{ISOLATION_Z:g}), "
            "'auto' (Isolation Forest's fixed offset) or an expected outlier fraction in (0, 0.5].",
        ),
    ] = str(OutlierConfig.contamination),
    neighbours: Annotated[
        int,
        typer.Option(
            help="Nearest images the neighbour view measures the mean distance to.",
        ),
    ] = OutlierConfig.neighbours,
    checks: Annotated[
        bool,
        typer.Option(
            help="Flag colour pictures among grayscale radiographs, blank images and absurd "
            "sizes or shapes.",
        ),
    ] = OutlierConfig.checks,
    per_class: Annotated[
        bool,
        typer.Option(help="Score each class on its own: finds images unlike their own class."),
    ] = OutlierConfig.per_class,
    seed: Annotated[int, typer.Option(help="Random seed of the forest and PCA.")] = (
        OutlierConfig.seed
    ),
) -> None:
    """Flag the images that do not belong into MANIFESTS/outliers.parquet, each with its reason.

    Two views of the embeddings (PCA + Isolation Forest; distance to the nearest images) and
    checks of what a radiograph is (colour, blank, size). Outliers are flagged only;
    `curate split --drop-outliers` leaves them out of the split.
    """
    with clean_errors():
        config = OutlierConfig(
            components=components,
            contamination=parse_contamination(contamination),
            neighbours=neighbours,
            checks=checks,
            per_class=per_class,
            seed=seed,
        )
        before = written_before(manifests, "outliers")
        frame = run_outliers(manifests, config)
    flagged = frame[flags(frame["is_outlier"])].drop_duplicates("image_id")
    flagged = flagged.sort_values("outlier_score", ascending=False)
    console.print(
        f"{len(flagged)} outlier(s) flagged among "
        f"{frame.loc[frame['is_outlier'].notna(), 'image_id'].nunique()} images"
    )
    if not flagged.empty:
        console.print(frame_table(summarise_outliers(frame), "Flagged by"))
        columns = ["label", "outlier_reason", "outlier_score"]
        console.print(frame_table(flagged.set_index("path")[columns].head(10), "Flagged images"))
    wrote(manifests, "outliers", before)


@app.command()
def split(
    manifests: ManifestDir = Path("manifests"),
    train: Annotated[
        float, typer.Option(help="Train fraction; the three sum to 1, each above 0.")
    ] = SplitConfig.train,
    val: Annotated[
        float, typer.Option(help="Validation fraction (picks the best epoch).")
    ] = SplitConfig.val,
    test: Annotated[float, typer.Option(help="Test fraction (the reported figures).")] = (
        SplitConfig.test
    ),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same split.")] = (
        SplitConfig.seed
    ),
    drop_outliers: Annotated[
        bool, typer.Option(help="Leave flagged outliers out of the split.")
    ] = SplitConfig.drop_outliers,
    keep_source_splits: Annotated[
        bool,
        typer.Option(help="Keep the source's own split where it had one, and report its leakage."),
    ] = SplitConfig.keep_source_splits,
    keep_duplicates: Annotated[
        bool,
        typer.Option(
            help="Let every copy of a duplicate cluster take part (to measure what leakage does; "
            "with --keep-source-splits: the source's split as it stands). Not for real training."
        ),
    ] = SplitConfig.keep_duplicates,
    root: RootOption = None,
) -> None:
    """Assign train/val/test into MANIFESTS/split.parquet, stratified and leakage-free.

    Stratified by label and grouped so that no duplicate cluster, related group or patient
    spans two splits; every split holds every label where the groups allow, and a warning
    names each split that cannot. Excluded rows stay in the table, with split null and an
    excluded_reason.
    """
    with clean_errors():
        config = SplitConfig(
            train=train,
            val=val,
            test=test,
            seed=seed,
            drop_outliers=drop_outliers,
            keep_source_splits=keep_source_splits,
            keep_duplicates=keep_duplicates,
        )
        before = written_before(manifests, "split")
        frame = run_split(manifests, config, root=root)
    console.print(frame_table(split_summary(frame), "Label by split"))
    for line in missing_label_lines(frame):
        console.print(warning(line))
    excluded = frame["excluded_reason"].value_counts()
    if not excluded.empty:
        console.print(frame_table(excluded.rename_axis("excluded").to_frame("rows"), "Excluded"))
    straddling = straddling_groups(frame)
    if keep_source_splits or keep_duplicates or not straddling.empty:
        console.print(
            emphasised(
                "groups (duplicate cluster or patient) spanning two splits: ", len(straddling)
            )
        )
    wrote(manifests, "split", before)


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
    show_paths: Annotated[
        bool,
        typer.Option(
            help="Show whole paths (dataset root, run folder); by default only the last part of "
            "each, so a shared report leaks no folders."
        ),
    ] = False,
) -> None:
    """Write one self-contained HTML report of the dataset and its curation (and a run)."""
    from fracture_curate.report import build_report  # matplotlib loads only when needed

    with clean_errors():
        path = build_report(manifests, out, run=run, show_paths=show_paths)
    console.print(f"wrote report {path.resolve()}")


@app.command()
def synth(
    root: Annotated[
        Path,
        typer.Argument(
            help="Folder to write the generated dataset into: new, empty, or holding an earlier "
            "generated set (which is replaced); any other folder is refused."
        ),
    ],
    layout: Annotated[
        str, typer.Option(help="Folder layout: " + ", ".join(GENERATED_LAYOUTS) + ".")
    ] = "split-class",
    classes: Annotated[
        str,
        typer.Option(
            help="Comma-separated class names (ignored by the mura layout). A name that reads as "
            "normal is drawn without a fracture, any other with one, of the kind it names if it "
            "names one of " + ", ".join(FRACTURE_KINDS) + "."
        ),
    ] = "fractured,not fractured",
    per_class: Annotated[int, typer.Option(help="Original images per class.")] = 40,
    size: Annotated[int, typer.Option(help="Image side in pixels (16 or more).")] = 256,
    plant: Annotated[
        bool, typer.Option(help="Plant duplicates, outliers and broken files, and record them.")
    ] = True,
    cross_split: Annotated[
        int | None,
        typer.Option(
            help="Copies to plant in another split than their original's (default: as many as "
            "of every other kind, 1 per 20 originals).",
            min=0,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
) -> None:
    """Generate a synthetic radiograph-like dataset (with planted problems) for demos and tests."""
    with clean_errors():
        record = generate_dataset(
            root,
            layout=layout,
            classes=[c.strip() for c in classes.split(",") if c.strip()],
            n_per_class=per_class,
            image_size=size,
            plant=plant,
            cross_split=cross_split,
            seed=seed,
        )
    counts = record["kind"].value_counts().rename_axis("kind").to_frame("files")
    console.print(frame_table(counts, f"Generated {len(record)} files in {root} ({layout})"))
    console.print(f"record of planted problems: {root / PLANTED_CSV}")
    if layout == "csv":
        console.print(f"its labels: curate scan {root} --labels {root / LABELS_CSV}")


if __name__ == "__main__":
    app()
