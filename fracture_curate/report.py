"""``curate report``: one self-contained HTML page of what curation found, and of a training run.

Everything is inlined: CSS, thumbnails and figures as data URIs. The page needs no JavaScript and
makes no network request (its Content-Security-Policy forbids any), so it can be archived, mailed
and opened offline. Each section is a ``<section>`` with a stable id (:data:`SECTIONS`); a section
whose manifest is missing says which command fills it instead of failing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from sklearn.decomposition import PCA

from fracture_curate import __version__
from fracture_curate.dedupe import leakage, summarise_dedupe, unit_rows
from fracture_curate.images import ImageLoadError, load_image, to_rgb8
from fracture_curate.manifest import (
    STAGES,
    ManifestError,
    atomic_path,
    embedding_matrix,
    manifest_path,
    read_stage,
)
from fracture_curate.scan import summarise_scan
from fracture_curate.split import split_summary, straddling_groups
from fracture_curate.synthetic import PLANTED_CSV, PLANTED_KINDS

#: Section id -> heading, in page order.
SECTIONS: dict[str, str] = {
    "summary": "Dataset summary",
    "dropped": "Dropped files",
    "duplicates": "Duplicate clusters",
    "label-conflicts": "Label conflicts",
    "leakage": "Cross-split leakage in the source",
    "outliers": "Outliers",
    "embedding-map": "Embedding map",
    "split": "Final split",
    "training": "Training run",
    "planted": "Planted vs found",
}
THUMB_SIZE = 112  #: longest side of a thumbnail, in pixels
MAX_TABLE_ROWS = 500  #: rows shown of a long table; the rest are counted
#: Planted kinds that the scan finds: their status is not "ok".
STATUS_KINDS = frozenset({"gif", "webp", "corrupt", "truncated", "zero_byte"})
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class _Inputs:
    """The manifests a report is built from."""

    frame: pd.DataFrame  #: the latest manifest: every row, with the columns of every stage run
    embeddings: pd.DataFrame | None
    provenance: dict[str, dict[str, Any]]  #: stage -> provenance, for the manifests read
    problems: dict[str, str]  #: stage -> why its manifest was not read
    root: Path | None

    def missing(self, stage: str) -> str:
        """A note saying that ``stage``'s manifest is needed and how to make it."""
        name = manifest_path("", stage).name
        why = self.problems.get(stage, f"{name} was not read")
        return _note(f"Not available: {why}. Run `curate {stage}` to fill this section.")


def build_report(
    manifests: Path,
    out: Path,
    *,
    run: Path | None = None,
    max_clusters: int = 30,
    max_outliers: int = 24,
) -> Path:
    """Write the curation report (and ``run``'s results) to ``out`` as one self-contained HTML.

    ``scan.parquet`` is required (:class:`ManifestError` otherwise); the later manifests are used
    when present. At most ``max_clusters`` duplicate clusters and ``max_outliers`` outliers are
    shown as thumbnails.
    """
    inputs = _read_inputs(Path(manifests))
    thumbnails = _Thumbnails(inputs.root, THUMB_SIZE)
    bodies = {
        "summary": _summary_section(inputs, Path(manifests)),
        "dropped": _dropped_section(inputs.frame),
        "duplicates": _duplicates_section(inputs, thumbnails, max_clusters),
        "label-conflicts": _conflicts_section(inputs, thumbnails, max_clusters),
        "leakage": _leakage_section(inputs),
        "outliers": _outliers_section(inputs, thumbnails, max_outliers),
        "embedding-map": _map_section(inputs),
        "split": _split_section(inputs),
        "training": _training_section(run),
        "planted": _planted_section(inputs),
    }
    page = _page(inputs, bodies, unreadable=len(thumbnails.failed))
    out = Path(out)
    with atomic_path(out) as temp:
        temp.write_text(page, encoding="utf-8")
    return out


def planted_vs_found(record: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Per planted kind of a generated set (``planted.csv``), how many the pipeline found.

    A copy is found when it shares a duplicate cluster with its ``source_path``, an outlier when
    flagged, an unusable file (gif, webp, corrupt, truncated, zero_byte) when its scan status is
    not ``ok``. ``found`` is null where the manifest that would find the kind has not been made.
    """
    rows = frame.set_index("path")
    planted = record[record["kind"] != "original"]
    kinds = [k for k in PLANTED_KINDS if k in set(planted["kind"])]
    kinds += sorted(set(planted["kind"]) - set(kinds))
    table = []
    for kind in kinds:
        group = planted[planted["kind"] == kind]
        paths = group["path"].tolist()
        found: pd.Series | None = None
        if kind in STATUS_KINDS:
            how = "scan status is not ok"
            status = rows["status"].reindex(paths)
            found = status.notna() & (status != "ok")
        elif kind == "outlier":
            how = "flagged as an outlier"
            if "is_outlier" in rows:
                found = rows["is_outlier"].reindex(paths).fillna(False).astype(bool)
            else:
                how += " (run curate outliers)"
        elif group["source_path"].notna().all():
            how = "in its source's duplicate cluster"
            if "cluster_id" in rows:
                copy = rows["cluster_id"].reindex(paths).reset_index(drop=True)
                source = rows["cluster_id"].reindex(group["source_path"]).reset_index(drop=True)
                found = pd.Series(copy.eq(source).fillna(False).astype(bool).to_numpy(), paths)
            else:
                how += " (run curate dedupe)"
        else:
            how = "no rule for this kind"
        missed = [] if found is None else [p for p, hit in found.items() if not hit]
        table.append(
            {
                "kind": kind,
                "planted": len(paths),
                "found": pd.NA if found is None else int(found.sum()),
                "found when": how,
                "missed (first 3)": " | ".join(missed[:3]),
            }
        )
    columns = ["kind", "planted", "found", "found when", "missed (first 3)"]
    return pd.DataFrame(table, columns=columns).set_index("kind")


# --------------------------------------------------------------------------------------
# Inputs and thumbnails
# --------------------------------------------------------------------------------------


def _read_inputs(manifests: Path) -> _Inputs:
    """Scan (required) and every later manifest that can be read."""
    frame, scan_provenance = read_stage(manifests, "scan")
    provenance, problems, frames = {"scan": scan_provenance}, {}, {"scan": frame}
    for stage in STAGES[1:]:
        path = manifest_path(manifests, stage)
        if not path.exists():
            problems[stage] = f"no {path.name} in {manifests}"
            continue
        try:
            frames[stage], provenance[stage] = read_stage(manifests, stage)
        except ManifestError as error:
            problems[stage] = str(error)
    embeddings = frames.pop("embed", None)
    root = scan_provenance.get("params", {}).get("root")
    return _Inputs(
        frame=frames[list(frames)[-1]],
        embeddings=embeddings,
        provenance=provenance,
        problems=problems,
        root=Path(root) if root else None,
    )


class _Thumbnails:
    """Thumbnails of dataset files as JPEG data URIs, each made once; a placeholder when a file
    can no longer be read."""

    def __init__(self, root: Path | None, size: int) -> None:
        self.root, self.size = root, size
        self.cache: dict[str, str] = {}
        self.failed: set[str] = set()
        self._placeholder: str | None = None

    def __call__(self, path: str) -> str:
        if path not in self.cache:
            self.cache[path] = self._make(path)
        return self.cache[path]

    def _make(self, path: str) -> str:
        if self.root is None:
            return self.placeholder(path)
        try:
            loaded = load_image(self.root / path, draft_size=(self.size, self.size))
        except (ImageLoadError, OSError):
            return self.placeholder(path)
        image = Image.fromarray(to_rgb8(loaded.pixels))
        image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        return _data_uri(buffer.getvalue(), "image/jpeg")

    def placeholder(self, path: str) -> str:
        """A grey, crossed-out square: the file at ``path`` could not be read."""
        self.failed.add(path)
        if self._placeholder is None:
            image = Image.new("L", (self.size, self.size), 200)
            draw = ImageDraw.Draw(image)
            draw.line((0, 0, self.size, self.size), fill=120, width=2)
            draw.line((0, self.size, self.size, 0), fill=120, width=2)
            draw.text((8, self.size // 2 - 6), "unreadable", fill=40)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            self._placeholder = _data_uri(buffer.getvalue(), "image/png")
        return self._placeholder


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def _summary_section(inputs: _Inputs, manifests: Path) -> str:
    frame = inputs.frame
    cards = {"files": len(frame), "kept by scan": int((frame["status"] == "ok").sum())}
    cards["dropped by scan"] = len(frame) - cards["kept by scan"]
    if "cluster_id" in frame:
        counts = summarise_dedupe(frame)["counts"]["value"]
        cards["duplicate clusters"] = counts["duplicate clusters"]
        cards["copies not kept"] = counts["copies not kept"]
        cards["label-conflict clusters"] = counts["label-conflict clusters"]
    if "is_outlier" in frame:
        cards["outliers flagged"] = int(_flag(frame["is_outlier"]).sum())
    if "split" in frame:
        cards["in the split"] = int(frame["split"].notna().sum())
    scan = summarise_scan(frame)
    stages = []
    for stage in STAGES:
        found = inputs.provenance.get(stage)
        stages.append(
            {
                "stage": stage,
                "file": manifest_path(manifests, stage).name,
                "written": found.get("created") if found else "missing",
                "tool version": found.get("tool_version") if found else None,
            }
        )
    return (
        _cards(cards)
        + _tables_row(
            _table(scan["status"], caption="Files by status"),
            _table(scan["format"], caption="Files by format"),
            _table(scan["label_by_split"], caption="Kept files: label by source split"),
        )
        + _table(pd.DataFrame(stages).set_index("stage"), caption="Manifests")
    )


def _dropped_section(frame: pd.DataFrame) -> str:
    dropped = frame[frame["status"] != "ok"].sort_values(["status", "path"])
    if dropped.empty:
        return _note("The scan kept every file.")
    columns = ["path", "status", "reason", "format", "bytes", "label", "source_split"]
    return _note(
        f"{len(dropped)} of {len(frame)} files were not used, each with the scan's reason."
    ) + _table(dropped[columns], index=False)


def _duplicates_section(inputs: _Inputs, thumbnails: _Thumbnails, max_clusters: int) -> str:
    frame = inputs.frame
    if "cluster_id" not in frame:
        return inputs.missing("dedupe")
    clustered = frame[frame["cluster_size"].fillna(1) > 1]
    if clustered.empty:
        return _note("No duplicates were found.")
    summary = summarise_dedupe(frame)
    n_clusters = clustered["cluster_id"].nunique()
    shown = min(n_clusters, max_clusters)
    return (
        _tables_row(
            _table(summary["counts"], caption="Dedupe"),
            _table(summary["copies_by_match"], caption="Copies not kept, by match"),
        )
        + _note(
            f"Showing {shown} of {n_clusters} clusters, largest first. Each copy shows the "
            "strongest layer that matched it and how similar it was; the kept copy is marked."
        )
        + _cluster_strips(clustered, thumbnails, max_clusters)
    )


def _conflicts_section(inputs: _Inputs, thumbnails: _Thumbnails, max_clusters: int) -> str:
    frame = inputs.frame
    if "label_conflict" not in frame:
        return inputs.missing("dedupe")
    conflicts = frame[_flag(frame["label_conflict"])]
    if conflicts.empty:
        return _note("No duplicate cluster mixes labels.")
    groups = conflicts.groupby("cluster_id")
    table = pd.DataFrame(
        {
            "files": groups.size(),
            "labels": groups["label"].agg(_counted),
            "paths": groups["path"].agg(" | ".join),
        }
    ).rename_axis("cluster")
    return (
        _note(
            f"{len(table)} duplicate clusters hold copies filed under different labels. They are "
            "flagged, not resolved: a person decides which label is right."
        )
        + _table(table)
        + _cluster_strips(conflicts, thumbnails, max_clusters)
    )


def _leakage_section(inputs: _Inputs) -> str:
    frame = inputs.frame
    if frame["source_split"].isna().all():
        return _note("The source has no train/val/test folders, so nothing can leak across them.")
    if "cluster_id" not in frame:
        return inputs.missing("dedupe")
    leaks = leakage(frame).rename_axis("cluster")
    if leaks.empty:
        return _note("No duplicate cluster straddles the source's splits.")
    return _note(
        f"{len(leaks)} duplicate clusters ({int(leaks['size'].sum())} files) have copies in more "
        "than one of the source's splits: a model evaluated on the shipped split has seen its "
        "test images in training."
    ) + _table(leaks)


def _outliers_section(inputs: _Inputs, thumbnails: _Thumbnails, max_outliers: int) -> str:
    frame = inputs.frame
    if "outlier_score" not in frame:
        return inputs.missing("outliers")
    scored = frame[frame["outlier_score"].notna()].drop_duplicates("image_id")
    if scored.empty:
        return _note("No image was scored (too few embeddings).")
    flagged = _flag(scored["is_outlier"])
    ranked = scored.assign(_flagged=flagged).sort_values(
        ["_flagged", "outlier_score"], ascending=False
    )
    figures = []
    for row in ranked.head(max_outliers).to_dict("records"):
        badge = _badge("flagged", "warn") if row["_flagged"] else ""
        lines = [f"{badge} score {row['outlier_score']:.3f}", _label_line(row)]
        figures.append(_figure(thumbnails(row["path"]), row["path"], lines))
    params = inputs.provenance.get("outliers", {}).get("params", {})
    settings = f"per class: {params.get('per_class')}, contamination: {params.get('contamination')}"
    return (
        _note(
            f"{int(flagged.sum())} of {len(scored)} distinct images flagged by PCA + Isolation "
            f"Forest ({settings}). "
            f"Showing the {min(max_outliers, len(scored))} strangest, flagged first; higher scores "
            "are stranger."
        )
        + f'<div class="strip">{"".join(figures)}</div>'
    )


def _map_section(inputs: _Inputs) -> str:
    if inputs.embeddings is None:
        return inputs.missing("embed")
    frame = inputs.frame
    points = frame[
        (frame["status"] == "ok") & frame["image_id"].isin(inputs.embeddings["image_id"])
    ].drop_duplicates("image_id")
    if len(points) < 3:
        return _note("Fewer than three embedded images: nothing to map.")
    unit = unit_rows(embedding_matrix(inputs.embeddings, points["image_id"]).astype(np.float64))
    pca = PCA(n_components=2, random_state=0)
    xy = pca.fit_transform(unit)
    labels = points["label"].fillna("(none)").to_numpy(dtype=object)
    outliers = _flag(points["is_outlier"]).to_numpy() if "is_outlier" in points else None

    figure = Figure(figsize=(8, 6))
    axis = figure.subplots()
    colours = [f"C{i % 10}" for i in range(len(set(labels)))]
    for colour, label in zip(colours, sorted(set(labels)), strict=True):
        mine = labels == label
        axis.scatter(*xy[mine].T, s=14, alpha=0.75, color=colour, label=f"{label} ({mine.sum()})")
    if outliers is not None and outliers.any():
        axis.scatter(
            *xy[outliers].T, s=70, facecolors="none", edgecolors="black", label="flagged outlier"
        )
    share = pca.explained_variance_ratio_
    axis.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
    axis.set_ylabel(f"PC2 ({share[1]:.0%} of variance)")
    axis.set_title("Embeddings (L2-normalised), first two principal components")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="best")
    note = _note(
        f"{len(points)} distinct kept images, coloured by label"
        + (", flagged outliers ringed." if outliers is not None else ".")
    )
    return note + _plot(figure, "PCA map of the embeddings")


def _split_section(inputs: _Inputs) -> str:
    frame = inputs.frame
    if "split" not in frame:
        return inputs.missing("split")
    table = split_summary(frame)
    if table.empty:
        return _note("No row takes part in the split.")
    shares = (table.loc["total"] / table.loc["total", "total"]).map(lambda v: f"{v:.0%}")
    table = pd.concat([table.astype(object), shares.to_frame("share").T])
    reasons = frame["excluded_reason"].dropna()
    reasons = reasons.str.replace(r"^duplicate of .*$", "duplicate of a kept copy", regex=True)
    reasons = reasons.str.replace(r":.*$", "", regex=True)
    excluded = reasons.value_counts().rename_axis("excluded because").to_frame("files")
    straddling = straddling_groups(frame)
    params = inputs.provenance.get("split", {}).get("params", {})
    check = (
        _badge("ok", "ok") + " no duplicate cluster or patient spans two splits"
        if straddling.empty
        else _badge(f"{len(straddling)} groups span two splits", "warn")
    )
    fractions = ", ".join(f"{k} {params.get(k)}" for k in ("train", "val", "test"))
    return (
        f'<p class="note">{check}. Asked for {_e(fractions)}, seed {_e(params.get("seed"))}.</p>'
        + _tables_row(
            _table(table, caption="Label by split"),
            _table(excluded, caption="Rows left out of the split"),
        )
    )


def _training_section(run: Path | None) -> str:
    if run is None:
        return _note("No run folder given (`curate report --run RUN_DIR`).")
    run = Path(run)
    if not run.is_dir():
        return _note(f"Run folder {run} does not exist.")
    parts = [_note(f"Run folder: {run}")]
    figures = []
    for png in sorted(run.glob("*.png")):
        uri = _data_uri(png.read_bytes(), "image/png")
        figures.append(
            f'<figure class="plot"><img src="{uri}" alt="{_e(png.name)}">'
            f"<figcaption>{_e(png.name)}</figcaption></figure>"
        )
    parts.append("".join(figures) or _note("No PNG figures in the run folder."))
    metrics = run / "metrics.json"
    if metrics.is_file():
        try:
            parts.append("<h3>Metrics</h3>" + _json_html(json.loads(metrics.read_text()), []))
        except json.JSONDecodeError as error:
            parts.append(_note(f"metrics.json cannot be read: {error}"))
    else:
        parts.append(_note("No metrics.json in the run folder."))
    history = run / "history.csv"
    if history.is_file():
        parts.append(_table(pd.read_csv(history), index=False, caption="History (per epoch)"))
    else:
        parts.append(_note("No history.csv in the run folder."))
    return "".join(parts)


def _planted_section(inputs: _Inputs) -> str:
    path = inputs.root / PLANTED_CSV if inputs.root is not None else None
    if path is None or not path.is_file():
        return _note(f"The dataset root has no {PLANTED_CSV}: it is not a generated set.")
    record = pd.read_csv(path, dtype=str)
    table = planted_vs_found(record, inputs.frame)
    extra = []
    if "is_outlier" in inputs.frame:
        planted = set(record.loc[record["kind"] == "outlier", "path"])
        flagged = inputs.frame[_flag(inputs.frame["is_outlier"])]
        extra.append(f"{int((~flagged['path'].isin(planted)).sum())} flagged outliers")
    if "cluster_id" in inputs.frame:
        family = pd.Series(record["source_path"].fillna(record["path"]).to_numpy(), record["path"])
        clustered = inputs.frame[inputs.frame["cluster_size"].fillna(1) > 1]
        origin = clustered["path"].map(family).fillna(clustered["path"])
        mixed = origin.groupby(clustered["cluster_id"]).nunique()
        extra.append(f"{int((mixed > 1).sum())} duplicate clusters joining unrelated originals")
    found_unplanted = (
        _note("Found without being planted: " + "; ".join(extra) + ".") if extra else ""
    )
    return (
        _note(f"From {path}: what was planted in the generated set, and what the pipeline found.")
        + _table(table)
        + found_unplanted
    )


# --------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------


def _page(inputs: _Inputs, bodies: dict[str, str], *, unreadable: int) -> str:
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    root = _e(_text(inputs.root))
    warning = (
        f"<p>{_badge(f'{unreadable} files unreadable', 'warn')} their thumbnails are "
        "placeholders: has the dataset moved since it was scanned?</p>"
        if unreadable
        else ""
    )
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in SECTIONS.items())
    sections = "".join(
        f'<section id="{key}"><h2>{_e(SECTIONS[key])}</h2>{body}</section>'
        for key, body in bodies.items()
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fracture-curate report</title><style>{_CSS}</style></head><body>"
        f"<header><h1>fracture-curate report</h1><p>Dataset root <code>{root}</code>"
        f" &middot; written {_e(created)} by fracture-curate {_e(__version__)}</p>"
        f"{warning}</header><nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )


def _cluster_strips(rows: pd.DataFrame, thumbnails: _Thumbnails, limit: int) -> str:
    """Thumbnail strips of the ``limit`` largest clusters among ``rows``."""
    sizes = rows.groupby("cluster_id").size().sort_values(ascending=False, kind="stable")
    blocks = []
    for cluster in sizes.index[:limit]:
        members = rows[rows["cluster_id"] == cluster].sort_values(
            ["is_kept", "similarity", "path"], ascending=[False, False, True]
        )
        splits = sorted(members["source_split"].dropna().unique())
        badges = _badge("label conflict", "warn") if _flag(members["label_conflict"]).any() else ""
        if len(splits) > 1:
            badges += _badge("spans source splits", "warn")
        figures = []
        for row in members.to_dict("records"):
            kept = _badge("kept", "ok") if row["is_kept"] else _badge("copy", "copy")
            match = f"{row['match_kind']} {row['similarity']:.3f}"
            size = f"{row['width']}&times;{row['height']} {_e(row['format'])}"
            lines = [f"{kept} {_e(match)}", _label_line(row), size]
            figures.append(_figure(thumbnails(row["path"]), row["path"], lines))
        blocks.append(
            f'<div class="cluster"><h3>Cluster {int(cluster)} &middot; {len(members)} files '
            f"{badges}</h3>"
            f'<div class="strip">{"".join(figures)}</div></div>'
        )
    return f'<div class="clusters">{"".join(blocks)}</div>'


def _figure(uri: str, path: str, lines: list[str]) -> str:
    """A thumbnail with caption ``lines`` (already HTML) and its path."""
    caption = "".join(f"<div>{line}</div>" for line in lines)
    return (
        f'<figure class="thumb"><img src="{uri}" alt="{_e(path)}" title="{_e(path)}">'
        f'<figcaption>{caption}<div class="path">{_e(path)}</div></figcaption></figure>'
    )


def _label_line(row: dict[str, Any]) -> str:
    label, split = _text(row.get("label")), _text(row.get("source_split"))
    return f"{_e(label)} &middot; {_e(split)}"


def _json_html(value: Any, path: list[str]) -> str:
    """Generic tables of a JSON value: scalars as key/value rows, a dict of flat dicts as one
    table, lists as rows, anything deeper under its own heading."""
    heading = f"<h4>{_e(' / '.join(path))}</h4>" if path else ""
    if isinstance(value, dict):
        if value and all(_flat_dict(v) for v in value.values()):
            return heading + _table(pd.DataFrame.from_dict(value, orient="index"))
        scalars = {
            k: ", ".join(map(_text, v)) if isinstance(v, list) else v
            for k, v in value.items()
            if _flat(v)
        }
        nested = [_json_html(v, [*path, str(k)]) for k, v in value.items() if not _flat(v)]
        table = _table(pd.Series(scalars, dtype=object).to_frame("value")) if scalars else ""
        return heading + table + "".join(nested)
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value) or all(isinstance(v, list) for v in value):
            return heading + _table(pd.DataFrame(value))
        return heading + _table(pd.DataFrame({"value": [_text(v) for v in value]}))
    return heading + f"<p>{_e(_text(value))}</p>"


def _flat_dict(value: Any) -> bool:
    return isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values())


def _flat(value: Any) -> bool:
    """A scalar, or a list of scalars (shown comma-separated)."""
    if isinstance(value, list):
        return not any(isinstance(v, dict | list) for v in value)
    return not isinstance(value, dict)


def _table(
    frame: pd.DataFrame | pd.Series, *, index: bool = True, caption: str | None = None
) -> str:
    """An escaped HTML table of ``frame``, at most ``MAX_TABLE_ROWS`` rows."""
    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    if index:
        head = f"<th>{_e(frame.index.name or '')}</th>" + head
    body = []
    for key, row in zip(frame.index[:MAX_TABLE_ROWS], frame.itertuples(index=False), strict=False):
        cells = "".join(f"<td>{_e(_text(v))}</td>" for v in row)
        body.append(f"<tr>{f'<th>{_e(_text(key))}</th>' if index else ''}{cells}</tr>")
    more = len(frame) - MAX_TABLE_ROWS
    if more > 0:
        body.append(f'<tr><td colspan="99" class="more">&hellip; {more} more rows</td></tr>')
    title = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _tables_row(*tables: str) -> str:
    return f'<div class="row">{"".join(tables)}</div>'


def _cards(values: dict[str, Any]) -> str:
    cards = "".join(
        f'<div class="card"><b>{_e(_text(v))}</b><span>{_e(k)}</span></div>'
        for k, v in values.items()
    )
    return f'<div class="cards">{cards}</div>'


def _plot(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    uri = _data_uri(buffer.getvalue(), "image/png")
    return f'<figure class="plot"><img src="{uri}" alt="{_e(alt)}"></figure>'


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _counted(values: pd.Series) -> str:
    return ", ".join(f"{k} \u00d7{n}" for k, n in values.fillna("(none)").value_counts().items())


def _flag(values: pd.Series) -> pd.Series:
    """A nullable boolean column as plain booleans, null as False."""
    return values.fillna(False).astype(bool)


def _text(value: Any) -> str:
    """A cell's text: numbers short, missing values as a dash."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_CSS = """
:root { --ink: #1d2330; --muted: #5b6474; --line: #dde1e8; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: var(--ink); background: #f5f6f8; }
header { padding: 18px 28px 8px; background: #fff; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0 0 8px; color: var(--muted); }
nav { position: sticky; top: 0; z-index: 1; display: flex; flex-wrap: wrap; gap: 4px 14px;
  padding: 8px 28px; background: #fff; border-bottom: 1px solid var(--line); }
nav a { color: var(--accent); text-decoration: none; font-size: 13px; }
main { padding: 8px 28px 40px; }
section { margin: 18px 0; padding: 14px 18px; background: #fff; border: 1px solid var(--line);
  border-radius: 8px; }
section h2 { margin: 0 0 10px; font-size: 18px; }
h3 { margin: 14px 0 6px; font-size: 15px; }
h4 { margin: 12px 0 4px; font-size: 13px; color: var(--muted); }
.note { color: var(--muted); margin: 6px 0 10px; }
code { font-size: 12px; background: #eef0f4; padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 12.5px; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
th, td { padding: 3px 9px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: #eef0f4; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.more { color: var(--muted); font-style: italic; }
.row { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 12px; }
.card { min-width: 120px; padding: 8px 12px; border: 1px solid var(--line); border-radius: 6px; }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 12px; }
.clusters { display: flex; flex-wrap: wrap; gap: 12px; }
.cluster { padding: 0 10px 10px; border: 1px solid var(--line); border-radius: 6px; }
.cluster h3 { font-size: 13px; margin: 8px 0; }
.strip { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; }
figure.thumb { width: 132px; font-size: 11px; }
figure.thumb img { display: block; width: 112px; height: 112px; object-fit: contain;
  background: #000; border-radius: 4px; }
figure.plot { display: inline-block; margin: 6px 12px 6px 0; vertical-align: top; }
figure.plot img { max-width: 100%; border: 1px solid var(--line); }
figure.plot figcaption { color: var(--muted); font-size: 12px; }
.path { color: var(--muted); word-break: break-all; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11px;
  font-weight: 600; }
.badge.ok { background: #dcf3e3; color: #17663a; }
.badge.warn { background: #fde7d4; color: #9a4a00; }
.badge.copy { background: #e7ebf3; color: #3b4a66; }
"""
