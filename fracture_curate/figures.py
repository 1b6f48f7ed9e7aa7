"""Matplotlib figures whose text is shown as written.

Class names, labels and paths are data: a ``$`` in one must not start matplotlib's mathtext,
which fails on some strings (``a$b``) and silently typesets others. Every function that draws a
figure, from building it to saving it, runs under :func:`plain_text`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import matplotlib

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: rcParams under which text is never parsed as mathtext or LaTeX.
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def plain_text(draw: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``draw`` (which builds and saves a figure) with text taken literally."""

    @functools.wraps(draw)
    def drawn(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with matplotlib.rc_context(PLAIN_TEXT):
            return draw(*args, **kwargs)

    return drawn
