"""Built-in rules: conditions derived each tick from device health, latest values and the
model's status.

A rule whose input is unknown (device unreachable, value not good) neither fires nor
resolves: it keeps its current state, so a data-source outage raises one alert (the device
is unreachable) instead of firing or clearing every alert that depends on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from aidc.config import Site
from aidc.metrics import BAD_QUALITIES, DeviceHealth, Sample
from alerts.evaluate import Condition, fingerprint

log = logging.getLogger("aidc.alerts.rules")

CRITICAL, WARNING = "critical", "warning"
SUPERCAP_SOC_LOW_PCT = 50.0
BATTERY_LOW_S, BATTERY_CRITICAL_S = 600.0, 300.0  # on battery, runtime left below these
GENERATOR_MARGIN_S = 30.0  # beyond its start + transfer, before a generator counts as late
BAD_QUALITY_FOR_S = 300.0  # a series read bad or out of range this long
PUE_ABOVE_TARGET_FOR_S = 900.0
COOLANT_FOR_S = 30.0  # flow and dP ride through a pump's ramp or changeover
HYSTERESIS = 0.05  # an envelope alert clears 5 % inside the limit that raised it
# end of life of a supercapacitor (IEC 62391-1 practice): capacitance 20 % below rated, or
# ESR twice the rated value
SUPERCAP_EOL_CAPACITANCE, SUPERCAP_EOL_ESR = 0.8, 2.0
SAMPLES_LOST_HOLD_S = 900.0  # samples_not_stored stays active this long after a loss


@dataclass(frozen=True)
class RuleInfo:
    """What a notification tells on-call beyond its summary: the unit of its value, what the
    rule means and the first steps (served as the runbook at ``/runbooks#<rule>``)."""

    unit: str
    meaning: str
    steps: tuple[str, ...]


RULES: dict[str, RuleInfo] = {
    "device_unreachable": RuleInfo(
        "polls", "A device missed polls in a row, or its poll is stuck: its values are unknown "
        "and the rules that need them hold their state.",
        ("Check the device's network path and power (ping its host, the switch port).",
         "Check `aidc probe` against it: wrong port, unit id, community or credentials?",
         "While it is dark, the racks it measures show unknown headroom, never a guess.")),
    "gateway_unreachable": RuleInfo(
        "units", "No unit behind a Modbus TCP gateway answers: the gateway, or the path to it, "
        "is down. Its units' own alerts are held as its symptoms: one page, not one a unit.",
        ("Check the gateway's power and network link (ping it, the switch port).",
         "Check its serial side: one unit answering again means the gateway is up.",
         "While it is dark, the racks its units measure show unknown headroom.")),
    "leak": RuleInfo(
        "", "The CDU's leak sensor is wet.",
        ("Go to the CDU; isolate it if the leak is confirmed (the loop runs on the others).",
         "Check the loop's capacity in the console: with one CDU isolated, what is left?")),
    "pump_redundancy_lost": RuleInfo(
        "pumps", "A CDU runs fewer pumps than installed: warning while the rest still give "
        "full flow, critical when its capacity is cut.",
        ("Check the pump's drive and breaker at the CDU; plan the swap.",
         "Critical: the loop's capacity is cut; hold new load on its racks.")),
    "coolant_flow_low": RuleInfo(
        "L/min", "A CDU's secondary flow is below the vendor's minimum (`min_flow_lpm`): the "
        "cold plates downstream starve and the GPUs throttle or trip.",
        ("Check the CDU's pumps, their speed and the loop's valves (one shut by mistake?).",
         "Check the strainer's dP; a clogged strainer lowers the flow and raises the dP.")),
    "coolant_dp_high": RuleInfo(
        "kPa", "A CDU's secondary differential pressure is above the vendor's maximum "
        "(`max_dp_kpa`): a strainer clogs, a valve is shut or a hose is kinked.",
        ("Check and clean the strainer; check the isolation valves of the loop's racks.",)),
    "supercap_end_of_life": RuleInfo(
        "F", "A supercap module's capacitance is 20 % below rated or its ESR twice rated "
        "(the end-of-life criteria): ride-through and smoothing are less than planned.",
        ("Read the module's capacitance and ESR trend; plan its replacement.",
         "Check the backup chain's ride-through in the console: is the shortfall covered?")),
    "ups_on_battery": RuleInfo(
        "", "The UPS runs on battery: utility power is lost upstream.",
        ("Confirm the generator started and transfers; watch the battery runtime left.",
         "If the generator does not take the load, shed load before the battery ends.")),
    "rectifier_on_battery": RuleInfo(
        "A", "A rectifier discharges its battery (value: battery current): its AC input is "
        "lost, and its racks' DC feeds run on the battery.",
        ("Check the rectifier's AC input breaker and the utility or generator upstream.",
         "Its battery runtime is the configured one: watch generator_not_taking_load.")),
    "battery_runtime_low": RuleInfo(
        "s", "A UPS on battery has little runtime left (value: seconds left): warning under "
        "10 minutes, critical under 5.",
        ("Get the generator on the load (start it by hand if it failed to).",
         "Shed load in order of priority before the battery ends; stop jobs cleanly.")),
    "generator_not_taking_load": RuleInfo(
        "s", "A UPS or rectifier has been on battery longer than the generator's start and "
        "transfer: the generator did not take the load (value: battery runtime left, s).",
        ("Check the generator: started? breaker closed? transfer switch position?",
         "Watch battery_runtime_low; prepare to shed load.")),
    "supercap_soc_low": RuleInfo(
        "%", "A supercapacitor module's state of charge is low: it may not bridge the next "
        "step in load or the transfer to battery.",
        ("Check the module's charger and ESR; a module that does not recharge is failing.",)),
    "rectifier_redundancy_lost": RuleInfo(
        "modules", "Rectifier modules are out: warning while within the spares, critical when "
        "the source's usable capacity is cut.",
        ("Swap the failed modules (hot-swappable on most shelves).",
         "Critical: check the source's pools in the console before placing any load.")),
    "rack_over_headroom": RuleInfo(
        "kW", "A rack draws more than its binding limit allows (value: kW headroom, negative).",
        ("Open the rack in the console: which limit binds (feed, upstream, loop, air)?",
         "Cap or move the rack's load, or restore the failed part behind the limit.")),
    "feed_redundancy_lost": RuleInfo(
        "kW", "A rack draws more than one of its feeds can carry alone: losing the other feed "
        "drops it.",
        ("Reduce the rack's load below one feed's rating, or fix the failed feed.",)),
    "supply_over_class": RuleInfo(
        "°C", "The loop's supply water is above the limit of its ASHRAE W class.",
        ("Check the dry coolers or chillers and the facility valves.",
         "Hot supply cuts the cooling capacity of every rack on the loop.")),
    "backup_shortfall": RuleInfo(
        "s", "The supercaps and battery bridge less time than the generator needs to start "
        "and transfer.",
        ("Check battery health and the supercap modules; hold load growth behind it.",)),
    "power_swing_over_smoothing": RuleInfo(
        "kW", "Rack power steps exceed what the supercap modules can smooth.",
        ("Check the training job's power profile; spread its steps or add modules.",)),
    "pue_above_target": RuleInfo(
        "", "The site's PUE has stayed above its target.",
        ("Check the cooling plant's setpoints and the free-cooling hours.",)),
    "metric_bad_quality": RuleInfo(
        "", "A metric has read bad (the device says so) or out of its plausible range for 5 "
        "minutes while the device answers: a failed sensor, or a wrong register map.",
        ("Compare with the device's own display; `aidc probe` shows what is read.",
         "Out of range: check the profile's scale, byte order and limits for that point.",
         "The model and the rules that need it treat it as unknown, never as a number.")),
    "notifications_dead_lettered": RuleInfo(
        "notifications", "A webhook receiver refused notifications for good (a 4xx): they are "
        "kept as dead letters, not delivered.",
        ("Check the receiver's URL, format and secret; its logs say why it refused.",
         "Dead letters are kept in the outbox file (status 'dead') for inspection.")),
    "store_unavailable": RuleInfo(
        "samples", "The store does not take samples: they wait in the spool on disk (value: "
        "samples waiting).",
        ("Check InfluxDB (up, disk, token); samples replay in order once it is back.",
         "Critical: the spool is near its bound; past it, the oldest samples are dropped.")),
    "samples_not_stored": RuleInfo(
        "samples", "Samples were lost: dropped past the spool's bound or refused by the store.",
        ("Check the store's error in /healthz.",
         "Refused batches are kept for inspection in the spool file's rejected table.")),
}


@dataclass(frozen=True)
class StoreState:
    """What the writer knows of the store, for the store rules."""

    up: bool = True
    error: str = ""
    spooled: int = 0
    spool_bound: int = 1
    dropped: int = 0  # past the spool's bound
    rejected: int = 0  # refused by the store
    last_loss_at: float | None = None


@dataclass(frozen=True)
class Inputs:
    site: Site
    health: Iterable[DeviceHealth]
    status: object  # aidc.derive.SiteStatus, or None before the first tick
    latest: Mapping[tuple[str, str], Sample]
    is_active: Callable[[str], bool]  # fingerprint -> pending or firing now
    store: StoreState = StoreState()
    now: float = 0.0
    dead_letters: int = 0  # notifications receivers refused for good
    # rules with an alert now; None: unknown. A condition known to be inactive is only
    # worth making for these (to resolve one); for the others it is left out: absent is
    # inactive to the evaluator, and a quiet 10,000-rack site then makes next to none
    alerting_rules: Collection[str] | None = None
    bad_series: Mapping[tuple[str, str], Sample] | None = None  # None: scan ``latest``
    gateways: Mapping[str, list[str]] | None = None  # Modbus gateway -> the units behind it

    @cached_property
    def _by_kind(self) -> dict[str, list]:
        by_kind: dict[str, list] = {}
        for d in self.site.devices:
            by_kind.setdefault(d.kind, []).append(d)
        return by_kind

    def devices_of(self, kind: str) -> list:
        """The site's devices of a kind, indexed once a tick (the rules ask ten times)."""
        return self._by_kind.get(kind, [])

    def keeps_inactive(self, rule: str) -> bool:
        return self.alerting_rules is None or rule in self.alerting_rules

    def value(self, device: str, metric: str) -> float | None:
        s = self.latest.get((device, metric))
        return float(s.value) if s is not None and s.good else None


def _condition(i: Inputs, rule: str, labels: dict[str, str], active: bool | None,
               value: float | None, severity: str, summary: str, for_s: float = 0.0,
               threshold: float | None = None) -> Condition | None:
    if active is False and not i.keeps_inactive(rule):
        return None  # inactive, and nothing of this rule to resolve
    labels = {"site": i.site.site, **labels}
    if active is None:  # unknown: hold whatever state it has
        active = i.is_active(fingerprint(rule, labels))
    return Condition(rule, labels, active, value, summary, severity, for_s,
                     unit=RULES[rule].unit, threshold=threshold)


def device_unreachable(i: Inputs) -> list[Condition | None]:
    """Active once a device missed ``unreachable_intervals`` polls in a row, or the liveness
    watchdog found its poll stuck; clears on the first good poll (so the resolved notice is
    not delayed)."""
    n, keep = i.site.alerts.unreachable_intervals, i.keeps_inactive("device_unreachable")
    return [
        _condition(i, "device_unreachable", {"device": h.id, "kind": h.kind},
                   h.failures >= n or h.stalled, float(h.failures), CRITICAL,
                   f"{h.kind} {h.id} has not answered {h.failures} polls: {h.error}"
                   if not h.stalled else f"{h.kind} {h.id}: {h.error}", threshold=n)
        for h in i.health if keep or h.failures >= n or h.stalled
    ]


def gateway_unreachable(i: Inputs) -> list[Condition | None]:
    """Active while no unit behind a Modbus gateway answered its last poll and one of them is
    unreachable (as device_unreachable counts it): so the gateway is judged down in the same
    tick as its first unit, whose own alert is then its symptom. Once a unit answers again it
    holds two poll intervals for the others to answer too (they would page on their own
    between the gateway's return and their next poll); a unit still dark after that is a
    unit's own fault."""
    if not i.gateways:
        return []
    n = i.site.alerts.unreachable_intervals
    behind = {u for units in i.gateways.values() for u in units}
    health = {h.id: h for h in i.health if h.id in behind}
    out = []
    for gateway, units in i.gateways.items():
        hs = [health[u] for u in units if u in health]
        dark = [h for h in hs if h.failures >= n or h.stalled]
        answering = [h for h in hs if not (h.failures or h.stalled)]
        back_s = i.now - min(h.since or i.now for h in answering) if answering else 0.0
        just_back = bool(answering) and back_s < 2 * max(h.poll_s for h in hs)
        active = bool(dark) and (None if just_back else not answering)  # None: holds its state
        out.append(_condition(i, "gateway_unreachable", {"gateway": gateway}, active,
                              float(len(hs) - len(answering)), CRITICAL,
                              f"Modbus gateway {gateway}: {len(hs) - len(answering)} of its "
                              f"{len(units)} units do not answer ({', '.join(units)})",
                              threshold=len(units)))
    return out


def _flag(i: Inputs, rule: str, kind: str, metric: str, test: Callable[[float], bool],
          severity: str, summary: str, threshold: float | None = None) -> list[Condition | None]:
    """One condition per device of ``kind`` from one of its metrics."""
    out = []
    for d in i.devices_of(kind):
        v = i.value(d.id, metric)
        text = f"{d.id}: {metric} unknown" if v is None else summary.format(device=d.id, value=v)
        out.append(_condition(i, rule, {"device": d.id, "kind": kind},
                              None if v is None else test(v), v, severity, text,
                              threshold=threshold))
    return out


def device_rules(i: Inputs) -> list[Condition | None]:
    return (
        _flag(i, "leak", "cdu", "leak", lambda v: v >= 1, CRITICAL, "leak detected at {device}")
        + _pump_redundancy(i)
        + _flag(i, "ups_on_battery", "ups", "on_battery", lambda v: v >= 1, CRITICAL,
                "{device} is on battery: utility power lost")
        + _flag(i, "rectifier_on_battery", "rectifier", "battery_current_a", lambda v: v > 0,
                CRITICAL, "{device} discharges its battery ({value:.0f} A): its AC input is "
                "lost", threshold=0)
        + _flag(i, "supercap_soc_low", "supercap", "soc_pct",
                lambda v: v < SUPERCAP_SOC_LOW_PCT, WARNING,
                "{device} state of charge {value:.0f} %", SUPERCAP_SOC_LOW_PCT)
        + _rectifier_redundancy(i)
        + _coolant_envelope(i)
        + _supercap_end_of_life(i)
        + _battery(i)
        + _bad_quality(i)
    )


def _beyond(i: Inputs, rule: str, labels: dict[str, str], value: float | None,
            limit: float, below: bool) -> bool | None:
    """``value`` past ``limit`` (below it, or above), with hysteresis: an alert already
    active clears only once the value is HYSTERESIS inside the limit."""
    if value is None:
        return None
    if i.is_active(fingerprint(rule, {"site": i.site.site, **labels})):
        limit *= (1 + HYSTERESIS) if below else (1 - HYSTERESIS)
    return value < limit if below else value > limit


def _coolant_envelope(i: Inputs) -> list[Condition | None]:
    """Each CDU's secondary flow and differential pressure against the vendor's envelope
    (``min_flow_lpm``, ``max_dp_kpa``), where the site file gives it."""
    out = []
    for d in i.devices_of("cdu"):
        if d.min_flow_lpm is not None:
            out.append(_envelope(i, "coolant_flow_low", d.id, "flow_lpm", d.min_flow_lpm, True))
        if d.max_dp_kpa is not None:
            out.append(_envelope(i, "coolant_dp_high", d.id, "dp_kpa", d.max_dp_kpa, False))
    return out


def _envelope(i: Inputs, rule: str, cdu: str, metric: str, limit: float,
              below: bool) -> Condition | None:
    labels = {"device": cdu, "kind": "cdu"}
    v = i.value(cdu, metric)
    return _condition(
        i, rule, labels, _beyond(i, rule, labels, v, limit, below), v,
        CRITICAL if below else WARNING,
        f"{cdu}: {metric} {'unknown' if v is None else f'{v:g}'} "
        f"{'below its minimum' if below else 'above its maximum'} {limit:g}",
        for_s=COOLANT_FOR_S, threshold=limit)


def _supercap_end_of_life(i: Inputs) -> list[Condition | None]:
    """Capacitance 20 % below rated, or ESR twice rated (when the site file gives it)."""
    out = []
    for d in i.devices_of("supercap"):
        farads, esr = i.value(d.id, "capacitance_f"), i.value(d.id, "esr_mohm")
        worn = [] if farads is None else (
            [f"capacitance {farads:g} F of {d.capacitance_f:g} F rated"]
            if farads < SUPERCAP_EOL_CAPACITANCE * d.capacitance_f else [])
        if d.esr_mohm is not None and esr is not None and esr > SUPERCAP_EOL_ESR * d.esr_mohm:
            worn.append(f"ESR {esr:g} mOhm, {esr / d.esr_mohm:.1f} x its rated {d.esr_mohm:g}")
        known = farads is not None and (d.esr_mohm is None or esr is not None)
        out.append(_condition(
            i, "supercap_end_of_life", {"device": d.id, "kind": "supercap"},
            True if worn else (False if known else None), farads, WARNING,
            f"{d.id} at end of life: {'; '.join(worn)}" if worn
            else f"{d.id}: capacitance and ESR within their end-of-life limits" if known
            else f"{d.id}: capacitance or ESR unknown",
            threshold=SUPERCAP_EOL_CAPACITANCE * d.capacitance_f))
    return out


def _battery(i: Inputs) -> list[Condition | None]:
    """On battery (a UPS says so; a rectifier discharges its battery): the runtime left that
    a UPS reports (warning, then critical), and a generator that has not taken the load by
    its start + transfer time (NFPA 110: Type 10 means 10 s)."""
    late_s = i.site.model.generator_start_s + i.site.model.transfer_s + GENERATOR_MARGIN_S
    out = []
    for d in i.devices_of("ups") + i.devices_of("rectifier"):
        labels = {"device": d.id, "kind": d.kind}
        if d.kind == "ups":
            signal, minutes = i.value(d.id, "on_battery"), i.value(d.id, "runtime_min")
            on = None if signal is None else signal >= 1
            left = None if minutes is None else minutes * 60
            low = None if on is None or left is None else on and left < BATTERY_LOW_S
            out.append(_condition(
                i, "battery_runtime_low", labels, low, left,
                CRITICAL if left is not None and left < BATTERY_CRITICAL_S else WARNING,
                f"{d.id} on battery with {'?' if left is None else f'{left:.0f}'} s left",
                threshold=BATTERY_LOW_S))
        else:
            current = i.value(d.id, "battery_current_a")
            on, left = None if current is None else current > 0, None
        out.append(_condition(
            i, "generator_not_taking_load", labels, on, left, CRITICAL,
            f"{d.id} is still on battery {late_s:g} s after the outage: the generator has not "
            f"taken the load" + ("" if left is None else f" ({left:.0f} s of battery left)"),
            for_s=late_s, threshold=late_s))
    return out


def _bad_quality(i: Inputs) -> list[Condition | None]:
    """Series the device answers for, but bad or out of range (one condition each, only
    while so: a series that reads good again is absent, so its alert resolves)."""
    bad = i.bad_series if i.bad_series is not None else i.latest
    if not bad:
        return []
    kinds = {d.id: d.kind for d in i.site.devices}
    out = []
    for (device, metric), sample in bad.items():
        if sample.quality in BAD_QUALITIES and device in kinds:
            out.append(_condition(
                i, "metric_bad_quality", {"device": device, "kind": kinds[device],
                                          "metric": metric},
                True, sample.value, WARNING,
                f"{device} {metric} reads {sample.quality.value}"
                + ("" if sample.value is None else f" ({sample.value:g})"),
                for_s=BAD_QUALITY_FOR_S))
    return out


def notifier_rules(i: Inputs) -> list[Condition | None]:
    return [_condition(
        i, "notifications_dead_lettered", {}, i.dead_letters > 0, float(i.dead_letters),
        WARNING, f"{i.dead_letters} notification(s) refused for good by a receiver",
        threshold=0)]


def _pump_redundancy(i: Inputs) -> list[Condition | None]:
    """A CDU running fewer pumps than installed has lost its spare (warning); fewer than its
    maximum flow needs, it has lost capacity too (critical)."""
    out = []
    for d in i.devices_of("cdu"):
        running = i.value(d.id, "pumps_running")
        short = running is not None and running < d.pumps_required
        if running is None:
            summary = f"{d.id}: pumps_running unknown"
        else:
            summary = f"{d.id} runs {running:g} of {d.pumps} pumps: " + (
                f"below the {d.pumps_required} its full flow needs, its capacity is cut"
                if short else "no spare pump left")
        out.append(_condition(i, "pump_redundancy_lost", {"device": d.id, "kind": "cdu"},
                              None if running is None else running < d.pumps, running,
                              CRITICAL if short else WARNING, summary, threshold=d.pumps))
    return out


def _rectifier_redundancy(i: Inputs) -> list[Condition | None]:
    """Modules lost: warning while no more are lost than the source spares, critical beyond;
    the summary says how much usable capacity (its redundancy kept) went with them."""
    pools = {p.id: p for p in i.status.pools} if i.status else {}
    out = []
    for d in i.devices_of("rectifier"):
        ok = i.value(d.id, "modules_ok")
        total = d.modules or i.value(d.id, "modules_total")
        lost = None if ok is None or total is None else total - ok
        spare = d.spare_modules if d.modules else (1 if d.redundancy == "N+1" else 0)
        summary = (f"{d.id}: {'?' if lost is None else f'{lost:g}'} of "
                   f"{'?' if total is None else f'{total:g}'} modules out")
        pool = pools.get(d.id)
        if d.modules and lost and pool and pool.capacity_kw is not None:
            full = min(d.rating_kw, (d.modules - spare) * d.module_kw)
            summary += (f": {pool.capacity_kw:g} of {full:g} kW usable with "
                        f"{d.redundancy} kept ({full - pool.capacity_kw:g} kW lost)")
        out.append(_condition(
            i, "rectifier_redundancy_lost", {"device": d.id, "kind": "rectifier"},
            None if lost is None else lost > 0, lost, CRITICAL if (lost or 0) > spare else WARNING,
            summary, threshold=0))
    return out


def model_rules(i: Inputs) -> list[Condition | None]:
    s = i.status
    if s is None:
        return []
    out = []
    keep_over, keep_feed = (i.keeps_inactive("rack_over_headroom"),
                            i.keeps_inactive("feed_redundancy_lost"))
    for r in s.racks:  # only the racks over a limit, unknown, or with an alert to resolve
        feed = r.limits_kw.get("feed")
        over = None if r.headroom_kw is None else r.headroom_kw < 0
        if over is not False or keep_over:
            out.append(_condition(
                i, "rack_over_headroom", {"rack": r.id, "row": r.row}, over, r.headroom_kw,
                CRITICAL,
                f"rack {r.id} is over its {r.limiting} limit by {-(r.headroom_kw or 0):.1f} kW",
                threshold=0))
        short = None if feed is None else feed < 0
        if short is not False or keep_feed:
            out.append(_condition(
                i, "feed_redundancy_lost", {"rack": r.id, "row": r.row}, short, feed, CRITICAL,
                f"rack {r.id} draws more than one feed can carry: losing a feed drops it",
                threshold=0))
    for p in s.pools:
        if p.kind == "loop":
            hot = None if p.supply_temp_c is None else p.supply_temp_c > p.supply_limit_c
            out.append(_condition(
                i, "supply_over_class", {"loop": p.id}, hot, p.supply_temp_c, CRITICAL,
                f"loop {p.id} facility water {p.supply_temp_c} C is over its class limit "
                f"{p.supply_limit_c:g} C", threshold=p.supply_limit_c))
    for b in s.backup:
        out.append(_condition(
            i, "backup_shortfall", {"supercap": b.supercap},
            None if b.shortfall_s is None else b.shortfall_s > 0, b.shortfall_s, CRITICAL,
            f"backup behind {b.supercap} bridges {b.bridge_s} s of the {b.required_s:g} s "
            "the generator needs", threshold=0))
        swing = None if b.swing_kw is None or b.smoothing_kw is None else b.swing_kw > b.smoothing_kw
        out.append(_condition(
            i, "power_swing_over_smoothing", {"supercap": b.supercap}, swing, b.swing_kw, WARNING,
            f"rack power steps of {b.swing_kw} kW exceed what {b.supercap} can smooth",
            threshold=b.smoothing_kw))
    target = i.site.model.pue_target
    out.append(_condition(
        i, "pue_above_target", {}, None if s.pue is None else s.pue > target, s.pue, WARNING,
        f"PUE {s.pue} above the target {target:g}", for_s=PUE_ABOVE_TARGET_FOR_S,
        threshold=target))
    return out


def store_rules(i: Inputs) -> list[Condition | None]:
    """The store not taking samples (they wait in the spool: warning, critical past 80 % of
    its bound), and samples lost (dropped past the bound or refused by the store) within the
    last SAMPLES_LOST_HOLD_S."""
    st = i.store
    full = st.spooled / st.spool_bound
    lost = st.last_loss_at is not None and i.now - st.last_loss_at < SAMPLES_LOST_HOLD_S
    return [
        _condition(i, "store_unavailable", {}, not st.up, float(st.spooled),
                   CRITICAL if full > 0.8 else WARNING,
                   f"the store is not taking samples ({st.error}): {st.spooled} wait on disk, "
                   f"{100 * full:.0f} % of the spool's bound"),
        _condition(i, "samples_not_stored", {}, lost, float(st.dropped + st.rejected), CRITICAL,
                   f"samples lost: {st.dropped} dropped past the spool's bound, {st.rejected} "
                   "refused by the store (kept in the spool file's rejected table)"),
    ]


def builtin_conditions(site: Site, health: Iterable[DeviceHealth], status,
                       latest: Mapping[tuple[str, str], Sample],
                       is_active: Callable[[str], bool] = lambda fp: False,
                       store: StoreState = StoreState(),
                       now: float = 0.0, dead_letters: int = 0,
                       alerting_rules: Collection[str] | None = None,
                       bad_series: Mapping[tuple[str, str], Sample] | None = None,
                       gateways: Mapping[str, list[str]] | None = None,
                       ) -> tuple[list[Condition], bool]:
    """Every rule's conditions, and whether every rule group ran. A group that fails (a bug)
    is logged and left out: the others still fire, and the caller holds the alerts it has
    no condition for (Evaluator.step(hold_absent=True)) rather than resolve them."""
    i = Inputs(site, list(health), status, latest, is_active, store, now, dead_letters,
               alerting_rules, bad_series, gateways)
    out: list[Condition] = []
    complete = True
    for rules in (device_unreachable, gateway_unreachable, device_rules, model_rules, store_rules, notifier_rules):
        try:
            out += [c for c in rules(i) if c is not None]
        except Exception:
            log.exception("event=rule_error rules=%s", rules.__name__)
            complete = False
    return out, complete
