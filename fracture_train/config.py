"""Every option of a training run, with its default and the values it may take."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.runtime import check_device_name
from fracture_train.intervals import DEFAULT_RESAMPLES

#: Values of the options with a fixed set of choices.
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "plateau")
BALANCE = ("none", "weights", "sampler")
AUGMENT_PRESETS = ("none", "light", "standard", "strong")
SELECT_METRICS = ("loss", "accuracy", "balanced_accuracy", "auroc")
CACHE_MODES = ("memory", "disk", "none")
#: How a study's probabilities are made from its images' (``evaluate.per_study``).
STUDY_AGGREGATES = ("mean", "max")
#: Options that may change when a run is resumed; every other option must stay the same.
RESUMABLE = (
    "manifest",
    "out",
    "root",
    "epochs",
    "patience",
    "target_sensitivity",
    "device",
    "amp",
    "channels_last",
    "workers",
    "cache",
    "cache_dir",
    "resume",
    "show_paths",
    "bootstrap",
    "study_aggregate",
    "sync_batchnorm",
)
_FLAG = Options((True, False))


@dataclass(frozen=True)
class Uncertainty:
    """How an evaluation states what its figures are worth."""

    bootstrap: int = DEFAULT_RESAMPLES  #: resamples of the 95% intervals (0: none)
    study_aggregate: str = "mean"  #: how a study's image probabilities make its own (per_study)

    CONSTRAINTS: ClassVar[Constraints] = {
        "bootstrap": Interval(0, integer=True),
        "study_aggregate": Options(STUDY_AGGREGATES),
    }

    def __post_init__(self) -> None:
        check_params(self, self.CONSTRAINTS)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (the CLI's options, one to one)."""

    manifest: Path
    out: Path
    root: Path | None = None
    model: str = "resnet18"
    pretrained: bool = False
    weights: Path | None = None
    image_size: int = 224
    freeze: str = "none"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_every: int = 10
    lr_factor: float = 0.1
    plateau_patience: int = 2
    epochs: int = 10
    batch_size: int = 32  #: per process under torchrun (timm's convention)
    label_smoothing: float = 0.0
    balance: str = "none"
    augment: str = "standard"
    patience: int = 5
    select_metric: str = "loss"
    target_sensitivity: float = 0.95
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int | None = None
    cache: str = "memory"
    cache_dir: Path | None = None
    seed: int = 0
    resume: bool = False
    show_paths: bool = False  #: whole paths in metrics.json (by default only their last part)
    bootstrap: int = Uncertainty.bootstrap  #: see Uncertainty
    study_aggregate: str = Uncertainty.study_aggregate
    sync_batchnorm: bool = False  #: SyncBatchNorm across the processes of a torchrun (CUDA)

    @property
    def uncertainty(self) -> Uncertainty:
        """How the run's evaluation states what its figures are worth."""
        return Uncertainty(self.bootstrap, self.study_aggregate)

    CONSTRAINTS: ClassVar[Constraints] = {
        "pretrained": _FLAG,
        "image_size": Interval(16, integer=True),
        "optimizer": Options(OPTIMIZERS),
        "lr": Interval(0),
        "weight_decay": Interval(0),
        "schedule": Options(SCHEDULES),
        "warmup_epochs": Interval(0),
        "step_every": Interval(1, integer=True),
        "lr_factor": Interval(0),
        "plateau_patience": Interval(0, integer=True),
        "epochs": Interval(1, integer=True),
        "batch_size": Interval(1, integer=True),
        "label_smoothing": Interval(0, 1, closed="left"),
        "balance": Options(BALANCE),
        "augment": Options(AUGMENT_PRESETS),
        "patience": Interval(0, integer=True),
        "select_metric": Options(SELECT_METRICS),
        "target_sensitivity": Interval(0, 1, closed="right"),
        "amp": _FLAG,
        "channels_last": _FLAG,
        "workers": (Options((None,)), Interval(0, integer=True)),
        "cache": Options(CACHE_MODES),
        "seed": Interval(0, integer=True),
        "resume": _FLAG,
        "show_paths": _FLAG,
        "sync_batchnorm": _FLAG,
    } | Uncertainty.CONSTRAINTS

    def __post_init__(self) -> None:
        check_params(self, self.CONSTRAINTS)
        check_device_name(self.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings."""
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }
