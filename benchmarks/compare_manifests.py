"""Compare two folders of manifests column for column: did a change leave the results alone?

    .venv/bin/python benchmarks/compare_manifests.py BEFORE AFTER [--loose excluded_reason]

For every manifest in both folders (scan, embeddings, dedupe, outliers, split), it compares the
row count and every column both have, values and nulls alike; columns only one side has are
listed. A ``--loose`` column (one that changes on purpose) must only be null in the same rows.
The provenance metadata (run ids, times) is not compared. Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fracture_curate.manifest import manifest_path
from fracture_curate.schema import STAGES


def compare_columns(before: pd.Series, after: pd.Series, loose: bool) -> str | None:
    """Why two columns differ, or None when they are the same."""
    if not before.isna().equals(after.isna()):
        return f"nulls differ in {int((before.isna() != after.isna()).sum())} rows"
    if loose:
        return None
    present = before.notna().to_numpy()
    old, new = before[present].tolist(), after[present].tolist()
    same = [_equal(a, b) for a, b in zip(old, new, strict=True)]
    return None if all(same) else f"values differ in {same.count(False)} rows"


def compare_manifests(before: Path, after: Path, loose: set[str]) -> list[str]:
    """One line per manifest; a line starting with "DIFFERS" for each that does not match."""
    lines = []
    for stage in STAGES:
        old_path, new_path = manifest_path(before, stage), manifest_path(after, stage)
        if not (old_path.exists() and new_path.exists()):
            lines.append(f"{old_path.name}: not in both folders, skipped")
            continue
        old, new = pd.read_parquet(old_path), pd.read_parquet(new_path)
        problems = []
        if len(old) != len(new):
            problems.append(f"{len(old)} rows before, {len(new)} after")
        else:
            for column in [c for c in old.columns if c in new.columns]:
                why = compare_columns(old[column], new[column], column in loose)
                if why:
                    problems.append(f"{column}: {why}")
        added = [c for c in new.columns if c not in old.columns]
        removed = [c for c in old.columns if c not in new.columns]
        summary = f"{old_path.name}: {len(new)} rows, {len(new.columns)} columns"
        summary += f"; added {', '.join(added)}" if added else ""
        summary += f"; removed {', '.join(removed)}" if removed else ""
        if problems:
            lines.append("DIFFERS " + summary + "\n    " + "\n    ".join(problems))
        else:
            lines.append("same    " + summary)
    return lines


def _equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray | list) or isinstance(b, np.ndarray | list):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument(
        "--loose",
        default="",
        help="comma-separated columns that change on purpose: only their nulls are compared",
    )
    args = parser.parse_args()
    lines = compare_manifests(args.before, args.after, set(filter(None, args.loose.split(","))))
    print("\n".join(lines))
    sys.exit(1 if any(line.startswith("DIFFERS") for line in lines) else 0)


if __name__ == "__main__":
    main()
