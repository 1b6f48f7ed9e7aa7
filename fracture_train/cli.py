"""The ``train`` command line: ``train --manifest ...`` trains; ``train evaluate`` evaluates a
trained run on another curated set. Thin wrappers over :mod:`fracture_train.trainer` and
:mod:`fracture_train.evaluate`.

Training runs on several processes (DistributedDataParallel) when torchrun starts it:
``torchrun --nproc_per_node 4 -m fracture_train.cli --manifest ...`` (or ``torchrun
--no-python --nproc_per_node 4 train --manifest ...``); rank 0 alone prints and writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from fracture_curate.display import (
    ProgressBars,
    clean_errors,
    console,
    error_console,
    interrupted,
    make_progress,
    warning,
)
from fracture_curate.errors import ConfigError, CurateError
from fracture_curate.schema import SPLITS
from fracture_train.checkpoint import BEST
from fracture_train.config import OPTIMIZERS, SELECT_METRICS, TrainConfig
from fracture_train.distributed import is_main_process
from fracture_train.options import Device, Factory, Which

if TYPE_CHECKING:
    import pandas as pd

    from fracture_train.predict import Ensemble

app = typer.Typer(
    help="Fine-tune and evaluate a fracture classifier on a curated split manifest. On several "
    "processes (DistributedDataParallel): torchrun --nproc_per_node N -m fracture_train.cli "
    "--manifest ...; --batch-size is then per process.",
    add_completion=False,
    pretty_exceptions_enable=False,
    subcommand_metavar="[predict|evaluate|compare|leakage ARGS]",
    rich_markup_mode=None,  # click's plain help: wraps to the terminal, never cuts a name
)

Workers = Annotated[
    int,
    typer.Option(
        help="Loader processes (-1: up to 16 on CUDA; on CPU 0 with a cache, else half the "
        "cores). A cache is filled with all cores.",
        min=-1,
    ),
]
Cache = Annotated[
    str,
    typer.Option(
        help="Decoded-image cache: 'memory' (decode once), 'disk' (one .npy per image, "
        "reused by later runs) or 'none' (decode every epoch)."
    ),
]
Bootstrap = Annotated[
    int,
    typer.Option(
        help="Resamples of the bootstrap behind the metrics' 95% intervals: whole patients (split "
        "groups) are resampled, with a fixed seed; 0 turns the intervals off.",
        min=0,
    ),
]
StudyAggregate = Annotated[
    str,
    typer.Option(
        help="Where rows have study ids (MURA, a CSV, DICOM), studies are scored too: a "
        "study's probabilities are its images' 'mean' or those of its most suspicious image "
        "('max')."
    ),
]
Root = Annotated[
    Path | None,
    typer.Option(help="Dataset folder, when it moved since the manifest was written."),
]


@app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    manifest: Annotated[
        Path | None, typer.Option(help="split.parquet written by `curate split`.", dir_okay=False)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default runs/<model>-<date>-<time>).", file_okay=False),
    ] = None,
    root: Root = None,
    model: Annotated[
        str,
        typer.Option(
            help="A timm model name (resnet18, mobilenetv2_100, efficientnet_b0, densenet121, "
            "resnet50, ...) or package.module:factory, factory(num_classes) -> nn.Module "
            "(e.g. fracture_train.models:two_block_cnn)."
        ),
    ] = TrainConfig.model,
    pretrained: Annotated[
        bool,
        typer.Option(
            help="Start from offline ImageNet weights (an error when the model has none)."
        ),
    ] = TrainConfig.pretrained,
    weights: Annotated[
        Path | None,
        typer.Option(help="Start from a checkpoint: .safetensors, .pth or a run folder."),
    ] = None,
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = TrainConfig.image_size,
    freeze: Annotated[
        str,
        typer.Option(
            help="'none', 'backbone' (train the head only) or N (freeze the first N stages)."
        ),
    ] = TrainConfig.freeze,
    optimizer: Annotated[
        str, typer.Option(help=", ".join(OPTIMIZERS) + " (sgd: with Nesterov momentum).")
    ] = TrainConfig.optimizer,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = TrainConfig.lr,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = TrainConfig.weight_decay,
    schedule: Annotated[
        str,
        typer.Option(
            help="'cosine' (per step, after --warmup-epochs), 'step' (x --lr-factor every "
            "--step-every epochs) or 'plateau' (x --lr-factor when val loss stalls for "
            "--plateau-patience epochs)."
        ),
    ] = TrainConfig.schedule,
    warmup_epochs: Annotated[
        float, typer.Option(help="Linear warmup length for cosine.")
    ] = TrainConfig.warmup_epochs,
    step_every: Annotated[
        int, typer.Option(help="Epochs between step decays.")
    ] = TrainConfig.step_every,
    lr_factor: Annotated[
        float, typer.Option(help="LR multiplier of step and plateau.")
    ] = TrainConfig.lr_factor,
    plateau_patience: Annotated[
        int, typer.Option(help="Epochs without val-loss improvement before a plateau cut.")
    ] = TrainConfig.plateau_patience,
    epochs: Annotated[
        int, typer.Option(help="Epochs to train (in total, when resuming).")
    ] = TrainConfig.epochs,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Images per batch, per process: under torchrun, N processes take N x this "
            "per step (as timm counts)."
        ),
    ] = TrainConfig.batch_size,
    label_smoothing: Annotated[
        float, typer.Option(help="Label smoothing.")
    ] = TrainConfig.label_smoothing,
    balance: Annotated[
        str,
        typer.Option(
            help="Class imbalance: 'none', 'weights' (inverse-frequency loss weights) or "
            "'sampler' (classes drawn evenly)."
        ),
    ] = TrainConfig.balance,
    augment: Annotated[
        str,
        typer.Option(
            help="'none'; 'light' (flips, small rotations, brightness/contrast); 'standard' "
            "(+ random resized crop); 'strong' (+ vertical flips, zoom/shift)."
        ),
    ] = TrainConfig.augment,
    patience: Annotated[
        int, typer.Option(help="Early stopping: epochs without improvement (0: off).")
    ] = TrainConfig.patience,
    select_metric: Annotated[
        str,
        typer.Option(
            help="Val metric that picks the best checkpoint: " + ", ".join(SELECT_METRICS) + "."
        ),
    ] = TrainConfig.select_metric,
    target_sensitivity: Annotated[
        float,
        typer.Option(help="Sensitivity the val-chosen threshold must reach (binary tasks)."),
    ] = TrainConfig.target_sensitivity,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or cuda:N (bf16 AMP on CUDA).")
    ] = TrainConfig.device,
    amp: Annotated[bool, typer.Option(help="bf16 autocast (CUDA only).")] = TrainConfig.amp,
    channels_last: Annotated[
        bool, typer.Option(help="channels_last memory (faster on CPU and GPU).")
    ] = TrainConfig.channels_last,
    workers: Workers = -1,
    cache: Cache = TrainConfig.cache,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Folder of --cache disk (default RUN/cache).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = TrainConfig.seed,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out after its last finished epoch.")
    ] = TrainConfig.resume,
    show_paths: Annotated[
        bool,
        typer.Option(
            help="Write whole paths into metrics.json (by default only the last part of each, "
            "so a shared file leaks no folders)."
        ),
    ] = TrainConfig.show_paths,
    bootstrap: Bootstrap = TrainConfig.bootstrap,
    study_aggregate: StudyAggregate = TrainConfig.study_aggregate,
    sync_batchnorm: Annotated[
        bool,
        typer.Option(
            help="Under torchrun, batch norm over every process's share of a batch "
            "(SyncBatchNorm; CUDA only). Alone it changes nothing."
        ),
    ] = TrainConfig.sync_batchnorm,
) -> None:
    """Train on the train rows of MANIFEST, select on val, report on test.

    Writes to the run folder: best/last checkpoints (safetensors) and config.json, metrics.json,
    history.csv, predictions.parquet and PNG figures. Under torchrun (torchrun --nproc_per_node
    N -m fracture_train.cli ...) N processes train together; rank 0 writes and prints.
    """
    if ctx.invoked_subcommand is not None:
        return
    from fracture_train.display import EpochPrinter
    from fracture_train.trainer import train_run  # torch loads only when needed

    main = is_main_process()
    with clean_errors() if main else _quiet_errors():
        if manifest is None:
            raise ConfigError("missing --manifest (see `train --help`)")
        if out is None:
            if resume:
                raise ConfigError("--resume needs --out RUN_FOLDER")
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', model)}-{stamp}"
        config = TrainConfig(
            manifest=manifest,
            out=out,
            root=root,
            model=model,
            pretrained=pretrained,
            weights=weights,
            image_size=image_size,
            freeze=freeze,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            schedule=schedule,
            warmup_epochs=warmup_epochs,
            step_every=step_every,
            lr_factor=lr_factor,
            plateau_patience=plateau_patience,
            epochs=epochs,
            batch_size=batch_size,
            label_smoothing=label_smoothing,
            balance=balance,
            augment=augment,
            patience=patience,
            select_metric=select_metric,
            target_sensitivity=target_sensitivity,
            device=device,
            amp=amp,
            channels_last=channels_last,
            workers=None if workers < 0 else workers,
            cache=cache,
            cache_dir=cache_dir,
            seed=seed,
            resume=resume,
            show_paths=show_paths,
            bootstrap=bootstrap,
            study_aggregate=study_aggregate,
            sync_batchnorm=sync_batchnorm,
        )
    # Under torchrun every process checked the same options above; rank 0 alone said what was
    # wrong. From here on each process speaks for itself (rank 0 alone unless it fails).
    with clean_errors() if main else _rank_errors():
        try:
            with make_progress("img") if main else nullcontext() as progress:
                result = train_run(
                    config,
                    on_progress=ProgressBars(progress) if main else None,
                    on_epoch=EpochPrinter(progress.console, epochs) if main else None,
                    log=progress.console.print if main else lambda _: None,
                )
        except KeyboardInterrupt:
            if main:
                error_console.print(
                    interrupted(f"continue with the same command plus --resume --out {out}")
                )
            raise typer.Exit(code=130) from None
    if not main:
        return
    _print_metrics(result.metrics, ("val", "test"))
    selection = result.metrics["selection"]
    console.print(
        f"best epoch {selection['best_epoch']} of {selection['epochs_run']} "
        f"(val {selection['metric']}); run folder: {result.out}"
    )


@app.command()
def evaluate(
    checkpoint: Annotated[
        list[Path],
        typer.Option(
            help="Run folder written by `train`; give it several times for an ensemble (soft "
            "voting: the runs' probabilities averaged).",
            exists=True,
            file_okay=False,
        ),
    ],
    manifest: Annotated[
        Path, typer.Option(help="A curated split.parquet of another dataset.", dir_okay=False)
    ],
    root: Root = None,
    split: Annotated[
        str,
        typer.Option(
            help="Rows to evaluate: all (every row with a split), " + ", ".join(SPLITS) + "."
        ),
    ] = "all",
    which: Which = BEST,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Evaluation folder (default RUN/evaluations/<dataset>-<split>).", file_okay=False
        ),
    ] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 64,
    workers: Workers = -1,
    cache: Cache = "memory",
    model: Factory = None,
    show_paths: Annotated[
        bool, typer.Option(help="Write whole paths into metrics.json (by default last parts).")
    ] = False,
    bootstrap: Bootstrap = TrainConfig.bootstrap,
    study_aggregate: StudyAggregate = TrainConfig.study_aggregate,
) -> None:
    """Evaluate a trained run (or an ensemble of runs) on another curated set (cross-dataset),
    as training evaluates."""
    from fracture_train.config import Uncertainty
    from fracture_train.evaluate import evaluate_run

    with clean_errors(), make_progress("img") as progress:
        uncertainty = Uncertainty(bootstrap, study_aggregate)
        result = evaluate_run(
            checkpoint,
            manifest,
            root=root,
            split=None if split == "all" else split,
            checkpoint=which,
            out=out,
            device=device,
            batch_size=batch_size,
            workers=None if workers < 0 else workers,
            cache=cache,
            model=model,
            show_paths=show_paths,
            uncertainty=uncertainty,
            on_progress=ProgressBars(progress),
        )
    if result.metrics["label_map"]:
        mapping = ", ".join(f"{a} -> {b}" for a, b in result.metrics["label_map"].items())
        console.print(f"labels mapped onto the model's classes: {mapping}")
    _print_metrics(result.metrics, (split,))
    console.print(f"evaluation folder: {result.out}")


@app.command()
def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders trained on one split.parquet.", file_okay=False, metavar="RUN"
        ),
    ],
    bootstrap: Bootstrap = TrainConfig.bootstrap,
) -> None:
    """Compare runs on their common test split: figures with 95% intervals, and each run's
    AUROC minus the first run's, by a paired bootstrap. Runs tested on other images are
    refused."""
    from fracture_curate.display import frame_table
    from fracture_train.compare import compare_runs

    with clean_errors():
        table, note = compare_runs(runs, bootstrap)
    console.print(frame_table(table, "Runs compared on one test split"))
    console.print(note, highlight=False)


@app.command()
def leakage(
    leaky: Annotated[
        Path,
        typer.Argument(
            help="Run trained on the source's own split, copies kept (`curate split "
            "--keep-source-splits --keep-duplicates`).",
            file_okay=False,
            metavar="LEAKY_RUN",
        ),
    ],
    curated: Annotated[
        Path,
        typer.Argument(
            help="The same model trained on the curated split.",
            file_okay=False,
            metavar="CURATED_RUN",
        ),
    ],
    bootstrap: Bootstrap = TrainConfig.bootstrap,
    show: Annotated[int, typer.Option(help="Copies to list.", min=0)] = 20,
) -> None:
    """Show what leakage does: both runs' test figures side by side (each with its own 95%
    intervals), and the leaky test images that are copies of its training images."""
    from fracture_curate.display import frame_table
    from fracture_train.leakage import leakage_report

    with clean_errors():
        report = leakage_report(leaky, curated, bootstrap)
    console.print(
        frame_table(report.figures, "The same model, tested on a leaky and a curated split")
    )
    copies = report.copies
    if copies.empty:
        console.print("the leaky test split holds no copy of a train image")
    else:
        right = int(copies["predicted_right"].sum())
        console.print(
            f"{len(copies)} leaky test image(s) are copies of train images; the model got "
            f"{right} of them right (it has seen them, labels included)"
        )
        console.print(
            frame_table(copies.set_index("path").head(show), "Test images copied from train")
        )
        console.print(frame_table(report.memorised, "The leaky run on its copied test images"))
    console.print(
        f"the curated test split holds {report.curated_copies} copy(ies) of its train images"
    )


@app.command()
def predict(
    arguments: Annotated[
        list[Path],
        typer.Argument(
            help="One or several run folders written by `train` (several: an ensemble that "
            "averages their probabilities), then the image files and folders to predict "
            "(folders are walked; every format the loader reads, DICOM included).",
            metavar="RUN... PATH",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Also write the table as CSV or Parquet (by the file's suffix).", dir_okay=False
        ),
    ] = None,
    explain: Annotated[
        Path | None,
        typer.Option(
            help="Write a Grad-CAM overlay of the predicted class beside each image into this "
            "folder (<file name>-<image id>.png).",
            file_okay=False,
        ),
    ] = None,
    which: Which = BEST,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 32,
    workers: Annotated[
        int,
        typer.Option(
            help="Decoding processes (-1: one per core on CUDA, none on a CPU, where the model "
            "needs the cores).",
            min=-1,
        ),
    ] = -1,
    model: Factory = None,
) -> None:
    """Predict new radiographs with a trained run: a row per file with each class's probability
    and the label at the run's validation-chosen threshold and at 0.5. A file that cannot be
    read is a row with its reason."""
    from fracture_curate.display import frame_table
    from fracture_train.predict import (
        load_ensemble,
        predict_files,
        split_arguments,
        write_explanations,
        write_predictions,
    )

    with clean_errors():
        runs, paths = split_arguments(arguments)
        ensemble = load_ensemble(runs, device=device, checkpoint=which, factory=model)
        with make_progress("img") as progress:
            frame, prediction = predict_files(
                ensemble,
                paths,
                batch_size=batch_size,
                workers=None if workers < 0 else workers,
                on_progress=ProgressBars(progress),
            )
            if explain is not None:
                frame["explanation"] = write_explanations(
                    ensemble, frame, prediction, explain, on_progress=ProgressBars(progress)
                )
        if out is not None:
            write_predictions(frame, out)
    console.print(frame_table(*_shown_predictions(frame, ensemble)))
    failed = int((frame["status"] != "ok").sum())
    if failed:
        console.print(warning(f"{failed} file(s) could not be read as images (see reason)"))
    if out is not None:
        console.print(f"wrote {out}")
    if explain is not None:
        console.print(f"explanations in {explain}")


def _shown_predictions(frame: pd.DataFrame, ensemble: Ensemble) -> tuple[pd.DataFrame, str]:
    """The columns a screen has room for (the file, its label or why it has none, the
    probability the label was decided on) and a title naming the threshold."""
    import pandas as pd

    from fracture_curate.schema import probability_column

    shown = frame.set_index("path")
    positive = ensemble.positive_index
    if positive is not None:
        name = ensemble.class_names[positive]
        column = f"p({name})"
        probability = shown[probability_column(name)]
        title = f"Predictions: {name} when p({name}) >= {ensemble.threshold:.3f}"
        if ensemble.val_threshold is not None:
            title += " (chosen on validation)"
    else:
        column = "p(predicted)"
        probability = shown[[probability_column(n) for n in ensemble.class_names]].max(axis=1)
        title = "Predictions: the most probable class"
    reasons = shown["status"] + ": " + shown["reason"]
    table = pd.DataFrame(
        {
            "predicted": shown["predicted_label"].fillna(reasons),
            column: probability.map(lambda v: "" if v != v else f"{v:.3f}"),
        },
        index=shown.index,
    )
    return table, title


@contextmanager
def _quiet_errors() -> Iterator[None]:
    """Under torchrun, a process other than rank 0 exits as :func:`clean_errors` would, without
    repeating rank 0's message."""
    try:
        yield
    except CurateError as error:
        raise typer.Exit(code=2) from error


@contextmanager
def _rank_errors() -> Iterator[None]:
    """Under torchrun, :func:`clean_errors` for a process other than rank 0: its message says
    which process failed (it may be the only one that did)."""
    from fracture_train.distributed import launched

    try:
        yield
    except (CurateError, OSError) as error:
        error_console.print(
            Text.assemble(("error:", "bold red"), f" {error} (rank {launched().rank})")
        )
        raise typer.Exit(code=2) from error


def _print_metrics(metrics: dict, splits: tuple[str, ...]) -> None:
    from fracture_curate.evaluation_tables import interval_note
    from fracture_train.display import absent_class_lines, metrics_tables

    for split in splits:
        for table in metrics_tables(metrics, split):
            console.print(table)
        note = interval_note(metrics[split])
        if note:
            console.print(note, highlight=False)
        for line in absent_class_lines(metrics, split):
            console.print(warning(line))


if __name__ == "__main__":  # torchrun -m fracture_train.cli
    app()
