"""The report's sections on curation: what the scan kept, the duplicates, label conflicts and
leakage, the outliers, a map of the embeddings, the final split and, for a generated set, what
was planted against what was found.

Each section is a function of the report's inputs that returns HTML; a section whose stage has
not run says which command fills it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from fracture_curate.classes import positive_class
from fracture_curate.dedupe import leakage, summarise_dedupe
from fracture_curate.figures import plain_text
from fracture_curate.manifest import manifest_path
from fracture_curate.outliers import summarise_outliers
from fracture_curate.report.html import (
    badge,
    cards,
    escape,
    figure,
    note,
    plot,
    table,
    tables_row,
    text,
)
from fracture_curate.report.inputs import ReportInputs, Thumbnails
from fracture_curate.scan import summarise_scan
from fracture_curate.schema import SPLITS, STAGES, flags
from fracture_curate.split import missing_label_lines, split_summary, straddling_groups
from fracture_curate.synthetic import PLANTED_CSV, planted_vs_found, read_record, source_families
from fracture_curate.vectors import embedding_matrix, unit_rows


def summary_section(inputs: ReportInputs, manifests: Path) -> str:
    """Headline counts, the scan's tables and which manifests were read."""
    frame = inputs.frame
    counts = {"files": len(frame), "kept by scan": int((frame["status"] == "ok").sum())}
    counts["dropped by scan"] = len(frame) - counts["kept by scan"]
    if inputs.has("dedupe"):
        dedupe = summarise_dedupe(frame)["counts"]["value"]
        for name in ("duplicate clusters", "copies not kept", "label-conflict clusters"):
            counts[name] = dedupe[name]
    if inputs.has("outliers"):
        counts["outliers flagged"] = int(flags(frame["is_outlier"]).sum())
    if inputs.has("split"):
        counts["in the split"] = int(frame["split"].notna().sum())
    scan = summarise_scan(frame)
    stages = []
    for stage in STAGES:
        found = inputs.provenance.get(stage)
        path = manifest_path(manifests, stage)
        if found:
            state = "read"
        elif path.exists():
            state = f"not used: {inputs.problems[stage]}"
        else:
            state = "missing"
        stages.append(
            {
                "stage": stage,
                "file": path.name,
                "written": found.get("created") if found else None,
                "tool version": found.get("tool_version") if found else None,
                "in this report": state,
            }
        )
    scan_params = inputs.provenance.get("scan", {}).get("params", {})
    layout = f"Labels read with the {scan_params.get('layout', 'unknown')} layout."
    warnings = "".join(
        f" {badge('layout', 'warn')} {escape(line)}"
        for line in scan_params.get("layout_warnings", [])
    )
    return (
        cards(counts)
        + f'<p class="note">{escape(layout)}{warnings}</p>'
        + tables_row(
            table(scan["status"], caption="Files by status"),
            table(scan["format"], caption="Files by format"),
            table(scan["label_by_split"], caption="Kept files: label by source split"),
            *(
                [table(scan["imaged"], caption="Kept DICOM files: modality, body part, view")]
                if "imaged" in scan
                else []
            ),
        )
        + table(pd.DataFrame(stages).set_index("stage"), caption="Manifests")
    )


def dropped_section(inputs: ReportInputs) -> str:
    """Every file the scan did not keep, with its reason."""
    frame = inputs.frame
    dropped = frame[frame["status"] != "ok"].sort_values(["status", "path"])
    if dropped.empty:
        return note("The scan kept every file.")
    columns = ["path", "status", "reason", "format", "bytes", "label", "source_split"]
    return note(
        f"{len(dropped)} of {len(frame)} files were not used, each with the scan's reason."
    ) + table(dropped[columns], index=False)


def duplicates_section(inputs: ReportInputs, thumbnails: Thumbnails, max_clusters: int) -> str:
    """Counts by matching layer, and thumbnail strips of the largest clusters."""
    if not inputs.has("dedupe"):
        return inputs.missing("dedupe")
    frame = inputs.frame
    clustered = frame[frame["cluster_size"].fillna(1) > 1]
    if clustered.empty:
        return note("No duplicates were found.")
    summary = summarise_dedupe(frame)
    n_clusters = clustered["cluster_id"].nunique()
    shown = min(n_clusters, max_clusters)
    return (
        tables_row(
            table(summary["counts"], caption="Dedupe"),
            table(summary["copies_by_match"], caption="Copies not kept, by match"),
        )
        + note(
            f"Showing {shown} of {n_clusters} clusters, largest first. Each copy shows the "
            "strongest layer that matched it and how similar it was; the kept copy is marked."
        )
        + cluster_strips(clustered, thumbnails, max_clusters)
    )


def conflicts_section(inputs: ReportInputs, thumbnails: Thumbnails, max_clusters: int) -> str:
    """Duplicate clusters whose copies carry different labels."""
    if not inputs.has("dedupe"):
        return inputs.missing("dedupe")
    frame = inputs.frame
    conflicts = frame[flags(frame["label_conflict"])]
    if conflicts.empty:
        return note("No duplicate cluster mixes labels.")
    groups = conflicts.groupby("cluster_id")
    clusters = pd.DataFrame(
        {
            "files": groups.size(),
            "labels": groups["label"].agg(_counted),
            "paths": groups["path"].agg(" | ".join),
        }
    ).rename_axis("cluster")
    return (
        note(
            f"{len(clusters)} duplicate clusters hold copies filed under different labels. They "
            "are flagged, not resolved: a person decides which label is right."
        )
        + table(clusters)
        + cluster_strips(conflicts, thumbnails, max_clusters)
    )


def related_section(inputs: ReportInputs, thumbnails: Thumbnails, max_groups: int) -> str:
    """Groups of different films of one anatomy: all kept, split together."""
    if not inputs.has("dedupe"):
        return inputs.missing("dedupe")
    frame = inputs.frame
    related = frame[frame["related_group"].notna()]
    if related.empty:
        return note(
            "No related images found: no two films show the same anatomy without being copies "
            "(geometry layer; patients known from the layout or file names are grouped too)."
        )
    groups = related.groupby("related_group")
    sizes = groups["cluster_id"].nunique().sort_values(ascending=False, kind="stable")
    blocks = []
    for group in sizes.index[:max_groups]:
        members = related[related["related_group"] == group].sort_values(
            ["is_kept", "path"], ascending=[False, True]
        )
        figures = []
        for row in members.to_dict("records"):
            kept = badge("kept", "ok") if row["is_kept"] else badge("copy", "copy")
            evidence = escape(text(row["related_evidence"])) if row["is_kept"] else ""
            figures.append(figure(thumbnails(row), row["path"], [kept, label_line(row), evidence]))
        blocks.append(
            f'<div class="cluster"><h3>Related group {int(group)} &middot; '
            f"{sizes[group]} distinct films</h3>"
            f'<div class="strip">{"".join(figures)}</div></div>'
        )
    return (
        note(
            f"{len(sizes)} groups of different films of one anatomy ({int(sizes.sum())} distinct "
            "films): follow-ups or second exposures, found because one transform carries many of "
            "their keypoints onto each other, but far fewer of their matches than a copy's. "
            "They are not copies: every film is kept, and the split keeps each group together. "
            f"Showing {min(len(sizes), max_groups)}, largest first."
        )
        + f'<div class="clusters">{"".join(blocks)}</div>'
    )


def leakage_section(inputs: ReportInputs) -> str:
    """Duplicate clusters that straddle the source's own splits."""
    frame = inputs.frame
    if frame["source_split"].isna().all():
        return note("The source has no train/val/test folders, so nothing can leak across them.")
    if not inputs.has("dedupe"):
        return inputs.missing("dedupe")
    leaks = leakage(frame).rename_axis("cluster")
    if leaks.empty:
        return note("No duplicate cluster straddles the source's splits.")
    return note(
        f"{len(leaks)} duplicate clusters ({int(leaks['size'].sum())} files) have copies in more "
        "than one of the source's splits: a model evaluated on the shipped split has seen its "
        "test images in training."
    ) + table(leaks)


def outliers_section(inputs: ReportInputs, thumbnails: Thumbnails, max_outliers: int) -> str:
    """The strangest images, flagged first."""
    if not inputs.has("outliers"):
        return inputs.missing("outliers")
    frame = inputs.frame
    scored = frame[frame["outlier_score"].notna()].drop_duplicates("image_id")
    if scored.empty:
        return note("No image was scored (too few embeddings).")
    flagged = flags(scored["is_outlier"])
    ranked = scored.assign(_flagged=flagged).sort_values(
        ["_flagged", "outlier_score"], ascending=False
    )
    figures = []
    for row in ranked.head(max_outliers).to_dict("records"):
        mark = badge("flagged", "warn") if row["_flagged"] else ""
        reason = escape(text(row["outlier_reason"])) if row["_flagged"] else ""
        lines = [f"{mark} {reason}", f"score {row['outlier_score']:.3f}", label_line(row)]
        figures.append(figure(thumbnails(row), row["path"], lines))
    params = inputs.provenance.get("outliers", {}).get("params", {})
    settings = ", ".join(
        f"{name}: {params.get(name)}" for name in ("per_class", "contamination", "neighbours")
    )
    return (
        note(
            f"{int(flagged.sum())} of {len(scored)} distinct images flagged ({settings}). Each "
            "flag names its reasons: colour (a colourful picture among grayscale radiographs), "
            "blank, size, isolation (PCA + Isolation Forest) or neighbours (far from its nearest "
            "images). "
            f"Showing the {min(max_outliers, len(scored))} strangest, flagged first; the score is "
            "the Isolation Forest's, higher is stranger."
        )
        + table(summarise_outliers(frame), caption="Flagged by")
        + f'<div class="strip">{"".join(figures)}</div>'
    )


@plain_text
def map_section(inputs: ReportInputs) -> str:
    """The embeddings' first two principal components, coloured by label."""
    from sklearn.decomposition import PCA  # slow to import: only when a map is drawn

    if inputs.embeddings is None:
        return inputs.missing("embed")
    frame = inputs.frame
    points = frame[
        (frame["status"] == "ok") & frame["image_id"].isin(inputs.embeddings["image_id"])
    ].drop_duplicates("image_id")
    if len(points) < 3:
        return note("Fewer than three embedded images: nothing to map.")
    unit = unit_rows(embedding_matrix(inputs.embeddings, points["image_id"]).astype("float64"))
    pca = PCA(n_components=2, random_state=0)
    xy = pca.fit_transform(unit)
    labels = points["label"].fillna("(none)").to_numpy(dtype=object)
    outliers = flags(points["is_outlier"]).to_numpy() if inputs.has("outliers") else None

    chart = Figure(figsize=(8, 6))
    axis = chart.subplots()
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
    caption = note(
        f"{len(points)} distinct kept images, coloured by label"
        + (", flagged outliers ringed." if outliers is not None else ".")
    )
    return caption + plot(chart, "PCA map of the embeddings")


def split_section(inputs: ReportInputs) -> str:
    """Label by split, what was left out and why, and whether any group spans two splits."""
    if not inputs.has("split"):
        return inputs.missing("split")
    frame = inputs.frame
    counts = split_summary(frame)
    if counts.empty:
        return note("No row takes part in the split.")
    shares = (counts.loc["total"] / counts.loc["total", "total"]).map(lambda v: f"{v:.0%}")
    counts = pd.concat([counts.astype(object), shares.to_frame("share").T])
    excluded = frame["excluded_reason"].value_counts().rename_axis("excluded because")
    straddling = straddling_groups(frame)
    params = inputs.provenance.get("split", {}).get("params", {})
    check = (
        badge("ok", "ok") + " no duplicate cluster or patient spans two splits"
        if straddling.empty
        else badge(f"{len(straddling)} groups span two splits", "warn")
    )
    gaps = missing_label_lines(frame)
    check += "".join(f". {badge('label missing', 'warn')} {escape(line)}" for line in gaps)
    asked = ", ".join(f"{k} {params.get(k)}" for k in ("train", "val", "test"))
    asked += f", seed {params.get('seed')}"
    labels = frame.loc[frame["split"].notna(), "label"].unique().tolist()
    positive = positive_class(labels)
    task = (
        f" A binary task: the trainer takes {positive!r} as the positive (finding) class."
        if positive is not None
        else ""
    )
    scan_params = inputs.provenance.get("scan", {}).get("params", {})
    return f'<p class="note">{check}. Asked for {escape(asked)}.{escape(task)}</p>' + tables_row(
        table(counts, caption="Label by split"),
        table(excluded.to_frame("files"), caption="Rows left out of the split"),
        table(patients_by_split(frame), caption=patients_caption(scan_params)),
    )


def patients_by_split(frame: pd.DataFrame) -> pd.DataFrame:
    """Images, distinct patients (and studies, where any is known) and images without a
    patient id, for each split and in total, of the rows that take part in the split."""
    used = frame[frame["split"].notna()]
    order = [split for split in SPLITS if split in set(used["split"])]
    parts = [(split, used[used["split"] == split]) for split in order] + [("total", used)]
    counts = {}
    for name, members in parts:
        counts[name] = {"images": len(members), "patients": members["patient_id"].nunique()}
        if used["study_id"].notna().any():
            counts[name]["studies"] = members["study_id"].nunique()
        counts[name]["no patient id"] = int(members["patient_id"].isna().sum())
    return pd.DataFrame.from_dict(counts, orient="index").rename_axis("split")


def patients_caption(scan_params: dict[str, Any]) -> str:
    """The caption of :func:`patients_by_split`, naming where the scan read the patients."""
    sources = scan_params.get("patient_sources") or {}
    read = f" (patient ids from {', '.join(sources)})" if sources else ""
    return (
        f"Patients by split{read}: distinct patient ids. An image without one is counted under "
        "'no patient id', not as a patient: the split cannot group it by patient"
    )


def planted_section(inputs: ReportInputs) -> str:
    """For a set made by `curate synth`: each planted kind against what the pipeline found."""
    if inputs.root is None or not (inputs.root / PLANTED_CSV).is_file():
        return note(f"The dataset root has no {PLANTED_CSV}: it is not a generated set.")
    record = read_record(inputs.root)
    found = planted_vs_found(record, inputs.frame)
    extra = []
    if inputs.has("outliers"):
        planted = set(record.loc[record["kind"] == "outlier", "path"])
        flagged = inputs.frame[flags(inputs.frame["is_outlier"])]
        extra.append(f"{int((~flagged['path'].isin(planted)).sum())} flagged outliers")
    if inputs.has("dedupe"):
        clustered = inputs.frame[inputs.frame["cluster_size"] > 1]
        origin = clustered["path"].map(source_families(record)).fillna(clustered["path"])
        mixed = origin.groupby(clustered["cluster_id"]).nunique()
        extra.append(f"{int((mixed > 1).sum())} duplicate clusters joining unrelated originals")
    unplanted = note("Found without being planted: " + "; ".join(extra) + ".") if extra else ""
    return (
        note(f"From {PLANTED_CSV}: what was planted in the generated set, and what was found.")
        + table(found)
        + unplanted
    )


def cluster_strips(rows: pd.DataFrame, thumbnails: Thumbnails, limit: int) -> str:
    """Thumbnail strips of the ``limit`` largest clusters among ``rows``."""
    sizes = rows.groupby("cluster_id").size().sort_values(ascending=False, kind="stable")
    blocks = []
    for cluster in sizes.index[:limit]:
        members = rows[rows["cluster_id"] == cluster].sort_values(
            ["is_kept", "similarity", "path"], ascending=[False, False, True]
        )
        splits = sorted(members["source_split"].dropna().unique())
        marks = badge("label conflict", "warn") if flags(members["label_conflict"]).any() else ""
        if len(splits) > 1:
            marks += badge("spans source splits", "warn")
        figures = []
        for row in members.to_dict("records"):
            kept = badge("kept", "ok") if row["is_kept"] else badge("copy", "copy")
            match = f"{row['match_kind']} {row['similarity']:.3f}"
            size = f"{row['width']}&times;{row['height']} {escape(row['format'])}"
            lines = [f"{kept} {escape(match)}", label_line(row), size]
            figures.append(figure(thumbnails(row), row["path"], lines))
        blocks.append(
            f'<div class="cluster"><h3>Cluster {int(cluster)} &middot; {len(members)} files '
            f"{marks}</h3>"
            f'<div class="strip">{"".join(figures)}</div></div>'
        )
    return f'<div class="clusters">{"".join(blocks)}</div>'


def label_line(row: dict[str, Any]) -> str:
    """A row's label and source split, as caption HTML."""
    return f"{escape(text(row.get('label')))} &middot; {escape(text(row.get('source_split')))}"


def _counted(values: pd.Series) -> str:
    return ", ".join(f"{k} \u00d7{n}" for k, n in values.fillna("(none)").value_counts().items())
