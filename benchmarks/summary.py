"""Every target of every benchmark in one table: the figure of its last run (from
benchmarks/results/*.json), the target, whether it is met, and the run's date. The end of
`make bench`; on its own it reads the results as they are, each of its own day.
"""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "": operator.eq}
TARGET = re.compile(r"\s*(<=|>=|<|>|)\s*(-?\d+(?:\.\d+)?)")


def verdict(value, target: str) -> str:
    """``met``, ``missed``, or why neither: a target this table cannot read, no figure."""
    found = TARGET.match(str(target))
    if found is None:
        return "(not a bound)"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "not measured"
    return "met" if COMPARE[found[1]](value, float(found[2])) else "MISSED"


def shown(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def rows() -> list[tuple[str, str, str, str, str, str]]:
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        known = result.get("figures", {}) | result.get("ratios", {})
        for name, target in (result.get("targets") or {}).items():
            value = known.get(name)
            out.append((path.stem, name, shown(value), str(target), verdict(value, target),
                        (result.get("date") or "")[:10]))
    return out


def main() -> None:
    table = [("benchmark", "figure", "value", "target", "", "run on"), *rows()]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    missed = sum(row[4] == "MISSED" for row in table)
    print(f"{len(table) - 1} targets, {missed} missed")


if __name__ == "__main__":
    main()
