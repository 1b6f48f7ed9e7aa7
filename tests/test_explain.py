"""Grad-CAM explanations: the map points at the planted evidence of a trained model, the target
layer of each known architecture and the fallback, both classes of a binary model, the overlay,
and the original model left as it was."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from test_train import split_manifest
from torch import nn

from fracture_curate.manifest import read_manifest, read_provenance
from fracture_curate.model_input import Preprocessing, normalisation, preprocess
from fracture_train.checkpoint import RunConfig, load_model
from fracture_train.config import TrainConfig
from fracture_train.explain import TARGET_LAYERS, Explainer, overlay, side_by_side, target_layer
from fracture_train.models import ModelError, create_model, two_block_cnn
from fracture_train.trainer import train_run

CNN = "fracture_train.models:two_block_cnn"
SIZE = 48
QUADRANT = (0, 0, SIZE // 2, SIZE // 2)  #: top, left, bottom, right (exclusive): top-left
#: The module each architecture's Grad-CAM layer must be.
EXPECTED_LAYERS = {
    "resnet18": lambda model: model.layer4[-1],
    "resnet50": lambda model: model.layer4[-1],
    "mobilenetv2_100": lambda model: model.bn2,
    "efficientnet_b0": lambda model: model.bn2,
    "densenet121": lambda model: model.features.norm5,
}


def run_config(
    model: str = CNN, class_names: tuple[str, ...] = ("negative", "positive"), size: int = 64
) -> RunConfig:
    """A hand-made run config (one logit for two classes)."""
    binary = len(class_names) == 2
    return RunConfig(
        model=model,
        num_outputs=1 if binary else len(class_names),
        class_names=list(class_names),
        positive_class=class_names[-1] if binary else None,
        preprocessing=Preprocessing(image_size=size),
        initial_weights="random initialisation",
        training={},
        manifest_provenance={"stage": "split"},
    )


def random_images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """N x 3 x H x W uint8 grey noise."""
    grey = torch.randint(0, 256, (count, 1, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return grey.expand(-1, 3, -1, -1).contiguous()


def seeded_cnn(outputs: int = 1, seed: int = 0) -> nn.Module:
    """The two-block CNN with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return two_block_cnn(outputs).eval()


def peak_in_region(heatmap: np.ndarray, region: tuple[int, int, int, int]) -> bool:
    """Whether the map's maximum lies in ``region`` (top, left, bottom, right; exclusive). A
    flat map has no peak, so it is in no region."""
    if heatmap.max() == heatmap.min():
        return False
    row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    top, left, bottom, right = region
    return bool(top <= row < bottom and left <= column < right)


def marked_dataset(root: Path, n: int = 60, seed: int = 0) -> Path:
    """Grey noise in two class folders: each "marked" image carries a bright 10 x 10 square
    somewhere inside its top-left quadrant, the "plain" ones none."""
    rng = np.random.default_rng(seed)
    for label in ("marked", "plain"):
        (root / label).mkdir(parents=True)
        for index in range(n):
            pixels = rng.integers(30, 150, size=(SIZE, SIZE), dtype=np.uint8)
            if label == "marked":
                top, left = rng.integers(0, SIZE // 2 - 10 + 1, size=2)
                pixels[top : top + 10, left : left + 10] = 250
            Image.fromarray(pixels).save(root / label / f"{label}_{index:03d}.png")
    return root


def test_peak_in_region_is_false_for_a_flat_map_and_a_peak_elsewhere():
    uniform = np.full((SIZE, SIZE), 0.5, dtype=np.float32)
    assert not peak_in_region(uniform, QUADRANT)
    assert not peak_in_region(np.zeros((SIZE, SIZE), np.float32), QUADRANT)
    elsewhere = np.zeros((SIZE, SIZE), np.float32)
    elsewhere[40, 40] = 1
    assert not peak_in_region(elsewhere, QUADRANT)
    inside = np.zeros((SIZE, SIZE), np.float32)
    inside[5, 20] = 1
    assert peak_in_region(inside, QUADRANT)


@pytest.mark.slow
def test_the_map_of_a_trained_model_points_at_the_evidence(tmp_path):
    data = marked_dataset(tmp_path / "data")
    manifest = split_manifest(data, tmp_path / "split.parquet")
    options = dict(model=CNN, image_size=SIZE, epochs=6, batch_size=12, lr=3e-3, augment="none")
    result = train_run(
        TrainConfig(
            manifest=manifest,
            out=tmp_path / "run",
            workers=0,
            warmup_epochs=0.5,
            patience=0,
            bootstrap=0,
            **options,
        )
    )
    assert result.metrics["test"]["accuracy"] >= 0.9  # the model did learn the marker

    model, config = load_model(result.out)
    rows = read_manifest(manifest)
    marked = rows[(rows["split"] == "test") & (rows["label"] == "marked")]
    assert len(marked) == 12
    root = Path(read_provenance(manifest)["params"]["root"])
    images = np.stack(
        [preprocess((root / path).read_bytes(), SIZE, "stretch") for path in marked["path"]]
    )
    # by the class rule "plain" is the positive class: the marked class is explained by minus
    # the logit here
    index = config.class_names.index("marked")
    maps = Explainer(model, config).heatmaps(images, [index] * len(images))
    assert maps.shape == (len(images), SIZE, SIZE)
    inside = [peak_in_region(heatmap, QUADRANT) for heatmap in maps]
    assert np.mean(inside) >= 0.7, inside


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGET_LAYERS))
def test_every_known_architecture_has_its_target_layer_and_a_map(name):
    model = create_model(name, 1).eval()
    assert target_layer(model, name) is EXPECTED_LAYERS[name](model)
    maps = Explainer(model, run_config(name)).heatmaps(random_images(1), [1])
    assert maps.shape == (1, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_a_known_name_on_a_model_without_its_layer_is_a_clear_error():
    with pytest.raises(ModelError, match=r"no Grad-CAM layer layer4\.-1 \('layer4' not found"):
        target_layer(seeded_cnn(), "resnet18")


def test_the_fallback_takes_the_last_feature_map_before_the_pooling():
    cnn = seeded_cnn()
    assert target_layer(cnn, CNN) is cnn.block2[1]  # the ReLU before max pooling to 4 x 4
    user = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 1),
    ).eval()
    assert target_layer(user, "mine.models:tiny") is user[1]
    maps = Explainer(user, run_config("mine.models:tiny")).heatmaps(random_images(2), [1, 0])
    assert maps.shape == (2, 64, 64)


def test_the_fallback_skips_a_module_called_twice_and_restores_each_modules_mode():
    shared = nn.ReLU()
    user = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        shared,
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        shared,  # called twice: Grad-CAM would see two activations
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 1),
    ).train()
    user[3].eval()  # a frozen norm layer in a training model stays in eval mode
    statistics = user[3].running_mean.clone()
    assert target_layer(user, "mine.models:shared") is user[3]
    assert torch.equal(user[3].running_mean, statistics)  # probed in eval mode
    assert [module.training for module in user] == [True] * 3 + [False] + [True] * 4


def test_a_model_with_no_feature_map_has_no_target_layer():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
    with pytest.raises(ModelError, match="no layer to explain"):
        target_layer(flat, "mine.models:flat", image_size=8)


def test_the_negative_class_of_a_binary_model_is_explained_by_minus_the_logit():
    model, config = seeded_cnn(), run_config()
    images = random_images(3)
    explainer = Explainer(model, config)
    positive = explainer.heatmaps(images, [1, 1, 1])
    negative = explainer.heatmaps(images, [0, 0, 0])
    assert np.abs(positive - negative).max() > 0.5
    # the package's own binary target (category 0: minus the output) on the same input
    mean, std = normalisation(config.preprocessing.mean, config.preprocessing.std)
    reference = copy.deepcopy(model)
    cam = GradCAM(reference, [reference.block2[1]])
    expected = cam((images.float() - mean) / std, [BinaryClassifierOutputTarget(0)] * 3)
    cam.activations_and_grads.release()
    np.testing.assert_allclose(negative, expected, atol=1e-5)


def test_each_class_of_a_multiclass_model_has_its_own_map():
    explainer = Explainer(seeded_cnn(3), run_config(class_names=("a", "b", "c")))
    images = random_images(1).expand(3, -1, -1, -1)
    maps = explainer.heatmaps(images, [0, 1, 2])
    assert all(np.abs(maps[i] - maps[j]).max() > 0.1 for i, j in ((0, 1), (0, 2), (1, 2)))
    with pytest.raises(ValueError, match="class 3 is not one of"):
        explainer.heatmaps(random_images(1), [3])


def test_an_array_and_a_tensor_give_the_same_maps_and_bad_input_is_refused():
    explainer = Explainer(seeded_cnn(), run_config())
    images = random_images(2)
    from_tensor = explainer.heatmaps(images, [1, 0])
    from_array = explainer.heatmaps(images.permute(0, 2, 3, 1).numpy(), [1, 0])
    np.testing.assert_allclose(from_tensor, from_array, atol=1e-5)  # layouts round apart
    with pytest.raises(ValueError, match="uint8"):
        explainer.heatmaps(images.float(), [1, 0])
    with pytest.raises(ValueError, match="2 classes for 1 images"):
        explainer.heatmaps(images[:1], [1, 0])


def test_a_map_without_evidence_is_zeros_not_nan():
    model = seeded_cnn()
    nn.init.zeros_(model.head.weight)  # the logit no longer depends on the image
    maps = Explainer(model, run_config()).heatmaps(random_images(1), [1])
    assert np.array_equal(maps, np.zeros_like(maps))


def test_the_overlay_resizes_the_map_and_blends_jet_colours():
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    heatmap = np.zeros((10, 15), dtype=np.float32)
    heatmap[:5, :7] = 1  # hot top-left
    blended = overlay(image, heatmap)
    assert blended.shape == (40, 60, 3) and blended.dtype == np.uint8
    hot, cold = blended[5, 5].astype(int), blended[35, 55].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where high, blue where low
    np.testing.assert_array_equal(overlay(image, heatmap, alpha=0), image)
    assert overlay(image[:, :, 0], np.zeros((40, 60), np.float32)).shape == (40, 60, 3)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heatmap, alpha=1.5)


def test_side_by_side_puts_the_image_left_of_its_overlay():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    heatmap = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)
    picture = side_by_side(image, heatmap)
    assert isinstance(picture, Image.Image)
    assert picture.size == (96, 32) and picture.mode == "RGB"
    pixels = np.asarray(picture)
    np.testing.assert_array_equal(pixels[:, :48], image)
    np.testing.assert_array_equal(pixels[:, 48:], overlay(image, heatmap))


def test_the_original_model_is_left_unchanged_and_no_hooks_remain():
    model = seeded_cnn()
    model.block1.requires_grad_(False)  # a frozen stem, as --freeze 1 leaves it
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    explainer = Explainer(model, run_config())
    with torch.inference_mode():  # as a prediction page might call it
        maps = explainer.heatmaps(random_images(2), [1, 0])
    assert maps.max() > 0
    assert not model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert explainer.model is not model and not explainer.model.training
    assert all(not module._forward_hooks for module in explainer.model.modules())


def test_a_wholly_frozen_model_is_explained_as_a_trainable_one():
    images, config = random_images(2), run_config()
    expected = Explainer(seeded_cnn(), config).heatmaps(images, [1, 0])
    frozen = seeded_cnn().requires_grad_(False)
    maps = Explainer(frozen, config).heatmaps(images, [1, 0])
    assert maps.max() > 0
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert not any(parameter.requires_grad for parameter in frozen.parameters())


def test_a_callers_autocast_does_not_change_the_maps():
    explainer, images = Explainer(seeded_cnn(), run_config()), random_images(2)
    expected = explainer.heatmaps(images, [1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = explainer.heatmaps(images, [1, 0])
    np.testing.assert_allclose(maps, expected, atol=1e-6)
