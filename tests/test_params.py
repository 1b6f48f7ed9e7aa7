"""Parameter rules: every stage's config checks itself once and names the values allowed; the
command lines turn the project's errors into one line and let bugs keep their traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from fracture_curate.cli import app as curate
from fracture_curate.dedupe import DedupeConfig
from fracture_curate.dicom import Window
from fracture_curate.display import clean_errors
from fracture_curate.embed import EmbedConfig
from fracture_curate.errors import ConfigError, CurateError
from fracture_curate.manifest import ManifestError
from fracture_curate.outliers import OutlierConfig
from fracture_curate.params import Interval, Options
from fracture_curate.scan import ScanConfig
from fracture_curate.split import SplitConfig
from fracture_train.checkpoint import CheckpointError
from fracture_train.cli import app as train
from fracture_train.config import TrainConfig
from fracture_train.models import ModelError
from fracture_train.rows import DataError


def test_intervals_and_options_say_what_they_allow():
    whole = Interval(1, integer=True)
    assert whole.allows(3) and whole.allows(3.0)
    assert not whole.allows(0) and not whole.allows(2.5) and not whole.allows(True)
    assert str(whole) == "a whole number >= 1"
    half_open = Interval(0, 0.5, closed="right")
    assert half_open.allows(0.5) and not half_open.allows(0) and not half_open.allows(float("nan"))
    assert str(half_open) == "a number in (0, 0.5]"
    choice = Options(("pool", "logits"))
    assert choice.allows("pool") and not choice.allows("Pool") and not choice.allows(1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ScanConfig(layout="nested"), "unknown layout 'nested'; choose one of auto, class"),
        (lambda: ScanConfig(max_pixels=0), "--max-pixels must be a whole number >= 1; got 0"),
        (lambda: ScanConfig(formats=()), "--formats must name at least one format"),
        (lambda: ScanConfig(layout="csv"), "layout 'csv' needs --labels FILE"),
        (lambda: EmbedConfig(layer="fc"), "unknown layer 'fc'; choose one of pool, logits"),
        (lambda: EmbedConfig(image_size=8), "--image-size must be a whole number >= 32"),
        (lambda: DedupeConfig(phash_radius=300), "--phash-radius must be a whole number in"),
        (lambda: DedupeConfig(cosine_threshold=1.5), "--cosine-threshold must be a number in"),
        (lambda: DedupeConfig(geometry_threshold=0), "--geometry-threshold must be a whole"),
        (lambda: OutlierConfig(components=0), "--components must be a number in (0, 1) or a"),
        (lambda: OutlierConfig(components=2.5), "or a whole number >= 1; got 2.5"),
        (lambda: OutlierConfig(contamination=0.7), "--contamination must be 'robust', 'auto'"),
        (lambda: SplitConfig(train=0), "--train must be a number in (0, 1); got 0"),
        (lambda: SplitConfig(val=-0.1), "--val must be a number in (0, 1); got -0.1"),
        (lambda: train_config(optimizer="lion"), "unknown optimizer 'lion'; choose one of adamw"),
        (lambda: train_config(epochs=0), "--epochs must be a whole number >= 1; got 0"),
        (lambda: train_config(target_sensitivity=0), "--target-sensitivity must be a number in"),
        (lambda: train_config(label_smoothing=1), "--label-smoothing must be a number in [0, 1)"),
        (lambda: train_config(workers=-2), "--workers must be None or a whole number >= 0"),
        (lambda: train_config(device="tpu"), "unknown device 'tpu'; choose auto, cpu, cuda"),
    ],
)
def test_every_config_rejects_a_bad_value_naming_what_is_allowed(make, message):
    with pytest.raises(ConfigError) as raised:
        make()
    assert message in str(raised.value)


def train_config(**changes: object) -> TrainConfig:
    return TrainConfig(manifest=Path("split.parquet"), out=Path("run"), **changes)


def test_the_command_lines_take_their_defaults_from_the_configs():
    """Each option's default is its config field's (configs of the defaults are valid)."""
    commands = typer.main.get_command(curate).commands
    configs = {
        "scan": ScanConfig(),
        "embed": EmbedConfig(),
        "dedupe": DedupeConfig(),
        "outliers": OutlierConfig(),
        "split": SplitConfig(),
    }
    fields = {"embeddings": "use_embeddings", "labels": "labels_csv"}  # option -> field
    compared = 0
    for name, config in configs.items():
        for option in commands[name].params:
            field = fields.get(option.name, option.name)
            if hasattr(config, field):
                value = getattr(config, field)
                if isinstance(value, tuple):
                    value = ",".join(value)
                assert option.default == (str(value) if isinstance(value, Window) else value)
                compared += 1
    config = train_config()
    given = {"manifest", "out", "workers"}  # required, or -1 standing for "automatic"
    for option in typer.main.get_command(train).params:
        if hasattr(config, option.name) and option.name not in given:
            assert option.default == getattr(config, option.name), option.name
            compared += 1
    assert compared > 40


@pytest.mark.parametrize(
    "error",
    [ConfigError, ManifestError, DataError, CheckpointError, ModelError],
)
def test_every_domain_error_is_one_clean_line(error, capsys):
    assert issubclass(error, CurateError)
    with pytest.raises(typer.Exit) as exited, clean_errors():
        raise error("what is wrong; what to do next")
    assert exited.value.exit_code == 2
    assert capsys.readouterr().err.strip() == "error: what is wrong; what to do next"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError), clean_errors():
        _ = 1 / 0
    with pytest.raises(KeyError), clean_errors():
        _ = {}["missing"]
