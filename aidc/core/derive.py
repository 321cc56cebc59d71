"""The model tick's glue: site config + latest good samples -> arrays -> models -> status.

The static side (ratings, breakers, which rack hangs on which source, CDU and loop) is turned
into arrays once; each tick only gathers the live values. models/ does the arithmetic, over
all racks at once; this module only knows where each number comes from. A value that is not
measured with good quality is NaN, and the models keep it unknown: never a guess, never 0.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from itertools import repeat
from typing import NamedTuple

import numpy as np

from aidc.core.config import Site
from aidc.core.metrics import (
    FreshLatest,
    LatestValues,
    Quality,
    Sample,
    SampleColumns,
    SeriesKeys,
    series_key,
)
from aidc.core.topology import Topology
from models import backup, cooling, power
from models import pue as pue_model
from models.headroom import LIMITS, RackHeadroom, rack_headroom
from models.whatif import WHATIF_LIMITS, place_racks

PHASES = (1, 2, 3)
PHASE_CURRENT = tuple(series_key("current_a", {"phase": str(n)}) for n in PHASES)
# a rack's derived fields, in the order of its values: limits_kw is built in LIMITS' order
SITE_FIELDS = ("pue", "it_kw", "facility_kw", "cooling_kw", "cooling_ppue", "power_ppue",
               "conversion_loss_kw")  # the `site` measurement's, in derived_samples
ROOM_FIELDS = ("it_kw",)  # the `room` measurement's
RACK_FIELDS = ("power_kw", "power_kw_peak", "headroom_kw", *(f"headroom_{k}_kw" for k in LIMITS))
SWING_WINDOW_S = 60.0  # GPU load swings are judged over the last minute


class RackStatus(NamedTuple):
    """Immutable, and made at a third of a frozen dataclass's cost (10,000 a tick)."""

    id: str
    room: str
    row: str
    design_kw: float
    power_kw: float | None
    power_kw_peak: float | None  # max over model.peak_window_s: what capacity must hold
    headroom_kw: float | None
    limiting: str | None  # the binding limit, 'unknown' when no limit could be evaluated
    complete: bool  # every limit known, so headroom_kw is exact (else an upper bound)
    limits_kw: dict[str, float | None]  # None: unknown


@dataclass(frozen=True)
class Pool:
    """A shared limit: the kW left on one source (electrical) or one loop (heat).

    ``left_kw`` is what a planner may sign: for a source, what is left after the worst
    single failure of another source (``worst_failure`` names it; None when no failure moves
    load onto it); for a loop, what is left with its redundancy kept (``worst_failure`` is
    the CDU it reserves). ``left_normal_kw``: with nothing more failing."""

    id: str
    kind: str  # rectifier | ups | loop
    capacity_kw: float | None  # usable now: live modules; a loop's with its redundancy kept
    load_kw: float | None
    left_kw: float | None
    left_normal_kw: float | None
    worst_failure: str | None
    racks: list[str]
    rating_kw: float | None = None  # sources: the nameplate; loops: the CDUs' sum
    modules_ok: float | None = None  # modular sources
    heat_measured_kw: float | None = None  # loops: flow x rho cp x dT of its CDUs
    heat_from_racks_kw: float | None = None  # loops: capture x rack power
    supply_temp_c: float | None = None  # loops: the supply compared with the class
    supply_limit_c: float = math.inf  # loops: its ASHRAE TC9.9 class limit
    supply_compared: str | None = None  # loops: facility_supply or technology_supply


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
class CduStatus:
    """What the tick found of one CDU (its loop and rating are in the site file)."""

    id: str
    capacity_kw: float | None  # usable now: the pumps running and no leak
    heat_kw: float | None  # carried now: flow x rho cp x (return - supply)


class Racks(Sequence[RackStatus]):
    """The racks' records, made from the tick's arrays when first read (a reader of the
    web, `aidc headroom`): a tick that only writes and judges the arrays makes none (10,000
    racks: 10-20 ms a tick)."""

    def __init__(self, make: Callable[[], list[RackStatus]]):
        self._make = make

    @cached_property
    def _records(self) -> list[RackStatus]:
        return self._make()

    def __getitem__(self, i):
        return self._records[i]

    def __len__(self) -> int:
        return len(self._records)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._records)


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
    racks: Sequence[RackStatus]
    pools: list[Pool]
    backup: list[BackupStatus]
    missing: list[str]  # series the model needed but had no good value for
    cdus: list[CduStatus] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)  # facility loads neither metered
    # nor declared: facility power and PUE are then unknown
    pue_at_least: float | None = None  # with unaccounted loads: from what is known
    note: str | None = None
    # (sources, sources + 1) kW left on each source after each single source failure, the
    # last column with none: what-if places new racks against it (power.SourcePools)
    source_left_by_failure_kw: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)),
                                                  repr=False)
    # (racks, RACK_FIELDS) the racks' figures rounded as in `racks`, NaN unknown: what
    # derived_samples writes, taken a field of every rack at a time
    rack_values_kw: np.ndarray = field(default_factory=lambda: np.zeros((0, len(RACK_FIELDS))),
                                       repr=False, compare=False)
    # (racks,) the name of each rack's binding limit, as in `racks`
    rack_limiting: np.ndarray = field(default_factory=lambda: np.array([], str), repr=False,
                                      compare=False)


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
        self.rack_tags = [self.topology.rack_tags(r) for r in site.racks]
        by_id = {d.id: d for d in site.devices}
        racks = site.racks
        self.rack_ids = [r.id for r in racks]
        self.rack_rooms, self.rack_rows = [r.room for r in racks], [r.row for r in racks]
        self.rooms = list(dict.fromkeys(self.rack_rooms))
        room_index = {room: i for i, room in enumerate(self.rooms)}
        self.rack_room = np.array([room_index[r] for r in self.rack_rooms], dtype=np.intp)
        self.design_kw = np.array([r.design_kw for r in racks])
        self.capture = np.array([r.capture_ratio for r in racks])
        self.air_kw = np.array([np.inf if r.air_kw is None else r.air_kw for r in racks])
        self.feed_a = [r.feed_a for r in racks]
        self.feed_b = [r.feed_b for r in racks]
        pdus_a = [by_id[f] for f in self.feed_a]
        pdus_b = [by_id[f] if f else None for f in self.feed_b]
        self.pdus_a, self.pdus_b = pdus_a, pdus_b
        self.pdu_ratings = [_pdu_arrays(pdus) for pdus in (pdus_a, pdus_b)]
        self.feed_cap_kw = power.ab_feed_capacity_kw(
            *(np.asarray(power.feed_capacity_kw(*ratings), dtype=float)
              for ratings in self.pdu_ratings))
        self.single_feed = np.array([p is None for p in pdus_b])
        # per feed side: the phase currents its PDUs carry (DC and single-phase feeds: phase
        # 1 only; None where none is), and the PDUs' ratings
        self.phase_series = [
            SeriesKeys((p.id, key) if p and (n == 1 or p.phases == 3) else None
                       for p in pdus for n, key in zip(PHASES, PHASE_CURRENT))
            for pdus in (pdus_a, pdus_b)]
        self.pdu_present = [np.array([p is not None for p in pdus]) for pdus in (pdus_a, pdus_b)]
        self.phase_carried = [np.array([k is not None for k in keys]) for keys in self.phase_series]

        self.sources = site.devices_of("rectifier") + site.devices_of("ups")
        self.source_ids = [s.id for s in self.sources]
        src_index = {s.id: i for i, s in enumerate(self.sources)}
        self.feed_a_source = np.array([src_index[p.upstream] for p in pdus_a], dtype=np.intp)
        self.feed_b_source = np.array([src_index[p.upstream] if p else -1 for p in pdus_b],
                                      dtype=np.intp)
        self.source_rating_kw = np.array([s.rating_kw for s in self.sources])
        self.source_module_kw = np.array([np.nan if s.module_kw is None else s.module_kw
                                          for s in self.sources])
        self.source_spare = np.array([s.spare_modules for s in self.sources], dtype=float)
        self.modular_ids = [s.id if s.module_kw else None for s in self.sources]

        self.loops = site.loops
        loop_index = {lp.id: i for i, lp in enumerate(self.loops)}
        loop_of = {c: lp for lp in self.loops for c in lp.cdus}
        self.rack_loop = np.array([loop_index.get(r.loop, -1) for r in racks], dtype=np.intp)
        self.cdus = [by_id[c] for lp in self.loops for c in lp.cdus]
        self.cdu_ids = [c.id for c in self.cdus]
        self.cdu_loop = np.array([loop_index[loop_of[c.id].id] for c in self.cdus], dtype=np.intp)
        self.cdu_fluid = np.array([loop_of[c.id].fluid for c in self.cdus])
        self.cdu_rated_kw = np.array([c.rated_kw for c in self.cdus])
        self.cdu_max_flow = np.array([np.nan if c.max_flow_lpm is None else c.max_flow_lpm
                                      for c in self.cdus])
        self.cdu_design_supply_c = np.array([loop_of[c.id].design_supply_c for c in self.cdus])
        self.cdu_design_dt_k = np.array([loop_of[c.id].design_dt_k for c in self.cdus])
        self.cdu_pumps_required = np.array([c.pumps_required for c in self.cdus], dtype=float)
        self.loop_redundant = np.array([1 if lp.redundancy == "N+1" else 0 for lp in self.loops])
        self.loop_limit_c = np.array([cooling.ASHRAE_SUPPLY_LIMIT_C[lp.ashrae_class] for lp in self.loops])
        self.loop_supply_metric = ["facility_supply_temp_c" if lp.class_checked_on == "facility_supply"
                                   else "supply_temp_c" for lp in self.loops]
        self.loop_supply_keys = SeriesKeys((c, metric) for lp, metric in
                                           zip(self.loops, self.loop_supply_metric) for c in lp.cdus)
        self.loop_first_cdu = np.cumsum([0] + [len(lp.cdus) for lp in self.loops[:-1]], dtype=np.intp)

        # the racks' own liquid limits (a manifold's maximum flow at a design rise)
        loops = [self.loops[k] if k >= 0 else None for k in self.rack_loop]
        liquid = [r.manifold for r in racks]
        self.manifold_max_flow = np.array([np.nan if m is None else m.max_flow_lpm for m in liquid])
        self.manifold_dt_k = np.array([
            np.nan if m is None else m.design_dt_k or (lp.design_dt_k if lp else np.nan)
            for m, lp in zip(liquid, loops)])
        self.manifold_meter = [m.meter if m else None for m in liquid]
        self.manifold_metered = np.array([m is not None for m in self.manifold_meter])
        self.rack_fluid = np.array([lp.fluid if lp else "PG25" for lp in loops])
        self.rack_design_supply_c = np.array([lp.design_supply_c if lp else 35.0 for lp in loops])

        # who draws on what, once: sources, loops and supercaps list their racks
        self.source_racks: list[list[str]] = [[] for _ in self.sources]
        self.loop_racks: list[list[str]] = [[] for _ in self.loops]
        for r, a, b, k in zip(self.rack_ids, self.feed_a_source, self.feed_b_source, self.rack_loop):
            self.source_racks[a].append(r)
            if b >= 0 and b != a:
                self.source_racks[b].append(r)
            if k >= 0:
                self.loop_racks[k].append(r)
        self.loop_rated_kw = cooling.loop_capacity_kw(self.cdu_rated_kw, self.cdu_loop, len(self.loops), 0)
        self.supercaps = site.devices_of("supercap")
        self.supercap_ids = [sc.id for sc in self.supercaps]
        supercap_index = {sc.id: i for i, sc in enumerate(self.supercaps)}
        self.supercap_vmin_v = np.array([sc.vmin_v for sc in self.supercaps], dtype=float)
        self.rack_supercap = np.array([supercap_index.get(r.supercap, -1) for r in racks], dtype=np.intp)
        behind = self.rack_supercap >= 0  # each supercap's sources: one pass over the racks
        pairs = {(int(sc), int(source)) for sc, *sources in zip(
            self.rack_supercap[behind], self.feed_a_source[behind], self.feed_b_source[behind])
            for source in sources if source >= 0}
        supercap_sources: list[list[int]] = [[] for _ in self.supercaps]
        for sc, source in sorted(pairs):
            supercap_sources[sc].append(source)
        # as rows of one matrix, padded with the index of a +inf past the sources
        width = max(map(len, supercap_sources), default=0)
        self.supercap_sources = np.array([s + [len(self.sources)] * (width - len(s))
                                          for s in supercap_sources], dtype=np.intp
                                         ).reshape(len(self.supercaps), width)
        behind_supercaps = {source for _, source in pairs}  # the UPS runtimes backup reads
        self.backup_ups_ids = [s.id if s.kind == "ups" and i in behind_supercaps else None
                               for i, s in enumerate(self.sources)]
        self.source_battery_min = np.array([np.nan if s.battery_runtime_min is None
                                            else s.battery_runtime_min for s in self.sources])

        meters = site.devices_of("meter")
        # a site fed by several incomers meters each: its facility power is their sum (ISO/IEC
        # 30134-2: all the energy the facility takes), and so is a cooling plant's
        self.facility_meters = [m.id for m in meters if m.role == "facility"]
        self.cooling_meters = [m.id for m in meters if m.role == "cooling"]
        self.other_meters = [m.id for m in meters if m.role == "other"]
        self.pue_category = pue_model.pue_category(site.model.it_measured_at)
        self.keys_read = frozenset({  # the series keys `evaluate` reads, outlets aside
            "power_kw", *PHASE_CURRENT, "output_power_kw", "input_power_kw", "modules_ok",
            "runtime_min", "pumps_running", "leak", "flow_lpm", "supply_temp_c",
            "return_temp_c", *self.loop_supply_metric, "voltage_v", "capacitance_f", "esr_mohm",
        })
        self.reads_outlets = site.model.it_measured_at == "it_input"
        self._keys: dict[tuple[int, str], tuple[list, SeriesKeys]] = {}
        self.peaks: deque[tuple[float, np.ndarray]] = deque()

    # ------------------------------------------------------------------ the tick

    def series_read(self) -> frozenset[str] | None:
        """The series keys `evaluate` reads, so that a reader of the store fetches only those
        (a PDU's outlets, modules and energy counters are most of a site's series); None when
        IT power is summed from every outlet."""
        return None if self.reads_outlets else self.keys_read

    def _series_keys(self, devices: list, metric: str) -> SeriesKeys:
        """The keys of ``metric`` on the model's own device lists, made once."""
        made = self._keys.get((id(devices), metric))
        if made is None or made[0] is not devices:  # (the list is held: its id is not reused)
            made = self._keys[(id(devices), metric)] = (
                devices, SeriesKeys((d, metric) if d else None for d in devices))
        return made[1]

    def evaluate(self, latest: Mapping[tuple[str, str], Sample] | LatestValues,
                 now: float) -> SiteStatus:
        missing: dict[str, None] = {}  # in order, once each

        if not isinstance(latest, FreshLatest | LatestValues):  # judged fresh by the reader
            latest = FreshLatest(latest, None, now)

        def series(keys: SeriesKeys) -> np.ndarray:
            """Good values of (device, metric) series, in one pass: NaN where unknown, and
            named in ``missing``; a None key (no such device) is NaN, not missing."""
            values = np.array(latest.good_values(keys), dtype=float)
            for i in np.flatnonzero(np.isnan(values)).tolist():
                if keys[i]:
                    missing["{}.{}".format(*keys[i])] = None
            return values

        def good(device: str | None, metric: str) -> float:
            if device is None:
                return math.nan
            value = latest.good_value((device, metric))
            if math.isnan(value):
                missing[f"{device}.{metric}"] = None
            return value

        def many(devices: list, metric: str) -> np.ndarray:
            return series(self._series_keys(devices, metric))

        feed_a_kw = many(self.feed_a, "power_kw")
        feed_b_kw = np.where(self.single_feed, 0.0, many(self.feed_b, "power_kw"))
        rack_kw = feed_a_kw + feed_b_kw  # unknown when either feed is: never guessed
        peak_kw = self._peak(now, rack_kw)
        load_kw = np.fmax(rack_kw, peak_kw)  # capacity holds the window's peak
        with np.errstate(invalid="ignore", divide="ignore"):
            share_a = np.where(self.single_feed, 1.0,
                               np.where(rack_kw > 0, feed_a_kw / rack_kw, 0.5))  # NaN stays
        phase = self._phase_headroom_kw(series, load_kw, feed_a_kw, feed_b_kw)

        source_out = many(self.source_ids, "output_power_kw")
        modules_ok = many(self.modular_ids, "modules_ok")
        source_capacity = power.modular_capacity_kw(
            self.source_rating_kw, self.source_module_kw, modules_ok, self.source_spare)

        cdu_capacity = cooling.cdu_capacity_kw(
            self.cdu_rated_kw, self.cdu_max_flow, self.cdu_design_supply_c, self.cdu_design_dt_k,
            self.cdu_fluid, many(self.cdu_ids, "pumps_running"), self.cdu_pumps_required,
            many(self.cdu_ids, "leak"))
        n_loops = len(self.loops)
        loop_capacity = cooling.loop_capacity_kw(cdu_capacity, self.cdu_loop, n_loops, self.loop_redundant)
        loop_capacity_all = cooling.loop_capacity_kw(cdu_capacity, self.cdu_loop, n_loops, 0)
        heat_from_racks = cooling.loop_heat_kw(
            cooling.heat_to_liquid_kw(load_kw, self.capture), self.rack_loop, n_loops)
        cdu_supply = many(self.cdu_ids, "supply_temp_c")
        cdu_heat = cooling.liquid_capacity_kw(
            many(self.cdu_ids, "flow_lpm"), cdu_supply, many(self.cdu_ids, "return_temp_c") - cdu_supply,
            self.cdu_fluid)
        heat_measured = cooling.loop_heat_kw(cdu_heat, self.cdu_loop, n_loops)
        loop_heat = np.where(np.isnan(heat_measured), heat_from_racks, heat_measured)
        # the warmest supply among each loop's CDUs; one unknown: unknown
        loop_supply_c = (np.maximum.reduceat(series(self.loop_supply_keys), self.loop_first_cdu)
                         if self.loops else np.zeros(0))

        liquid_capacity, liquid_heat = self._rack_liquid(many, load_kw)
        h = rack_headroom(
            power_kw=rack_kw,
            power_kw_peak=peak_kw,
            design_kw=self.design_kw,
            feed_capacity_kw=self.feed_cap_kw,
            phase_headroom_kw=phase,
            capture_ratio=self.capture,
            air_allowance_kw=self.air_kw,
            rack_liquid_capacity_kw=liquid_capacity,
            rack_liquid_heat_kw=liquid_heat,
            feed_a_source=self.feed_a_source,
            feed_b_source=self.feed_b_source,
            feed_a_share=share_a,
            source_capacity_kw=source_capacity,
            source_load_kw=source_out,
            rack_loop=self.rack_loop,
            loop_capacity_kw=loop_capacity,
            loop_heat_kw=loop_heat,
            loop_supply_temp_c=loop_supply_c,
            loop_supply_limit_c=self.loop_limit_c,
        )
        pools = self._source_pools(h, source_capacity, source_out, modules_ok)
        pools += self._loop_pools(h, cdu_capacity, loop_capacity, loop_capacity_all, loop_heat,
                                  heat_measured, heat_from_racks, loop_supply_c)
        energy = self._facility(good, many, rack_kw, source_out, latest)
        rack_values = np.round(np.column_stack((rack_kw, peak_kw, h.headroom_kw, h.limits_kw)), 3)
        return SiteStatus(
            updated_at=now,
            pue_category=self.pue_category,
            racks=Racks(partial(self._racks, rack_values, h)),
            pools=pools,
            backup=self._backup(many, rack_kw),
            cdus=list(map(CduStatus, self.cdu_ids, *_numbers(np.stack((cdu_capacity, cdu_heat))))),
            missing=list(missing),
            source_left_by_failure_kw=h.sources.left_by_failure_kw,
            rack_values_kw=rack_values,
            rack_limiting=h.limiting,
            **energy,
        )

    def _facility(self, good, many, rack_kw, source_out, latest) -> dict:
        """IT power where the site measures it, facility power from its meters and declared
        loads, and PUE with its partial figures (ISO/IEC 30134-2)."""
        where = self.site.model.it_measured_at
        if where == "pdu_output":
            it_kw = float(np.sum(rack_kw))
        elif where == "ups_output":
            it_kw = float(np.sum(source_out))
        else:
            outlets = _outlet_power_kw(latest)
            it_kw = float(np.sum([outlets.get(p.id, math.nan) for p in self.pdus_a + self.pdus_b if p]))
        declared = dict(self.site.model.unmetered_kw)
        if self.cooling_meters:  # unknown if one is
            cooling_kw = float(np.sum(many(self.cooling_meters, "power_kw")))
        else:
            cooling_kw = declared.get("cooling", math.nan)
        source_in = many(self.source_ids, "input_power_kw")
        loss_kw = float(np.sum(pue_model.conversion_loss_kw(source_in, source_out)))
        unaccounted, note, at_least = [], None, math.nan
        if self.facility_meters:
            facility_kw, share = float(np.sum(many(self.facility_meters, "power_kw"))), 1.0
        else:  # the sum of what is metered, plus the declared unmetered loads
            metered = float(np.sum(source_in) + np.sum(many(self.other_meters, "power_kw")))
            if self.cooling_meters:
                metered += cooling_kw
            elif "cooling" not in declared:
                unaccounted.append("cooling")
            unmetered = sum(declared.values())
            facility_kw = math.nan if unaccounted else metered + unmetered
            share = math.nan if unaccounted else float(pue_model.measured_share(metered, unmetered))
            if unaccounted:
                known = metered + unmetered
                at_least = pue_model.pue(known, it_kw)
                note = ("cooling power is neither metered (a meter with role cooling) nor "
                        "declared (model.unmetered_kw.cooling): facility power and PUE are "
                        f"unknown; the {known:,.1f} kW known put PUE at {at_least:.3f} or more")
        return {
            "pue": num(pue_model.pue(facility_kw, it_kw)),
            "it_kw": num(it_kw),
            "facility_kw": num(facility_kw),
            "cooling_kw": num(cooling_kw),
            "cooling_ppue": num(pue_model.partial_pue(it_kw, cooling_kw)),
            "power_ppue": num(pue_model.partial_pue(it_kw, loss_kw)),
            "conversion_loss_kw": num(loss_kw),
            "measured_share": num(share),
            "unaccounted": unaccounted,
            "pue_at_least": num(at_least),
            "note": note,
        }

    def _rack_liquid(self, many, load_kw) -> tuple[np.ndarray, np.ndarray]:
        """Each rack manifold's heat capacity at its maximum flow and design rise, and the
        heat in it now: measured (flow x rho cp x dT) where a meter is named, else capture
        x load. Properties at the metered supply temperature, else the loop's design one."""
        metered = self.manifold_metered
        flow, supply, ret = (many(self.manifold_meter, metric)
                             for metric in ("flow_lpm", "supply_temp_c", "return_temp_c"))
        supply_c = np.where(metered, supply, self.rack_design_supply_c)
        capacity = cooling.liquid_capacity_kw(self.manifold_max_flow, supply_c, self.manifold_dt_k,
                                              self.rack_fluid)
        capacity = np.where(np.isnan(self.manifold_max_flow), np.inf, capacity)
        measured = cooling.liquid_capacity_kw(flow, supply, ret - supply, self.rack_fluid)
        heat = np.where(metered, measured, cooling.heat_to_liquid_kw(load_kw, self.capture))
        return capacity, heat

    def _peak(self, now: float, rack_kw: np.ndarray) -> np.ndarray:
        """Max of each rack's power over the peak window (AI training swings), NaN-aware."""
        self.peaks.append((now, rack_kw))
        while self.peaks and self.peaks[0][0] < now - self.site.model.peak_window_s:
            self.peaks.popleft()
        return np.fmax.reduce(np.stack([p for _, p in self.peaks]), axis=0)

    def _phase_headroom_kw(self, series, rack_kw, feed_a_kw, feed_b_kw) -> np.ndarray:
        """Worst phase after a feed is lost: each surviving feed carries the whole rack
        (``rack_kw``, its peak) with its own phase balance, so its phase currents scale by
        rack kW / feed kW."""
        out = np.full(len(self.rack_ids), np.inf)
        for present, feed_kw, keys, carried, ratings in zip(
                self.pdu_present, (feed_a_kw, feed_b_kw), self.phase_series, self.phase_carried,
                self.pdu_ratings):
            if not present.any():
                continue
            amps = np.where(carried, series(keys), 0.0).reshape(len(present), len(PHASES))
            safe_kw = np.where(feed_kw > 0, feed_kw, 1.0)
            scale = np.where(self.single_feed | (feed_kw == 0), 1.0, rack_kw / safe_kw)  # NaN stays
            kw = power.phase_headroom_kw(amps * scale[:, None], np.zeros_like(amps), *ratings)
            out = np.where(present, np.minimum(out, kw), out)  # unknown currents: unknown
        return out

    def _racks(self, values: np.ndarray, h: RackHeadroom) -> list[RackStatus]:
        """The racks' records, from their rounded figures (SiteStatus.rack_values_kw)."""
        power, peak, headroom = _known(values[:, :-len(LIMITS)].T)
        limits = map(dict, map(zip, repeat(LIMITS), _known(values[:, -len(LIMITS):])))
        return list(map(partial(tuple.__new__, RackStatus), zip(
            self.rack_ids, self.rack_rooms, self.rack_rows, self.design_kw.tolist(), power, peak,
            headroom, h.limiting.tolist(), h.complete.tolist(), limits)))

    def _source_pools(self, h: RackHeadroom, capacity, load, modules_ok) -> list[Pool]:
        worst = [self.source_ids[w] if w >= 0 else None for w in h.sources.worst_failure.tolist()]
        columns = _numbers(np.stack((capacity, load, h.sources.left_after_failure_kw,
                                     h.sources.left_normal_kw, modules_ok)))
        return [Pool(s.id, s.kind, cap, kw, left, left_normal, w, racks, rating_kw=s.rating_kw,
                     modules_ok=ok if s.module_kw else None)
                for s, cap, kw, left, left_normal, ok, w, racks
                in zip(self.sources, *columns, worst, self.source_racks)]

    def _loop_pools(self, h: RackHeadroom, cdu_capacity, capacity, capacity_all, heat,
                    heat_measured, heat_from_racks, supply_c) -> list[Pool]:
        largest = cooling.largest_cdu(cdu_capacity, self.cdu_loop, len(self.loops))
        reserved = [self.cdu_ids[c] if redundant and c >= 0 else None
                    for c, redundant in zip(largest.tolist(), self.loop_redundant.tolist())]
        columns = _numbers(np.stack((capacity, heat, h.loop_pool_kw, capacity_all - heat,
                                     heat_measured, heat_from_racks, supply_c)))
        return [Pool(lp.id, "loop", cap, kw, left, left_normal, spare, racks, rating_kw=rating,
                     heat_measured_kw=measured, heat_from_racks_kw=from_racks, supply_temp_c=supply,
                     supply_limit_c=limit, supply_compared=lp.class_checked_on)
                for lp, cap, kw, left, left_normal, measured, from_racks, supply, spare, racks,
                rating, limit in zip(self.loops, *columns, reserved, self.loop_racks,
                                     self.loop_rated_kw.tolist(), self.loop_limit_c.tolist())]

    def _backup(self, many, rack_kw) -> list[BackupStatus]:
        """Each supercap's ride-through chain and smoothing, all supercaps at once."""
        m, n = self.site.model, len(self.supercaps)
        ids = self.supercap_ids
        load_kw = np.bincount(self.rack_supercap[self.rack_supercap >= 0],
                              weights=rack_kw[self.rack_supercap >= 0], minlength=n)
        ts, row_kw = self._last_minute(n)
        v = many(ids, "voltage_v")
        energy_j = backup.supercap_usable_energy_j(many(ids, "capacitance_f"), v, self.supercap_vmin_v)
        supercap_s = backup.ride_through_s(energy_j, load_kw, m.supercap_efficiency)
        battery_s = self._battery_s(many)
        chain = backup.backup_chain(supercap_s, battery_s, m.generator_start_s, m.transfer_s)
        smoothing = backup.supercap_max_power_kw(v, many(ids, "esr_mohm"))
        columns = _numbers(np.stack((
            load_kw, energy_j / 1000, supercap_s, battery_s, chain.bridge_s, chain.shortfall_s,
            backup.power_swing_kw(row_kw.T), backup.power_ramp_kw_per_s(ts, row_kw.T),
            smoothing)))
        return [
            BackupStatus(
                supercap=sc, load_kw=load, usable_energy_kj=kj, supercap_s=sc_s, battery_s=bat_s,
                bridge_s=bridge, required_s=required, shortfall_s=short, bridges=bridges,
                swing_kw=swing, ramp_kw_per_s=ramp, smoothing_kw=smooth)
            for sc, load, kj, sc_s, bat_s, bridge, short, swing, ramp, smooth, required, bridges
            in zip(ids, *columns, np.broadcast_to(chain.required_s, n).tolist(),
                   np.broadcast_to(chain.bridges, n).tolist())
        ]

    def _last_minute(self, n_supercaps: int) -> tuple[np.ndarray, np.ndarray]:
        """Times, and the summed power of each supercap's racks, over the last 60 s (dP/dt):
        (times,) and (times, supercaps)."""
        recent = [(t, p) for t, p in self.peaks if t >= self.peaks[-1][0] - SWING_WINDOW_S]
        mine = self.rack_supercap >= 0
        sums = [np.bincount(self.rack_supercap[mine], weights=p[mine], minlength=n_supercaps)
                for _, p in recent]
        return np.array([t for t, _ in recent]), np.array(sums).reshape(len(recent), n_supercaps)

    def _battery_s(self, many) -> np.ndarray:
        """Each supercap's weakest battery behind its sources: the UPS's runtime, or the
        one configured; one unknown: unknown, and no source: unknown."""
        runtime_min = many(self.backup_ups_ids, "runtime_min")
        runtime_min = np.where(np.isnan(runtime_min), self.source_battery_min, runtime_min)
        seconds = np.append(runtime_min * 60, np.inf)[self.supercap_sources]  # (the pad: inf)
        weakest = seconds.min(axis=1, initial=np.inf)
        return np.where(np.isinf(weakest), np.nan, weakest)

    def derived_samples(self, status: SiteStatus) -> list[Sample]:
        """The tick's results as samples of the `site`, `room` and `rack` measurements."""
        samples, racks = self.derived_series(status)
        return [*samples, *racks]

    def derived_series(self, status: SiteStatus) -> tuple[list[Sample], SampleColumns]:
        """The tick's results: the `site` and `room` samples, and the `rack` series as the
        rounded array they were computed in (known and limited values only: 90,000 at
        10,000 racks, which the stores take from the array)."""
        t, good, site = status.updated_at, Quality.GOOD, self.site.site
        make = partial(tuple.__new__, Sample)
        out = [make(("site", {"site": site}, k, v, t, good))
               for k in SITE_FIELDS if (v := getattr(status, k)) is not None]
        values = status.rack_values_kw
        power = values[:, RACK_FIELDS.index("power_kw")]
        unknown = np.bincount(self.rack_room, np.isnan(power), len(self.rooms))
        room_kw = np.bincount(self.rack_room, np.nan_to_num(power), len(self.rooms))
        out += [make(("room", {"site": site, "room": room}, ROOM_FIELDS[0], kw, t, good))
                for room, kw, n in zip(self.rooms, room_kw.tolist(), unknown) if not n]
        return out, SampleColumns("rack", self.rack_tags, RACK_FIELDS, values, t)


def _known(values: np.ndarray) -> list:
    """An array as JSON-friendly Python numbers: NaN (unknown) -> None, in one pass."""
    return np.where(np.isnan(values), None, values).tolist()


def _numbers(values: np.ndarray) -> list:
    """An array as JSON-friendly Python numbers (num() element by element, in one pass)."""
    return _known(np.round(values, 3))


def _outlet_power_kw(latest: FreshLatest | LatestValues) -> dict[str, float]:
    """Each PDU's IT equipment input: the sum of its outlets' good power_kw{outlet=N}, in one
    pass over the latest series (ISO/IEC 30134-2 category 3)."""
    out: dict[str, float] = {}
    for device, key in latest:
        if key.startswith("power_kw{outlet="):
            out[device] = out.get(device, 0.0) + latest.good_value((device, key))
    return out


def _pdu_arrays(pdus: list) -> tuple[np.ndarray, ...]:
    """breaker_a, voltage_v, phases (0 = DC), power_factor, derating: NaN where no PDU."""
    none = (np.nan,) * 5
    rows = np.array([none if p is None else (
        p.breaker_a, p.voltage_v, 0 if p.phases == "dc" else p.phases, p.power_factor,
        p.continuous_derating) for p in pdus], dtype=float).reshape(-1, 5)
    return tuple(np.ascontiguousarray(column) for column in rows.T)


class NotInSite(ValueError):
    """A question about a row (or rack) that the site file does not have."""


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
    not_checked: list[str]  # limits the question did not ask about (feed_kw, air_kw absent)
    source_pool_kw: float | None  # kW of new racks the row's sources hold, failover kept
    loop_pool_left_kw: float | None
    source_pool_left_kw: float | None


def what_if(model: SiteModel, status: SiteStatus, row: str, racks: int, rack_kw: float,
            capture_ratio: float = 0.85, feed_kw: float | None = None,
            air_kw: float | None = None) -> WhatIf:
    """Place ``racks`` new racks of ``rack_kw`` into ``row``, fed like the row's racks: on
    every pair of sources the row's racks use, the new racks must hold after the worst
    single source failure (when one feed's source fails the other carries a new rack whole);
    the tightest pair counts. They draw on the row's loop (the tightest, if the row spans
    several) with its redundancy kept. ``feed_kw`` is the planned weaker feed of a new rack
    and ``air_kw`` its air allowance; each is ``not_checked`` when not given."""
    in_row = np.array([r.row == row for r in model.site.racks])
    if not in_row.any():
        rows = sorted({r.row for r in model.site.racks})
        raise NotInSite(f"no row '{row}' (rows: {', '.join(rows)})")
    pools = {p.id: p for p in status.pools}
    pairs = sorted(set(zip(model.feed_a_source[in_row], model.feed_b_source[in_row])))
    a, b = (np.array(x, dtype=np.intp) for x in zip(*pairs))
    per_pair = power.rack_upstream_headroom_kw(
        status.source_left_by_failure_kw, a, b, np.where(b >= 0, 0.5, 1.0))
    loops = [pools[model.loops[i].id] for i in set(model.rack_loop[in_row]) if i >= 0]
    loop = min(loops, key=lambda p: math.inf if p.left_kw is None else p.left_kw, default=None)

    def known(x: float | None) -> float:
        return math.nan if x is None else x

    source_pool = float(np.min(per_pair))  # one unknown pair: unknown
    p = place_racks(
        racks, rack_kw, capture_ratio,
        feed_capacity_kw=feed_kw,
        source_pool_kw=source_pool,
        loop_pool_kw=known(loop.left_kw) if loop else math.inf,
        loop_supply_temp_c=known(loop.supply_temp_c) if loop else None,
        loop_supply_limit_c=loop.supply_limit_c if loop else math.inf,
        air_allowance_kw=air_kw,
    )
    return WhatIf(
        row=row, racks_requested=racks, rack_kw=rack_kw, capture_ratio=capture_ratio,
        racks_fit=None if math.isnan(p.racks_fit) else int(p.racks_fit),
        feasible=bool(p.feasible), first_to_break=str(p.first_to_break), complete=bool(p.complete),
        racks_fit_by_limit={n: num(v) for n, v in zip(WHATIF_LIMITS, p.racks_fit_by_limit)
                            if n not in p.not_checked},
        not_checked=list(p.not_checked),
        source_pool_kw=num(source_pool),
        loop_pool_left_kw=num(p.loop_pool_left_kw),
        source_pool_left_kw=num(p.source_pool_left_kw),
    )
