"""How library code reports progress: a plain callback, ``on_progress(phase, done, total, note)``.

A long job calls it with ``done=0`` when a phase starts ("scanning", "epoch 3/10") and with the
running count of finished items as work goes on; ``note`` carries a short status such as a running
loss. The command lines draw the calls as rich progress bars (``fracture_curate.display``); a
library user passes any function, or nothing.
"""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    """Receives ``(phase, done, total, note)``: ``done`` of ``total`` items of ``phase`` are
    finished."""

    def __call__(self, phase: str, done: int, total: int, note: str = "") -> None: ...


class Phase:
    """One phase of a job: counts its finished items and reports each step, if anyone listens.

    Reports ``done=0`` as soon as it is made, so a listener knows the phase and its size before
    the first item is finished.
    """

    def __init__(self, on_progress: ProgressCallback | None, name: str, total: int) -> None:
        self.on_progress, self.name, self.total = on_progress, name, total
        self.done, self.note = 0, ""
        self.advance(0)

    def advance(self, count: int = 1, note: str | None = None) -> None:
        """``count`` more items are finished; a ``note`` replaces the phase's status."""
        self.done += count
        self.note = self.note if note is None else note
        if self.on_progress is not None:
            self.on_progress(self.name, self.done, self.total, self.note)
