"""Rich rendering shared by the CLI commands: progress bars, tables, one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console()
error_console = Console(stderr=True, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``412.3 img/s``."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else "", style="cyan")


def make_progress(unit: str = "files") -> Progress:
    """A progress bar with counts, items per second, elapsed time and an ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def frame_table(frame: pd.DataFrame, title: str) -> Table:
    """A rich table of a small DataFrame, index included."""
    table = Table(title=title, title_justify="left")
    index_name = frame.index.name or (frame.index.names[0] if frame.index.names else "") or ""
    table.add_column(str(index_name), style="bold")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        table.add_row(str(index), *(_cell(value) for value in row))
    return table


@contextmanager
def clean_errors(*expected: type[BaseException]) -> Iterator[None]:
    """Turn the expected exceptions into a one-line error and exit status 2, not a traceback."""
    try:
        yield
    except expected as error:
        error_console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from error


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
