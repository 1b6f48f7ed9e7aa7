"""Plant each of issue 12's 13 bugs, one at a time, and run the tests that must catch it.

    .venv/bin/python tests/planted_bugs.py

Each bug is planted in a copy of the checkout's files (the checkout itself is never touched); a
bug is caught when its tests fail. Exits non-zero if any bug goes uncaught or no longer applies.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: (bug, file, original text, text with the bug, tests that must fail)
BUGS = [
    (
        "threshold chosen on test",
        "fracture_train/selection.py",
        'result.name == "val")',
        'result.name == "test")',
        [
            "tests/test_selection.py::test_the_threshold_is_chosen_on_val_whatever_the_order_and_never_on_test",
            "tests/test_train.py::test_the_decision_threshold_is_chosen_on_val_predictions_never_test",
        ],
    ),
    (
        "early stopping never triggers",
        "fracture_train/selection.py",
        "self.stopped_early = patience > 0 and self.bad_epochs >= patience",
        "self.stopped_early = False",
        [
            "tests/test_selection.py::test_the_loop_keeps_the_best_epoch_and_stops_after_patience_epochs_without_one",
            "tests/test_train.py::test_early_stopping_stops_after_patience_epochs_without_improvement",
        ],
    ),
    (
        "--drop-outliers ignored",
        "fracture_curate/split.py",
        "    if drop_outliers:",
        "    if False:",
        ["tests/test_split.py::test_outliers_leave_the_split_only_when_asked"],
    ),
    (
        "stratified on shuffled labels",
        "fracture_curate/split.py",
        "folds.split(remaining, labels[remaining], groups[remaining])",
        "folds.split(remaining, np.random.default_rng(0).permutation(labels[remaining]), "
        "groups[remaining])",
        ["tests/test_split.py::test_every_split_holds_each_label_in_proportion"],
    ),
    (
        "--per-class does nothing",
        "fracture_curate/outliers.py",
        "    if config.per_class:",
        "    if False:",
        ["tests/test_outliers.py::test_per_class_scoring_finds_an_image_unlike_its_own_class"],
    ),
    (
        "lossless over lossy ignored",
        "fracture_curate/dedupe.py",
        '"lossy": frame["lossy"].fillna(True).astype(bool),',
        '"lossy": False,',
        ["tests/test_dedupe.py::test_the_kept_copy_is_lossless_over_lossy_then_the_largest"],
    ),
    (
        "parts of other settings mixed in",
        "fracture_curate/embed.py",
        'if same_embedding(read_provenance(part)["params"], identity):',
        "if True:",
        ["tests/test_embed.py::test_leftover_parts_made_with_other_settings_are_never_mixed_in"],
    ),
    (
        "--resize crop as stretch",
        "fracture_curate/model_input.py",
        '    if resize == "stretch":',
        "    if True:",
        ["tests/test_embed.py::test_crop_keeps_the_centre_and_stretch_keeps_the_whole_image"],
    ),
    (
        "table cells not escaped",
        "fracture_curate/report/html.py",
        'cells = "".join(f"<td>{escape(text(value))}</td>" for value in row)',
        'cells = "".join(f"<td>{text(value)}</td>" for value in row)',
        ["tests/test_report.py::test_table_cells_headers_and_captions_are_escaped"],
    ),
    (
        "16-bit minimum dropped",
        "fracture_curate/images.py",
        "low, high = int(pixels.min()), int(pixels.max())",
        "low, high = 0, int(pixels.max())",
        ["tests/test_images.py::test_sixteen_bits_are_windowed_to_their_own_range"],
    ),
    (
        "palette indices as values",
        "fracture_curate/images.py",
        '    if mode == "P":\n',
        '    if mode == "P":\n        return np.asarray(image)\n',
        ["tests/test_images.py::test_a_palette_image_is_read_as_its_colours_not_its_indices"],
    ),
    (
        "std_intensity written as variance",
        "fracture_curate/scan.py",
        '"std_intensity": float(luminance.std(dtype=np.float64)) / full_scale,',
        '"std_intensity": float(luminance.var(dtype=np.float64)) / full_scale**2,',
        ["tests/test_scan.py::test_intensity_statistics_are_fractions_of_full_scale"],
    ),
    (
        "duplicate groups ignored by the split",
        "fracture_curate/split.py",
        'for key in ("cluster_id", "related_group", "patient_id")',
        'for key in ("related_group", "patient_id")',
        [
            "tests/test_split.py::"
            "test_groups_join_rows_through_clusters_related_films_and_patients_transitively",
            "tests/test_split.py::test_a_patient_or_a_duplicate_cluster_never_spans_two_splits",
        ],
    ),
]


def copy_checkout(target: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, copied into ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())


def main() -> int:
    uncaught = 0
    with tempfile.TemporaryDirectory(prefix="planted-") as folder:
        copy = Path(folder)
        copy_checkout(copy)
        for bug, path, original, planted, tests in BUGS:
            file = copy / path
            source = file.read_text()
            if source.count(original) != 1:
                print(f"{bug:<40} NO LONGER APPLIES: {path} changed")
                uncaught += 1
                continue
            file.write_text(source.replace(original, planted))
            for test in tests:
                # ``python -m pytest`` in the copy imports the copy's packages, not the checkout's.
                run = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                    cwd=copy,
                    capture_output=True,
                )
                verdict = "caught" if run.returncode == 1 else f"NOT CAUGHT (exit {run.returncode})"
                uncaught += verdict != "caught"
                print(f"{bug:<40} {verdict:<12} {test}", flush=True)
            file.write_text(source)
    return 1 if uncaught else 0


if __name__ == "__main__":
    sys.exit(main())
