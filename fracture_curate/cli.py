"""The ``curate`` command line: thin wrappers over the stage functions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fracture_curate import __version__
from fracture_curate.display import clean_errors, console, frame_table, make_progress
from fracture_curate.images import DEFAULT_MAX_PIXELS
from fracture_curate.layouts import LAYOUTS, LayoutError
from fracture_curate.manifest import ManifestError, manifest_path, write_manifest
from fracture_curate.scan import DEFAULT_FORMATS, scan_dataset, summarise_scan

app = typer.Typer(
    help="Curate a folder of bone X-rays into an honest, leakage-free training set.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
            result = scan_dataset(
                root,
                layout=layout,
                labels_csv=labels,
                formats=[f.strip().upper() for f in formats.split(",") if f.strip()],
                workers=workers,
                max_pixels=max_pixels,
                exclude=[out],
                progress=progress,
            )
        params = {
            "root": str(root.resolve()),
            "layout": result.layout,
            "labels_csv": str(labels) if labels else None,
            "formats": formats,
            "max_pixels": max_pixels,
        }
        path = write_manifest(result.frame, manifest_path(out, "scan"), stage="scan", params=params)
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
