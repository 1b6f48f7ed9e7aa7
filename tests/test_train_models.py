"""Model construction, offline ImageNet weights, freezing, the loss, the schedule and the
no-pickle optimizer state."""

from __future__ import annotations

import json

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from fracture_curate.weights import resolve_weights
from fracture_train.checkpoint import load_resume_state, save_resume_state
from fracture_train.engine import Criterion, Schedule, make_optimizer, set_train_mode, warmup_cosine
from fracture_train.models import (
    ModelError,
    build_model,
    create_model,
    freeze,
    head_name,
    load_matching,
    two_block_cnn,
)

CNN = "fracture_train.models:two_block_cnn"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No torch hub or Hugging Face hub cache: nothing to find offline."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_mobilenetv2_fine_tunes_from_the_real_imagenet_weights():
    built = build_model("mobilenetv2_100", 1, pretrained=True)
    assert "ImageNet" in built.weights and "b03531047ffa" in built.weights
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(resolve_weights("imagenet", allow_download=False).state_dict)
    model, reference = built.model.eval(), reference.eval()
    images = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        ours = model.forward_head(model.forward_features(images), pre_logits=True)
        theirs = torch.flatten(
            torch.nn.functional.adaptive_avg_pool2d(reference.features(images), 1), 1
        )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert model.get_classifier().weight.shape == (1, 1280)
    # the fresh head starts small (timm's own init would give logits in the tens)
    assert model.get_classifier().weight.abs().max() <= 1 / 1280**0.5


def test_a_model_without_offline_weights_says_so(empty_caches):
    with pytest.raises(
        ModelError, match="no offline ImageNet weights for resnet18; pass --weights"
    ):
        build_model("resnet18", 1, pretrained=True)
    with pytest.raises(ModelError, match="no offline ImageNet weights"):
        build_model(CNN, 1, pretrained=True)


def test_offline_timm_weights_in_the_torch_hub_cache_are_used(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    source = timm.create_model("resnet18", num_classes=1000)
    url = timm.models.get_pretrained_cfg("resnet18").url
    cached = tmp_path / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir()
    torch.save(source.state_dict(), cached)
    built = build_model("resnet18", 3, pretrained=True)
    assert str(cached) in built.weights
    torch.testing.assert_close(built.model.conv1.weight, source.conv1.weight)
    assert built.model.fc.weight.shape == (3, 512)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenetv2_100", "efficientnet_b0", "densenet121", "resnet50", CNN]
)
def test_named_models_build_with_one_logit_or_several(name):
    torch.manual_seed(0)
    for outputs in (1, 4):
        model = create_model(name, outputs).eval()
        with torch.inference_mode():
            assert model(torch.rand(2, 3, 64, 64)).shape == (2, outputs)


def test_unknown_models_and_factories_are_clear_errors():
    with pytest.raises(ModelError, match="did you mean resnet18"):
        create_model("resnet_18", 1)
    with pytest.raises(ModelError, match="cannot import no_such_package"):
        create_model("no_such_package.models:net", 1)
    with pytest.raises(ModelError, match="no callable 'nothing'"):
        create_model("fracture_train.models:nothing", 1)


def test_weights_from_a_checkpoint_keep_the_body_and_renew_a_different_head(tmp_path):
    torch.manual_seed(0)
    source = two_block_cnn(5)
    path = tmp_path / "five.safetensors"
    save_file(source.state_dict(), path)
    built = build_model(CNN, 1, weights=path)
    torch.testing.assert_close(built.model.block1[0].weight, source.block1[0].weight)
    assert built.model.head.weight.shape == (1, 128)
    assert "head re-initialised" in built.weights
    with pytest.raises(ModelError, match="do not fit"):
        load_matching(create_model("resnet18", 1), source.state_dict(), "five.safetensors")
    with pytest.raises(ModelError, match="does not exist"):
        build_model(CNN, 1, weights=tmp_path / "missing.safetensors")


def test_freeze_policies():
    model = create_model("resnet18", 1)
    assert head_name(model) == "fc"
    freeze(model, "backbone")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}

    model = create_model("resnet18", 1)
    freeze(model, "2")  # the stem (conv1/bn1, up to act1) and layer1
    frozen = {name.split(".")[0] for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    set_train_mode(model)
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training
    with pytest.raises(ModelError, match="has 5 stages"):
        freeze(create_model("resnet18", 1), "6")
    with pytest.raises(ModelError, match="unknown freeze policy"):
        freeze(model, "everything")

    cnn = create_model(CNN, 1)
    freeze(cnn, "1")
    assert not cnn.block1[0].weight.requires_grad and cnn.block2[0].weight.requires_grad


def test_binary_criterion_smooths_and_weights():
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    targets = torch.tensor([1, 0, 1])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    smoothed = Criterion(binary=True, label_smoothing=0.2)(logits, targets)
    torch.testing.assert_close(smoothed, bce(logits[:, 0], torch.tensor([0.9, 0.1, 0.9])))
    weights = torch.tensor([3.0, 1.0])
    weighted = Criterion(binary=True, class_weights=weights)(logits, targets)
    each = bce(logits[:, 0], targets.float(), reduction="none")
    torch.testing.assert_close(weighted, (each * torch.tensor([1.0, 3.0, 1.0])).sum() / 5)
    multi = Criterion(binary=False, class_weights=weights[:2], label_smoothing=0.1)
    two = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    expected = torch.nn.functional.cross_entropy(
        two, torch.tensor([0, 1]), weight=weights[:2], label_smoothing=0.1
    )
    torch.testing.assert_close(multi(two, torch.tensor([0, 1])), expected)


def test_schedules():
    assert [round(warmup_cosine(s, 4, 12), 3) for s in (0, 3, 4, 8, 12)] == [0.25, 1, 1, 0.5, 0]
    model = torch.nn.Linear(2, 1)
    optimizer = make_optimizer(model, "sgd", 0.1, 0.0)
    schedule = Schedule(optimizer, "step", epochs=9, steps_per_epoch=3, step_every=2, factor=0.5)
    for _ in range(4):
        optimizer.step()
        schedule.after_epoch(1.0)
    assert schedule.lr == pytest.approx(0.025)
    plateau = Schedule(
        make_optimizer(model, "adam", 0.1, 0.0),
        "plateau",
        epochs=9,
        steps_per_epoch=3,
        factor=0.1,
        plateau_patience=1,
    )
    for loss in (1.0, 1.0, 1.0):
        plateau.after_epoch(loss)
    assert plateau.lr == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizer_state_round_trips_without_pickle(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(CNN, 1)
    optimizer = make_optimizer(model, name, 1e-3, 0.01)
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    path = tmp_path / "resume.safetensors"
    save_resume_state(path, optimizer, {"loop": {"epoch": 3}})
    restored = make_optimizer(model, name, 1e-3, 0.01)
    assert load_resume_state(path, restored) == {"loop": {"epoch": 3}}
    before, after = optimizer.state_dict(), restored.state_dict()
    assert json.loads(json.dumps(before["param_groups"])) == after["param_groups"]
    for index, values in before["state"].items():
        for key, value in values.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(after["state"][index][key]))
