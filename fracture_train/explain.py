"""Grad-CAM explanations of a trained model's predictions: which part of an image the predicted
(or any) class rests on, as a heatmap, and that heatmap drawn over the image.

Grad-CAM comes from the maintained ``grad-cam`` package (``pytorch_grad_cam``) and runs on an
eager fp32 copy of the model: its hooks break under autocast, ``torch.compile`` and TorchScript.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from fracture_curate.images import to_rgb8
from fracture_curate.model_input import normalisation
from fracture_train.checkpoint import RunConfig
from fracture_train.models import ModelError

#: Grad-CAM target layer of each known architecture, as a dotted path into the model (an int
#: part indexes a Sequential, -1 the last): the last feature map before the global pooling.
TARGET_LAYERS: dict[str, str] = {
    "resnet18": "layer4.-1",
    "resnet50": "layer4.-1",
    "mobilenetv2_100": "bn2",
    "efficientnet_b0": "bn2",
    "densenet121": "features.norm5",
}
#: Side of the dummy input that finds the fallback layer when the caller gives no image size.
PROBE_SIZE = 224
#: Modules whose output the fallback may explain: convolutions, norms and activations.
_FEATURE_MODULES = (nn.Conv2d, _NormBase, nn.GroupNorm, nn.LayerNorm)


def target_layer(model: nn.Module, model_name: str, *, image_size: int = PROBE_SIZE) -> nn.Module:
    """The layer Grad-CAM explains.

    A known architecture (:data:`TARGET_LAYERS`) gets its listed layer, a :class:`ModelError`
    when the model lacks it. Any other timm model or user factory gets the fallback: in one
    forward pass of an ``image_size`` square of zeros (eval mode, no gradients; each module's
    mode is restored), the last module to finish whose output is a 4-D feature map larger than
    1 x 1, among the Conv2d, norm and activation modules that run exactly once (a module called
    several times, such as torchvision's shared ReLU, would give Grad-CAM several activations to
    mix up). That is the last feature map before the global pooling.
    """
    path = TARGET_LAYERS.get(model_name)
    if path is not None:
        return _resolve(model, model_name, path)
    return _last_feature_map(model, model_name, image_size)


def _resolve(model: nn.Module, model_name: str, path: str) -> nn.Module:
    """The module at a dotted ``path`` whose int parts index Sequentials."""
    module = model
    for part in path.split("."):
        try:
            index = part.lstrip("-").isdigit()
            module = module[int(part)] if index else module.get_submodule(part)  # type: ignore[index]
        except (AttributeError, IndexError, TypeError) as error:
            raise ModelError(
                f"{type(model).__name__} has no Grad-CAM layer {path} ({part!r} not found), "
                f"the layer of {model_name}; is it the model the run was trained with?"
            ) from error
    return module


def _last_feature_map(model: nn.Module, model_name: str, image_size: int) -> nn.Module:
    """The fallback of :func:`target_layer`."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    finished: list[nn.Module] = []
    calls: dict[nn.Module, int] = {}

    def record(module: nn.Module, _: object, output: object) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) > 1:
            finished.append(module)

    handles = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, _FEATURE_MODULES) or _is_activation(module)
    ]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype))
    finally:
        for module, training in modes.items():
            module.train(training)
        for handle in handles:
            handle.remove()
    once = [module for module in finished if calls[module] == 1]
    if not once:
        raise ModelError(
            f"{model_name} has no convolution, norm or activation with a feature map larger "
            f"than 1 x 1 at {image_size} x {image_size}: Grad-CAM has no layer to explain"
        )
    return once[-1]


def _is_activation(module: nn.Module) -> bool:
    """An activation module of torch or timm (ReLU, SiLU, GELU, ...)."""
    return type(module).__module__ in ("torch.nn.modules.activation", "timm.layers.activations")


class _MinusLogit:
    """Grad-CAM target of a binary model's negative class: minus its one logit."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return -output[..., 0]


class Explainer:
    """Grad-CAM heatmaps of a trained model, on an eager fp32 copy of it (no autocast, no
    compile, no channels_last needed), on the device given.

    The copy's parameters need no gradients (the original keeps its own flags): the gradients
    flow from an input that requires them, which also explains a model whose target layer was
    frozen in training.
    """

    def __init__(
        self, model: nn.Module, config: RunConfig, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        eager = getattr(model, "_orig_mod", model)  # the module under torch.compile
        self.model = (
            copy.deepcopy(eager).float().to(self.device, memory_format=torch.contiguous_format)
        )
        self.model.eval().requires_grad_(False)
        self.layer = target_layer(
            self.model, config.model, image_size=config.preprocessing.image_size
        )
        self.mean, self.std = normalisation(
            config.preprocessing.mean, config.preprocessing.std, self.device
        )

    def heatmaps(self, images: torch.Tensor | np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """N x H x W float32 maps in [0, 1] of ``images``, each explaining ``classes[i]``.

        Args:
            images: as the model sees them, preprocessed but not normalised: an N x 3 x H x W
                uint8 tensor or an N x H x W x 3 uint8 array.
            classes: a class index per image, in ``config.class_names`` order. A binary model's
                positive class is explained by its logit, the negative class by minus the logit.

        A map without positive evidence is all zeros (never divided by zero). Works under
        ``torch.no_grad()`` and ``torch.inference_mode()`` too: it turns gradients on itself.
        """
        batch = self._inputs(images)
        if len(classes) != len(batch):
            raise ValueError(f"{len(classes)} classes for {len(batch)} images")
        targets = [self._target(index) for index in classes]
        cam = GradCAM(self.model, [self.layer])
        try:  # not its context manager, which prints and swallows an IndexError
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                torch.autocast(self.device.type, enabled=False),
            ):
                maps = cam(batch.requires_grad_(True), targets)
        finally:
            cam.activations_and_grads.release()  # no hooks stay on the model between calls
        return np.clip(maps, 0, 1).astype(np.float32)

    def _inputs(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """N x 3 x H x W normalised float32 on the device, from either layout of uint8."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"expected N x H x W x 3 images, got shape {images.shape}")
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"expected N x 3 x H x W uint8 images, got {images.dtype} {tuple(images.shape)}"
            )
        with torch.inference_mode(False):
            return (images.to(self.device).float() - self.mean) / self.std

    def _target(self, index: int) -> ClassifierOutputTarget | _MinusLogit:
        """The Grad-CAM target of class ``index``."""
        if not 0 <= index < len(self.config.class_names):
            raise ValueError(f"class {index} is not one of {self.config.class_names}")
        if self.config.num_outputs == 1:
            return ClassifierOutputTarget(0) if index == 1 else _MinusLogit()
        return ClassifierOutputTarget(index)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """H x W x 3 uint8: ``heatmap`` (values in [0, 1], resized to the image when its size
    differs) in the jet colour map, blended over ``image`` (H x W grey or H x W x 3 uint8) with
    weight ``alpha``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = to_rgb8(image)
    height, width = image.shape[:2]
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != (height, width):
        heatmap = cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR)
    levels = np.uint8(np.round(255 * np.clip(heatmap, 0, 1)))
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.uint8(np.clip(np.round(blended), 0, 255))


def side_by_side(image: np.ndarray, heatmap: np.ndarray) -> Image.Image:
    """The image and its :func:`overlay` next to each other (what ``--explain DIR`` writes as
    PNG)."""
    return Image.fromarray(np.concatenate([to_rgb8(image), overlay(image, heatmap)], axis=1))
