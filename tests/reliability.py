"""The reliability table (``make reliability``): what the fault and fuzz tests tried, and
what went wrong (every "bad" count must be 0; a test asserting it fails otherwise).

Tests take the ``reliability`` fixture and count as they go::

    reliability.count("samples: store outage, then kill -9", "written", n, lost=0)

With ``--reliability-json FILE`` the table is printed at the end and written to FILE.
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest


class Tally:
    def __init__(self):
        self.rows: dict[str, dict] = {}

    def count(self, row: str, what: str, n: int, **bad: int) -> None:
        """Add ``n`` things tried (``what``) to ``row``, with its bad outcomes by name."""
        r = self.rows.setdefault(row, {"what": what, "tried": 0, "bad": defaultdict(int)})
        r["tried"] += n
        for name, k in bad.items():
            r["bad"][name] += k


TALLY = Tally()


@pytest.fixture
def reliability() -> Tally:
    return TALLY


def pytest_collection_modifyitems(items):
    """A test that counts for the table is a reliability test (``-m reliability``)."""
    for item in items:
        if "reliability" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.reliability)


def pytest_addoption(parser):
    parser.addoption("--reliability-json", metavar="FILE",
                     help="print the reliability table and write it to FILE")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = config.getoption("--reliability-json")
    if not path:
        return
    rows = [{"scenario": name, "what": r["what"], "tried": r["tried"], **dict(r["bad"])}
            for name, r in sorted(TALLY.rows.items())]
    write = terminalreporter.write_line
    write("")
    write(f"{'scenario':58} {'tried':>16}  bad (must be 0)")
    for name, r in sorted(TALLY.rows.items()):
        bad = ", ".join(f"{k} {v}" for k, v in r["bad"].items()) or "-"
        write(f"{name:58} {r['tried']:>7} {r['what']:<8}  {bad}")
    all_zero = all(v == 0 for r in TALLY.rows.values() for v in r["bad"].values())
    write(f"every bad count 0: {all_zero}; tests {'passed' if exitstatus == 0 else 'FAILED'}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
        "tests_passed": exitstatus == 0, "every_bad_count_zero": all_zero, "rows": rows,
    }, indent=2) + "\n")
