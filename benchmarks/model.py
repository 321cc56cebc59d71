"""Benchmark: one model tick (full rack headroom + site PUE) for 10,000 racks.

Measures the vectorised ``models`` package against a plain per-rack Python implementation of
the same formulas (below, straightforward loops), in the same run, on the same synthetic site:
10,000 racks in rows of 20, A/B three-phase feeds from 100 + 100 rectifiers, 250 CDU loops of
3 CDUs (N+1, water or PG25), about 1 % of the measurements missing (NaN).

The tick computes everything that changes with the samples: feed capacities, per-phase
headroom, each rack's coolant capacity (fluid properties at the measured temperature), loop
capacity and heat, source loads from 20,000 PDU feeds, the eight limits with the binding one,
the pools, and the site PUE. The naive baseline looks fluid properties up in a dict of
CoolProp values it keeps between ticks (keyed by fluid and 0.1 K), as a long-running loop
would; that is the fair comparison (``speedup_vs_naive``). A second, clearly named figure runs
the same loop calling CoolProp for every rack, to show what the property table saves.

Prints a table and writes benchmarks/results/model.json. A benchmark never asserts.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from CoolProp.CoolProp import PropsSI

from benchmarks.common import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.coolant_table import COOLPROP_FLUID, LOOP_PRESSURE_PA
from models.cooling import (
    ASHRAE_SUPPLY_LIMIT_C,
    heat_to_liquid_kw,
    liquid_capacity_kw,
    loop_capacity_kw,
    loop_heat_kw,
)
from models.headroom import LIMITS, RackHeadroom, rack_headroom
from models.power import (
    ab_feed_capacity_kw,
    feed_capacity_kw,
    phase_headroom_kw,
    source_load_kw,
)
from models.pue import pue

RACKS = 10_000
RACKS_PER_ROW = 20
RACKS_PER_SOURCE = 100
ROWS_PER_LOOP = 2
CDUS_PER_LOOP = 3
MISSING_SHARE = 0.01
VECTOR_REPEATS = 50
NAIVE_REPEATS = 5
COOLPROP_PER_RACK_REPEATS = 3
RESULT = Path(__file__).resolve().parent / "results" / "model.json"


# ------------------------------------------------------------------------------ the site


def synthetic_site(seed: int = 7) -> dict[str, np.ndarray]:
    """Arrays as the runtime would build them from a site config and the latest good samples."""
    rng = np.random.default_rng(seed)
    n = RACKS
    n_sources = n // RACKS_PER_SOURCE
    n_loops = n // (RACKS_PER_ROW * ROWS_PER_LOOP)
    rack = np.arange(n)
    power = rng.uniform(20.0, 110.0, n)
    per_phase_a = power * 1000.0 / (math.sqrt(3) * 415.0 * 0.95) / 3.0 * 0.5  # half on each feed
    current_a = per_phase_a[:, None] * rng.uniform(0.9, 1.1, (n, 3))
    current_b = per_phase_a[:, None] * rng.uniform(0.9, 1.1, (n, 3))
    site = {
        "power_kw": power,
        "power_kw_peak": power * rng.uniform(1.0, 1.15, n),
        "design_kw": np.where(rack % 4 == 0, 200.0, 130.0),
        "capture_ratio": np.where(rack % 3 == 0, 0.9, 0.8),
        "air_allowance_kw": np.where(rack % 5 == 0, np.inf, 25.0),
        "breaker_a": np.where(rack % 2 == 0, 250.0, 200.0),
        "voltage_v": np.full(n, 415.0),
        "phases": np.full(n, 3),
        "power_factor": np.full(n, 0.95),
        "derating": np.full(n, 0.8),
        "breaker_b": np.where(rack % 7 == 0, 200.0, 250.0),
        "current_a": current_a,
        "current_b": current_b,
        "rack_flow_lpm": power * rng.uniform(1.6, 2.0, n),
        "rack_supply_c": rng.uniform(38.0, 44.0, n),
        "rack_delta_t_k": np.full(n, 10.0),
        "rack_loop": rack // (RACKS_PER_ROW * ROWS_PER_LOOP),
        "feed_a_source": rack // RACKS_PER_SOURCE,
        "feed_b_source": n_sources + rack // RACKS_PER_SOURCE,
        "source_rating_kw": np.full(2 * n_sources, 12_000.0),
        "cdu_rated_kw": np.full(n_loops * CDUS_PER_LOOP, 1_800.0),
        "cdu_loop": np.repeat(np.arange(n_loops), CDUS_PER_LOOP),
        "redundant_cdus": np.ones(n_loops, dtype=int),
        "loop_fluid": np.where(np.arange(n_loops) % 2 == 0, "PG25", "water"),
        "loop_supply_c": rng.uniform(28.0, 33.0, n_loops),
        "loop_supply_limit_c": np.full(n_loops, ASHRAE_SUPPLY_LIMIT_C["W32"]),
        "facility_kw": np.array(power.sum() * 1.15),
    }
    site["rack_fluid"] = site["loop_fluid"][site["rack_loop"]]
    for key in ("power_kw", "power_kw_peak", "rack_flow_lpm", "rack_supply_c"):
        site[key][rng.random(n) < MISSING_SHARE] = np.nan
    site["current_a"][rng.random((n, 3)) < MISSING_SHARE] = np.nan
    return site


# ------------------------------------------------------------------------------ vectorised


def model_tick(s: dict[str, np.ndarray]) -> tuple[RackHeadroom, float]:
    """One model tick with the models package: all racks in one pass."""
    n_sources, n_loops = s["source_rating_kw"].size, s["loop_supply_c"].size
    cap_a = feed_capacity_kw(
        s["breaker_a"], s["voltage_v"], s["phases"], s["power_factor"], s["derating"]
    )
    cap_b = feed_capacity_kw(
        s["breaker_b"], s["voltage_v"], s["phases"], s["power_factor"], s["derating"]
    )
    weaker = np.where(s["breaker_b"] < s["breaker_a"], s["breaker_b"], s["breaker_a"])
    phase = phase_headroom_kw(
        s["current_a"], s["current_b"], weaker, s["voltage_v"], s["phases"],
        s["power_factor"], s["derating"],
    )  # fmt: skip
    load = np.fmax(s["power_kw"], s["power_kw_peak"])
    rack_liquid = liquid_capacity_kw(
        s["rack_flow_lpm"], s["rack_supply_c"], s["rack_delta_t_k"], s["rack_fluid"]
    )
    feed_power = np.concatenate([s["power_kw"] / 2.0, s["power_kw"] / 2.0])
    feed_source = np.concatenate([s["feed_a_source"], s["feed_b_source"]])
    h = rack_headroom(
        power_kw=s["power_kw"],
        power_kw_peak=s["power_kw_peak"],
        design_kw=s["design_kw"],
        feed_capacity_kw=ab_feed_capacity_kw(cap_a, cap_b),
        phase_headroom_kw=phase,
        capture_ratio=s["capture_ratio"],
        air_allowance_kw=s["air_allowance_kw"],
        rack_liquid_capacity_kw=rack_liquid,
        feed_a_source=s["feed_a_source"],
        feed_b_source=s["feed_b_source"],
        feed_a_share=np.full(s["power_kw"].shape, 0.5),
        source_capacity_kw=s["source_rating_kw"],
        source_load_kw=source_load_kw(feed_power, feed_source, n_sources),
        rack_loop=s["rack_loop"],
        loop_capacity_kw=loop_capacity_kw(
            s["cdu_rated_kw"], s["cdu_loop"], n_loops, s["redundant_cdus"]
        ),
        loop_heat_kw=loop_heat_kw(
            heat_to_liquid_kw(load, s["capture_ratio"]), s["rack_loop"], n_loops
        ),
        loop_supply_temp_c=s["loop_supply_c"],
        loop_supply_limit_c=s["loop_supply_limit_c"],
    )
    return h, float(pue(s["facility_kw"], np.sum(s["power_kw"])))


# ------------------------------------------------------------------------------ naive


class NaiveModel:
    """The same formulas rack by rack in plain Python (the baseline)."""

    def __init__(self, keep_properties: bool = True) -> None:
        self.keep_properties = keep_properties
        self.properties: dict[tuple[str, float], tuple[float, float]] = {}

    def fluid(self, name: str, temp_c: float) -> tuple[float, float]:
        key = (name, round(temp_c, 1))
        if key not in self.properties or not self.keep_properties:
            t_k, fluid = key[1] + 273.15, COOLPROP_FLUID[name]
            self.properties[key] = (
                PropsSI("D", "T", t_k, "P", LOOP_PRESSURE_PA, fluid),
                PropsSI("C", "T", t_k, "P", LOOP_PRESSURE_PA, fluid) / 1000.0,
            )
        return self.properties[key]

    @staticmethod
    def upstream(normal: list[float], moved: list[dict[int, float]], a: int, b: int) -> float:
        """Half of a rack's growth on each source; all of it on one when the other fails."""
        def worst(s: int, other: int) -> float:  # any failure but ``other``'s, or none
            return min([normal[s] - kw for f, kw in moved[s].items() if f != other] + [normal[s]])

        whole = min(normal[a] - moved[a].get(b, 0.0), normal[b] - moved[b].get(a, 0.0))
        return min(whole, worst(a, b) / 0.5, worst(b, a) / 0.5)

    def tick(self, s: dict[str, np.ndarray]) -> tuple[list[float], list[str], float]:
        n = len(s["power_kw"])
        racks = {k: v.tolist() for k, v in s.items() if v.ndim >= 1 and len(v) == n}
        n_sources, n_loops = len(s["source_rating_kw"]), len(s["loop_supply_c"])

        source_load = [0.0] * n_sources
        moved: list[dict[int, float]] = [{} for _ in range(n_sources)]  # onto s, when f fails
        for i in range(n):
            a, b = racks["feed_a_source"][i], racks["feed_b_source"][i]
            p, peak = racks["power_kw"][i], racks["power_kw_peak"][i]
            load = p if math.isnan(peak) else (peak if math.isnan(p) else max(p, peak))
            source_load[a] += racks["power_kw"][i] / 2.0
            source_load[b] += racks["power_kw"][i] / 2.0
            moved[a][b] = moved[a].get(b, 0.0) + load / 2.0
            moved[b][a] = moved[b].get(a, 0.0) + load / 2.0
        normal = [r - ld for r, ld in zip(s["source_rating_kw"].tolist(), source_load)]

        by_loop: list[list[float]] = [[] for _ in range(n_loops)]
        for rated, loop in zip(s["cdu_rated_kw"].tolist(), s["cdu_loop"].tolist()):
            by_loop[loop].append(rated)
        loop_cap = []
        for loop, rated in enumerate(by_loop):
            kept = sorted(rated, reverse=True)[int(s["redundant_cdus"][loop]) :]
            loop_cap.append(sum(kept))
        loads = []
        loop_heat = [0.0] * n_loops
        for i in range(n):
            p, peak = racks["power_kw"][i], racks["power_kw_peak"][i]
            load = p if math.isnan(peak) else (peak if math.isnan(p) else max(p, peak))
            loads.append(load)
            loop_heat[racks["rack_loop"][i]] += racks["capture_ratio"][i] * load
        loop_pool = [c - h for c, h in zip(loop_cap, loop_heat)]

        headroom, limiting = [], []
        for i in range(n):
            load, capture = loads[i], racks["capture_ratio"][i]
            v, pf, d = racks["voltage_v"][i], racks["power_factor"][i], racks["derating"][i]
            cap_a = math.sqrt(3) * v * racks["breaker_a"][i] * pf * d / 1000.0
            cap_b = math.sqrt(3) * v * racks["breaker_b"][i] * pf * d / 1000.0
            breaker = min(racks["breaker_a"][i], racks["breaker_b"][i])
            worst = max(a + b for a, b in zip(racks["current_a"][i], racks["current_b"][i]))
            if any(math.isnan(a + b) for a, b in zip(racks["current_a"][i], racks["current_b"][i])):
                worst = math.nan
            phase = math.sqrt(3) * v * (d * breaker - worst) * pf / 1000.0
            supply_c, liquid = racks["rack_supply_c"][i], math.nan
            if not math.isnan(supply_c):
                rho, cp = self.fluid(racks["rack_fluid"][i], supply_c)
                flow = racks["rack_flow_lpm"][i]
                liquid = flow / 60.0 * rho / 1000.0 * cp * racks["rack_delta_t_k"][i]
            air = racks["air_allowance_kw"][i]
            if not math.isinf(air):
                air = (air - (1 - capture) * load) / (1 - capture)
            loop = racks["rack_loop"][i]
            supply = float(s["loop_supply_c"][loop])
            within = 2.0 <= supply <= float(s["loop_supply_limit_c"][loop])
            limits = {
                "design": racks["design_kw"][i] - load,
                "feed": min(cap_a, cap_b) - load,
                "phase": phase,
                "upstream": self.upstream(normal, moved, racks["feed_a_source"][i],
                                          racks["feed_b_source"][i]),
                "liquid_rack": (liquid - capture * load) / capture,
                "loop": loop_pool[loop] / capture,
                "air": air,
                "supply_class": math.inf if within else 0.0,
            }
            best, name = math.inf, "none"
            for limit in LIMITS:
                value = limits[limit]
                if not math.isnan(value) and value < best:
                    best, name = value, limit
            headroom.append(best)
            limiting.append(name)
        it_kw = sum(racks["power_kw"])
        return headroom, limiting, float(s["facility_kw"]) / it_kw


# ------------------------------------------------------------------------------ run


def median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    site = synthetic_site()
    naive = NaiveModel()
    vector_result, _ = model_tick(site)  # warm-up: CoolProp tables, imports
    naive_headroom, naive_limiting, _ = naive.tick(site)  # warm-up: its property dict

    vector_ms = median_ms(lambda: model_tick(site), VECTOR_REPEATS)
    naive_ms = median_ms(lambda: naive.tick(site), NAIVE_REPEATS)
    per_rack = NaiveModel(keep_properties=False)
    coolprop_ms = median_ms(lambda: per_rack.tick(site), COOLPROP_PER_RACK_REPEATS)
    known = np.isfinite(vector_result.headroom_kw)
    max_diff_kw = float(
        np.max(np.abs(vector_result.headroom_kw[known] - np.array(naive_headroom)[known]))
    )
    same_limit = float(np.mean(vector_result.limiting[known] == np.array(naive_limiting)[known]))

    figures = {
        "headroom_10k_racks_ms": round(vector_ms, 3),
        "naive_loop_ms": round(naive_ms, 1),
        "naive_loop_coolprop_per_rack_ms": round(coolprop_ms, 1),
        "max_headroom_difference_kw": max_diff_kw,
        "same_binding_limit_pct": round(100.0 * same_limit, 2),
    }
    result = {
        "name": "model",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(f"numpy {np.__version__}"),
        "figures": figures,
        "ratios": {
            "speedup_vs_naive": round(naive_ms / vector_ms, 1),
            "speedup_vs_naive_coolprop_per_rack": round(coolprop_ms / vector_ms, 1),
        },
        "targets": {"headroom_10k_racks_ms": "<= 5", "speedup_vs_naive": ">= 100"},
    }
    print(f"model tick, {RACKS} racks (medians: {VECTOR_REPEATS} / {NAIVE_REPEATS} runs)")
    print(f"  {'implementation':<28}{'ms per tick':>14}")
    print(f"  {'models (numpy, vectorised)':<28}{vector_ms:>14.3f}")
    print(f"  {'naive per-rack Python':<28}{naive_ms:>14.1f}")
    print(f"  {'  same, CoolProp per rack':<28}{coolprop_ms:>14.1f}")
    print(f"  speedup vs naive: {naive_ms / vector_ms:.1f}x (target >= 100)")
    print(f"  target headroom_10k_racks_ms <= 5: {vector_ms:.3f}")
    print(f"  agreement: max |headroom diff| {max_diff_kw:.2e} kW, same binding limit "
          f"{100.0 * same_limit:.2f} % of known racks")  # fmt: skip
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {RESULT}")


if __name__ == "__main__":
    main()
