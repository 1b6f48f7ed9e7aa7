"""The run folder's files, written atomically and read without pickle.

``best.safetensors`` / ``last.safetensors`` hold model tensors (a plain state dict of the timm or
user model); ``config.json`` says how to rebuild the model and feed it; ``resume.safetensors``
holds the optimizer's tensors, with the optimizer's other state, the schedule and the loop's
state as JSON in its metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from fracture_curate import __version__
from fracture_curate.errors import CurateError
from fracture_curate.manifest import atomic_path
from fracture_curate.model_input import Preprocessing
from fracture_train.models import BUILT_IN_FACTORIES, ModelError, create_model

CONFIG_FILE = "config.json"
BEST = "best"
LAST = "last"
CHECKPOINTS = (BEST, LAST)  #: the weights a run folder keeps
RESUME_FILE = "resume.safetensors"
FORMAT = "fracture-train/1"
_STATE_KEY = "fracture_train"


class CheckpointError(CurateError):
    """A run folder or checkpoint that cannot be read or does not match."""


@dataclass(frozen=True)
class RunConfig:
    """What a run folder's ``config.json`` holds: how to rebuild the model and feed it, its
    classes, and how it was trained (in the manner of timm's ``PretrainedCfg``)."""

    model: str  #: a timm name or package.module:factory
    num_outputs: int  #: 1 for a binary task (one logit), else one per class
    class_names: list[str]  #: in model order; binary: [negative, positive]
    positive_class: str | None  #: the finding class of a binary task
    preprocessing: Preprocessing
    initial_weights: str  #: where the weights training started from came from
    training: dict[str, Any]  #: the TrainConfig, JSON-ready
    manifest_provenance: dict[str, Any]  #: of the split manifest trained on
    val_threshold: float | None = None  #: chosen on val for the target sensitivity (binary)
    selection: dict[str, Any] | None = None  #: the best epoch and how it was chosen
    format: str = FORMAT
    tool_version: str = __version__

    @property
    def task(self) -> str:
        """The task: "binary" (one positive class) or "multiclass"."""
        return "multiclass" if self.positive_class is None else "binary"

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``config.json`` (format and version first)."""
        values = asdict(self)
        header = {key: values.pop(key) for key in ("format", "tool_version")}
        return header | values | {"task": self.task}

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> RunConfig:
        """A run config read back from JSON; a CheckpointError when it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a fracture-train run config")
        known = {item.name for item in fields(cls)}
        try:
            values = {key: value for key, value in data.items() if key in known}
            values["preprocessing"] = Preprocessing(
                **{  # JSON has lists where the dataclass has tuples
                    key: tuple(value) if isinstance(value, list) else value
                    for key, value in data["preprocessing"].items()
                }
            )
            return cls(**values)
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{source} lacks or garbles a field: {error}") from error


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The ``config.json`` of a run folder."""
    path = Path(run_dir) / CONFIG_FILE
    return RunConfig.from_json(read_json(path), path)


def write_run_config(run_dir: str | Path, config: RunConfig) -> Path:
    """Write a run folder's ``config.json`` atomically."""
    return write_json(Path(run_dir) / CONFIG_FILE, config.to_json())


def weights_path(run_dir: str | Path, which: str = BEST) -> Path:
    """``RUN/best.safetensors`` or ``RUN/last.safetensors``."""
    return Path(run_dir) / f"{which}.safetensors"


def to_json(data: Any) -> Any:
    """``data`` with NaN and infinities as null, so strict JSON readers accept it."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {str(key): to_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [to_json(value) for value in data]
    return data


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write strict JSON atomically."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(to_json(data), indent=2) + "\n")
    return Path(path)


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file of the run folder, with a clear error when it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise CheckpointError(f"{path} does not exist; is it a run folder?") from error
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} cannot be read: {error}") from error


def save_weights(model: nn.Module, path: str | Path, *, epoch: int) -> None:
    """The model's state dict as safetensors, with its epoch in the metadata."""
    tensors = {key: _packed(value) for key, value in model.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(tensors, temp, metadata={"format": FORMAT, "epoch": str(epoch)})


def weights_epoch(path: str | Path) -> int:
    """The epoch a weights file was saved at."""
    with safe_open(path, "pt") as handle:
        return int(handle.metadata()["epoch"])


def load_model(
    run_dir: str | Path, which: str = BEST, *, factory: str | None = None
) -> tuple[nn.Module, RunConfig]:
    """Rebuild a trained model from a run folder: ``(model in eval mode, its config)``.

    A run folder holds tensors and JSON and never runs code: its model must be a timm name, one
    of this package's factories, or the ``package.module:factory`` that the caller names itself
    as ``factory`` (the user, on the command line), never one taken from the folder alone.
    """
    config = read_run_config(run_dir)
    check_model_name(config.model, factory)
    path = weights_path(run_dir, which)
    try:
        state = load_file(path)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path} does not exist") from error
    except SafetensorError as error:
        raise CheckpointError(f"{path} cannot be read: {error}") from error
    try:
        model = create_model(config.model, config.num_outputs)
        model.load_state_dict(state)
    except (ModelError, RuntimeError) as error:
        raise CheckpointError(f"{path} does not fit {config.model}: {error}") from error
    return model.eval(), config


def check_model_name(name: str, factory: str | None) -> None:
    """A run config's model must be a timm name, one of this package's factories, or the factory
    the user named (``factory``)."""
    if ":" in name and name != factory and name not in BUILT_IN_FACTORIES:
        raise CheckpointError(
            f"the run's {CONFIG_FILE} names the model factory {name!r}, code that a run folder "
            f"never runs on its own; if you trust it, name it yourself: --model {name}"
        )
    if ":" not in name and not timm.is_model(name):
        raise CheckpointError(f"the run's {CONFIG_FILE} names {name!r}, which is not a timm model")


def save_resume_state(
    path: str | Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Optimizer tensors as safetensors; its other state and ``state`` as JSON metadata."""
    optimizer_state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = _packed(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {
        "param_groups": optimizer_state["param_groups"],
        "scalars": scalars,
        "state": state,
    }
    with atomic_path(path) as temp:
        save_file(tensors, temp, metadata={"format": FORMAT, _STATE_KEY: json.dumps(metadata)})


def load_resume_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer from a file written by :func:`save_resume_state`; return the rest."""
    try:
        with safe_open(path, "pt") as handle:
            metadata = json.loads(handle.metadata()[_STATE_KEY])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (FileNotFoundError, SafetensorError, KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a readable resume state: {error}") from error
    per_param: dict[int, dict[str, Any]] = {}
    for index, values in metadata["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    for key, tensor in tensors.items():
        index, _, name = key.partition(".")
        per_param.setdefault(int(index), {})[name] = tensor
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": metadata["param_groups"]})
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{path} does not fit this run's optimizer: {error}") from error
    return metadata["state"]


def _packed(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy: safetensors refuses channels_last (non-contiguous) tensors."""
    return tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
