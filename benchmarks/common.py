"""What every benchmark's results file says about the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine(versions: str) -> str:
    """'2 cores <CPU model>, Python x.y.z, <versions>' for the results file."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model}, Python {platform.python_version()}, {versions}"


def write_result(path: Path, *, machine_note: str, figures: dict[str, Any],
                 ratios: dict[str, Any], baseline: str, targets: dict[str, Any]) -> None:
    """``benchmarks/results/<name>.json``: the figures, their ratios against the named
    baseline measured in the same run, the targets, and when and on what it ran."""
    result = {"name": path.stem, "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": machine(machine_note), "figures": figures, "ratios": ratios,
              "baseline": baseline, "targets": targets}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {path}")
