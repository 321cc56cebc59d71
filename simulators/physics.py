"""The ground truth of a virtual site, physically consistent from rack to meter.

Rack power (a training-like swing around a load factor) flows down the power chain:
rack -> its A and B PDUs (half each) -> rectifier/UPS output -> input = output / efficiency
-> facility meter. Rack heat x capture ratio goes to the liquid loop, shared by the running
CDUs, and sets each CDU's return temperature by Q = m_dot x cp x dT; the residual goes to air.
The cooling-plant meter carries the CDU pumps, the dry coolers and the air handlers.

Protocol servers ask :meth:`SitePhysics.values` for a device's canonical metrics; tests ask
:meth:`SitePhysics.truth` for what the collectors and the model should find.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from aidc.core.config import Site
from aidc.core.metrics import series_key

# PG25 near 40 C (REFERENCE 2, CoolProp INCOMP::MPG[0.25]); the simulator keeps its own
# constants so that it does not share the model's property code.
PG25_DENSITY_KG_PER_L = 1.0099
PG25_CP_KJ_PER_KG_K = 3.969
SWING_PERIOD_S = 30.0  # GPU training step swing
SWING_FRACTION = 0.04
LIGHTING_OFFICE_KW = 8.0
DRY_COOLER_KW_PER_KW_LIQUID = 0.045
AIR_HANDLING_KW_PER_KW_AIR = 0.25
CDU_MAX_FLOW_LPM = 900.0  # when the site file gives none
RECTIFIER_MODULES = 13  # when the site file gives none
FACILITY_SUPPLY_C = 30.0
UPS_RUNTIME_MIN = 12.0
OUTLETS = 24  # per rack PDU (per-outlet profiles)  # at the demo's load, on a full battery
CDU_APPROACH_K = 5.0
# a PDU's table rows by name, made once: a step of 4,000 PDUs named 300,000 of them
INLET_KEYS = (series_key("current_a", {"inlet": "1"}), series_key("voltage_v", {"inlet": "1"}))
OUTLET_KEYS = tuple((series_key("power_kw", {"outlet": str(n)}),
                     series_key("current_a", {"outlet": str(n)})) for n in range(1, OUTLETS + 1))
PHASE_KEYS = tuple((series_key("current_a", {"phase": str(n)}),
                    series_key("voltage_v", {"phase": str(n)}),
                    series_key("phase_load_state", {"phase": str(n)})) for n in (1, 2, 3))


@dataclass
class Faults:
    """Physical faults of the virtual site (protocol faults live on the servers)."""

    sensor_fault: set[tuple[str, str]] = field(default_factory=set)  # served as a sentinel/Bad
    stuck: dict[tuple[str, str], float] = field(default_factory=dict)  # frozen at this value
    pump_failed: set[str] = field(default_factory=set)  # CDU ids with one pump down
    leak: set[str] = field(default_factory=set)  # CDU ids whose leak sensor trips
    modules_lost: dict[str, set[int]] = field(default_factory=dict)  # rectifier -> module nos
    utility_outage_since: float | None = None  # mains lost at (stores discharge from then)


class SitePhysics:
    """Deterministic site state as a function of time (plus integrated energy counters)."""

    def __init__(self, site: Site, load_factor: float = 0.7, clock=time.time):
        self.site, self.clock, self.faults = site, clock, Faults()
        self.devices = {d.id: d for d in site.devices}
        # who feeds whom, once: a step at 2,000 racks otherwise scanned every PDU per source
        self._pdus, self._meters = site.devices_of("pdu"), site.devices_of("meter")
        self._meters_sharing = Counter(m.role for m in self._meters)  # a role's power, evenly
        self._sources = site.devices_of("rectifier") + site.devices_of("ups")
        self._pdus_of = {s.id: [p.id for p in self._pdus if p.upstream == s.id]
                         for s in self._sources}
        self._racks_of_loop = {lp.id: [r for r in site.racks if r.loop == lp.id]
                               for lp in site.loops}
        self._racks_of_supercap = {sc.id: [r.id for r in site.racks if r.supercap == sc.id]
                                   for sc in site.devices_of("supercap")}
        self.load = {
            r.id: min(0.95, load_factor + 0.05 * ((i * 7) % 5 - 2)) for i, r in enumerate(site.racks)
        }
        self.phase = {r.id: 2 * math.pi * i / len(site.racks) for i, r in enumerate(site.racks)}
        self.energy_kwh: dict[str, float] = {d.id: 1000.0 * (i + 1) for i, d in enumerate(site.devices)}
        self._values: dict[str, dict[str, float | None]] = {}
        self._last_t: float | None = None
        self.step()

    # -------------------------------------------------------------- the physics

    def rack_power_kw(self, t: float) -> dict[str, float]:
        return {
            r.id: r.design_kw
            * self.load[r.id]
            * (1 + SWING_FRACTION * math.sin(2 * math.pi * t / SWING_PERIOD_S + self.phase[r.id]))
            for r in self.site.racks
        }

    def step(self) -> None:
        """Advance to the clock's now: recompute every device's values, integrate energy."""
        t = self.clock()
        rack_kw = self.rack_power_kw(t)
        v: dict[str, dict[str, float | None]] = {}

        pdu_kw: dict[str, float] = {}
        for r in self.site.racks:
            feeds = [r.feed_a] + ([r.feed_b] if r.feed_b else [])
            for f in feeds:
                pdu_kw[f] = rack_kw[r.id] / len(feeds)
        for pdu in self._pdus:
            v[pdu.id] = self._pdu_values(pdu, pdu_kw.get(pdu.id, 0.0))

        source_in_kw = 0.0
        for src in self._sources:
            out_kw = sum(pdu_kw.get(p, 0.0) for p in self._pdus_of[src.id])
            in_kw = out_kw / src.efficiency
            source_in_kw += in_kw
            v[src.id] = (self._rectifier_values if src.kind == "rectifier" else self._ups_values)(
                src, in_kw, out_kw
            )

        cooling_kw, heat_air_kw = 0.0, 0.0
        for loop in self.site.loops:
            racks = self._racks_of_loop[loop.id]
            q_liquid_kw = sum(rack_kw[r.id] * r.capture_ratio for r in racks)
            heat_air_kw += sum(rack_kw[r.id] * (1 - r.capture_ratio) for r in racks)
            for cdu_id in loop.cdus:
                v[cdu_id] = self._cdu_values(self.devices[cdu_id], loop,
                                             q_liquid_kw / len(loop.cdus))
                cooling_kw += v[cdu_id]["power_kw"] or 0.0
            cooling_kw += DRY_COOLER_KW_PER_KW_LIQUID * q_liquid_kw
            for r in racks:
                if r.manifold and r.manifold.meter:
                    v[r.manifold.meter] = self._manifold_values(
                        r, loop, rack_kw[r.id] * r.capture_ratio)
        heat_air_kw += sum(
            rack_kw[r.id] for r in self.site.racks if r.loop is None
        )  # racks with no loop are all air
        cooling_kw += AIR_HANDLING_KW_PER_KW_AIR * heat_air_kw

        facility_kw = source_in_kw + cooling_kw + LIGHTING_OFFICE_KW
        of_role = {"facility": facility_kw, "cooling": cooling_kw}
        for m in self._meters:
            kw = (of_role[m.role] / self._meters_sharing[m.role] if m.role in of_role
                  else LIGHTING_OFFICE_KW)
            v[m.id] = {
                "power_kw": kw,
                "voltage_v": 415.0,
                "current_a": kw * 1000 / (math.sqrt(3) * 415.0 * 0.97),
                "frequency_hz": 50.0,
            }
        for sc_id, racks_of_sc in self._racks_of_supercap.items():
            v[sc_id] = self._supercap_values(self.devices[sc_id],
                                             sum(rack_kw[r] for r in racks_of_sc))

        dt_h = 0.0 if self._last_t is None else max(0.0, t - self._last_t) / 3600
        for device_id, values in v.items():
            if "power_kw" in values or "input_power_kw" in values:
                kw = values.get("input_power_kw", values.get("power_kw")) or 0.0
                self.energy_kwh[device_id] += kw * dt_h
                values["energy_kwh"] = self.energy_kwh[device_id]
        for (device_id, metric), value in self.faults.stuck.items():
            if device_id in v:
                v[device_id][metric] = value
        for device_id, metric in self.faults.sensor_fault:
            if device_id in v:
                v[device_id][metric] = None
        self._last_t, self._values = t, v
        self._truth = {
            "ts": t,
            "rack_power_kw": rack_kw,
            "it_kw": sum(rack_kw.values()),
            "facility_kw": facility_kw,
            "cooling_kw": cooling_kw,
            "pue": facility_kw / sum(rack_kw.values()),
            "pue_category": 2,  # IT measured at PDU outputs
        }

    def values(self, device_id: str) -> dict[str, float | None]:
        return dict(self._values.get(device_id, {}))

    def truth(self) -> dict:
        return dict(self._truth)

    # -------------------------------------------------------------- per device kind

    @staticmethod
    def _pdu_values(pdu, kw: float) -> dict[str, float | None]:
        """Table rows as the profiles name them: ``current_a{phase=N}``, ``power_kw{outlet=N}``."""
        if pdu.phases == "dc":
            amps, pf, used = [kw * 1000 / pdu.voltage_v], 1.0, 1
        elif pdu.phases == 1:
            amps, pf, used = [kw * 1000 / (pdu.voltage_v * pdu.power_factor)], pdu.power_factor, 1
        else:  # balanced three-phase: I = P / (sqrt(3) V_LL PF) on each line
            line_a = kw * 1000 / (math.sqrt(3) * pdu.voltage_v * pdu.power_factor)
            amps, pf, used = [line_a] * 3, pdu.power_factor, 3
        limit_a = pdu.continuous_derating * pdu.breaker_a
        out: dict[str, float | None] = {"power_kw": kw, "power_factor": pf}
        # per-inlet / per-outlet style (Raritan): one inlet, the load over OUTLETS outlets
        out[INLET_KEYS[0]], out[INLET_KEYS[1]] = amps[0], pdu.voltage_v
        outlet_kw, outlet_a = kw / OUTLETS, sum(amps) / OUTLETS
        for power_key, current_key in OUTLET_KEYS:
            out[power_key], out[current_key] = outlet_kw, outlet_a
        for n, (current_key, voltage_key, state_key) in enumerate(PHASE_KEYS, start=1):
            a = amps[n - 1] if n <= used else 0.0
            load_state = 1 if a < 0.1 * limit_a else 2 if a < 0.9 * limit_a else 3 if a <= limit_a else 4
            out[current_key] = a
            out[voltage_key] = pdu.voltage_v if n <= used else 0.0
            out[state_key] = float(load_state)
        return out

    def _rectifier_values(self, src, in_kw: float, out_kw: float) -> dict[str, float | None]:
        bus_v = 336.0
        modules_total = src.modules or RECTIFIER_MODULES
        modules_ok = modules_total - len(self.faults.modules_lost.get(src.id, ()))
        per_module_a = out_kw * 1000 / bus_v / max(modules_ok, 1)
        modules: dict[str, float | None] = {}
        for m in range(1, modules_total + 1):
            lost = m in self.faults.modules_lost.get(src.id, ())
            label = {"module": str(m)}
            modules[series_key("module_state", label)] = 2.0 if lost else 0.0  # 2 = AC fail
            modules[series_key("module_current_a", label)] = 0.0 if lost else per_module_a
            modules[series_key("module_temp_c", label)] = 30.0 if lost else 38.0 + 0.02 * per_module_a
        return modules | {
            "input_power_kw": in_kw,
            "output_voltage_v": bus_v,
            "output_current_a": out_kw * 1000 / bus_v,
            "output_power_kw": out_kw,
            "modules_ok": float(modules_ok),
            "modules_total": float(modules_total),
            "battery_voltage_v": bus_v,
            "battery_current_a": out_kw * 1000 / bus_v if self._outage_s() is not None else -2.0,
            "alarm": 1.0 if modules_ok < modules_total else 0.0,
        }

    def _outage_s(self) -> float | None:
        since = self.faults.utility_outage_since
        return None if since is None else max(0.0, self.clock() - since)

    def _ups_values(self, src, in_kw: float, out_kw: float) -> dict[str, float | None]:
        on_battery_s = self._outage_s()
        full_runtime_min = UPS_RUNTIME_MIN
        used = 0.0 if on_battery_s is None else min(1.0, on_battery_s / 60 / full_runtime_min)
        return {
            "input_voltage_v": 415.0 if on_battery_s is None else 0.0,
            "output_voltage_v": 230.0,
            "output_power_kw": out_kw,
            "load_pct": 100 * out_kw / src.rating_kw,
            "on_battery": 0.0 if on_battery_s is None else 1.0,
            "battery_status": 2.0 if used < 0.8 else 3.0,  # RFC 1628: 3 = batteryLow
            "battery_charge_pct": 100.0 * (1 - used),
            "runtime_min": full_runtime_min * (1 - used),
            "seconds_on_battery_s": on_battery_s or 0.0,
            "battery_voltage_v": 545.0 - 40 * used,
            "alarms_present": 0.0 if on_battery_s is None else 1.0,
            "input_power_kw": 0.0 if on_battery_s is not None else in_kw,
        }

    def _cdu_values(self, cdu, loop, q_kw: float) -> dict[str, float | None]:
        """Variable-speed pumps hold the loop's design rise: flow follows heat (Q = m_dot cp
        dT), up to the CDU's maximum flow; a lost pump leaves the others to run faster."""
        max_flow_lpm = cdu.max_flow_lpm or CDU_MAX_FLOW_LPM
        pumps_running = cdu.pumps - (1 if cdu.id in self.faults.pump_failed else 0)
        pump_max_lpm = max_flow_lpm / cdu.pumps_required
        flow_lpm = min(q_kw / (PG25_DENSITY_KG_PER_L * PG25_CP_KJ_PER_KG_K * loop.design_dt_k) * 60,
                       pumps_running * pump_max_lpm, max_flow_lpm)
        m_dot_kg_s = flow_lpm / 60 * PG25_DENSITY_KG_PER_L
        supply_c = FACILITY_SUPPLY_C + CDU_APPROACH_K
        return_c = supply_c + q_kw / (m_dot_kg_s * PG25_CP_KJ_PER_KG_K) if flow_lpm else supply_c
        facility_flow_lpm = flow_lpm * 1.1
        facility_return_c = FACILITY_SUPPLY_C + q_kw / (facility_flow_lpm / 60 * 0.997 * 4.18)
        speed_pct = 100 * flow_lpm / (pumps_running * pump_max_lpm)
        return {
            "supply_temp_c": supply_c,
            "return_temp_c": return_c,
            "flow_lpm": flow_lpm,
            "dp_kpa": 120.0 * (flow_lpm / max_flow_lpm) ** 2,
            "pump_speed_pct_1": speed_pct,
            "pump_speed_pct_2": 0.0 if pumps_running < 2 else speed_pct,
            "pumps_running": float(pumps_running),
            "facility_supply_temp_c": FACILITY_SUPPLY_C,
            "facility_return_temp_c": facility_return_c,
            "facility_flow_lpm": facility_flow_lpm,
            "power_kw": 2.5 + 0.004 * q_kw,
            "leak": 1.0 if cdu.id in self.faults.leak else 0.0,
            "reservoir_pct": 82.0,
            "valve_pct": 55.0,
            "alarm": 1.0 if cdu.id in self.faults.leak or pumps_running < cdu.pumps else 0.0,
        }

    @staticmethod
    def _manifold_values(rack, loop, q_kw: float) -> dict[str, float | None]:
        """A rack's manifold meter: its valve holds the design rise, so its flow follows its
        heat; supply is the CDU's."""
        dt_k = rack.manifold.design_dt_k or loop.design_dt_k
        supply_c = FACILITY_SUPPLY_C + CDU_APPROACH_K
        return {
            "flow_lpm": q_kw / (PG25_DENSITY_KG_PER_L * PG25_CP_KJ_PER_KG_K * dt_k) * 60,
            "supply_temp_c": supply_c,
            "return_temp_c": supply_c + dt_k,
        }

    def _supercap_values(self, sc, row_kw: float) -> dict[str, float | None]:
        """Float at 98 % of Vmax on mains; on an outage it carries the row alone until the
        battery takes over: E(t) = E0 - P t, V = sqrt(Vmin^2 + 2 E / C) (E above Vmin)."""
        v_float = sc.vmax_v * 0.98
        usable_j = 0.5 * sc.capacitance_f * (v_float**2 - sc.vmin_v**2)
        t = self._outage_s()
        discharging = t is not None and row_kw * 1000 * t < usable_j
        left_j = usable_j if t is None else max(0.0, usable_j - row_kw * 1000 * t)
        v = math.sqrt(sc.vmin_v**2 + 2 * left_j / sc.capacitance_f)
        return {
            "voltage_v": v,
            "soc_pct": 100 * (v**2 - sc.vmin_v**2) / (sc.vmax_v**2 - sc.vmin_v**2),
            "temp_c": 31.0,
            "capacitance_f": sc.capacitance_f,
            "esr_mohm": 4.0,
            "cycles": 1200.0,
            "state": 2.0 if discharging else 0.0,  # 0 standby, 2 discharging (supercap profile)
            "power_kw": row_kw if discharging else 0.0,
        }
