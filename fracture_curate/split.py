"""``curate split``: stratified, group-aware train/val/test; no duplicate cluster, related group
or patient straddles two splits."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fracture_curate.dataset_files import recheck
from fracture_curate.errors import ConfigError, CurateError
from fracture_curate.graph import chain_pairs, connected_groups
from fracture_curate.manifest import dataset_root, folder_lock, read_stage, write_stage
from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.schema import SPLIT_COLUMNS, SPLITS, empty_columns, flags

_FLAG = Options((True, False))


class SplitError(CurateError):
    """Data that cannot give the requested split (too few groups or images per label)."""


#: How far the three fractions may sum from 1 (rounding in what a user types: 0.7/0.15/0.15);
#: a power of two, about 1e-6, so that the cut-off itself is exact.
FRACTION_TOLERANCE = 2.0**-20


@dataclass(frozen=True)
class SplitConfig:
    """Fractions (each above 0, summing to 1), seed and what to exclude."""

    train: float = 0.70
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    drop_outliers: bool = False
    keep_source_splits: bool = False
    #: Every copy of a duplicate cluster takes part (only to measure what leakage does: with
    #: ``keep_source_splits``, the source's own split as it stands).
    keep_duplicates: bool = False

    CONSTRAINTS: ClassVar[Constraints] = {
        "train": Interval(0, 1, closed="neither"),
        "val": Interval(0, 1, closed="neither"),
        "test": Interval(0, 1, closed="neither"),
        "seed": Interval(0, 2**32 - 1, integer=True),
        "drop_outliers": _FLAG,
        "keep_source_splits": _FLAG,
        "keep_duplicates": _FLAG,
    }

    def __post_init__(self) -> None:
        check_params(self, self.CONSTRAINTS)
        total = self.train + self.val + self.test
        if abs(total - 1) > FRACTION_TOLERANCE:
            raise ConfigError(
                f"--train {self.train:g} --val {self.val:g} --test {self.test:g} sum to "
                f"{total:g}; the fractions must sum to 1 (e.g. --train 0.7 --val 0.15 --test 0.15)"
            )


def exclusions(
    frame: pd.DataFrame, drop_outliers: bool, keep_duplicates: bool = False
) -> pd.DataFrame:
    """Why each row is left out of the split: ``excluded_reason``, one of
    :data:`~fracture_curate.schema.EXCLUSION_KINDS`, and ``excluded_detail``; both null for rows
    that take part. The first kind that applies wins; ``keep_duplicates`` leaves copies in."""
    reasons = pd.Series(pd.NA, index=frame.index, dtype="string")
    details = pd.Series(pd.NA, index=frame.index, dtype="string")

    def mark(mask: pd.Series, kind: pd.Series | str, detail: pd.Series | str) -> None:
        mask = flags(mask) & reasons.isna()
        reasons[mask], details[mask] = kind, detail  # a Series is aligned on the index

    mark(frame["status"] != "ok", frame["status"], frame["reason"])
    mark(frame["label"].isna(), "no_label", "the layout or labels CSV gives this file no label")
    mark(frame["label_conflict"], "label_conflict", _conflict_details(frame))
    if not keep_duplicates:
        mark(~frame["is_kept"], "duplicate", "copy of " + _kept_paths(frame))
    if drop_outliers:
        reasons_given = frame["outlier_reason"].fillna("curate outliers")  # a flag set by hand
        mark(frame["is_outlier"], "outlier", "flagged by " + reasons_given)
    return pd.DataFrame({"excluded_reason": reasons, "excluded_detail": details})


def _conflict_details(frame: pd.DataFrame) -> pd.Series:
    """For each row of a label-conflict cluster, the labels its cluster holds: "labels
    fractured, not fractured in one duplicate cluster"."""
    conflicted = frame[frame["label_conflict"]]  # a null flag selects nothing
    labels = conflicted.groupby("cluster_id")["label"].agg(
        lambda found: ", ".join(sorted(found.dropna().unique()))
    )
    details = pd.Series(pd.NA, index=frame.index, dtype="string")
    details[conflicted.index] = "labels " + conflicted["cluster_id"].map(labels).astype(str)
    return details + " in one duplicate cluster"


def _kept_paths(frame: pd.DataFrame) -> pd.Series:
    """For each copy not kept, the path of the copy kept for its cluster."""
    kept = frame[frame["is_kept"]].drop_duplicates("cluster_id")
    return frame["cluster_id"].map(kept.set_index("cluster_id")["path"]).astype("string")


def leakage_groups(frame: pd.DataFrame) -> np.ndarray:
    """Group ids joining rows that share a duplicate cluster, a related group (other films of
    one anatomy) or a patient, transitively."""
    links = [chain_pairs(frame[key]) for key in ("cluster_id", "related_group", "patient_id")]
    left = np.concatenate([pair[0] for pair in links])
    right = np.concatenate([pair[1] for pair in links])
    return connected_groups(len(frame), left, right)[1]


def assign_splits(labels: np.ndarray, groups: np.ndarray, config: SplitConfig) -> np.ndarray:
    """Stratified by label, grouped by ``groups``: 'train', 'val' or 'test' for each row.

    The test fold is one of ``round(1 / test)`` StratifiedGroupKFold folds, then val one of
    ``round((train + val) / val)`` folds of the rest, so fractions are close to, not exactly,
    the ones asked for.
    """
    from sklearn.model_selection import StratifiedGroupKFold  # slow to import: only when used

    total = config.train + config.val + config.test
    assigned = np.full(len(labels), "train", dtype=object)
    remaining = np.arange(len(labels))
    for name, share in (("test", config.test / total), ("val", config.val / (total - config.test))):
        if share <= 0 or len(remaining) == 0:
            continue
        # 1 / share folds; capped, since an absurdly small share would ask for more folds than
        # a float can count (and is refused below anyway: there are never that many groups)
        n_splits = max(2, round(min(1 / share, len(remaining) + 1)))
        n_groups = len(np.unique(groups[remaining]))
        if n_groups < n_splits:
            raise SplitError(
                f"only {n_groups} independent groups (patients or duplicate clusters) to split; "
                f"a {share:.2g} {name} share needs at least {n_splits}"
            )
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=config.seed)
        with warnings.catch_warnings():  # classes smaller than n_splits are expected in small sets
            warnings.simplefilter("ignore", UserWarning)
            try:
                _, held_out = next(folds.split(remaining, labels[remaining], groups[remaining]))
            except ValueError as error:  # every class smaller than the number of folds
                raise SplitError(
                    f"too few images per label for a {share:.0%} {name} share ({error})"
                ) from error
        assigned[remaining[held_out]] = name
        remaining = np.delete(remaining, held_out)
    return assigned


def cover_every_label(assigned: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``assigned`` with whole groups moved so that each split holds every label, where the
    label has a group to spare.

    A split without a label takes a group of it from the split holding the most groups of that
    label, and only a group whose every label keeps another group there, so a move never opens
    a gap elsewhere; the smallest such group moves. A label with fewer groups than splits leaves
    a split without it (see :func:`missing_labels`).
    """
    assigned = assigned.copy()
    rows = pd.DataFrame({"split": assigned, "label": labels, "group": groups})
    group_labels = rows.groupby("group")["label"].agg(frozenset)
    group_size = rows.groupby("group").size()
    group_split = rows.groupby("group")["split"].first()
    moved = True
    while moved:
        moved = False
        held = {
            split: Counter(label for g in found.index for label in group_labels[g])
            for split, found in group_split.groupby(group_split)
        }
        for split in held:
            for label in sorted(set(labels) - set(held[split])):
                donor_groups = [
                    (-held[donor][label], int(group_size[g]), g)
                    for donor, found in group_split.groupby(group_split)
                    if donor != split
                    for g in found.index
                    if label in group_labels[g]
                    and all(held[donor][other] >= 2 for other in group_labels[g])
                ]
                if donor_groups:
                    group = min(donor_groups)[2]
                    group_split[group] = split
                    moved = True
                    break
            if moved:
                break
    return group_split.reindex(groups).to_numpy(dtype=object)


def missing_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """The labels a split lacks, of those taking part in the split, with how many independent
    groups (patients, duplicate clusters, related films) the label has in all: one row per
    split and missing label; empty when every split holds every label."""
    used = frame[frame["split"].notna()]
    groups = used.groupby("label")["group_id"].nunique()
    gaps = [
        {"split": split, "label": label, "groups": int(groups[label])}
        for split in SPLITS
        if split in set(used["split"])
        for label in sorted(groups.index)
        if not ((used["split"] == split) & (used["label"] == label)).any()
    ]
    return pd.DataFrame(gaps, columns=["split", "label", "groups"])


def missing_label_lines(frame: pd.DataFrame) -> list[str]:
    """One warning per split that lacks a label: "test holds no 'positive' image: the label has
    2 independent groups (patients, clusters, related films), too few for every split"."""
    return [
        f"{gap.split} holds no {gap.label!r} image: the label has {gap.groups} independent "
        "group(s) (patients, duplicate clusters, related films), too few for every split; "
        f"metrics that need both classes (AUROC, sensitivity) cannot be measured on {gap.split}"
        for gap in missing_labels(frame).itertuples()
    ]


def make_split(frame: pd.DataFrame, config: SplitConfig = SplitConfig()) -> pd.DataFrame:
    """The outliers table plus ``group_id``, ``split`` and ``excluded_reason``."""
    result = empty_columns(frame, SPLIT_COLUMNS)
    excluded = exclusions(frame, config.drop_outliers, config.keep_duplicates)
    result[excluded.columns] = excluded
    eligible = result[result["excluded_reason"].isna()]
    if eligible.empty:
        raise SplitError("no row is eligible for the split (see excluded_reason)")
    groups = leakage_groups(eligible.reset_index(drop=True))
    labels = eligible["label"].to_numpy(dtype=object)
    splits = np.full(len(eligible), None, dtype=object)
    todo = np.ones(len(eligible), dtype=bool)
    if config.keep_source_splits:
        known = eligible["source_split"].isin(SPLITS).to_numpy()  # null or another name: not
        splits[known] = eligible.loc[known, "source_split"].to_numpy(dtype=object)
        todo = ~known
    if todo.any():
        fresh = assign_splits(labels[todo], groups[todo], config)
        splits[todo] = cover_every_label(fresh, labels[todo], groups[todo])
    result.loc[eligible.index, "group_id"] = groups
    result.loc[eligible.index, "split"] = splits
    return result


def split_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Label by split counts of the rows that take part, with totals."""
    used = frame[frame["split"].notna()]
    table = pd.crosstab(used["label"], used["split"], margins=True, margins_name="total")
    return table.reindex(columns=[*[s for s in SPLITS if s in table.columns], "total"])


def straddling_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Groups (shared duplicate cluster, related group or patient) whose rows sit in more than
    one split."""
    used = frame[frame["split"].notna()]
    spread = used.groupby("group_id")["split"].agg(["nunique", lambda s: ", ".join(sorted(set(s)))])
    spread.columns = ["n_splits", "splits"]
    return spread[spread["n_splits"] > 1]


def run_split(
    directory: str | Path, config: SplitConfig = SplitConfig(), *, root: str | Path | None = None
) -> pd.DataFrame:
    """Read ``outliers``, split, write ``split.parquet``.

    Rows whose file is gone or resized since the scan get that status first and take no part;
    ``root`` overrides the dataset folder recorded in the scan (for a dataset that moved).
    """
    with folder_lock(directory):
        frame, provenance = read_stage(directory, "outliers")
        root = dataset_root(provenance, root)
        result = make_split(recheck(frame, root), config)
        params = asdict(config) | {"root": str(root)}
        write_stage(result, directory, "split", params=params, inputs={"outliers": provenance})
    return result
