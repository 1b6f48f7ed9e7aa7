"""What a class name means: a finding (a fracture, an abnormal study) or normal.

One rule, used wherever a class name decides something: the generator draws no fracture for a
class that reads as normal, the trainer makes a binary task's finding class the positive one,
and the report says which class that will be. Datasets name their classes freely:
``fractured`` / ``not fractured`` (Bone Fracture Multi-Region), ``Fractured`` /
``Non_fractured`` (FracAtlas), ``positive`` / ``negative`` (MURA studies), ``abnormal`` /
``normal``, or ten fracture types (Bone Break Classification), so the rule reads words, not
whole names.
"""

from __future__ import annotations

import re

FINDING = "finding"
NORMAL = "normal"
UNKNOWN = "unknown"

#: Word stems that name a finding: fracture(d), break/broken, positive, abnormal(ity).
FINDING_STEMS = ("fractur", "break", "broke", "positive", "abnormal")
#: Whole words that name the absence of one.
NORMAL_WORDS = frozenset({"normal", "negative", "healthy", "intact"})
#: Words that negate a finding after or before them: "not fractured", "no fracture",
#: "fracture free".
NEGATIONS = frozenset({"not", "non", "no", "without", "free"})
#: Prefixes that negate a finding stem within one word: "nonfractured", "unbroken".
NEGATING_PREFIXES = ("non", "un")

_WORD = re.compile(r"[a-z]+")


def class_reading(name: str) -> str:
    """:data:`FINDING`, :data:`NORMAL` or :data:`UNKNOWN` for one class name (any case).

    A negated finding reads as normal (``not fractured``, ``Non_fractured``, ``unbroken``);
    ``abnormal`` is a finding; a name with no such word (``transverse``, ``cat``) is unknown.
    """
    words = _WORD.findall(name.lower())
    negated = any(word in NEGATIONS for word in words) or any(
        word.startswith(prefix) and word[len(prefix) :].startswith(FINDING_STEMS)
        for word in words
        for prefix in NEGATING_PREFIXES
    )
    if negated or any(word in NORMAL_WORDS for word in words):
        return NORMAL
    if any(_names_finding(word) for word in words):
        return FINDING
    return UNKNOWN


def positive_class(names: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The positive (finding) class of a two-class task; None for any other number of classes.

    The one name that reads as a finding; else the other of the one that reads as normal;
    else the second in sorted order, so the choice is always the same for the same names.
    """
    names = sorted(set(names))
    if len(names) != 2:
        return None
    readings = [class_reading(name) for name in names]
    if readings.count(FINDING) == 1:
        return names[readings.index(FINDING)]
    if readings.count(NORMAL) == 1:
        return names[1 - readings.index(NORMAL)]
    return names[1]


def _names_finding(word: str) -> bool:
    return any(stem in word for stem in FINDING_STEMS)
