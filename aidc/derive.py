"""The model tick's glue: site config + latest good samples -> arrays -> models -> status.

The static side (ratings, breakers, which rack hangs on which source, CDU and loop) is turned
into arrays once; each tick only gathers the live values. models/ does the arithmetic, over
all racks at once; this module only knows where each number comes from. A value that is not
measured with good quality is NaN, and the models keep it unknown: never a guess, never 0.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from aidc.config import Site
from aidc.metrics import Sample, series_key
from aidc.topology import Topology
from models import backup, cooling, power
from models import pue as pue_model
from models.headroom import LIMITS, RackHeadroom, rack_headroom
from models.whatif import WHATIF_LIMITS, place_racks

PHASES = (1, 2, 3)
SWING_WINDOW_S = 60.0  # GPU load swings are judged over the last minute


@dataclass(frozen=True)
class RackStatus:
    id: str
    room: str
    row: str
    design_kw: float
    power_kw: float | None
    power_kw_peak: float | None  # max over model.peak_window_s: what capacity must hold
    headroom_kw: float | None
    limiting: str | None  # the binding limit, 'unknown' when no limit could be evaluated
    complete: bool  # every limit known, so headroom_kw is exact (else an upper bound)
    limits_kw: dict[str, float | None] = field(default_factory=dict)  # None: unknown


@dataclass(frozen=True)
class Pool:
    """A shared limit: the kW left on one source (electrical) or one loop (heat)."""

    id: str
    kind: str  # rectifier | ups | loop
    capacity_kw: float | None
    load_kw: float | None
    left_kw: float | None
    racks: list[str]
    supply_temp_c: float | None = None  # loops: facility water supply now
    supply_limit_c: float = math.inf  # loops: its ASHRAE TC9.9 class limit


@dataclass(frozen=True)
class BackupStatus:
    supercap: str
    load_kw: float | None
    usable_energy_kj: float | None
    supercap_s: float | None
    battery_s: float | None
    bridge_s: float | None
    required_s: float
    shortfall_s: float | None
    bridges: bool
    swing_kw: float | None  # max - min of its racks' power over the last minute
    ramp_kw_per_s: float | None  # the steepest dP/dt of that power over the last minute
    smoothing_kw: float | None  # the supercap's max power, V^2 / (4 ESR)


@dataclass(frozen=True)
class SiteStatus:
    updated_at: float
    pue: float | None
    pue_category: int
    it_kw: float | None
    facility_kw: float | None
    cooling_kw: float | None
    cooling_ppue: float | None
    power_ppue: float | None
    conversion_loss_kw: float | None
    measured_share: float | None
    racks: list[RackStatus]
    pools: list[Pool]
    backup: list[BackupStatus]
    missing: list[str]  # series the model needed but had no good value for


def num(x) -> float | None:
    """JSON-friendly: NaN (unknown) -> None; +inf (no limit) stays inf for callers to show."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, 3)


class SiteModel:
    """Arrays of the site's static facts, and the tick that adds the live ones."""

    def __init__(self, site: Site):
        self.site, self.topology = site, Topology(site)
        racks = site.racks
        self.rack_ids = [r.id for r in racks]
        self.design_kw = np.array([r.design_kw for r in racks])
        self.capture = np.array([r.capture_ratio for r in racks])
        self.air_kw = np.array([np.inf if r.air_kw is None else r.air_kw for r in racks])
        self.feed_a = [r.feed_a for r in racks]
        self.feed_b = [r.feed_b for r in racks]
        pdus_a = [site.device(f) for f in self.feed_a]
        pdus_b = [site.device(f) if f else None for f in self.feed_b]
        self.feed_cap_kw = power.ab_feed_capacity_kw(_feed_capacity(pdus_a), _feed_capacity(pdus_b))
        self.pdus_a, self.pdus_b = pdus_a, pdus_b

        self.sources = site.devices_of("rectifier") + site.devices_of("ups")
        src_index = {s.id: i for i, s in enumerate(self.sources)}
        self.feed_a_source = np.array([src_index[p.upstream] for p in pdus_a])
        self.feed_b_source = np.array([src_index[p.upstream] if p else -1 for p in pdus_b])
        self.source_rating_kw = np.array([s.rating_kw for s in self.sources])

        self.loops = site.loops
        loop_index = {lp.id: i for i, lp in enumerate(self.loops)}
        self.rack_loop = np.array([loop_index.get(r.loop, -1) for r in racks])
        self.cdus = [site.device(c) for lp in self.loops for c in lp.cdus]
        self.cdu_loop = np.array([loop_index[lp.id] for lp in self.loops for _ in lp.cdus])
        self.loop_redundant = np.array([1 if lp.redundancy == "N+1" else 0 for lp in self.loops])
        self.loop_limit_c = np.array([cooling.ASHRAE_SUPPLY_LIMIT_C[lp.ashrae_class] for lp in self.loops])

        meters = site.devices_of("meter")
        self.facility_meter = next((m.id for m in meters if m.role == "facility"), None)
        self.cooling_meter = next((m.id for m in meters if m.role == "cooling"), None)
        self.peaks: deque[tuple[float, np.ndarray]] = deque()

    # ------------------------------------------------------------------ the tick

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

        def many(devices, metric: str) -> np.ndarray:
            return np.array([good(d, metric) for d in devices], dtype=float)

        feed_a_kw = many(self.feed_a, "power_kw")
        feed_b_kw = np.array([good(f, "power_kw") if f else 0.0 for f in self.feed_b])
        rack_kw = feed_a_kw + feed_b_kw  # unknown when either feed is: never guessed
        peak_kw = self._peak(now, rack_kw)

        load_kw = np.fmax(rack_kw, peak_kw)  # capacity holds the window's peak
        phase = self._phase_headroom_kw(good, load_kw, feed_a_kw, feed_b_kw)
        source_load = many([s.id for s in self.sources], "output_power_kw")
        cdu_capacity = self._cdu_capacity_kw(good)
        loop_capacity = cooling.loop_capacity_kw(cdu_capacity, self.cdu_loop, len(self.loops), self.loop_redundant)
        loop_heat = cooling.loop_heat_kw(cooling.heat_to_liquid_kw(load_kw, self.capture), self.rack_loop, len(self.loops))
        loop_supply_c = np.array(
            [np.fmax.reduce([good(c, "facility_supply_temp_c") for c in lp.cdus]) for lp in self.loops]
        )  # the warmest facility supply among the loop's CDUs

        h = rack_headroom(
            power_kw=rack_kw,
            power_kw_peak=peak_kw,
            design_kw=self.design_kw,
            feed_capacity_kw=self.feed_cap_kw,
            phase_headroom_kw=phase,
            capture_ratio=self.capture,
            air_allowance_kw=self.air_kw,
            rack_liquid_capacity_kw=np.full(len(self.rack_ids), np.inf),  # no per-rack flow meters
            feed_a_source=self.feed_a_source,
            feed_b_source=self.feed_b_source,
            source_rating_kw=self.source_rating_kw,
            source_load_kw=source_load,
            rack_loop=self.rack_loop,
            loop_capacity_kw=loop_capacity,
            loop_heat_kw=loop_heat,
            loop_supply_temp_c=loop_supply_c,
            loop_supply_limit_c=self.loop_limit_c,
        )

        it_kw = float(np.sum(rack_kw))  # IT at PDU outputs: ISO/IEC 30134-2 category 2
        cooling_kw = good(self.cooling_meter, "power_kw")
        source_in = many([s.id for s in self.sources], "input_power_kw")
        loss_kw = float(np.sum(pue_model.conversion_loss_kw(source_in, source_load)))
        unmetered = sum(self.site.model.unmetered_kw.values())
        if self.facility_meter:
            facility_kw, share = good(self.facility_meter, "power_kw"), 1.0
        else:  # the sum of what is metered, plus the declared unmetered loads (a site with
            # no cooling meter declares its cooling there; a cooling meter not read: unknown)
            metered_cooling_kw = cooling_kw if self.cooling_meter else 0.0
            metered = float(np.sum(many([s.id for s in self.sources], "input_power_kw"))) + metered_cooling_kw
            facility_kw = metered + unmetered
            share = float(pue_model.measured_share(metered, unmetered))

        return SiteStatus(
            updated_at=now,
            pue=num(pue_model.pue(facility_kw, it_kw)),
            pue_category=pue_model.pue_category("pdu_output"),
            it_kw=num(it_kw),
            facility_kw=num(facility_kw),
            cooling_kw=num(cooling_kw),
            cooling_ppue=num(pue_model.partial_pue(it_kw, cooling_kw)),
            power_ppue=num(pue_model.partial_pue(it_kw, loss_kw)),
            conversion_loss_kw=num(loss_kw),
            measured_share=num(share),
            racks=self._racks(rack_kw, peak_kw, h),
            pools=self._pools(h, source_load, loop_capacity, loop_heat, loop_supply_c),
            backup=self._backup(good, rack_kw),
            missing=missing,
        )

    def _peak(self, now: float, rack_kw: np.ndarray) -> np.ndarray:
        """Max of each rack's power over the peak window (AI training swings), NaN-aware."""
        self.peaks.append((now, rack_kw))
        while self.peaks and self.peaks[0][0] < now - self.site.model.peak_window_s:
            self.peaks.popleft()
        return np.fmax.reduce(np.stack([p for _, p in self.peaks]), axis=0)

    def _phase_headroom_kw(self, good, rack_kw, feed_a_kw, feed_b_kw) -> np.ndarray:
        """Worst phase after a feed is lost: each surviving feed carries the whole rack
        (``rack_kw``, its peak) with its own phase balance, so its phase currents scale by
        rack kW / feed kW."""
        out = np.full(len(self.rack_ids), np.inf)
        single_feed = np.array([p is None for p in self.pdus_b])  # its current is the rack's
        for pdus, feed_kw in ((self.pdus_a, feed_a_kw), (self.pdus_b, feed_b_kw)):
            present = np.array([p is not None for p in pdus])
            if not present.any():
                continue
            amps = np.array([
                [good(p.id, series_key("current_a", {"phase": str(n)}))
                 if p and (n == 1 or p.phases == 3) else 0.0 for n in PHASES]
                for p in pdus
            ])  # DC and single-phase feeds carry their current on phase 1 only
            safe_kw = np.where(feed_kw > 0, feed_kw, 1.0)
            scale = np.where(single_feed | (feed_kw == 0), 1.0, rack_kw / safe_kw)  # NaN stays
            kw = power.phase_headroom_kw(amps * scale[:, None], np.zeros_like(amps), *_pdu_arrays(pdus))
            out = np.where(present, np.minimum(out, kw), out)  # unknown currents: unknown
        return out

    def _cdu_capacity_kw(self, good) -> np.ndarray:
        """Each CDU: the smaller of its rating and what its measured flow carries at the
        loop's design rise (Q = m_dot cp dT, CoolProp properties at the supply temperature);
        0 with no pump running."""
        if not self.cdus:
            return np.zeros(0)
        loops = {c: lp for lp in self.loops for c in lp.cdus}
        flow = np.array([good(c.id, "flow_lpm") for c in self.cdus])
        supply = np.array([good(c.id, "supply_temp_c") for c in self.cdus])
        pumps = np.array([good(c.id, "pumps_running") for c in self.cdus])
        by_flow = cooling.liquid_capacity_kw(
            flow, supply, np.array([loops[c.id].design_dt_k for c in self.cdus]),
            np.array([loops[c.id].fluid for c in self.cdus]),
        )
        rated = np.array([c.rated_kw for c in self.cdus])
        return np.where(pumps == 0, 0.0, np.minimum(rated, by_flow))  # unknown flow: unknown

    def _racks(self, rack_kw, peak_kw, h: RackHeadroom) -> list[RackStatus]:
        return [
            RackStatus(
                id=r.id, room=r.room, row=r.row, design_kw=r.design_kw,
                power_kw=num(rack_kw[i]), power_kw_peak=num(peak_kw[i]),
                headroom_kw=num(h.headroom_kw[i]), limiting=str(h.limiting[i]),
                complete=bool(h.complete[i]),
                limits_kw={name: num(h.limits_kw[i, k]) for k, name in enumerate(LIMITS)},
            )
            for i, r in enumerate(self.site.racks)
        ]

    def _pools(self, h: RackHeadroom, source_load, loop_capacity, loop_heat, supply_c) -> list[Pool]:
        pools = []
        for i, s in enumerate(self.sources):
            racks = [r for r, a, b in zip(self.rack_ids, self.feed_a_source, self.feed_b_source) if i in (a, b)]
            pools.append(Pool(s.id, s.kind, s.rating_kw, num(source_load[i]), num(h.source_pool_kw[i]), racks))
        for i, lp in enumerate(self.loops):
            racks = [r for r, k in zip(self.rack_ids, self.rack_loop) if k == i]
            pools.append(Pool(lp.id, "loop", num(loop_capacity[i]), num(loop_heat[i]),
                              num(h.loop_pool_kw[i]), racks, num(supply_c[i]),
                              float(self.loop_limit_c[i])))
        return pools

    def _backup(self, good, rack_kw) -> list[BackupStatus]:
        m = self.site.model
        out = []
        for sc in self.site.devices_of("supercap"):
            mine = np.array([r.supercap == sc.id for r in self.site.racks])
            load_kw = float(np.sum(rack_kw[mine]))
            v = good(sc.id, "voltage_v")
            cap_f = good(sc.id, "capacitance_f")
            energy_j = backup.supercap_usable_energy_j(cap_f, v, sc.vmin_v)
            supercap_s = backup.ride_through_s(energy_j, load_kw, m.supercap_efficiency)
            battery_s = self._battery_s(good, mine)
            chain = backup.backup_chain(supercap_s, battery_s, m.generator_start_s, m.transfer_s)
            ts, row_kw = self._last_minute(mine)
            out.append(BackupStatus(
                supercap=sc.id, load_kw=num(load_kw), usable_energy_kj=num(energy_j / 1000),
                supercap_s=num(supercap_s), battery_s=num(battery_s), bridge_s=num(chain.bridge_s),
                required_s=float(chain.required_s), shortfall_s=num(chain.shortfall_s),
                bridges=bool(chain.bridges), swing_kw=num(backup.power_swing_kw(row_kw)),
                ramp_kw_per_s=num(backup.power_ramp_kw_per_s(ts, row_kw)),
                smoothing_kw=num(backup.supercap_max_power_kw(v, good(sc.id, "esr_mohm"))),
            ))
        return out

    def _last_minute(self, racks_mask) -> tuple[np.ndarray, np.ndarray]:
        """Times and summed power of these racks over the last 60 s (for dP/dt)."""
        recent = [(t, p) for t, p in self.peaks if t >= self.peaks[-1][0] - SWING_WINDOW_S]
        return (np.array([t for t, _ in recent]),
                np.array([p[racks_mask].sum() for _, p in recent]))

    def _battery_s(self, good, racks_mask) -> float:
        """The weakest battery behind these racks' feeds: UPS runtime, or configured."""
        used = set(self.feed_a_source[racks_mask]) | set(self.feed_b_source[racks_mask]) - {-1}
        seconds = []
        for i in used:
            s = self.sources[i]
            runtime = good(s.id, "runtime_min") if s.kind == "ups" else math.nan
            if math.isnan(runtime) and s.battery_runtime_min is not None:
                runtime = s.battery_runtime_min
            seconds.append(runtime * 60)
        return float(np.min(seconds)) if seconds else math.nan  # one unknown: unknown

    def derived_samples(self, status: SiteStatus) -> list[Sample]:
        """The tick's results as samples of the `rack`, `room` and `site` measurements."""
        t = status.updated_at
        site_fields = {
            "pue": status.pue, "it_kw": status.it_kw, "facility_kw": status.facility_kw,
            "cooling_kw": status.cooling_kw, "cooling_ppue": status.cooling_ppue,
            "power_ppue": status.power_ppue, "conversion_loss_kw": status.conversion_loss_kw,
        }
        out = [Sample("site", {"site": self.site.site}, k, v, t) for k, v in site_fields.items() if v is not None]
        rooms: dict[str, list[RackStatus]] = {}
        for rack, cfg in zip(status.racks, self.site.racks):
            rooms.setdefault(rack.room, []).append(rack)
            fields = {"power_kw": rack.power_kw, "power_kw_peak": rack.power_kw_peak,
                      "headroom_kw": rack.headroom_kw}
            fields |= {f"headroom_{k}_kw": v for k, v in rack.limits_kw.items()}
            tags = self.topology.rack_tags(cfg)
            out += [Sample("rack", tags, k, v, t) for k, v in fields.items() if v is not None and math.isfinite(v)]
        for room, racks in rooms.items():
            kw = [r.power_kw for r in racks]
            if None not in kw:
                out.append(Sample("room", {"site": self.site.site, "room": room}, "it_kw", sum(kw), t))
        return out


def _pdu_arrays(pdus: list) -> tuple[np.ndarray, ...]:
    """breaker_a, voltage_v, phases (0 = DC), power_factor, derating: NaN where no PDU."""
    def col(f):
        return np.array([f(p) if p is not None else np.nan for p in pdus], dtype=float)

    return (
        col(lambda p: p.breaker_a),
        col(lambda p: p.voltage_v),
        col(lambda p: 0 if p.phases == "dc" else p.phases),
        col(lambda p: p.power_factor),
        col(lambda p: p.continuous_derating),
    )


def _feed_capacity(pdus: list) -> np.ndarray:
    """Each feed's derated capacity (kW); NaN where the rack has no such feed."""
    return np.asarray(power.feed_capacity_kw(*_pdu_arrays(pdus)), dtype=float)


@dataclass(frozen=True)
class WhatIf:
    row: str
    racks_requested: int
    rack_kw: float
    capture_ratio: float
    racks_fit: int | None
    feasible: bool
    first_to_break: str
    complete: bool
    racks_fit_by_limit: dict[str, float | None]  # None: unknown; inf: this limit allows any
    source_pool_left_kw: float | None
    loop_pool_left_kw: float | None


def what_if(model: SiteModel, status: SiteStatus, row: str, racks: int, rack_kw: float,
            capture_ratio: float = 0.85, feed_kw: float | None = None,
            air_kw: float | None = None) -> WhatIf:
    """Place ``racks`` new racks of ``rack_kw`` into ``row``: they draw on the pools of the
    row's sources (the smaller one: either may carry them after a failure) and of its loop
    (the tightest, if the row spans several). ``feed_kw`` is the planned weaker feed of a new
    rack and ``air_kw`` its air allowance; each is not checked when not given."""
    in_row = np.array([r.row == row for r in model.site.racks])
    if not in_row.any():
        rows = sorted({r.row for r in model.site.racks})
        raise ValueError(f"no row '{row}' (rows: {', '.join(rows)})")
    pools = {p.id: p for p in status.pools}
    feeds = np.r_[model.feed_a_source[in_row], model.feed_b_source[in_row]]
    source_left = [pools[model.sources[i].id].left_kw for i in set(feeds) if i >= 0]
    loops = [pools[model.loops[i].id] for i in set(model.rack_loop[in_row]) if i >= 0]
    loop = min(loops, key=lambda p: math.inf if p.left_kw is None else p.left_kw, default=None)

    def known(x: float | None) -> float:
        return math.nan if x is None else x

    p = place_racks(
        racks, rack_kw, capture_ratio,
        feed_capacity_kw=math.inf if feed_kw is None else feed_kw,
        source_pool_kw=math.nan if None in source_left else min(source_left, default=math.inf),
        loop_pool_kw=known(loop.left_kw) if loop else math.inf,
        loop_supply_temp_c=known(loop.supply_temp_c) if loop else math.nan,
        loop_supply_limit_c=loop.supply_limit_c if loop else math.inf,
        air_allowance_kw=math.inf if air_kw is None else air_kw,
    )
    return WhatIf(
        row=row, racks_requested=racks, rack_kw=rack_kw, capture_ratio=capture_ratio,
        racks_fit=None if math.isnan(p.racks_fit) else int(p.racks_fit),
        feasible=bool(p.feasible), first_to_break=str(p.first_to_break), complete=bool(p.complete),
        racks_fit_by_limit={n: num(v) for n, v in zip(WHATIF_LIMITS, p.racks_fit_by_limit)},
        source_pool_left_kw=num(p.source_pool_left_kw), loop_pool_left_kw=num(p.loop_pool_left_kw),
    )
