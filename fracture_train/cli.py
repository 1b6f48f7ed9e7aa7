"""The ``train`` command line (the trainer itself lands with the trainer issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Fine-tune and evaluate a fracture classifier on a curated split manifest.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def train(
    manifest: Annotated[Path, typer.Option(help="split.parquet written by `curate split`.")],
) -> None:
    """Train on the train rows of MANIFEST (not built yet: exits with status 2)."""
    typer.echo(
        f"error: the trainer is not built yet; {manifest} was not read (see the trainer issue)",
        err=True,
    )
    raise typer.Exit(code=2)
