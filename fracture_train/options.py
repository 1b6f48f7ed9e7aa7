"""Command-line options that several commands of ``train`` and ``serve`` share, written once."""

from __future__ import annotations

from typing import Annotated

import typer

from fracture_train.checkpoint import CHECKPOINTS

Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Which = Annotated[str, typer.Option(help="Checkpoint: " + " or ".join(CHECKPOINTS) + ".")]
Factory = Annotated[
    str | None,
    typer.Option(
        help="The package.module:factory the run(s) were trained with, when it was one: a run "
        "folder never imports code on its own."
    ),
]
