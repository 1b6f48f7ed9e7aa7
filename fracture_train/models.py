"""Classifier construction: any timm model or a user's ``package.module:factory``, its initial
weights (offline ImageNet, a checkpoint, or random when neither is asked for) and freezing.

A binary task has one output (the fracture logit); several classes have one output each.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from fracture_curate.errors import CurateError
from fracture_curate.weights import IMAGENET, WeightsError, resolve_weights

#: Model factories of this package, which a run folder may name: no other code is run on a run
#: folder's word (a user's own factory is named by the user, on the command line).
BUILT_IN_FACTORIES = frozenset({"fracture_train.models:two_block_cnn"})
#: timm names whose ImageNet weights come from the verified offline torchvision file.
TORCHVISION_IMAGENET = {"mobilenetv2_100": "torchvision MobileNetV2 (IMAGENET1K_V1)"}


class ModelError(CurateError):
    """A model, its weights or a freeze policy that cannot be used."""


@dataclass(frozen=True)
class BuiltModel:
    """A classifier and a one-line account of where its initial weights came from."""

    model: nn.Module
    weights: str


def num_outputs(num_classes: int) -> int:
    """One logit for two classes, else one per class."""
    return 1 if num_classes == 2 else num_classes


def create_model(name: str, outputs: int) -> nn.Module:
    """The architecture, randomly initialised: a timm name or ``package.module:factory``."""
    if ":" in name:
        model = load_factory(name)(outputs)
        if not isinstance(model, nn.Module):
            raise ModelError(f"{name} returned {type(model).__name__}, not a torch nn.Module")
        return model
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}: not a timm name nor package.module:factory{hint}"
        )
    return timm_model(name, outputs)


def timm_model(name: str, outputs: int, **kwargs: object) -> nn.Module:
    """A timm model with a small-initialised head.

    timm draws some heads from uniform(+-1/sqrt(outputs)), i.e. +-1 for a single logit, which
    starts fine-tuning with huge logits; PyTorch's default (+-1/sqrt(inputs)) keeps them small.
    """
    model = timm.create_model(name, num_classes=outputs, **kwargs)
    for module in model.get_classifier().modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            module.reset_parameters()
    return model


def load_factory(spec: str) -> Callable[[int], nn.Module]:
    """Import ``package.module:factory`` (the working folder is importable, as for scripts)."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"cannot import {module_name} for --model {spec}: {error}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no callable {attribute!r} for --model {spec}")
    return factory


def build_model(
    name: str, outputs: int, *, pretrained: bool = False, weights: str | Path | None = None
) -> BuiltModel:
    """Create ``name`` with ``outputs`` outputs and its initial weights.

    ``weights`` (a .safetensors/.pth file or a run folder) wins over ``pretrained`` (offline
    ImageNet weights); the classifier head is re-initialised when its shape differs. Random
    weights only when neither is given. Never silently random: missing weights are an error.
    """
    if weights is not None:
        model = create_model(name, outputs)
        path = Path(weights)
        if path.is_dir():
            path = path / "best.safetensors"
        if not path.is_file():
            raise ModelError(f"weights file {path} does not exist")
        try:
            state = timm.models.load_state_dict(str(path))
        except Exception as error:  # safetensors and torch.load raise many types
            raise ModelError(f"cannot load weights from {path}: {error}") from error
        fresh = load_matching(model, state, str(path))
        return BuiltModel(model, f"{path}{_fresh_note(fresh)}")
    if not pretrained:
        return BuiltModel(create_model(name, outputs), "random initialisation (no --pretrained)")
    if name in TORCHVISION_IMAGENET:
        return _torchvision_imagenet(name, outputs)
    if ":" not in name:
        found = offline_timm_weights(name)
        if found is not None:
            try:
                model = timm_model(
                    name, outputs, pretrained=True, pretrained_cfg_overlay={"file": found}
                )
            except Exception as error:  # torch.load and safetensors raise many types
                raise ModelError(f"cached ImageNet weights {found} do not load: {error}") from error
            return BuiltModel(model, f"timm ImageNet weights from {found} (head re-initialised)")
    raise ModelError(
        f"no offline ImageNet weights for {name}; pass --weights PATH or drop --pretrained"
    )


def offline_timm_weights(name: str) -> str | None:
    """A timm model's default pretrained file when it is already cached (HF hub or torch hub)."""
    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        return None
    if config.hf_hub_id:
        repo, _, revision = config.hf_hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if config.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(config.url).path).name
        if cached.is_file():
            return str(cached)
    return None


def _torchvision_imagenet(name: str, outputs: int) -> BuiltModel:
    """timm's model with torchvision's verified ImageNet tensors, mapped one-to-one by order."""
    try:
        resolved = resolve_weights(IMAGENET, allow_download=False)
    except WeightsError as error:
        raise ModelError(str(error)) from error
    model = create_model(name, outputs)
    own = model.state_dict()
    if len(own) != len(resolved.state_dict):
        raise ModelError(
            f"{TORCHVISION_IMAGENET[name]} has {len(resolved.state_dict)} tensors, {name} has "
            f"{len(own)}: they do not map one-to-one"
        )
    mapped = dict(zip(own, resolved.state_dict.values(), strict=True))
    fresh = load_matching(model, mapped, TORCHVISION_IMAGENET[name])
    return BuiltModel(
        model,
        f"ImageNet: {TORCHVISION_IMAGENET[name]}, {resolved.source}, "
        f"sha256 {resolved.sha256[:12]}...{_fresh_note(fresh)}",
    )


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``; only the classifier head may differ in shape or be absent.

    Returns the head tensors left freshly initialised; anything else that does not fit is an
    error naming the first few mismatches.
    """
    own = model.state_dict()
    head = head_name(model)
    in_head = {key for key in own if key.startswith(f"{head}.")}
    fits = {key for key in own if key in state and state[key].shape == own[key].shape}
    problems = [key for key in own if key not in fits and key not in in_head]
    problems += [key for key in state if key not in own and not key.startswith(f"{head}.")]
    if problems:
        raise ModelError(
            f"weights from {source} do not fit {type(model).__name__}: {len(problems)} tensor(s) "
            f"missing, unexpected or of another shape, e.g. {', '.join(problems[:3])}"
        )
    model.load_state_dict({key: state[key] for key in fits}, strict=False)
    return sorted(in_head - fits)


def head_name(model: nn.Module) -> str:
    """The classifier head's module name: timm's ``get_classifier()``, else the last top-level
    child that has parameters."""
    if hasattr(model, "get_classifier"):
        classifier = model.get_classifier()
        for name, module in model.named_modules():
            if module is classifier:
                return name
    children = [name for name, child in model.named_children() if _has_parameters(child)]
    if not children:
        raise ModelError(f"{type(model).__name__} has no parameters")
    return children[-1]


def stage_names(model: nn.Module) -> list[str]:
    """Module names of the model's stages, input first: timm's ``feature_info`` when it has
    one, else the top-level children with parameters other than the head."""
    info = getattr(model, "feature_info", None)
    if info:
        return [stage["module"] for stage in info]
    head = head_name(model)
    return [
        name for name, child in model.named_children() if name != head and _has_parameters(child)
    ]


def freeze(model: nn.Module, policy: str) -> int:
    """Stop training part of ``model``: "none", "backbone" (all but the head) or "N" (the stem
    and the first N stages). Returns the number of frozen parameter tensors."""
    if policy == "none":
        return 0
    if policy == "backbone":
        keep = _in_module(head_name(model))
    elif policy.isdigit() and int(policy) > 0:
        keep = _after_stage(model, int(policy))
    else:
        raise ModelError(f"unknown freeze policy {policy!r}: use none, backbone or a number N")
    frozen = 0
    for name, parameter in model.named_parameters():
        if not keep(name):
            parameter.requires_grad_(False)
            frozen += 1
    return frozen


def _in_module(module: str) -> Callable[[str], bool]:
    """A test for parameter names inside ``module``."""
    return lambda parameter: parameter.startswith(f"{module}.")


def _after_stage(model: nn.Module, count: int) -> Callable[[str], bool]:
    """A test for parameter names that come after the end of stage ``count`` (1-based)."""
    stages = stage_names(model)
    if count > len(stages):
        raise ModelError(
            f"--freeze {count}: {type(model).__name__} has {len(stages)} stages "
            f"({', '.join(stages)})"
        )
    order = {name: position for position, (name, _) in enumerate(model.named_modules())}
    last = stages[count - 1]
    end = max(
        position for name, position in order.items() if name == last or name.startswith(f"{last}.")
    )
    return lambda parameter: order[parameter.rpartition(".")[0]] > end


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _fresh_note(fresh: list[str]) -> str:
    return f" (head re-initialised: {len(fresh)} tensors)" if fresh else ""


class TwoBlockCNN(nn.Module):
    """The small CNN of a reference project: two conv-ReLU-pool blocks, a dense layer with
    dropout, and a linear head. Pooled to 4 x 4 so any input size works."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(4), nn.Flatten())
        self.dense = nn.Sequential(nn.Linear(64 * 16, 128), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(self.pool(self.block2(self.block1(x)))))


def two_block_cnn(num_classes: int) -> nn.Module:
    """``--model fracture_train.models:two_block_cnn``: the reference two-block CNN."""
    return TwoBlockCNN(num_classes)
