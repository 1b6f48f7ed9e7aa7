"""The ``serve`` page: a trained run's predictions on uploaded radiographs, each beside its
Grad-CAM explanation, under the run's model card, on a local Flask server.

Uploads stay in memory: each file's bytes are read from the request (never saved; Werkzeug's
spooling of large uploads to a temporary file is turned off) and decoded by content, as
``train predict`` decodes files; nothing is kept between requests. The page is one
self-contained document: inline CSS, images as data URIs, no script, every value escaped.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import IO, Annotated, Any

import flask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import typer

from fracture_curate.dataset_files import shown_path
from fracture_curate.display import clean_errors, console, error_console, warning
from fracture_curate.errors import ConfigError, CurateError
from fracture_curate.evaluation_tables import interval_note, interval_text, number_text
from fracture_curate.manifest import read_manifest, read_provenance
from fracture_curate.report.html import CSP, data_uri, escape, note, table
from fracture_curate.schema import METRICS_FILE
from fracture_curate.split import split_summary
from fracture_train.checkpoint import BEST, CHECKPOINTS, RunConfig, read_json
from fracture_train.explain import Explainer, side_by_side
from fracture_train.options import Device, Factory, Which
from fracture_train.predict import (
    EXPLAIN_BATCH,
    Ensemble,
    ensemble_heatmaps,
    explainers,
    load_ensemble,
    predict_sources,
    predicted_classes,
)

HOST = "127.0.0.1"  #: loopback only: the page has no login
PORT = 8000
MAX_UPLOAD_MB = 50.0  #: a request's whole body (all its files), in MB of 10**6 bytes
BYTES_PER_MB = 1_000_000
FIELD = "images"  #: the form's file field
INTENDED_USE = (
    "Intended use: research and education only. This is not a medical device and must not be "
    "used for diagnosis or any clinical decision."
)
#: What the model card reads of the split manifest a run was trained on.
SPLIT_COLUMNS = ["split", "excluded_reason", "patient_id", "group_id", "label"]
_STYLE = """
.use { margin: 8px 0 4px; padding: 8px 12px; background: #fff4e5; border: 1px solid #f0c36d;
  border-radius: 6px; font-weight: 600; }
.message { padding: 8px 12px; background: #fdecec; border: 1px solid #e7a3a3;
  border-radius: 6px; }
form { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; }
button { padding: 5px 14px; font: inherit; }
.results { display: flex; flex-direction: column; gap: 12px; }
.result { padding: 10px 14px; border: 1px solid var(--line); border-radius: 8px; }
.result h3 { margin: 0 0 6px; word-break: break-all; }
.result dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px;
  margin: 0 0 8px; }
.result dt { color: var(--muted); }
.result dd { margin: 0; font-weight: 600; }
.result .error { color: #a11; }
img.heatmap { display: block; width: 100%; max-width: 640px; image-rendering: pixelated;
  border: 1px solid var(--line); }
"""


class InMemoryRequest(flask.Request):
    """A request whose uploaded files stay in memory, however large (the body is bounded by
    ``MAX_CONTENT_LENGTH``); Werkzeug would spool files over 500 KB to a temporary file."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the client's name for it (text to show, never a path) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class UploadResult:
    """What the page shows of one upload: its prediction and explanation, or why it has none."""

    name: str
    label: str | None = None  #: the predicted class
    probability: float | None = None  #: of the positive class (binary), else of ``label``
    scored_class: str | None = None  #: the class ``probability`` is of
    explanation: bytes | None = None  #: PNG: the image the model saw beside its Grad-CAM
    failure: tuple[str, str] | None = None  #: (status, reason) when the loader cannot read it


def predict_uploads(
    ensemble: Ensemble, explaining: list[Explainer], uploads: Sequence[Upload]
) -> list[UploadResult]:
    """Predict each upload from its bytes, in memory, and explain the predicted class with
    Grad-CAM (the first run's input beside the ensemble's map, as ``train predict --explain``
    draws it); a file the loader cannot read gets its status and reason."""
    prediction = predict_sources(
        ensemble, [upload.data for upload in uploads], keep_images=True, workers=0
    )
    readable = sorted(prediction.images)
    classes = predicted_classes(ensemble, prediction.probs[readable]) if readable else []
    explained: dict[int, bytes] = {}
    for start in range(0, len(readable), EXPLAIN_BATCH):
        chosen = readable[start : start + EXPLAIN_BATCH]
        arrays = [prediction.images[index] for index in chosen]
        maps = ensemble_heatmaps(
            ensemble, explaining, arrays, classes[start : start + EXPLAIN_BATCH]
        )
        for index, items, heatmap in zip(chosen, arrays, maps, strict=True):
            buffer = io.BytesIO()
            side_by_side(items[0], heatmap).save(buffer, format="PNG")
            explained[index] = buffer.getvalue()
    names, positive = ensemble.class_names, ensemble.positive_index
    predicted = dict(zip(readable, map(int, classes), strict=True))
    results = []
    for index, upload in enumerate(uploads):
        if index in prediction.failures:
            results.append(UploadResult(upload.name, failure=prediction.failures[index]))
            continue
        scored = predicted[index] if positive is None else positive
        results.append(
            UploadResult(
                upload.name,
                label=names[predicted[index]],
                probability=float(prediction.probs[index, scored]),
                scored_class=names[scored],
                explanation=explained[index],
            )
        )
    return results


def describe_split(frame: pd.DataFrame) -> pd.DataFrame:
    """The curated set of a split manifest, one row per split and a total: images, images per
    label (``curate split``'s own summary), patients (distinct patient ids) and independent
    groups (split groups; a row without one is a group of its own, as the bootstrap counts
    them). Excluded rows are left out."""
    summary = split_summary(frame).T.rename(columns={"total": "images"})
    summary = summary[["images", *(c for c in summary.columns if c != "images")]]
    kept = frame[frame["split"].notna()]
    parts = {name: kept[kept["split"] == name] for name in summary.index if name != "total"}
    parts["total"] = kept
    summary["patients"] = [parts[name]["patient_id"].nunique(dropna=True) for name in summary.index]
    summary["independent groups"] = [_groups(parts[name]) for name in summary.index]
    summary.index.name, summary.columns.name = "split", None
    return summary


def _groups(frame: pd.DataFrame) -> int:
    """Distinct split groups, each row without a group counted once."""
    groups = frame["group_id"]
    return int(groups.nunique(dropna=True) + groups.isna().sum())


def removed_by_curation(frame: pd.DataFrame) -> pd.Series:
    """How many images curation excluded, per reason (most first)."""
    counts = frame["excluded_reason"].dropna().value_counts()
    counts.index.name = "excluded because"
    return counts.rename("images")


def model_card(ensemble: Ensemble, checkpoint: str = BEST) -> str:
    """The model card as HTML: the models and classes, the threshold and where it came from,
    the curated set they were trained on, their test metrics, and the intended use."""
    models = pd.DataFrame(
        {
            "run": [shown_path(run, False) for run in ensemble.runs],  # no machine folders
            "model": [config.model for config in ensemble.configs],
            "initial weights": [config.initial_weights for config in ensemble.configs],
            "best epoch": [
                (config.selection or {}).get("best_epoch") for config in ensemble.configs
            ],
            "input": [
                f"{config.preprocessing.image_size} px, {config.preprocessing.resize}"
                for config in ensemble.configs
            ],
        }
    )
    positive = ensemble.positive_index
    classes = ", ".join(ensemble.class_names)
    if positive is not None:
        classes += f" (the finding: {ensemble.class_names[positive]})"
    vote = (
        f"<p>An ensemble of {len(ensemble.runs)} runs: their probabilities are averaged.</p>"
        if len(ensemble.runs) > 1
        else ""
    )
    return (
        f'<p class="use">{escape(INTENDED_USE)}</p>'
        f"<h3>Model</h3>{vote}{table(models, index=False)}"
        f"<p>Weights: the {escape(checkpoint)} checkpoint. Classes: {escape(classes)}.</p>"
        f"<h3>Decision threshold</h3><p>{escape(threshold_text(ensemble))}</p>"
        f"<h3>Training set</h3>{training_set_section(ensemble.runs, ensemble.configs)}"
        f"<h3>Test metrics</h3>{metrics_section(ensemble.runs, checkpoint)}"
    )


def threshold_text(ensemble: Ensemble) -> str:
    """How the ensemble decides, and where its threshold came from."""
    positive = ensemble.positive_index
    if positive is None:
        return "The most probable class is predicted (several classes: no threshold)."
    name = ensemble.class_names[positive]
    rule = f"{name} when p({name}) >= {ensemble.threshold:.3f}"
    if ensemble.val_threshold is None:
        return f"{rule}: the default 0.5, no threshold having been chosen on validation."
    targets = sorted(
        {number_text(config.training.get("target_sensitivity")) for config in ensemble.configs}
    )
    source = (
        "chosen on the validation split"
        if len(ensemble.runs) == 1
        else "the mean of the runs' thresholds, each chosen on its validation split"
    )
    return f"{rule}: {source} for a target sensitivity of {' / '.join(targets)}."


def training_set_section(runs: Sequence[Path], configs: Sequence[RunConfig]) -> str:
    """The curated set each run was trained on, read from the split manifest its config names
    (relative paths from the current folder), when that file is still the one trained on."""
    parts, seen = [], set()
    for run, config in zip(runs, configs, strict=True):
        manifest = config.training.get("manifest")
        if manifest in seen:
            continue
        seen.add(manifest)
        parts.append(_training_set(run, config, manifest))
    return "".join(parts)


def _training_set(run: Path, config: RunConfig, manifest: str | None) -> str:
    if manifest is None:
        return note(f"{run}'s config does not name the split manifest it was trained on.")
    path = Path(manifest)
    heading = f"<h4>{escape(shown_path(path, False))}</h4>"
    if not path.exists():
        return heading + note(
            f"{path}, the split manifest {run} was trained on, is no longer there: the training "
            "set cannot be described."
        )
    try:
        if read_provenance(path).get("run_id") != config.manifest_provenance.get("run_id"):
            return heading + note(
                f"{path} was written again after {run} was trained on it: its figures would "
                "not describe the training set."
            )
        present = set(pq.read_schema(path).names)
        frame = read_manifest(path, columns=[name for name in SPLIT_COLUMNS if name in present])
    except CurateError as error:
        return heading + note(f"The training set cannot be described: {error}")
    frame = frame.reindex(columns=SPLIT_COLUMNS)  # a split written by hand may lack some
    removed = removed_by_curation(frame)
    excluded = (
        f"<p>Curation removed {int(removed.sum())} of {len(frame)} images:</p>"
        f"{table(removed.to_frame())}"
        if len(removed)
        else f"<p>Curation removed none of its {len(frame)} images.</p>"
    )
    unknown = (
        note("No row has a patient id: each group is an image with its copies and related films.")
        if frame["patient_id"].isna().all()
        else ""
    )
    return heading + table(describe_split(frame)) + unknown + excluded


def metrics_section(runs: Sequence[Path], checkpoint: str = BEST) -> str:
    """Each run's test metrics from its ``metrics.json``: at its threshold, with the counts
    behind each rate and 95% intervals where they were measured."""
    parts = []
    if len(runs) > 1:
        parts.append(
            note(
                "Measured per run, each at its own threshold; the ensemble itself was not "
                "evaluated."
            )
        )
    if checkpoint != BEST:
        parts.append(note(f"Measured with the best checkpoint; this page uses {checkpoint}."))
    for run in runs:
        heading = f"<h4>{escape(shown_path(run, False))}</h4>" if len(runs) > 1 else ""
        try:
            metrics = read_json(Path(run) / METRICS_FILE)
        except CurateError as error:
            parts.append(heading + note(f"No test metrics: {error}"))
            continue
        found = metrics.get("test")
        if not found:
            parts.append(heading + note(f"{run}/{METRICS_FILE} holds no test metrics."))
            continue
        method = interval_note(found)
        parts.append(
            heading
            + table(metrics_table(found, metrics.get("positive_class") is not None), index=True)
            + (note(method) if method else "")
        )
    return "".join(parts)


def metrics_table(found: dict[str, Any], binary: bool) -> pd.DataFrame:
    """The headline test figures of one ``metrics.json`` split, as text cells with their counts
    and their 95% intervals where measured. Binary, at the validation threshold (else 0.5): the
    sensitivity tp/(tp+fn), specificity tn/(tn+fp) and accuracy (tp+tn)/n; several classes (the
    most probable predicted): each class's sensitivity and the accuracy; then the AUROC."""
    intervals = found.get("intervals", {})
    images = found["n"]
    rows: dict[str, tuple[str, str]] = {"test images": (str(images), "")}
    if binary:
        key = "at_val_threshold" if "at_val_threshold" in found else "at_threshold"
        rates, bounds = found[key], intervals.get(key, {})
        where = f"at {number_text(rates['threshold'])}"
        rows[f"sensitivity {where}"] = (
            _rate(rates["sensitivity"], rates["tp"], rates["tp"] + rates["fn"]),
            interval_text(bounds.get("sensitivity")),
        )
        rows[f"specificity {where}"] = (
            _rate(rates["specificity"], rates["tn"], rates["tn"] + rates["fp"]),
            interval_text(bounds.get("specificity")),
        )
        # metrics.json's accuracy and its interval are at 0.5; the counts give it at this one.
        right = rates["tp"] + rates["tn"]
        rows[f"accuracy {where}"] = (
            _rate(right / images if images else None, right, images),
            interval_text(intervals.get("accuracy")) if key == "at_threshold" else "",
        )
    else:
        confusion = np.asarray(found["confusion_matrix"])
        for index, name in enumerate(found["per_class"]):
            support = int(confusion[index].sum())
            share = confusion[index, index] / support if support else None
            recall = intervals.get("per_class", {}).get(name, {}).get("recall")
            rows[f"sensitivity of {name}"] = (
                _rate(share, int(confusion[index, index]), support),
                interval_text(recall),
            )
        rows["accuracy"] = (
            _rate(found["accuracy"], int(np.trace(confusion)), images),
            interval_text(intervals.get("accuracy")),
        )
    rows["AUROC" + ("" if binary else " (macro one-vs-rest)")] = (
        number_text(found["auroc"]),
        interval_text(intervals.get("auroc")),
    )
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["value", "95% interval"])
    frame.index.name = "metric"
    return frame if intervals else frame.drop(columns="95% interval")


def _rate(value: float | None, hits: int, total: int) -> str:
    """A rate with its counts: "0.720 (18/25)"."""
    return f"{number_text(value)} ({hits}/{total})"


def result_card(result: UploadResult, threshold: float | None) -> str:
    """One upload's card: its name, then its prediction, probability, threshold and explanation,
    or the loader's status and reason."""
    head = f'<article class="result"><h3 class="name">{escape(result.name)}</h3>'
    if result.failure is not None:
        status, reason = result.failure
        return (
            f'{head}<p class="error">This file cannot be read as an image '
            f"({escape(status)}): {escape(reason)}</p></article>"
        )
    shown_threshold = "none: the most probable class" if threshold is None else f"{threshold:.3f}"
    uri = data_uri(result.explanation or b"", "image/png")
    alt = f"{result.name}: the image the model saw, and Grad-CAM of {result.label}"
    return (
        f'{head}<dl><dt>prediction</dt><dd class="label">{escape(result.label)}</dd>'
        f"<dt>p({escape(result.scored_class)})</dt>"
        f'<dd class="probability">{result.probability:.3f}</dd>'
        f'<dt>threshold</dt><dd class="threshold">{escape(shown_threshold)}</dd></dl>'
        f'<img class="heatmap" src="{uri}" alt="{escape(alt)}">'
        f'<p class="note">Left: the image as the model saw it. Right: Grad-CAM of '
        f"{escape(result.label)}, where the prediction rests most (red).</p></article>"
    )


def render_page(
    card: str,
    *,
    results: Sequence[UploadResult] = (),
    threshold: float | None = None,
    message: str = "",
) -> str:
    """The whole page: the upload form, an optional ``message``, one card per result (decided at
    ``threshold``; None for several classes), and the model card (``card``, already HTML)."""
    style = files("fracture_curate.report").joinpath("style.css").read_text(encoding="utf-8")
    shown = f'<p class="message">{escape(message)}</p>' if message else ""
    form = (
        '<form method="post" enctype="multipart/form-data">'
        f'<input type="file" name="{FIELD}" multiple>'
        '<button type="submit">Predict</button></form>'
        '<p class="note">PNG, JPEG, DICOM and the other formats the loader reads (by content, '
        "whatever the name). The files stay in memory and are forgotten after the answer.</p>"
    )
    answers = ""
    if results:
        cards = "".join(result_card(result, threshold) for result in results)
        answers = (
            f'<section id="results"><h2>Results</h2><div class="results">{cards}</div></section>'
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>Fracture classifier</title><style>{style}{_STYLE}</style></head><body>"
        "<header><h1>Fracture classifier</h1>"
        f'<p class="use">{escape(INTENDED_USE)}</p></header><main>'
        f'<section id="upload"><h2>Upload radiographs</h2>{shown}{form}</section>{answers}'
        f'<section id="model-card"><h2>Model card</h2>{card}</section></main></body></html>\n'
    )


def create_app(
    runs: Sequence[Path],
    *,
    device: str = "auto",
    max_upload_mb: float = MAX_UPLOAD_MB,
    checkpoint: str = BEST,
    factory: str | None = None,
) -> flask.Flask:
    """The page's Flask app. The runs (an ensemble when several) and their Grad-CAM explainers
    are loaded once, here; a request's body is limited to ``max_upload_mb`` (413 beyond).

    Args:
        runs: run folders written by ``train``.
        device: auto, cpu, cuda or cuda:N.
        max_upload_mb: the largest request body, all files together, in MB (10**6 bytes).
        checkpoint: "best" or "last".
        factory: the ``package.module:factory`` the runs were trained with, when it was one.
    """
    if not max_upload_mb > 0:
        raise ConfigError(f"the upload limit must be positive, got {max_upload_mb} MB")
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint {checkpoint!r}: choose {' or '.join(CHECKPOINTS)}")
    ensemble = load_ensemble(runs, device=device, checkpoint=checkpoint, factory=factory)
    explaining = explainers(ensemble)
    card = model_card(ensemble, checkpoint)
    threshold = ensemble.threshold if ensemble.positive_index is not None else None
    busy = threading.Lock()  # one request at a time on the models (Grad-CAM hooks them)

    app = flask.Flask(__name__)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * BYTES_PER_MB)

    @app.get("/")
    def index() -> str:
        return render_page(card)

    @app.post("/")
    def predict() -> str:
        sent = [(file.filename, file.read()) for file in flask.request.files.getlist(FIELD)]
        # A form sent without a file chosen still holds one empty part without a name.
        uploads = [Upload(name or "(unnamed)", data) for name, data in sent if name or data]
        if not uploads:
            return render_page(card, message="No file was uploaded: choose one or more images.")
        with busy:
            results = predict_uploads(ensemble, explaining, uploads)
        return render_page(card, results=results, threshold=threshold)

    @app.errorhandler(413)
    def too_large(_: Exception) -> tuple[str, int]:
        message = (
            f"The upload is larger than {max_upload_mb:g} MB, this page's limit: send fewer or "
            "smaller files at a time."
        )
        return render_page(card, message=message), 413

    @app.after_request
    def headers(response: flask.Response) -> flask.Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"  # predictions stay off the disk cache
        return response

    return app


app = typer.Typer(
    help="A local web page that predicts uploaded radiographs with trained runs.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command()
def serve(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders written by `train` (several: an ensemble that averages their "
            "probabilities).",
            metavar="RUN...",
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on; the page has no login.")] = HOST,
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = PORT,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest upload, all files together, in MB.", min=0)
    ] = MAX_UPLOAD_MB,
    device: Device = "auto",
    which: Which = BEST,
    model: Factory = None,
) -> None:
    """Serve a page where radiographs are uploaded and predicted, each with its Grad-CAM
    explanation, under the model card. Research and education only: not a medical device."""
    with clean_errors():
        page = create_app(
            runs, device=device, max_upload_mb=max_upload_mb, checkpoint=which, factory=model
        )
    if host not in ("127.0.0.1", "localhost", "::1"):
        error_console.print(warning(f"anyone who can reach {host}:{port} can use this page"))
    console.print(f"serving on http://{host}:{port}/ (Ctrl-C stops)")
    page.run(host=host, port=port, threaded=False)
