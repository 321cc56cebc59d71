"""The model tick's glue: site config + latest good samples -> arrays -> models -> status.

The static side (ratings, breakers, which rack hangs on which source) is turned into arrays
once; each tick only gathers the live values. models/ does the arithmetic, over all racks at
once; this module only knows where each number comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from aidc.config import Site
from aidc.metrics import Sample
from aidc.topology import Topology
from models import power as power_model
from models import pue as pue_model


@dataclass(frozen=True)
class RackStatus:
    id: str
    room: str
    row: str
    design_kw: float
    power_kw: float | None
    headroom_kw: float | None
    limiting: str | None
    limits_kw: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteStatus:
    updated_at: float
    pue: float | None
    pue_category: int
    it_kw: float | None
    facility_kw: float | None
    cooling_kw: float | None
    racks: list[RackStatus]
    missing: list[str]  # series the model needed but had no good value for


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 3)


class SiteModel:
    def __init__(self, site: Site):
        self.site, self.topology = site, Topology(site)
        racks = site.racks
        self.rack_ids = [r.id for r in racks]
        self.design_kw = np.array([r.design_kw for r in racks])
        self.feed_a = [r.feed_a for r in racks]
        self.feed_b = [r.feed_b for r in racks]
        self.feed_cap_a_kw = self._feed_capacity([site.device(f) for f in self.feed_a])
        self.feed_cap_b_kw = self._feed_capacity([site.device(f) if f else None for f in self.feed_b])
        self.facility_meter = next((m.id for m in site.devices_of("meter") if m.role == "facility"), None)
        self.cooling_meter = next((m.id for m in site.devices_of("meter") if m.role == "cooling"), None)

    @staticmethod
    def _feed_capacity(pdus: list) -> np.ndarray:
        present = [p for p in pdus if p is not None]
        caps = power_model.feed_capacity_kw(
            breaker_a=np.array([p.breaker_a for p in present]),
            voltage_v=np.array([p.voltage_v for p in present]),
            phases=np.array([0 if p.phases == "dc" else p.phases for p in present]),
            power_factor=np.array([p.power_factor for p in present]),
            derating=np.array([p.continuous_derating for p in present]),
        )
        out = np.full(len(pdus), np.nan)
        out[[i for i, p in enumerate(pdus) if p is not None]] = caps
        return out

    def evaluate(self, latest: dict[tuple[str, str], Sample], now: float) -> SiteStatus:
        missing: list[str] = []

        def good(device: str | None, metric: str) -> float:
            if device is None:
                return math.nan
            s = latest.get((device, metric))
            if s is None or not s.good:
                missing.append(f"{device}.{metric}")
                return math.nan
            return float(s.value)

        pdu_a_kw = np.array([good(f, "power_kw") for f in self.feed_a])
        pdu_b_kw = np.array([good(f, "power_kw") if f else 0.0 for f in self.feed_b])
        rack_kw = pdu_a_kw + pdu_b_kw  # NaN when a feed is unknown: never guessed
        facility_kw = good(self.facility_meter, "power_kw")
        cooling_kw = good(self.cooling_meter, "power_kw")
        it_kw = float(np.sum(rack_kw))  # IT measured at PDU outputs: ISO/IEC 30134-2 cat. 2

        limits = {
            "design": self.design_kw - rack_kw,
            "feed": power_model.ab_feed_capacity_kw(self.feed_cap_a_kw, self.feed_cap_b_kw) - rack_kw,
        }
        stacked = np.vstack(list(limits.values()))
        known = ~np.isnan(stacked)
        headroom = np.where(known.any(axis=0), np.nanmin(np.where(known, stacked, np.inf), axis=0), np.nan)
        binding = np.argmin(np.where(known, stacked, np.inf), axis=0)
        names = list(limits)
        racks = [
            RackStatus(
                id=r.id,
                room=r.room,
                row=r.row,
                design_kw=r.design_kw,
                power_kw=_num(rack_kw[i]),
                headroom_kw=_num(headroom[i]),
                limiting=names[binding[i]] if known[:, i].any() else None,
                limits_kw={n: _num(limits[n][i]) for n in names},
            )
            for i, r in enumerate(self.site.racks)
        ]
        return SiteStatus(
            updated_at=now,
            pue=_num(pue_model.pue(facility_kw, it_kw)),
            pue_category=pue_model.pue_category("pdu_output"),
            it_kw=_num(it_kw),
            facility_kw=_num(facility_kw),
            cooling_kw=_num(cooling_kw),
            racks=racks,
            missing=missing,
        )

    def derived_samples(self, status: SiteStatus) -> list[Sample]:
        """The tick's results as samples of the `rack` and `site` measurements."""
        t = status.updated_at
        out = [
            Sample("site", {"site": self.site.site}, name, value, t)
            for name, value in (
                ("pue", status.pue),
                ("it_kw", status.it_kw),
                ("facility_kw", status.facility_kw),
                ("cooling_kw", status.cooling_kw),
            )
            if value is not None
        ]
        for rack, cfg in zip(status.racks, self.site.racks):
            tags = self.topology.rack_tags(cfg)
            fields = {"power_kw": rack.power_kw, "headroom_kw": rack.headroom_kw}
            fields |= {f"headroom_{k}_kw": v for k, v in rack.limits_kw.items()}
            out += [Sample("rack", tags, k, v, t) for k, v in fields.items() if v is not None]
        return out
