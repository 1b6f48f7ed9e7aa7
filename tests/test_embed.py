"""``curate embed``: real ImageNet weights, content-keyed vectors, resume after kill -9."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import noise_image, processes_running, save_gray
from PIL import Image
from typer.testing import CliRunner

from fracture_curate.cli import app
from fracture_curate.embed import PARTS_FOLDER, EmbedConfig, PartStore, embed_manifest
from fracture_curate.embedder import MobileNetV2Embedder, inference_model
from fracture_curate.manifest import read_manifest, read_provenance
from fracture_curate.model_input import preprocess
from fracture_curate.scan import run_scan
from fracture_curate.vectors import embedding_matrix
from fracture_curate.weights import IMAGENET_SHA256, WeightsError, resolve_weights

runner = CliRunner()
FAST = EmbedConfig(weights="random", image_size=64)


def scan_into(data, manifests):
    return run_scan(data, manifests, workers=1).frame


def read_embeddings(manifests):
    """Image ids and the N x D matrix of ``manifests/embeddings.parquet``, as a user reads it."""
    table = read_manifest(manifests / "embeddings.parquet", stage="embed")
    ids = table["image_id"].tolist()
    return ids, embedding_matrix(table, ids)


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_real_imagenet_weights_recognise_a_coffee_cup():
    from skimage.data import coffee

    weights = resolve_weights("imagenet", allow_download=False)
    assert weights.sha256 == IMAGENET_SHA256
    assert weights.source in ("torch-hub-cache", "offline-package")
    buffer = io.BytesIO()
    Image.fromarray(coffee()).save(buffer, format="JPEG", quality=95)
    pixels = preprocess(buffer.getvalue(), 224, "crop")
    model = MobileNetV2Embedder(weights.state_dict, layer="logits").eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    # ImageNet classes 504 coffee mug, 967 espresso, 968 cup.
    assert int(logits.argmax()) in {504, 967, 968}


def test_inference_model_folds_every_batch_norm_and_keeps_the_outputs():
    state_dict = resolve_weights("imagenet", allow_download=False).state_dict
    reference = MobileNetV2Embedder(state_dict).eval()
    folded = inference_model(state_dict, "pool", torch.device("cpu"))
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    images = torch.from_numpy(noise_image(3, size=(2 * 3 * 64, 64))).view(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(folded(images), reference(images), rtol=1e-3, atol=1e-4)


def test_identical_and_reencoded_radiographs_embed_alike(tmp_path, ankle_radiograph):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    ankle = (ankle_radiograph >> 2).astype(np.uint8)
    save_gray(data / "ankle/original.png", ankle)
    save_gray(data / "ankle/exact-copy.png", ankle)
    save_gray(data / "ankle/reencoded.jpg", ankle, quality=75)
    save_gray(data / "ankle/other.png", np.ascontiguousarray(ankle[::-1, :]))  # a different picture
    scan = scan_into(data, manifests)
    result = embed_manifest(manifests, EmbedConfig(), workers=0)
    assert result.embedded == 3  # identical bytes are embedded once
    ids, vectors = read_embeddings(manifests)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    by_path = dict(zip(scan["path"], scan["image_id"], strict=True))
    vector = {path: vectors[ids.index(image_id)] for path, image_id in by_path.items()}
    assert cosine(vector["ankle/original.png"], vector["ankle/reencoded.jpg"]) > 0.99
    assert cosine(vector["ankle/original.png"], vector["ankle/other.png"]) < 0.95
    provenance = read_provenance(manifests / "embeddings.parquet")["params"]
    assert provenance["weights_sha256"] == IMAGENET_SHA256
    assert (provenance["layer"], provenance["image_size"], provenance["dim"]) == ("pool", 224, 1280)


def test_logits_layer_and_crop_mode(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    save_gray(data / "a/wide.png", noise_image(0, size=(40, 120)))
    scan_into(data, manifests)
    embed_manifest(manifests, EmbedConfig(weights="random", layer="logits", resize="crop"))
    assert read_embeddings(manifests)[1].shape == (1, 1000)


def test_rerun_embeds_only_what_is_missing(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(5):
        save_gray(data / f"a/{index}.png", noise_image(index))
    scan_into(data, manifests)
    first = embed_manifest(manifests, FAST, workers=0)
    save_gray(data / "a/new.png", noise_image(99))
    scan_into(data, manifests)
    second = embed_manifest(manifests, FAST, workers=0)
    assert (first.embedded, second.reused, second.embedded) == (5, 5, 1)
    import torch

    on_gpu = torch.cuda.is_available()  # "auto" names what it chose, with its precision
    assert first.device == ("cuda (bf16)" if on_gpu else "cpu (fp32)")
    assert embed_manifest(manifests, FAST, workers=0).device is None  # nothing left to embed
    changed = embed_manifest(manifests, EmbedConfig(weights="random", image_size=96), workers=0)
    assert (changed.reused, changed.embedded) == (0, 6)  # other settings: nothing mixed


def test_nothing_to_embed_loads_no_model_and_leaves_the_manifests_valid(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(3):
        save_gray(data / f"a/{index}.png", noise_image(index))
    scan_into(data, manifests)
    embed_manifest(manifests, FAST, workers=0)
    written = read_provenance(manifests / "embeddings.parquet")
    # In a fresh process, as a user's second `curate embed` runs: torch is never imported.
    script = (
        "import sys\n"
        "from fracture_curate.embed import EmbedConfig, embed_manifest\n"
        f"result = embed_manifest({str(manifests)!r}, EmbedConfig(weights='random', "
        "image_size=64))\n"
        "print(result.embedded, result.reused, 'torch' in sys.modules)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert output.split() == ["0", "3", "False"]
    # The file is left as it is, so a dedupe made from it stays valid.
    assert read_provenance(manifests / "embeddings.parquet")["run_id"] == written["run_id"]
    scan_into(data, manifests)  # a new scan of the same files: rewritten for the new scan
    again = embed_manifest(manifests, FAST, workers=0)
    assert (again.embedded, again.reused) == (0, 3)
    rewritten = read_provenance(manifests / "embeddings.parquet")
    assert rewritten["run_id"] != written["run_id"]
    assert rewritten["inputs"]["scan"] == read_provenance(manifests / "scan.parquet")["run_id"]


def test_embedding_reports_progress_through_the_callback(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(5):
        save_gray(data / f"a/{index}.png", noise_image(index))
    scan_into(data, manifests)
    calls = []
    embed_manifest(
        manifests,
        FAST,
        workers=0,
        batch_size=2,
        on_progress=lambda phase, done, total, note="": calls.append((phase, done, total)),
    )
    assert calls[0] == ("embedding", 0, 5) and calls[-1] == ("embedding", 5, 5)
    assert [done for _, done, _ in calls] == [0, 2, 4, 5]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell starts us ignoring it


@pytest.mark.parametrize("interruption", ["kill -9", "ctrl-c"])
def test_interrupted_run_resumes_and_matches_a_clean_run(tmp_path, interruption):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(120):
        save_gray(data / f"a/{index:03d}.png", noise_image(index, size=(96, 96)))
    scan_into(data, manifests)
    command = [sys.executable, "-m", "fracture_curate.cli", "embed", "--manifests", str(manifests)]
    command += ["--weights", "random", "--image-size", "64", "--batch-size", "4", "--workers", "2"]
    command += ["--checkpoint-every", "8", "--device", "cpu"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    parts = manifests / ".embeddings.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.05)
    if interruption == "kill -9":
        process.send_signal(signal.SIGKILL)  # the main process alone
    else:
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    output = process.communicate(timeout=60)[0].decode()
    if interruption == "ctrl-c":
        assert process.returncode == 130 and "Traceback" not in output
        assert "the same command goes on from them" in output
    assert not (manifests / "embeddings.parquet").exists()
    if sys.platform == "linux":  # the worker processes die with it rather than linger
        deadline = time.monotonic() + 10
        while processes_running(str(manifests)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not processes_running(str(manifests))
    resumed = embed_manifest(manifests, FAST, workers=0, checkpoint_every=8)
    assert resumed.reused >= 16 and resumed.reused + resumed.embedded == 120
    assert not parts.exists()
    ids, vectors = read_embeddings(manifests)
    clean = tmp_path / "clean"
    scan_into(data, clean)
    embed_manifest(clean, FAST, workers=0)
    clean_ids, clean_vectors = read_embeddings(clean)
    assert ids == clean_ids
    np.testing.assert_allclose(vectors, clean_vectors, rtol=1e-4, atol=1e-4)


def test_worker_processes_embed_exactly_as_the_main_process(tmp_path):
    """On a CPU each worker decodes and embeds its own batches; order, vectors and failures
    must not depend on it."""
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(9):  # two full batches of 4 and a partial one
        save_gray(data / f"a/{index}.png", noise_image(index, size=(70, 90)))
    colour = np.random.default_rng(5).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    Image.fromarray(colour).save(data / "a/colour.jpg")
    scan_into(data, manifests)
    (data / "a/4.png").write_bytes(b"replaced after the scan")
    results = {}
    for workers in (0, 2):
        result = embed_manifest(manifests, FAST, device="cpu", workers=workers)
        results[workers] = (result.failed, *read_embeddings(manifests))
        (manifests / "embeddings.parquet").unlink()
    (failed, ids, vectors), (failed_2, ids_2, vectors_2) = results[0], results[2]
    assert list(failed.values()) == list(failed_2.values()) and len(failed) == 1
    assert ids == ids_2 and len(ids) == 9
    np.testing.assert_allclose(vectors, vectors_2, rtol=1e-4, atol=1e-5)


def test_corrupt_weights_give_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(WeightsError, match="cannot be loaded"):
        resolve_weights(bad)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "mobilenet_v2-b0353104.pth").write_bytes(b"half a download")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="corrupt"):
        resolve_weights("imagenet")


def test_cli_reports_missing_weights_and_missing_scan(tmp_path, monkeypatch):
    result = runner.invoke(app, ["embed", "--manifests", str(tmp_path)])
    assert result.exit_code == 2 and "scan.parquet does not exist" in result.output
    save_gray(tmp_path / "data/a/x.png", noise_image(0))
    scan_into(tmp_path / "data", tmp_path / "m")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    monkeypatch.setattr("fracture_curate.weights.offline_package_path", lambda: None)
    result = runner.invoke(app, ["embed", "--manifests", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "no MobileNetV2 ImageNet weights found offline" in result.output
    assert "Traceback" not in result.output


def test_leftover_parts_made_with_other_settings_are_never_mixed_in(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(4):
        save_gray(data / f"a/{index}.png", noise_image(index))
    scan = scan_into(data, manifests)
    other = EmbedConfig(weights="random", image_size=48)  # another input size: other vectors
    parts = PartStore(manifests / PARTS_FOLDER)
    ids = scan["image_id"].tolist()[:2]
    parts.write(ids, np.ones((2, 1280), np.float32), other.identity() | {"weights_source": "x"})
    result = embed_manifest(manifests, FAST, workers=0)
    assert (result.reused, result.embedded) == (0, 4)
    mixed, vectors = read_embeddings(manifests)
    clean = tmp_path / "clean"
    scan_into(data, clean)
    embed_manifest(clean, FAST, workers=0)
    assert read_embeddings(clean)[0] == mixed
    np.testing.assert_allclose(read_embeddings(clean)[1], vectors, rtol=1e-5, atol=1e-6)
    assert not np.allclose(vectors[:2], 1.0)


def test_a_resumed_run_reads_each_part_once_and_never_overwrites_one(tmp_path):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for index in range(6):
        save_gray(data / f"a/{index}.png", noise_image(index))
    ids = scan_into(data, manifests)["image_id"].tolist()
    parts = PartStore(manifests / PARTS_FOLDER)
    identity = FAST.identity() | {"weights_source": "earlier run"}
    for first in (0, 2, 4):  # three parts of two images each ...
        parts.write(ids[first : first + 2], np.full((2, 1280), first, np.float32), identity)
    (manifests / PARTS_FOLDER / "part-000001.parquet").write_bytes(b"torn")  # ... one damaged
    result = embed_manifest(manifests, FAST, workers=0)
    assert (result.reused, result.embedded) == (4, 2) and result.discarded == [
        "part-000001.parquet"
    ]
    found, vectors = read_embeddings(manifests)
    assert sorted(found) == sorted(ids)  # the new part went after part-000002, not over it
    by_id = dict(zip(found, vectors[:, 0], strict=True))
    assert [by_id[image_id] for image_id in ids[:2] + ids[4:]] == [0, 0, 4, 4]


def test_crop_keeps_the_centre_and_stretch_keeps_the_whole_image():
    wide = np.zeros((100, 300), np.uint8)
    wide[:, :100] = 255  # a white band on the left third, black elsewhere
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    stretched = preprocess(buffer.getvalue(), 64, "stretch")
    cropped = preprocess(buffer.getvalue(), 64, "crop")
    assert stretched.shape == cropped.shape == (64, 64, 3)
    assert stretched[:, :16].mean() > 250 and stretched[:, -16:].mean() < 5  # all of it, squeezed
    assert cropped.max() < 5  # the centre square of a 3:1 image misses the white third
