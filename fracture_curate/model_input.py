"""What a model sees: an image file decoded by the shared loader, resized to a square of uint8,
batched in channels-last memory, and normalised with the ImageNet statistics on the device.

Shared by the embedder and the trainer, so a file becomes the same input in both. torch is
imported by the functions that make tensors, so that the stages can read these settings without
loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from fracture_curate.dataset_files import ScannedFile
from fracture_curate.dicom import DEFAULT_WINDOW, Window
from fracture_curate.images import ImageLoadError, load_image, to_rgb8, to_uint8

#: Of RGB in [0, 1], as torchvision's and timm's ImageNet models expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: "stretch" resizes the whole image; "crop" resizes the short side and centre-crops.
RESIZE_MODES = ("stretch", "crop")

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input; saved with every trained model."""

    image_size: int
    resize: str = "stretch"  #: the whole image resized to a square, nothing cut off
    mean: tuple[float, float, float] = IMAGENET_MEAN  #: of RGB in [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD
    window: str = str(DEFAULT_WINDOW)  #: how a DICOM's values became grey levels (``Window``)


def preprocess(
    data: bytes, image_size: int, resize: str, window: Window = DEFAULT_WINDOW
) -> np.ndarray:
    """Decode a file's bytes through the shared loader (a DICOM with ``window``) and resize them
    to ``image_size``: an H x W x 3 uint8 array.

    ``stretch`` resizes the whole image (nothing is cut off a radiograph); ``crop`` resizes the
    short side to ``image_size * 256 / 224`` and centre-crops, as ImageNet evaluation does.
    """
    side = image_size if resize == "stretch" else round(image_size * 256 / 224)
    # Resize in the image's own channels (one for a radiograph), then make three.
    loaded = load_image(data, draft_size=(side, side), window=window)
    image = Image.fromarray(to_uint8(loaded.pixels))
    if resize == "stretch":
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    else:
        scale = side / min(image.size)
        width = max(side, round(image.width * scale))
        height = max(side, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (width - image_size) // 2, (height - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    return to_rgb8(np.array(image))


#: Why an image yielded no input: (status, reason), as a manifest row records them.
Failure = tuple[str, str]


class ImageFiles:
    """Preprocessed images of scanned files by index (a map-style dataset for a DataLoader); a
    file that fails to load, or is no longer the one scanned, yields its failure instead."""

    def __init__(self, files: list[ScannedFile], image_size: int, resize: str) -> None:
        self.files, self.image_size, self.resize = files, image_size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, Failure | None]:
        try:
            file = self.files[index]
            return index, preprocess(file.read(), self.image_size, self.resize, file.window), None
        except ImageLoadError as error:
            return index, None, (error.status, error.reason)


def collate(batch: list[tuple[int, np.ndarray | None, Failure | None]]) -> dict[str, Any]:
    """Stack the images that loaded into an N x 3 x H x W uint8 tensor (channels-last memory)."""
    import torch

    loaded = [(index, array) for index, array, _ in batch if array is not None]
    images = torch.from_numpy(np.stack([array for _, array in loaded])) if loaded else None
    return {
        "indices": [index for index, _ in loaded],
        "images": images.permute(0, 3, 1, 2) if images is not None else None,
        "failures": {index: failure for index, array, failure in batch if array is None},
    }


def normalisation(
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as 1 x 3 x 1 x 1 tensors scaled to 0-255 (on ``device``): a uint8
    batch becomes the model's input as ``(images - mean) / std``."""
    import torch

    return (
        torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255,
        torch.tensor(std, device=device).view(1, 3, 1, 1) * 255,
    )
