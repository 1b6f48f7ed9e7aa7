"""``curate outliers``: PCA then Isolation Forest over the embeddings, globally or per class.

Outliers are flagged, not dropped: ``curate split --drop-outliers`` excludes them. Per-class
scoring finds images that do not look like their own class, which is often a label error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fracture_curate.manifest import folder_lock, read_stage, write_stage
from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.schema import OUTLIER_COLUMNS, empty_columns
from fracture_curate.vectors import embedding_matrix, unit_rows

MIN_CLASS_SIZE = 20  #: smaller classes are scored with the global model instead
#: Iglewicz and Hoaglin's cut-off for the modified z-score, 0.6745 (x - median) / MAD.
ROBUST_Z = 3.5


@dataclass(frozen=True)
class OutlierConfig:
    """PCA and Isolation Forest settings."""

    components: float = 0.95  #: explained variance to keep (< 1) or a number of components (>= 1)
    #: How scores become flags: "robust" (modified z-score of the score above ROBUST_Z),
    #: "auto" (scikit-learn's fixed offset) or an expected outlier fraction.
    contamination: float | str = "robust"
    per_class: bool = False
    n_estimators: int = 1000  #: more trees steady the scores (300 missed 1 of 8 planted outliers)
    seed: int = 0

    CONSTRAINTS: ClassVar[Constraints] = {
        "components": (Interval(0, 1, closed="neither"), Interval(1, integer=True)),
        "contamination": (Options(("robust", "auto")), Interval(0, 0.5, closed="right")),
        "per_class": Options((True, False)),
        "n_estimators": Interval(1, integer=True),
        "seed": Interval(0, 2**32 - 1, integer=True),
    }

    def __post_init__(self) -> None:
        check_params(self, self.CONSTRAINTS)


def parse_contamination(text: str) -> float | str:
    """``--contamination`` from a command line: a number where the text is one, else the text
    (``robust``, ``auto``); :class:`OutlierConfig` checks the value."""
    try:
        return float(text)
    except ValueError:
        return text


def isolation_scores(vectors: np.ndarray, config: OutlierConfig) -> tuple[np.ndarray, np.ndarray]:
    """Outlier scores (higher is stranger) and flags for rows of ``vectors``.

    Vectors are L2-normalised, reduced by PCA (which centres them), then scored by an Isolation
    Forest. They are not normalised after centring, as dedupe does: that would erase the distance
    from the crowd that makes an outlier.
    """
    # scikit-learn costs most of a second to import: only commands that score pay for it.
    from sklearn.ensemble import IsolationForest

    reduced = principal_components(unit_rows(vectors), config.components, config.seed)
    robust = config.contamination == "robust"
    forest = IsolationForest(
        n_estimators=config.n_estimators,
        contamination="auto" if robust else config.contamination,
        random_state=config.seed,
    ).fit(reduced)
    scores = -forest.score_samples(reduced)
    return scores, robust_flags(scores) if robust else forest.predict(reduced) == -1


def principal_components(vectors: np.ndarray, components: float, seed: int) -> np.ndarray:
    """``vectors`` projected on their first principal components: ``components`` of them (a
    whole number, at most the rows or columns there are), or as many as explain that share of
    the variance (a fraction below 1)."""
    from sklearn.decomposition import PCA

    count = components if components < 1 else min(int(components), *vectors.shape)
    return PCA(n_components=count, random_state=seed).fit_transform(vectors)


def robust_flags(scores: np.ndarray, z: float = ROBUST_Z) -> np.ndarray:
    """Scores far above the crowd: modified z-score (median and MAD) above ``z``.

    Isolation Forest's own "auto" cut-off is a fixed offset that ignores how compressed the
    scores of a given dataset are: on the demo set it flagged 1 of 8 colour photos that all
    ranked in its top 10; this rule flagged all 8 and 0.5% of the clean images.
    """
    median = np.median(scores)
    mad = np.median(np.abs(scores - median))
    if mad == 0:
        return scores > median
    return 0.6745 * (scores - median) / mad > z


def score_outliers(
    frame: pd.DataFrame, embeddings: pd.DataFrame, config: OutlierConfig = OutlierConfig()
) -> pd.DataFrame:
    """The dedupe table plus ``outlier_score`` and ``is_outlier`` for every kept-status row.

    Each distinct file is scored once; duplicate rows share their file's score.
    """
    result = empty_columns(frame, OUTLIER_COLUMNS)
    usable = frame[(frame["status"] == "ok") & frame["image_id"].isin(embeddings["image_id"])]
    files = usable.drop_duplicates("image_id")
    if len(files) < 3:
        return result
    matrix = embedding_matrix(embeddings, files["image_id"])
    scores, flags = isolation_scores(matrix, config)
    if config.per_class:
        labels = files["label"].fillna("(none)").to_numpy()
        sizes = pd.Series(labels).value_counts()
        for label in sizes[sizes >= MIN_CLASS_SIZE].index:
            rows = np.flatnonzero(labels == label)
            scores[rows], flags[rows] = isolation_scores(matrix[rows], config)
    by_file = pd.DataFrame({"score": scores, "flag": flags}, index=files["image_id"].to_numpy())
    result.loc[usable.index, "outlier_score"] = by_file["score"].loc[usable["image_id"]].to_numpy()
    result.loc[usable.index, "is_outlier"] = by_file["flag"].loc[usable["image_id"]].to_numpy()
    return result


def run_outliers(directory: str | Path, config: OutlierConfig = OutlierConfig()) -> pd.DataFrame:
    """Read ``dedupe`` and ``embeddings``, score, write ``outliers.parquet``."""
    with folder_lock(directory):
        frame, provenance = read_stage(directory, "dedupe")
        embeddings, embed_provenance = read_stage(directory, "embed")
        scored = score_outliers(frame, embeddings, config)
        inputs = {"dedupe": provenance, "embed": embed_provenance}
        write_stage(scored, directory, "outliers", params=asdict(config), inputs=inputs)
    return scored
