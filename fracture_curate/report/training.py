"""The report's section on a training run: its figures, metrics and per-epoch history."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from fracture_curate.dataset_files import shown_path
from fracture_curate.evaluation_tables import interval_note, metrics_frames
from fracture_curate.report.html import json_tables, note, png_figure, table
from fracture_curate.schema import HISTORY_FILE, METRICS_FILE, SPLITS


def training_section(run: Path | None, *, show_paths: bool = False) -> str:
    """A run folder's PNG figures, its metrics as tables and its per-epoch history; absolute
    paths in the metrics shown by their last part unless ``show_paths``."""
    if run is None:
        return note("No run folder given (`curate report --run RUN_DIR`).")
    run = Path(run)
    if not run.is_dir():
        return note(f"Run folder {shown_path(run, show_paths)} does not exist.")
    parts = [note(f"Run folder: {shown_path(run, show_paths)}")]
    figures = [png_figure(png.read_bytes(), png.name) for png in sorted(run.glob("*.png"))]
    parts.append("".join(figures) or note("No PNG figures in the run folder."))
    metrics = run / METRICS_FILE
    if metrics.is_file():
        try:
            found = json.loads(metrics.read_text())
            shown = found if show_paths else _without_folders(found)
            parts.append("<h3>Metrics</h3>" + _evaluation_tables(shown))
            parts.append("<h3>Everything in metrics.json</h3>" + json_tables(shown, []))
        except json.JSONDecodeError as error:
            parts.append(note(f"{METRICS_FILE} cannot be read: {error}"))
    else:
        parts.append(note(f"No {METRICS_FILE} in the run folder."))
    history = run / HISTORY_FILE
    if history.is_file():
        parts.append(table(pd.read_csv(history), index=False, caption="History (per epoch)"))
    else:
        parts.append(note(f"No {HISTORY_FILE} in the run folder."))
    return "".join(parts)


def _evaluation_tables(metrics: dict[str, Any]) -> str:
    """Each evaluated split's figures with their 95% intervals, per class and per study, and
    its sample predictions (the surest correct and wrong images, drawn in samples_*.png)."""
    parts = []
    for split in (name for name in (*SPLITS, "all") if isinstance(metrics.get(name), dict)):
        try:
            frames = metrics_frames(metrics, split)
        except (KeyError, TypeError, ValueError):  # another version's metrics.json
            continue
        parts.extend(table(frame, caption=title) for title, frame in frames)
        line = interval_note(metrics[split])
        if line:
            parts.append(note(line))
        samples = metrics[split].get("samples")
        if samples:
            caption = f"{split}: the surest correct and wrong predictions (samples_{split}.png)"
            parts.append(table(pd.DataFrame(samples), index=False, caption=caption))
    return "".join(parts)


def _without_folders(value: Any) -> Any:
    """``value`` with every absolute path in it cut to its last part."""
    if isinstance(value, dict):
        return {key: _without_folders(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_folders(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value
