"""The errors fracture-curate and fracture-train raise on purpose, under one base class.

Every domain error (a bad manifest, layout, parameter, model or run folder) subclasses
:class:`CurateError`, so a command line catches that one class and prints its message, while a
bug anywhere else keeps its traceback. A message says what is wrong and what to do next.
"""

from __future__ import annotations


class CurateError(Exception):
    """Base of the errors this project raises on purpose (not of its bugs)."""


class ConfigError(CurateError, ValueError):
    """A parameter outside its allowed values; the message names the values allowed."""
