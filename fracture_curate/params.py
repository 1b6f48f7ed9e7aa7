"""Parameter rules, written down once per config and checked once, when the config is built.

A config dataclass lists its rules in a ``CONSTRAINTS`` mapping (field name -> one rule, or a
tuple of rules any of which may hold) and calls :func:`check_params` from ``__post_init__``, in
the spirit of scikit-learn's ``_parameter_constraints``. A broken rule is a
:class:`~fracture_curate.errors.ConfigError` naming the option and the values allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from fracture_curate.errors import ConfigError


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def allows(self, value: Any) -> bool:
        return any(value == option and type(value) is type(option) for option in self.values)

    def __str__(self) -> str:
        return ", ".join(repr(option) for option in self.values)


@dataclass(frozen=True)
class Interval:
    """A real (or, with ``integer``, a whole) number between ``low`` and ``high``.

    ``closed`` says which ends belong to the interval: "both", "left", "right" or "neither".
    A missing end is unbounded.
    """

    low: float | None = None
    high: float | None = None
    closed: str = "both"
    integer: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Real):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if math.isnan(value):
            return False
        if self.low is not None:
            above = value >= self.low if self.closed in ("both", "left") else value > self.low
            if not above:
                return False
        if self.high is not None:
            below = value <= self.high if self.closed in ("both", "right") else value < self.high
            if not below:
                return False
        return True

    def __str__(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("both", "left") else "("
            right = "]" if self.closed in ("both", "right") else ")"
            return f"{kind} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            sign = ">=" if self.closed in ("both", "left") else ">"
            return f"{kind} {sign} {_number(self.low)}"
        if self.high is not None:
            sign = "<=" if self.closed in ("both", "right") else "<"
            return f"{kind} {sign} {_number(self.high)}"
        return kind


Constraint = Options | Interval
Constraints = Mapping[str, Constraint | tuple[Constraint, ...]]


def check_params(config: Any, constraints: Constraints) -> None:
    """Check every constrained field of ``config``; the first broken rule is a ConfigError:
    "unknown optimizer 'lion'; choose one of adamw, adam, sgd" for a fixed set of values,
    "--epochs must be a whole number >= 1; got 0" otherwise."""
    for name, rules in constraints.items():
        rules = rules if isinstance(rules, tuple) else (rules,)
        value = getattr(config, name)
        if any(rule.allows(value) for rule in rules):
            continue
        if len(rules) == 1 and isinstance(rules[0], Options):
            choices = ", ".join(str(option) for option in rules[0].values)
            raise ConfigError(
                f"unknown {name.replace('_', '-')} {value!r}; choose one of {choices}"
            )
        allowed = " or ".join(str(rule) for rule in rules)
        raise ConfigError(f"{option_name(name)} must be {allowed}; got {value!r}")


def option_name(field: str) -> str:
    """The command-line option of a config field: ``phash_radius`` -> ``--phash-radius``."""
    return "--" + field.replace("_", "-")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
