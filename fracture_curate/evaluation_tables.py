"""The tables of an evaluation's ``metrics.json``, for the ``train`` command line and the report
alike: the headline figures with their 95% intervals, the classes, the confusion matrix and the
studies, each as a titled DataFrame of text cells."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def metrics_frames(metrics: dict[str, Any], split: str) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) of one split's metrics: the summary (with 95% intervals where measured),
    the per-class figures and their intervals, the confusion matrix, and the summary of its
    studies where it was scored per study."""
    found = metrics[split]
    binary = metrics["positive_class"] is not None
    frames = [
        (f"{split} (n={found['n']})", summary_frame(found, binary)),
        (f"{split}: per class (one-vs-rest)", _per_class_frame(found)),
    ]
    if "intervals" in found:
        frames.append(
            (f"{split}: per class, 95% intervals", _per_class_intervals(found["intervals"]))
        )
    frames.append((f"{split}: confusion matrix", _confusion_frame(found)))
    studies = found.get("per_study")
    if studies is not None:
        title = (
            f"{split} per study (n={studies['n']} studies of {studies['images']} images, "
            f"{studies['aggregate']} of their images' probabilities)"
        )
        frames.append((title, summary_frame(studies, binary)))
    return frames


def summary_frame(found: dict[str, Any], binary: bool) -> pd.DataFrame:
    """The headline figures of one evaluation, each with its 95% interval where measured."""
    intervals = found.get("intervals", {})
    rows: dict[str, tuple[Any, Any]] = {
        "accuracy": (found["accuracy"], intervals.get("accuracy")),
        "balanced accuracy": (found["balanced_accuracy"], intervals.get("balanced_accuracy")),
        "AUROC" + ("" if binary else " (macro one-vs-rest)"): (
            found["auroc"],
            intervals.get("auroc"),
        ),
        "Cohen's kappa": (found["cohen_kappa"], intervals.get("cohen_kappa")),
        "ECE (15 bins)": (found["ece"], None),
    }
    for key, label in (("at_threshold", "threshold"), ("at_val_threshold", "val threshold")):
        if key in found:
            rates, bounds = found[key], intervals.get(key, {})
            where = f"@ {label} {number_text(rates['threshold'])}"
            rows[f"sensitivity {where}"] = (rates["sensitivity"], bounds.get("sensitivity"))
            rows[f"specificity {where}"] = (rates["specificity"], bounds.get("specificity"))
    frame = pd.DataFrame({"value": [number_text(value) for value, _ in rows.values()]}, index=rows)
    if intervals:
        frame["95% CI"] = [interval_text(bounds) for _, bounds in rows.values()]
    frame.index.name = "metric"
    return frame


def interval_note(found: dict[str, Any]) -> str | None:
    """How one evaluation's intervals were made, in one line; None without intervals."""
    method = found.get("intervals", {}).get("method")
    if method is None:
        return None
    proportions = (
        "Wilson for proportions (the images are independent), bootstrap for the rest"
        if method["proportions"] == "wilson"
        else "Wilson for proportions on the images over the bootstrap's design effect (the "
        "images of a patient are not independent), bootstrap for the rest"
    )
    if not method.get("bootstrapped", True):
        return (
            f"95% intervals: Wilson for proportions, each of the {method['units']} patients or "
            "groups counted once; too few for a bootstrap, so AUROC, balanced accuracy and "
            "kappa have none (n/a)"
        )
    return (
        f"95% intervals: {proportions} ({method['resamples']:,} resamples of "
        f"{method['units']:,} patients or groups, seed {method['seed']})"
    )


def _per_class_frame(found: dict[str, Any]) -> pd.DataFrame:
    per_class = pd.DataFrame(found["per_class"]).T.drop(columns="recall")  # = sensitivity
    per_class["support"] = per_class["support"].astype(int)
    per_class = per_class.map(lambda v: v if isinstance(v, int) else number_text(v))
    per_class.index.name = "class"
    return per_class


def _per_class_intervals(intervals: dict[str, Any]) -> pd.DataFrame:
    columns = {"precision": "precision", "recall": "sensitivity", "specificity": "specificity"}
    frame = pd.DataFrame(
        {
            shown: [interval_text(bounds[key]) for bounds in intervals["per_class"].values()]
            for key, shown in columns.items()
        },
        index=list(intervals["per_class"]),
    )
    frame.index.name = "class"
    return frame


def _confusion_frame(found: dict[str, Any]) -> pd.DataFrame:
    names = list(found["per_class"])
    confusion = pd.DataFrame(found["confusion_matrix"], index=names, columns=names)
    confusion.index.name = "true \\ predicted"
    return confusion


def interval_text(bounds: list[float] | None) -> str:
    """An interval as "[0.612, 0.915]"; "n/a" when it is undefined, "" when none was measured."""
    if bounds is None:
        return ""
    low, high = bounds
    if any(value is None or math.isnan(value) for value in (low, high)):
        return "n/a"
    return f"[{low:.3f}, {high:.3f}]"


def figure_text(value: float | None, bounds: list[float] | None) -> str:
    """A figure and its interval where one is stated: "0.912 [0.850, 0.957]", or "0.912"."""
    interval = interval_text(bounds)
    return number_text(value) if interval in ("", "n/a") else f"{number_text(value)} {interval}"


def number_text(value: float | None) -> str:
    """A figure as printed: three decimals, "n/a" when undefined."""
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )
