"""The model on hand-worked sites: one folder per case in tests/cases/model/<case>/.

Each folder holds ``site.yaml``, ``inputs.json`` (the measurements, ``"device.metric": value``;
null for a measurement that did not come), ``expected.json`` (what the API reports: racks,
pools, site figures and what-if answers; only the keys written are compared) and a
``README.md`` that derives every expected number by hand. Adding a case is data, not code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from aidc.api import pool_json, rack_json, strict_json, what_if_json
from aidc.core.config import load_site
from aidc.core.derive import SiteModel, SiteStatus, what_if
from aidc.core.metrics import Quality, Sample

CASES = Path(__file__).parent / "cases" / "model"
NOW = 1_000_000.0
TOLERANCE_KW = 0.05  # expected figures are written to 0.01; properties to 4 digits


def measurements(inputs: dict[str, float | None]) -> dict[tuple[str, str], Sample]:
    """``{"pdu-1.power_kw": 40}`` as the runtime's latest view; null is a bad sample."""
    out = {}
    for name, value in inputs.items():
        device, key = name.split(".", 1)
        quality = Quality.GOOD if value is not None else Quality.BAD
        out[(device, key)] = Sample("x", {"device": device}, key, value, NOW, quality)
    return out


def evaluate(case: Path) -> tuple[SiteModel, SiteStatus]:
    model = SiteModel(load_site(case / "site.yaml"))
    inputs = json.loads((case / "inputs.json").read_text())
    return model, model.evaluate(measurements(inputs), NOW)


def matches(actual: Any, expected: Any, where: str) -> list[str]:
    """Differences between the expected values (a subset) and the actual ones."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        out = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{where}.{key}: missing")
            else:
                out += matches(actual[key], value, f"{where}.{key}")
        return out
    if isinstance(expected, float | int) and not isinstance(expected, bool):
        ok = isinstance(actual, float | int) and math.isclose(actual, expected, abs_tol=TOLERANCE_KW)
        return [] if ok else [f"{where}: expected {expected}, got {actual!r}"]
    if isinstance(expected, list) and all(isinstance(x, str) for x in expected):
        ok = isinstance(actual, list) and sorted(actual) == sorted(expected)
        return [] if ok else [f"{where}: expected {expected}, got {actual!r}"]
    return [] if actual == expected else [f"{where}: expected {expected!r}, got {actual!r}"]


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_model_case(case: str) -> None:
    folder = CASES / case
    assert (folder / "README.md").is_file(), "every case derives its numbers in a README.md"
    expected = json.loads((folder / "expected.json").read_text())
    model, status = evaluate(folder)
    actual = {
        "racks": {r.id: rack_json(r) for r in status.racks},
        "pools": {p.id: pool_json(p) for p in status.pools},
        "site": {k: getattr(status, k) for k in ("pue", "pue_category", "it_kw", "facility_kw",
                                                 "cooling_kw", "cooling_ppue", "measured_share",
                                                 "unaccounted", "pue_at_least", "missing")},
    }
    strict_json(actual)  # every figure is a number JSON can carry, or null
    problems = []
    for section in ("racks", "pools", "site"):
        problems += matches(actual[section], expected.get(section, {}), section)
    for i, ask in enumerate(expected.get("whatif", [])):
        answer = what_if_json(what_if(model, status, ask["row"], ask["racks"], ask["kw"],
                                      ask.get("capture", 0.85), ask.get("feed_kw"),
                                      ask.get("air_kw")))
        problems += matches(answer, ask["expect"], f"whatif[{i}]")
    assert not problems, "\n".join(problems)
