"""What every benchmark's results file says about the machine it ran on, and the samples
a simulated site's collectors would leave."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aidc.core.metrics import Sample
from aidc.core.topology import Topology

if TYPE_CHECKING:
    from aidc.core.config import Site
    from simulators.physics import SitePhysics


def device_samples(site: Site, physics: SitePhysics, now: float) -> dict[tuple[str, str], Sample]:
    """Every device's values now, as the collectors would have left them, by (device, series
    key): the key ``current_a{outlet=3}`` is the metric ``current_a`` with the row label
    ``outlet``, beside the device's place."""
    tags = Topology(site).device_tags
    out = {}
    for d in site.devices:
        for key, value in physics.values(d.id).items():
            if value is not None:
                metric, _, row = key.rstrip("}").partition("{")
                labels = dict(label.split("=") for label in row.split(",")) if row else {}
                out[(d.id, key)] = Sample(d.kind, tags[d.id] | labels, metric, float(value), now)
    return out


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
