"""Rich rendering shared by the command lines: progress bars, tables, one-line errors.

The only place (with the command lines) that knows about rich: library code reports progress
through :class:`fracture_curate.progress.ProgressCallback`, drawn here by :class:`ProgressBars`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fracture_curate.errors import CurateError

# Markup is off: paths, labels and messages print as they are ("xrays [2019]" stays whole, a
# "[/]" in a name raises nothing); styled words are rich Text (see :func:`warning`).
console = Console(markup=False)
error_console = Console(stderr=True, soft_wrap=True, markup=False)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``412.3 img/s``."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else "", style="cyan")


def make_progress(unit: str = "files", *, output: Console = console) -> Progress:
    """A progress bar with counts, items per second, elapsed time and an ETA, on ``output``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output,
        transient=False,
    )


#: Seconds between the plain progress lines written where no terminal shows the bars.
LOG_EVERY = 10.0


class ProgressBars:
    """A progress callback that draws each phase as a bar of ``progress``; a new phase replaces
    the bar of the one before, so the last phase's bar stays on screen when the job ends.

    Where the console is no terminal (a log file, a pipe, CI), rich draws no bar until the end,
    so a plain line ("epoch 1/6: 160/512 img, 12.3 img/s, loss 0.693") is written every
    ``every`` seconds of a phase instead.
    """

    def __init__(
        self,
        progress: Progress,
        *,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.progress, self.every, self.clock = progress, every, clock
        self.phase: str | None = None
        self.task: TaskID | None = None
        self.started = self.logged = 0.0

    def __call__(self, phase: str, done: int, total: int, note: str = "") -> None:
        if phase != self.phase:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.phase, self.task = phase, self.progress.add_task(phase, total=total)
            self.started = self.logged = self.clock()
        description = f"{phase} {note}" if note else phase
        self.progress.update(self.task, completed=done, total=total, description=description)
        now = self.clock()
        if not self.progress.console.is_terminal and now - self.logged >= self.every:
            self.logged = now
            rate = done / (now - self.started) if now > self.started else 0.0
            rates = (column for column in self.progress.columns if isinstance(column, RateColumn))
            unit = next(rates, RateColumn()).unit
            line = f"{phase}: {done:,}/{total:,} {unit}, {rate:,.1f} {unit}/s"
            self.progress.console.print(line + (f", {note}" if note else ""))


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
def clean_errors() -> Iterator[None]:
    """Turn the project's own errors (and the system's: a missing file, a full disk) into a
    one-line message and exit status 2; anything else is a bug and keeps its traceback."""
    try:
        yield
    except (CurateError, OSError) as error:
        error_console.print(Text.assemble(("error:", "bold red"), f" {error}"))
        raise typer.Exit(code=2) from error


def warning(message: str) -> Text:
    """``message`` as a warning line: "warning:" in yellow, the message as it is."""
    return Text.assemble(("warning:", "yellow"), f" {message}")


def emphasised(before: str, value: object, after: str = "") -> Text:
    """A line with ``value`` in bold between plain ``before`` and ``after``."""
    return Text.assemble(before, (str(value), "bold"), after)


def interrupted(message: str) -> Text:
    """``message`` after an "interrupted:" in bold red, for a run stopped with Ctrl-C."""
    return Text.assemble(("interrupted:", "bold red"), f" {message}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
