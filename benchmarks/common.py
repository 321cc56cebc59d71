"""What every benchmark's results file says about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


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
