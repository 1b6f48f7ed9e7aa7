"""`train` under torchrun: two gloo processes on CPU train as one process with a batch twice as
large, evaluate exactly as one process evaluates the same checkpoint, write the run folder once,
resume, and refuse a bad option in one line. And the helpers' edges: shares, the sharded
sampler, gathering predictions back into order."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_train import RUN_FILES, config, easy_dataset, split_manifest
from torch import nn
from torch.utils.data import RandomSampler, WeightedRandomSampler
from typer.testing import CliRunner

from fracture_curate.errors import ConfigError
from fracture_curate.manifest import folder_lock, read_manifest, read_provenance, write_manifest
from fracture_train import distributed
from fracture_train.checkpoint import to_json
from fracture_train.cli import app
from fracture_train.config import Uncertainty
from fracture_train.data import ShardedSampler
from fracture_train.distributed import World, device_for, gather_predictions
from fracture_train.evaluate import evaluate_run
from fracture_train.models import two_block_cnn
from fracture_train.trainer import check_sync_batchnorm, train_run

TESTS = Path(__file__).parent
runner = CliRunner()
#: The model of the runs compared here (this module's factory, importable by torchrun's
#: processes through PYTHONPATH).
PLAIN_CNN = "test_distributed_train:plain_cnn"
#: What every run here shares (the tiny CNN learns the easy set with these: val AUROC 0.97,
#: test 0.87): --schedule step, so that a run of 3 epochs resumed to 4 takes the learning rates
#: of a run of 4 (a cosine's length is the run's), dropping tenfold at epoch 4, after the resume.
OPTIONS = dict(
    model=PLAIN_CNN,
    image_size=48,
    epochs=4,
    optimizer="sgd",
    lr=3e-2,
    augment="none",
    schedule="step",
    step_every=3,
    bootstrap=200,
)
FIRST_EPOCHS = 3  #: the distributed run's epochs before it is resumed
PER_PROCESS_BATCH = 6
#: Two processes of 6 images average the same gradient as one process of 12, summed in another
#: order, so the runs differ by float32 rounding, which each step carries on (and max pooling
#: may amplify). Measured after these 4 epochs: losses and metrics differ by up to 3e-6,
#: probabilities by 9e-6, weights by 2e-5 (after 8 epochs: 7e-5 and 3e-4, why these runs are
#: short). Two processes that each trained alone (no DistributedDataParallel) differed by 0.2
#: in val loss and 0.03 in weights.
TRAINING_TOLERANCE = 1e-4  #: losses, metrics and probabilities
WEIGHTS_TOLERANCE = 1e-3
#: One process and two, predicting the same checkpoint in other batches, agree to float32
#: rounding of the probabilities (test_train: 1e-6), so their metrics do too.
EVALUATION_TOLERANCE = 1e-6


def plain_cnn(num_classes: int) -> nn.Module:
    """The tests' two-block CNN without its dropout: each process draws its own dropout masks,
    so with dropout two processes could never train as one. Nothing else in these runs is
    random once the seed is set (no augmentation)."""
    model = two_block_cnn(num_classes)
    model.dense[2] = nn.Identity()
    return model


def torchrun(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`train ARGUMENTS` in two gloo processes on this machine, as a user starts it. A run that
    hangs fails the test after ``timeout`` seconds, its processes killed with torchrun."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "fracture_train.cli", *arguments]
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    environment = os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,  # torchrun and its workers: one process group to kill
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def cli_options(manifest: Path, out: Path, **options: object) -> list[str]:
    """The command line of ``config(manifest, out, **OPTIONS, **options)`` (the options set
    here, and the defaults of test_train's ``config`` that differ from the CLI's)."""
    chosen = {"workers": 0, "warmup_epochs": 0.5, "patience": 0, **OPTIONS, **options}
    command = ["--manifest", str(manifest), "--out", str(out)]
    for name, value in chosen.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
        else:
            command += [flag, str(value)]
    return command


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    """The easy set with one val and one test row left out: 11 each, which two processes cannot
    share evenly (a share padded as torch's DistributedSampler pads would count one twice)."""
    folder = tmp_path_factory.mktemp("odd")
    manifest = split_manifest(easy_dataset(folder / "data"), folder / "split.parquet")
    frame = read_manifest(manifest)
    for split in ("val", "test"):
        first = frame.index[frame["split"] == split][0]
        frame.loc[first, ["split", "excluded_reason"]] = [None, "left out by the test"]
    params = read_provenance(manifest)["params"]
    return write_manifest(frame, manifest, stage="split", params=params)


@pytest.fixture(scope="module")
def ddp(odd, tmp_path_factory) -> dict:
    """A torchrun of two processes for 6 epochs, resumed to 8: its folder and outputs."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    options = cli_options(odd, out, batch_size=PER_PROCESS_BATCH)
    first = torchrun(*options, "--epochs", str(FIRST_EPOCHS))
    assert first.returncode == 0, first.stdout + first.stderr
    resumed = torchrun(*options, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return {"out": out, "first": first, "resumed": resumed}


@pytest.fixture(scope="module")
def single(odd, tmp_path_factory):
    """One process, straight through 8 epochs, each step on the two processes' 12 images."""
    out = tmp_path_factory.mktemp("single") / "run"
    return train_run(config(odd, out, **(OPTIONS | {"batch_size": 2 * PER_PROCESS_BATCH})))


def close(found: object, expected: object, tolerance: float, where: str = "") -> None:
    """Nested metrics equal, numbers to ``tolerance``; both as strict JSON has them (NaN as
    null)."""
    found, expected = (json.loads(json.dumps(to_json(value))) for value in (found, expected))
    if isinstance(expected, dict):
        assert isinstance(found, dict) and found.keys() == expected.keys(), where
        for key, value in expected.items():
            close(found[key], value, tolerance, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(found, list) and len(found) == len(expected), where
        for index, (one, other) in enumerate(zip(found, expected, strict=True)):
            close(one, other, tolerance, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert found == pytest.approx(expected, rel=0, abs=tolerance), where
    else:
        assert found == expected, where


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_twice_the_batch(ddp, single):
    expected = single.history
    history = pd.read_csv(ddp["out"] / "history.csv")
    assert history["epoch"].tolist() == list(range(1, OPTIONS["epochs"] + 1))
    for column in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auroc"):
        np.testing.assert_allclose(history[column], expected[column], atol=TRAINING_TOLERANCE)
    assert history["best"].tolist() == expected["best"].tolist()
    for name in ("last", "best"):
        got = load_file(ddp["out"] / f"{name}.safetensors")
        want = load_file(single.out / f"{name}.safetensors")
        assert got.keys() == want.keys()  # the module's own names: no "module." prefix
        for key, tensor in want.items():
            torch.testing.assert_close(got[key], tensor, rtol=0, atol=WEIGHTS_TOLERANCE)
    metrics = json.loads((ddp["out"] / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["n"] == 11
        for name in ("accuracy", "auroc", "loss", "confusion_matrix"):
            close(metrics[split][name], single.metrics[split][name], TRAINING_TOLERANCE, name)
    close(metrics["selection"], single.metrics["selection"], TRAINING_TOLERANCE)
    close(metrics["val_threshold"], single.metrics["val_threshold"], TRAINING_TOLERANCE)
    predicted = pd.read_parquet(ddp["out"] / "predictions.parquet")
    expected = pd.read_parquet(single.out / "predictions.parquet")
    assert predicted["path"].tolist() == expected["path"].tolist()
    np.testing.assert_allclose(
        predicted["prob_fractured"], expected["prob_fractured"], rtol=0, atol=TRAINING_TOLERANCE
    )


@pytest.mark.slow
def test_one_process_evaluates_the_distributed_checkpoint_as_the_run_did(ddp, odd, tmp_path):
    """The checkpoint loads in one process, and the metrics the two processes computed on
    their gathered predictions are one process's on the same weights: no image counted twice
    or left out, no metric averaged over processes."""
    out = ddp["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    saved = pd.read_parquet(out / "predictions.parquet")
    assert len(saved) == 22 and saved["image_id"].is_unique
    for split in ("val", "test"):
        alone = evaluate_run(
            out,
            odd,
            split=split,
            out=tmp_path / split,
            model=PLAIN_CNN,
            workers=0,
            uncertainty=Uncertainty(200),
        )
        close(alone.metrics[split], metrics[split], EVALUATION_TOLERANCE, split)
        predicted = pd.read_parquet(tmp_path / split / "predictions.parquet")
        rows = saved[saved["split"] == split].reset_index(drop=True)
        assert predicted["path"].tolist() == rows["path"].tolist()  # the split's own order
        np.testing.assert_allclose(
            predicted["prob_fractured"], rows["prob_fractured"], rtol=0, atol=EVALUATION_TOLERANCE
        )


@pytest.mark.slow
def test_only_rank_0_writes_and_prints_and_a_resumed_run_goes_on(ddp):
    out = ddp["out"]
    assert sorted(path.name for path in out.iterdir()) == sorted([*RUN_FILES, ".lock"])
    for run in (ddp["first"], ddp["resumed"]):
        output = run.stdout + run.stderr
        assert "Traceback" not in output and "error:" not in output, output
        assert output.count("best epoch") == 1 and output.count("test (n=11)") == 1, output
        assert output.count("processes: 2 (DistributedDataParallel over gloo)") == 1
    resumed = ddp["resumed"].stdout
    epochs = OPTIONS["epochs"]
    assert resumed.count(f"resuming after epoch {FIRST_EPOCHS}") == 1
    assert f" {epochs}/{epochs} " in resumed and f" {FIRST_EPOCHS}/{epochs} " not in resumed
    run_config = json.loads((out / "config.json").read_text())
    assert run_config["training"]["batch_size"] == PER_PROCESS_BATCH
    assert run_config["selection"]["epochs_run"] == epochs


@pytest.mark.slow
def test_a_bad_option_under_torchrun_is_one_line_not_a_hang(odd, tmp_path):
    refused = torchrun(*cli_options(odd, tmp_path / "run", optimizer="lion"), timeout=60)
    assert refused.returncode != 0
    lines = (refused.stdout + refused.stderr).splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == ["error: unknown optimizer 'lion'; choose one of adamw, adam, sgd"], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_folder_in_use_stops_rank_0_in_one_line_and_torchrun_stops_the_others(odd, tmp_path):
    """Rank 0 fails where the others go on to wait for it: torchrun must end them, not wait."""
    out = tmp_path / "run"
    with folder_lock(out, "run folder"):  # another run writing there
        refused = torchrun(*cli_options(odd, out, epochs=1), timeout=60)
    assert refused.returncode != 0
    lines = (refused.stdout + refused.stderr).splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "is writing to the run folder" in errors[0], lines
    assert not any(line.startswith("[rank") for line in lines), lines  # no worker traceback
    assert sorted(path.name for path in out.iterdir()) == [".lock"]


def test_shares_hold_every_item_once():
    for count in (0, 1, 7, 12):
        for size in (1, 2, 3):
            shares = [World(rank, size).shard(count) for rank in range(size)]
            assert sorted(np.concatenate(shares).tolist()) == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_sharded_samplers_split_one_order_into_the_batches_of_one_process():
    """Two ranks' batches of 3 at each step hold the images of one process's batch of 6."""
    order = list(RandomSampler(range(13), generator=torch.Generator().manual_seed(5)))
    shares = []
    for rank in range(2):
        sampler = RandomSampler(range(13), generator=torch.Generator().manual_seed(5))
        shares.append(list(ShardedSampler(sampler, rank, 2)))
    assert [len(share) for share in shares] == [7, 7]  # padded: every process as many steps
    for step in range(2):
        both = shares[0][3 * step : 3 * step + 3] + shares[1][3 * step : 3 * step + 3]
        assert sorted(both) == sorted(order[6 * step : 6 * step + 6])
    assert shares[0][6] == order[12] and shares[1][6] == order[0]  # the padding repeats
    weights = torch.tensor([1.0, 1.0, 8.0, 8.0])
    drawn = list(WeightedRandomSampler(weights, 4, generator=torch.Generator().manual_seed(1)))
    halves = [
        list(
            ShardedSampler(
                WeightedRandomSampler(weights, 4, generator=torch.Generator().manual_seed(1)), r, 2
            )
        )
        for r in range(2)
    ]
    assert halves == [drawn[0::2], drawn[1::2]]
    assert list(ShardedSampler(RandomSampler(range(1)), 1, 3)) == [0]  # fewer items than ranks


def test_gathered_predictions_come_back_in_order_with_the_loss_over_all_rows(monkeypatch):
    probs = np.linspace(0, 1, 14).reshape(7, 2)
    targets = np.arange(7) % 2
    losses = np.arange(7, dtype=float)  # each row's loss
    world = World(0, 3)
    parts = []
    for rank in range(3):
        share = World(rank, 3).shard(7)
        loss = losses[share].mean() if len(share) else math.nan
        parts.append((share, probs[share], targets[share], loss))
    monkeypatch.setattr(distributed, "current", lambda: world)
    monkeypatch.setattr(distributed, "gather", lambda value: parts)
    gathered, gathered_targets, loss = gather_predictions(*parts[0])
    np.testing.assert_array_equal(gathered, probs)
    np.testing.assert_array_equal(gathered_targets, targets)
    assert loss == pytest.approx(losses.mean())  # by rows, not the mean of 3 processes' means
    parts[2] = (parts[1][0], *parts[1][1:])  # a share counted twice, another left out
    with pytest.raises(RuntimeError, match="overlap or leave rows out"):
        gather_predictions(*parts[0])
    monkeypatch.setattr(distributed, "current", lambda: World())
    assert gather_predictions(*parts[0])[0] is parts[0][1]  # alone: as it is


def test_under_torchrun_rank_0_alone_repeats_a_bad_option_and_others_name_their_rank(odd, tmp_path):
    def place(rank: int) -> dict[str, str]:
        return {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}

    bad_option = ["--manifest", str(odd), "--out", str(tmp_path / "run"), "--optimizer", "lion"]
    said = runner.invoke(app, bad_option, env=place(0))
    assert said.exit_code == 2 and said.stderr.startswith("error: unknown optimizer 'lion'")
    quiet = runner.invoke(app, bad_option, env=place(1))
    assert quiet.exit_code == 2 and quiet.output == ""
    missing = ["--manifest", str(tmp_path / "gone.parquet"), "--out", str(tmp_path / "run")]
    own = runner.invoke(app, missing, env=place(1))  # may be its own: it says so, naming itself
    lines = own.stderr.strip().splitlines()
    assert own.exit_code == 2 and len(lines) == 1, own.output
    assert lines[0].startswith("error: ") and lines[0].endswith(
        "does not exist. Run `curate split` first. (rank 1)"
    )
    assert not (tmp_path / "run").exists()


def test_each_process_takes_the_gpu_of_its_local_rank_and_sync_batchnorm_needs_gpus():
    two = World(rank=1, size=2, local_rank=1)
    with pytest.raises(ConfigError, match="each process takes the GPU of its local rank"):
        device_for(two, "cuda:1")
    assert device_for(two, "cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--sync-batchnorm needs CUDA"):
        check_sync_batchnorm(True, two, torch.device("cpu"))
    check_sync_batchnorm(True, World(), torch.device("cpu"))  # alone: nothing to synchronise
    check_sync_batchnorm(False, two, torch.device("cpu"))
