"""The mutation score of each core module, from mutmut's results (run by ``make mutation``).

    .venv/bin/python tests/mutation_score.py

Killed mutants, survivors, and those no selected test reaches, per module and in all; the
survivors are listed by name (``mutmut show NAME`` prints one's diff).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict

LINE = re.compile(r"^\s+(?P<name>\S+)__mutmut_\d+: (?P<status>.+)$")


def main() -> int:
    output = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in output.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        # fracture_curate.dedupe.x_find_pairs, or .xǁPairsǁconcat for a method: the module is
        # what comes before the mutated function's "x" part
        module = ".".join(part for part in match["name"].split(".") if not part.startswith("x"))
        counts[module][match["status"]] += 1
        if match["status"] == "survived":
            survivors[module].append(line.strip().split(":")[0])
    total: Counter[str] = Counter()
    print(
        f"{'module':<32} {'mutants':>8} {'killed':>7} {'survived':>9} {'no test':>8} {'score':>6}"
    )
    for module in sorted(counts):
        found = counts[module]
        total.update(found)
        print(_row(module, found))
    print(_row("all", total))
    for module, names in sorted(survivors.items()):
        print(f"\nsurvived in {module}:")
        for name in names:
            print(f"  {name}")
    return 0


def _row(name: str, found: Counter[str]) -> str:
    mutants = sum(found.values())
    killed = found["killed"] + found["timeout"]
    score = killed / mutants if mutants else 1.0
    return (
        f"{name:<32} {mutants:>8} {killed:>7} {found['survived']:>9} {found['no tests']:>8} "
        f"{score:>6.1%}"
    )


if __name__ == "__main__":
    sys.exit(main())
