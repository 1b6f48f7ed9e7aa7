"""``curate scan`` and ``curate embed`` on Ray Data: on a local Ray instance of 2 CPUs, the same
manifests as the local path, row for row; an interrupted Ray embed resumes from its parts; a
missing Ray, a bad address or a worker that cannot see the data is a one-line error.

One Ray instance serves the whole module (it takes seconds to start); ``--ray auto`` and
:func:`~fracture_curate.distributed.ray_cluster` find it already connected and keep it.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import noise_image, save_gray, write_noise_images
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from fracture_curate.cli import app
from fracture_curate.distributed import (
    RayCluster,
    RayError,
    _blocks,
    _decode_batch,
    _ModelActor,
    ray_cluster,
)
from fracture_curate.embed import PARTS_FOLDER, EmbedConfig, embed_manifest
from fracture_curate.manifest import METADATA_KEY
from fracture_curate.scan import run_scan
from fracture_curate.weights import weights_sha256

# Ray Data's own copies of its context set attributes it has deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
runner = CliRunner()
#: Real ImageNet weights (from the installed offline package, as each Ray worker finds them),
#: small inputs: the model costs little next to Ray's start-up.
SMALL = EmbedConfig(image_size=64)
#: Max abs difference allowed between a Ray vector and the local path's. Both run the same fp32
#: model on one thread per worker on the same uint8 inputs, batched differently: measured 0.0.
#: For scale: the local model on 2 threads instead of 1 moves values by up to 1.05e-5 (float
#: sums in another order, on features up to ~5), so this allows rounding and nothing more.
TOLERANCE = 1e-5
#: Provenance that differs between any two runs: when and which run wrote the file.
RUN_SPECIFIC = ("created", "run_id")


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance with 2 CPUs for the module. Its object store is small: a few
    hundred MB of the machine's memory, in /dev/shm when that has room, else (a container's
    64 MB default) in Ray's temp folder, which Ray chooses by itself below 10 GB."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    yield ray
    ray.shutdown()


def write_dataset(root: Path) -> dict[str, str]:
    """A small class-layout set with one file of each kind the scan treats apart; returns the
    planted files by kind."""
    kept = [f"fractured/{index:02d}.png" for index in range(8)]
    kept += [f"not fractured/{index:02d}.jpg" for index in range(8)]
    write_noise_images(root, kept)
    planted = {
        "copy": "not fractured/copy-of-00.png",
        "gif": "fractured/animated.gif",
        "bad": "fractured/broken.png",
        "blank": "not fractured/blank.png",
        "dicom": "fractured/knee.dcm",
        "wide": "fractured/wide.png",
    }
    shutil.copy(root / kept[0], root / planted["copy"])
    Image.fromarray(noise_image(50)).save(root / planted["gif"], format="GIF")
    (root / planted["bad"]).write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    save_gray(root / planted["blank"], np.full((64, 64), 7, np.uint8))
    shutil.copy(get_testdata_file("MR_small.dcm"), root / planted["dicom"])
    save_gray(root / planted["wide"], noise_image(51, size=(48, 96)))
    return planted


def provenance(path: Path) -> dict:
    """A manifest's provenance without what is specific to a run."""
    found = json.loads(pq.read_metadata(path).metadata[METADATA_KEY])
    return {key: value for key, value in found.items() if key not in RUN_SPECIFIC}


def read_vectors(manifests: Path) -> tuple[list[str], np.ndarray]:
    frame = pd.read_parquet(manifests / "embeddings.parquet")
    return frame["image_id"].tolist(), np.stack(frame["embedding"].to_list())


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A dataset scanned on this machine, then one kept file changed: an embed must report it
    the same way on Ray as here."""
    folder = tmp_path_factory.mktemp("scanned")
    planted = write_dataset(folder / "data")
    run_scan(folder / "data", folder / "manifests", workers=1)
    save_gray(folder / "data" / "fractured/03.png", noise_image(99))  # changed after the scan
    return folder / "manifests", planted


def fresh_manifests(scanned, name: str, tmp_path: Path) -> Path:
    """A manifests folder of its own holding the shared scan."""
    manifests = tmp_path / name
    manifests.mkdir()
    shutil.copy(scanned[0] / "scan.parquet", manifests / "scan.parquet")
    return manifests


@pytest.fixture(scope="module")
def local_embeddings(scanned, tmp_path_factory):
    manifests = fresh_manifests(scanned, "local", tmp_path_factory.mktemp("local"))
    result = embed_manifest(manifests, SMALL)  # as `curate embed` runs by default
    return manifests, result


@pytest.mark.slow
def test_scan_on_ray_writes_the_local_manifest_row_for_row(ray_instance, tmp_path, monkeypatch):
    planted = write_dataset(tmp_path / "data")
    monkeypatch.setenv("FRACTURE_CURATE_PSEUDONYM_KEY", "ab" * 32)  # one key: same pseudonyms
    local, distributed = tmp_path / "local", tmp_path / "ray"
    result = runner.invoke(app, ["scan", str(tmp_path / "data"), "--out", str(local)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["scan", str(tmp_path / "data"), "--out", str(distributed), "--ray", "auto"]
    )
    assert result.exit_code == 0, result.output
    assert "Ray: the instance this process is connected to (2 CPUs, no GPU)" in result.output
    expected = pd.read_parquet(local / "scan.parquet")
    found = pd.read_parquet(distributed / "scan.parquet")
    pd.testing.assert_frame_equal(found, expected)  # every column, dtype and row, in order
    assert provenance(distributed / "scan.parquet") == provenance(local / "scan.parquet")
    # The planted files are there, each with its verdict: the comparison is not of empties.
    rows = found.set_index("path")
    assert len(rows) == 16 + len(planted)
    assert rows.loc[planted["gif"], "status"] == "dropped_format"
    assert "GIF is not a kept format" in rows.loc[planted["gif"], "reason"]
    assert rows.loc[planted["bad"], "status"] == "not_image"
    assert rows.loc[planted["blank"], "status"] == "degenerate"
    assert rows.loc[planted["dicom"], "format"] == "DICOM"
    assert pd.notna(rows.loc[planted["dicom"], "patient_id"])  # a pseudonym, the same key's
    assert rows.loc[planted["copy"], "image_id"] == rows.loc["fractured/00.png", "image_id"]


@pytest.mark.slow
def test_embed_on_ray_gives_the_local_rows_and_vectors(
    ray_instance, scanned, local_embeddings, tmp_path
):
    manifests = fresh_manifests(scanned, "ray", tmp_path)
    result = runner.invoke(
        app, ["embed", "--manifests", str(manifests), "--image-size", "64", "--ray", "auto"]
    )
    assert result.exit_code == 0, result.output
    assert "device: Ray, 2 actor(s): cpu (fp32)" in result.output
    assert "1 image(s) could not be loaded" in result.output  # the file changed after the scan
    local_ids, local_vectors = read_vectors(local_embeddings[0])
    ids, vectors = read_vectors(manifests)
    assert ids == local_ids and len(ids) == 17  # 19 kept: a copy embedded once, one changed
    assert vectors.shape == (17, 1280) and vectors.dtype == np.float32
    assert np.abs(vectors - local_vectors).max() <= TOLERANCE
    assert provenance(manifests / "embeddings.parquet") == provenance(
        local_embeddings[0] / "embeddings.parquet"
    )  # the same parameters, weights source, input scan and failures
    assert not (manifests / PARTS_FOLDER).exists()


@pytest.mark.slow
def test_an_interrupted_ray_embed_resumes_from_its_parts(
    ray_instance, scanned, local_embeddings, tmp_path
):
    manifests = fresh_manifests(scanned, "resumed", tmp_path)

    def interrupt(phase, done, total, note=""):
        if done >= 8:
            raise KeyboardInterrupt  # as Ctrl-C would, between two batches

    with ray_cluster("auto") as cluster, pytest.raises(KeyboardInterrupt):
        embed_manifest(
            manifests,
            SMALL,
            checkpoint_every=4,
            on_progress=interrupt,
            embed_files=cluster.embed_files,
        )
    assert not (manifests / "embeddings.parquet").exists()
    saved = pd.concat(map(pd.read_parquet, (manifests / PARTS_FOLDER).glob("part-*.parquet")))
    assert len(saved) >= 4
    with ray_cluster("auto") as cluster:  # the first run's actors were freed: this one runs
        resumed = embed_manifest(
            manifests, SMALL, checkpoint_every=4, embed_files=cluster.embed_files
        )
    assert resumed.reused == len(saved) and resumed.reused + resumed.embedded == 17
    assert resumed.device == "Ray, 2 actor(s): cpu (fp32)"
    ids, vectors = read_vectors(manifests)
    local_ids, local_vectors = read_vectors(local_embeddings[0])
    assert ids == local_ids
    assert np.abs(vectors - local_vectors).max() <= TOLERANCE
    assert list(resumed.failed.values()) == list(local_embeddings[1].failed.values())
    assert not (manifests / PARTS_FOLDER).exists()


def test_a_worker_that_cannot_see_the_dataset_stops_the_run(ray_instance, tmp_path):
    cluster = RayCluster("test")
    with pytest.raises(RayError, match=r"cannot see the dataset folder .* same path"):
        list(cluster.map_files(str, ["a.png", "b.png"], tmp_path / "elsewhere"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (f"127.0.0.1:{free_port()}", "no Ray cluster answers at 127.0.0.1:"),
        (f"ray://127.0.0.1:{free_port()}", "no Ray cluster answers at ray://127.0.0.1:"),
        ("head-node", "is not host:port or ray://host:port"),
    ],
)
@pytest.mark.parametrize("command", ["scan", "embed"])
def test_a_bad_address_is_a_one_line_error(tmp_path, address, message, command):
    arguments = [str(tmp_path), "--out", str(tmp_path / "m")]
    if command == "embed":
        arguments = ["--manifests", str(tmp_path)]
    result = runner.invoke(app, [command, *arguments, "--ray", address])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_without_ray_installed_ray_runs_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    write_noise_images(tmp_path / "data", ["a/0.png"])
    result = runner.invoke(app, ["scan", str(tmp_path / "data"), "--ray", "auto"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (
        "error: --ray needs Ray, an optional extra: pip install 'fracture-curate[distributed]'"
    )


def test_the_package_and_the_local_path_never_import_ray(tmp_path):
    write_noise_images(tmp_path / "data", ["a/0.png", "a/1.png"])
    script = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "import fracture_curate, fracture_curate.cli, fracture_curate.distributed\n"
        "from fracture_curate.scan import run_scan\n"
        f"print(len(run_scan({str(tmp_path / 'data')!r}, {str(tmp_path / 'm')!r}, workers=1)"
        ".frame))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert output.split() == ["2"]


def test_gpu_actors_fed_by_decoding_tasks_embed_as_cpu_actors_that_decode(scanned):
    """The GPU layout (CPU tasks decode, actors embed) checked on a CPU, without Ray: the same
    vectors and failures as an actor that reads its files itself."""
    manifests, _ = scanned
    scan = pd.read_parquet(manifests / "scan.parquet")
    kept = scan[scan["status"] == "ok"].drop_duplicates("image_id").reset_index(drop=True)
    batch = {
        "index": np.arange(len(kept), dtype=np.int64),
        "path": kept["path"].to_numpy(object),
        "image_id": kept["image_id"].to_numpy(object),
        "size": kept["bytes"].to_numpy(np.int64),
    }
    reading = {
        "root": str(manifests.parent / "data"),
        "window": "preset:1",
        "image_size": 64,
        "resize": "stretch",
    }
    model = {"config": SMALL, "weights_sha256": weights_sha256(SMALL.weights), "device": "cpu"}
    reads_itself = _ModelActor(**model, reading=reading)(batch)
    fed = _ModelActor(**model, reading=None)(_decode_batch(batch, **reading))
    assert (reads_itself["status"] == "changed").sum() == 1
    for column in ("index", "status", "reason", "problem"):
        assert reads_itself[column].tolist() == fed[column].tolist()
    np.testing.assert_array_equal(reads_itself["embedding"], fed["embedding"])
    assert set(fed["weights_source"]) <= {"offline-package", "torch-hub-cache"}


def test_an_actor_whose_weights_file_is_not_the_drivers_reports_it(tmp_path):
    import torch
    import torchvision

    weights = tmp_path / "weights.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), weights)
    config = EmbedConfig(weights=str(weights))
    actor = _ModelActor(config, "0" * 64, "cpu", reading={"root": str(tmp_path)})
    assert actor.problem == (
        f"the Ray worker on {socket.gethostname()}: its weights {weights} are not the "
        "driver's (another SHA-256); install the same file on every node"
    )
    output = actor({"index": np.arange(2), "path": np.array(["a.png", "b.png"], object)})
    assert output["problem"].tolist() == [actor.problem] * 2
    assert output["status"].tolist() == ["problem"] * 2
    same = _ModelActor(config, weights_sha256(weights), "cpu", reading={"root": str(tmp_path)})
    assert same.problem == "" and same.weights_source == "explicit"


def test_blocks_cover_every_row_in_order_and_spread_small_sets():
    frame = pd.DataFrame({"n": range(10)})
    blocks = _blocks(frame, rows_per_block=256, at_least=4)
    assert len(blocks) == 4 and pd.concat(blocks)["n"].tolist() == list(range(10))
    assert len(_blocks(frame, rows_per_block=3, at_least=1)) == 4  # at most 3 rows each
    assert len(_blocks(frame, rows_per_block=256, at_least=50)) == 10  # never an empty block
    assert len(_blocks(frame.iloc[:1], rows_per_block=256, at_least=8)) == 1
    assert _blocks(frame.iloc[:0], rows_per_block=256, at_least=8) == []
