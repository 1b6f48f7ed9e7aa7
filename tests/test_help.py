"""Every command's ``--help`` reads whole in an 80-column terminal: no option name, default or
line is cut, and every option says what it does."""

from __future__ import annotations

import re

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from fracture_curate.cli import app as curate_app
from fracture_train.cli import app as train_app

runner = CliRunner()


def commands() -> list:
    """One pytest param (app, arguments before --help) for every command and subcommand."""
    found = [("train", train_app, []), ("train", train_app, ["evaluate"])]
    found.append(("curate", curate_app, []))
    group = get_command(curate_app)
    found += [("curate", curate_app, [name]) for name in group.commands]  # type: ignore[attr-defined]
    return [
        pytest.param(app, arguments, id=" ".join([name, *arguments]))
        for name, app, arguments in found
    ]


@pytest.mark.parametrize(("app", "arguments"), commands())
def test_help_fits_80_columns_and_cuts_nothing(app, arguments):
    result = runner.invoke(app, [*arguments, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output
    command = get_command(app)
    if arguments:
        command = command.commands[arguments[0]]  # type: ignore[attr-defined]
    for parameter in command.params:
        if isinstance(parameter, click.Option) and not parameter.hidden:
            for name in parameter.opts + parameter.secondary_opts:
                assert re.search(rf"(^|[\s/,]){re.escape(name)}([\s,=]|$)", result.output), name
            assert parameter.help, f"{parameter.opts[0]} has no help"
