"""``curate report``: one self-contained HTML page of what curation found, and of a training run.

Everything is inlined: CSS, thumbnails and figures as data URIs. The page needs no JavaScript and
makes no network request (its Content-Security-Policy forbids any), so it can be archived, mailed
and opened offline. Each section is a ``<section>`` with a stable id (:data:`SECTIONS`); a section
whose manifest is missing says which command fills it instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from fracture_curate.dataset_files import shown_path
from fracture_curate.manifest import atomic_path
from fracture_curate.report import curation
from fracture_curate.report.html import badge, page, text
from fracture_curate.report.inputs import Thumbnails, read_inputs
from fracture_curate.report.training import training_section

__all__ = ["SECTIONS", "THUMB_SIZE", "build_report"]

#: Section id -> heading, in page order.
SECTIONS: dict[str, str] = {
    "summary": "Dataset summary",
    "dropped": "Dropped files",
    "duplicates": "Duplicate clusters",
    "label-conflicts": "Label conflicts",
    "related": "Related images (other films of one anatomy)",
    "leakage": "Cross-split leakage in the source",
    "outliers": "Outliers",
    "embedding-map": "Embedding map",
    "split": "Final split",
    "training": "Training run",
    "planted": "Planted vs found",
}
THUMB_SIZE = 112  #: longest side of a thumbnail, in pixels


def build_report(
    manifests: Path,
    out: Path,
    *,
    run: Path | None = None,
    max_clusters: int = 30,
    max_outliers: int = 24,
    show_paths: bool = False,
) -> Path:
    """Write the curation report (and ``run``'s results) to ``out`` as one self-contained HTML.

    ``scan.parquet`` is required (:class:`~fracture_curate.manifest.ManifestError` otherwise);
    the later manifests are used when present. At most ``max_clusters`` duplicate clusters and
    ``max_outliers`` outliers are shown as thumbnails. Folders outside the dataset (the root,
    the run, the manifests) appear by their last part only, unless ``show_paths``.
    """
    inputs = read_inputs(Path(manifests), show_paths=show_paths)
    thumbnails = Thumbnails(inputs.root, THUMB_SIZE, inputs.window)
    bodies = {
        "summary": curation.summary_section(inputs, Path(manifests)),
        "dropped": curation.dropped_section(inputs),
        "duplicates": curation.duplicates_section(inputs, thumbnails, max_clusters),
        "label-conflicts": curation.conflicts_section(inputs, thumbnails, max_clusters),
        "related": curation.related_section(inputs, thumbnails, max_clusters),
        "leakage": curation.leakage_section(inputs),
        "outliers": curation.outliers_section(inputs, thumbnails, max_outliers),
        "embedding-map": curation.map_section(inputs),
        "split": curation.split_section(inputs),
        "training": training_section(run, show_paths=show_paths),
        "planted": curation.planted_section(inputs),
    }
    warning = (
        f"<p>{badge(f'{len(thumbnails.failed)} files unreadable', 'warn')} their thumbnails are "
        "placeholders: has the dataset moved since it was scanned?</p>"
        if thumbnails.failed
        else ""
    )
    root = shown_path(inputs.root, show_paths) if inputs.root is not None else text(None)
    document = page(SECTIONS, bodies, root=root, warning=warning)
    out = Path(out)
    with atomic_path(out) as temp:
        temp.write_text(document, encoding="utf-8")
    return out
