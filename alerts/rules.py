"""The rules, judged each tick. What each rule means, its severity or levels, its ``for_s``,
labels and runbook are data: the rule pack ``alerts/rules.yaml``, which a site changes rule
by rule under ``alerts.rules`` in its site file, and extends with rules of its own. A rule
over a metric (kind, metric, fires, levels) is data whole, the pack's and the site's alike
(``metric_rules``); the others' conditions follow device health, the site's graph, the
model's status or aidc's own state, and are code here.

A rule whose input is unknown (device unreachable, value not good) neither fires nor
resolves, nor changes severity: it keeps its current state, so a data-source outage raises
one alert (the device is unreachable) instead of firing or clearing every alert that
depends on it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np
from pydantic import RootModel

from aidc.core.config import (
    DEVICE_KINDS,
    SUMMARY_FIELDS,
    RuleSettings,
    Site,
    device_setting_problem,
    load_model,
)
from aidc.core.derive import RACK_FIELDS
from aidc.core.matchers import parse_matcher
from aidc.core.metrics import (
    BAD_QUALITIES,
    DeviceHealth,
    FreshLatest,
    LatestArrays,
    Quality,
    Sample,
    SampleColumns,
    SeriesKeys,
    series_key,
)
from aidc.core.topology import Topology
from alerts.evaluate import Condition, ConditionColumn, fingerprint

log = logging.getLogger("aidc.alerts.rules")

PACK = Path(__file__).with_name("rules.yaml")
TUNABLE = ("for_s", "severity", "warning", "critical", "clear")  # as far as its pack entry has
OWN_ONLY = ("kind", "metric", "fires", "matchers", "unit", "summary", "meaning", "steps")
CRITICAL, WARNING = "critical", "warning"
GENERATOR_MARGIN_S = 30.0  # beyond its start + transfer, before a generator counts as late
# the series the pack's rules of more than a metric read of each device of a kind: the runtime
# keeps them in the tick's arrays (beside the model's and those the rules over a metric
# watch), so that a rule reads a kind's column in one go
RULE_KEYS_READ = frozenset({"on_battery", "battery_current_a", "modules_ok", "modules_total",
                            "capacitance_f", "esr_mohm", "runtime_min"})
# a rack's headroom and its feed limit, in the model's columns of every rack's figures
HEADROOM, FEED_HEADROOM = RACK_FIELDS.index("headroom_kw"), RACK_FIELDS.index("headroom_feed_kw")
# end of life of a supercapacitor (IEC 62391-1 practice): capacitance 20 % below rated, or
# ESR twice the rated value
SUPERCAP_EOL_CAPACITANCE, SUPERCAP_EOL_ESR = 0.8, 2.0
SAMPLES_LOST_HOLD_S = 900.0  # samples_not_stored stays active this long after a loss
DEAD_LETTER_ALERT_S = 3600.0  # notifications_dead_lettered counts the dead letters this recent


class Rule(RuleSettings):
    """A rule as it runs: its pack entry (``alerts/rules.yaml``) with the site's changes, or
    a rule of the site's own. ``for_s`` None: the rule computes it; ``severity`` None: its
    levels give it, or the rule computes it."""

    unit: str = ""
    meaning: str  # what the alert means
    runbook_url: str | None = None  # None: the console's /runbooks#<rule>

    def watches(self, name: str, sample: Sample) -> bool:
        """Whether this rule of the site's own takes ``sample``'s series (its kind, metric
        and matchers; the series keeps these, so it is asked once a series)."""
        if sample.measurement != self.kind or sample.field != self.metric:
            return False
        labels = series_labels(sample) if self.matchers else {}
        return all(parse_matcher(m).matches(name, labels) for m in self.matchers)

    @property
    def has_levels(self) -> bool:
        return self.warning is not None or self.critical is not None

    def settings_text(self) -> str:
        """How the rule is set, in words: ``fires below 600 s (warning), 300 s (critical).``"""
        unit = f" {self.unit}" if self.unit else ""
        levels = ", ".join(
            f"{'its ' + level if isinstance(level, str) else f'{level:g}{unit}'} ({s})"
            for s in (WARNING, CRITICAL) if (level := getattr(self, s)) is not None)
        parts = [self.severity or (f"fires {self.fires} {levels}" if levels
                                   else "severity by cause")]
        if self.clear:
            parts.append(f"clears {self.clear}{'' if isinstance(self.clear, str) else unit} "
                         "inside it")
        if self.metric:
            parts.insert(0, f"{self.kind} {self.metric}")
        if self.for_s:
            parts.append(f"after {self.for_s:g} s")
        if not self.enabled:
            parts.insert(0, "off at this site")
        return "; ".join(parts) + (f". Value in {self.unit}." if self.unit else ".")

    def levels_of(self, device=None) -> tuple[float | None, float | None]:
        """(warning, critical): a level that names a setting is ``device``'s own (None where
        its entry leaves it out, or without a device)."""
        def of(level: float | str | None) -> float | None:
            value = getattr(device, level, None) if isinstance(level, str) else level
            return None if value is None else float(value)

        return of(self.warning), of(self.critical)

    @property
    def per_device(self) -> bool:
        """Whether a level names a device's own setting."""
        return isinstance(self.warning, str) or isinstance(self.critical, str)

    def threshold(self, level: str | None, levels=None) -> float | None:
        """The threshold of ``level``; not past any, the first level's."""
        warning, critical = levels or self.levels_of()
        return critical if level == CRITICAL or warning is None else warning

    def back(self, limit: float) -> float:
        """How far back inside ``limit`` an active alert clears (``clear``; "5%" of it)."""
        if isinstance(self.clear, str):
            return float(self.clear.rstrip(" %")) / 100 * abs(limit)
        return self.clear

    def edge(self, levels=None, active: bool = False) -> float | None:
        """The value past which the rule's first level holds (an active alert's, with
        ``clear``); None without a level."""
        first = [x for x in levels or self.levels_of() if x is not None]
        if not first:
            return None
        above = self.fires == "above"
        edge = min(first) if above else max(first)
        back = self.back(edge) if active else 0.0
        return edge - back if above else edge + back

    def filled(self, template: str | None, labels: Mapping[str, str], metric: str,
               value: float | None, threshold: float | None, severity: str,
               levels=(None, None)) -> str | None:
        """``template`` (a summary or description) filled with an alert's place, values,
        levels and unit; None without one, or when a format that fits a number is given
        none."""
        if not template:
            return None
        fields = dict.fromkeys(SUMMARY_FIELDS, "") | dict(labels) | {
            "metric": metric, "value": value, "unit": self.unit, "threshold": threshold,
            "severity": severity} | {k: v for k, v in zip((WARNING, CRITICAL), levels)
                                     if v is not None}
        try:
            return template.format(**fields)
        except (KeyError, IndexError, ValueError, TypeError):
            return None

    def description_of(self, labels: Mapping[str, str], value: float | None,
                       threshold: float | None, severity: str) -> str:
        """What an alert of this rule means, for its notifications: its ``description``
        filled, or its meaning."""
        return self.filled(self.description, labels, labels.get("metric", self.metric or ""),
                           value, threshold, severity) or self.meaning

    def runbook(self, name: str, base: str | None) -> str | None:
        """The site's own runbook, or the console's (at ``base``; none without one)."""
        return self.runbook_url or (f"{base}/runbooks#{name}" if base is not None else None)

    def level(self, value: float, active: bool = False, levels=None) -> str | None:
        """The worst level ``value`` is past; an ``active`` alert holds a level until the
        value is ``clear`` back inside it."""
        above = self.fires == "above"
        for severity, limit in zip((CRITICAL, WARNING), reversed(levels or self.levels_of())):
            if limit is None:
                continue
            if active:
                limit += -self.back(limit) if above else self.back(limit)
            if (value > limit) if above else (value < limit):
                return severity
        return None


class RulePack(RootModel[dict[str, Rule]]):
    pass


@cache
def rule_pack() -> dict[str, Rule]:
    """aidc's rules as shipped, by name."""
    return load_model(PACK, RulePack, lambda pack: [], "expected rule names, each a mapping").root


def rule_problems(site: Site) -> list[tuple[tuple, str]]:
    """Changes to rules the pack does not have, or settings a rule does not take; a rule of
    the site's own that shadows one of the pack; a level naming a number its kind of device
    does not have; levels the wrong way round."""
    if not site.alerts.rules:
        return []
    pack, out = rule_pack(), []
    for name, given in site.alerts.rules.items():
        rule, at = pack.get(name), ("alerts", "rules", name)
        if rule is None and given.metric is None:
            near = difflib.get_close_matches(name, pack, 1)
            out.append((at, f"no rule is named '{name}'" + (f" (did you mean '{near[0]}'?)"
                        if near else "") + "; a rule of the site's own needs kind, metric and "
                        "fires"))  # fmt: skip
            continue
        if rule is None:
            merged = _own(given)
        else:
            takes = [f for f in ("for_s", "severity") if getattr(rule, f) is not None]
            takes += [WARNING, CRITICAL] if rule.has_levels else []
            takes += ["clear"] if "clear" in rule.model_fields_set else []
            takes_too = ", ".join(takes + ["enabled", "labels", "runbook_url", "description"])
            for field in sorted(given.model_fields_set & {*TUNABLE, *OWN_ONLY} - set(takes)):
                out.append(((*at, field), f"rule '{name}' takes no {field}: it takes {takes_too}"
                            + (" (its condition is aidc's: name a rule of your own for another)"
                               if field in OWN_ONLY else "")))
            merged = _changed(rule, given)
            for level in (WARNING, CRITICAL):  # (a rule of the site's own: checked as read)
                if isinstance(setting := getattr(given, level), str) and \
                        (why := device_setting_problem(rule.kind, setting)) is not None:
                    out.append(((*at, level), why))
        worst, first, fires = merged.critical, merged.warning, merged.fires
        if isinstance(worst, float) and isinstance(first, float) and \
                not (worst > first if fires == "above" else worst < first):
            why = f"{worst:g} must be {fires} the warning level {first:g}: it fires {fires} them"
            out.append(((*at, CRITICAL), why))
    return out


def site_rules(site: Site) -> dict[str, Rule]:
    """The rule pack with the site's changes and the site's own rules (``alerts.rules``)."""
    if problems := rule_problems(site):  # `aidc check` names their lines; this, the field
        loc, message = problems[0]
        raise ValueError(f"{'.'.join(map(str, loc))}: {message}")
    pack = rule_pack()
    return pack | {name: _changed(pack[name], given) if name in pack else _own(given)
                   for name, given in site.alerts.rules.items()}


def _changed(rule: Rule, given: RuleSettings) -> Rule:
    """``rule`` with what ``given`` sets; a null warning or critical drops that level."""
    update = {f: getattr(given, f) for f in given.model_fields_set
              if getattr(given, f) is not None or f in (WARNING, CRITICAL)}
    return rule.model_copy(update=update | {"labels": rule.labels | given.labels})


def _own(given: RuleSettings) -> Rule:
    """A rule of the site's own as it runs."""
    meaning = given.meaning or (f"A rule of this site: a {given.kind}'s {given.metric} "
                                f"{given.fires} its levels.")
    return Rule.model_validate(given.model_dump(exclude_unset=True) | {
        "meaning": meaning, "for_s": given.for_s or 0.0, "unit": given.unit or ""})


def alert_labels(spec: Rule, site: Site, subject: dict[str, str]) -> dict[str, str]:
    """An alert's labels: the rule's own (from the pack and the site), the site's name, and
    the subject's, which no added label may change."""
    return {**spec.labels, "site": site.site, **subject}


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
    behind_s: float = 0.0  # the age of the oldest sample the store has not taken yet


@dataclass(frozen=True)
class Inputs:
    site: Site
    health: Iterable[DeviceHealth]
    status: object  # aidc.core.derive.SiteStatus, or None before the first tick
    latest: Mapping[tuple[str, str], Sample]
    is_active: Callable[[str], bool]  # fingerprint -> pending or firing now
    store: StoreState = StoreState()
    now: float = 0.0
    dead_letters: int = 0  # notifications receivers refused for good in DEAD_LETTER_ALERT_S
    # rules with an alert now; None: unknown. A condition known to be inactive is only
    # worth making for these (to resolve one); for the others it is left out: absent is
    # inactive to the evaluator, and a quiet 10,000-rack site then makes next to none
    alerting_rules: Collection[str] | None = None
    bad_series: Mapping[tuple[str, str], Sample] | None = None  # None: scan ``latest``
    given_topology: Topology | None = None  # the site's graph, made once; None: here
    # the tick's rack, room and site series (SiteModel.derived_series)
    derived: Iterable[Sample | SampleColumns] = ()
    # a rule of the site's own -> the series it watches; None: scan ``latest``
    watched: Mapping[str, Iterable[tuple[str, str]]] | None = None
    given_rules: Mapping[str, Rule] | None = None  # site_rules(site), made once; None: here

    @cached_property
    def rules(self) -> Mapping[str, Rule]:
        return self.given_rules if self.given_rules is not None else site_rules(self.site)

    def labels(self, rule: str, labels: dict[str, str]) -> dict[str, str]:
        return alert_labels(self.rules[rule], self.site, labels)

    @cached_property
    def topology(self) -> Topology:
        return self.given_topology or Topology(self.site)

    def devices_of(self, kind: str) -> list:
        """The site's devices of a kind (indexed once a site: the rules ask ten times a tick)."""
        return self.topology.devices_by_kind.get(kind, [])

    def keeps_inactive(self, rule: str) -> bool:
        return self.alerting_rules is None or rule in self.alerting_rules

    def worth(self, rule: str, active: bool | None) -> bool:
        """Whether a condition is worth making: active, unknown (it holds its state), or of
        a rule with alerts to resolve. A rule asks before it writes the summary: a quiet
        10,000-rack site would otherwise format thousands a tick, then drop them."""
        return active is not False or self.keeps_inactive(rule)

    def value(self, device: str, metric: str) -> float | None:
        s = self.latest.get((device, metric))
        return float(s.value) if s is not None and s.good else None

    def column(self, kind: str, metric: str) -> list[float | None]:
        """``value`` of each device of ``kind``, in their order: one read of the tick's
        arrays where they hold the series (RULE_KEYS_READ), else a lookup each."""
        latest = self.latest
        if isinstance(latest, FreshLatest) and latest.holds(metric):
            values = latest.good_values(self.topology.series_keys(kind, metric))
            return np.where(np.isnan(values), None, values).tolist()
        return [self.value(d.id, metric) for d in self.devices_of(kind)]


def _condition(i: Inputs, rule: str, labels: dict[str, str], active: bool | None,
               value: float | None, summary: str, *, severity: str | None = None,
               for_s: float = 0.0, threshold: float | None = None,
               unit: str | None = None) -> Condition | None:
    """A rule's condition over one subject. ``severity``, ``for_s`` and ``unit`` are the
    rule's where it computes them; otherwise the pack's (with the site's changes) hold."""
    spec = i.rules[rule]
    if not spec.enabled or not i.worth(rule, active):
        return None  # off, or inactive with nothing of this rule to resolve
    labels = i.labels(rule, labels)
    if active is None:  # unknown: hold whatever state it has, its severity too
        active, severity = i.is_active(fingerprint(rule, labels)), None
    else:
        severity = severity or spec.severity or WARNING
    return Condition(rule, labels, active, value, summary, severity,
                     spec.for_s if spec.for_s is not None else for_s,
                     unit=unit or spec.unit, threshold=threshold)


def device_unreachable(i: Inputs) -> list[Condition | None]:
    """Active once a device missed ``unreachable_intervals`` polls in a row, or the liveness
    watchdog found its poll stuck; clears on the first good poll (so the resolved notice is
    not delayed)."""
    n, keep = i.site.alerts.unreachable_intervals, i.keeps_inactive("device_unreachable")
    return [
        _condition(i, "device_unreachable", {"device": h.id, "kind": h.kind},
                   h.failures >= n or h.stalled, float(h.failures),
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
    gateways = i.topology.devices_behind_gateway  # gateway -> the units behind it
    if not gateways:
        return []
    n = i.site.alerts.unreachable_intervals
    behind = {u for units in gateways.values() for u in units}
    health = {h.id: h for h in i.health if h.id in behind}
    out = []
    for gateway, units in gateways.items():
        hs = [health[u] for u in units if u in health]
        dark = [h for h in hs if h.failures >= n or h.stalled]
        answering = [h for h in hs if not (h.failures or h.stalled)]
        back_s = i.now - min(h.since or i.now for h in answering) if answering else 0.0
        just_back = bool(answering) and back_s < 2 * max(h.poll_s for h in hs)
        active = bool(dark) and (None if just_back else not answering)  # None: holds its state
        out.append(_condition(i, "gateway_unreachable", {"gateway": gateway}, active,
                              float(len(hs) - len(answering)),
                              f"Modbus gateway {gateway}: {len(hs) - len(answering)} of its "
                              f"{len(units)} units do not answer ({', '.join(units)})",
                              threshold=len(units)))
    return out


def device_rules(i: Inputs) -> list[Condition | None]:
    """The pack's rules over devices whose condition is more than a metric past a level."""
    return _rectifier_redundancy(i) + _supercap_end_of_life(i) + _battery(i) + _bad_quality(i)


def _supercap_end_of_life(i: Inputs) -> list[Condition | None]:
    """Capacitance 20 % below rated, or ESR twice rated (when the site file gives it)."""
    out = []
    for d, farads, esr in zip(i.devices_of("supercap"), i.column("supercap", "capacitance_f"),
                              i.column("supercap", "esr_mohm")):
        min_f = SUPERCAP_EOL_CAPACITANCE * d.capacitance_f
        max_esr = None if d.esr_mohm is None else SUPERCAP_EOL_ESR * d.esr_mohm
        low_f = farads is not None and farads < min_f
        high_esr = max_esr is not None and esr is not None and esr > max_esr
        worn = ([f"capacitance {farads:g} F of {d.capacitance_f:g} F rated"] if low_f else []) + (
            [f"ESR {esr:g} mOhm, {esr / d.esr_mohm:.1f} x its rated {d.esr_mohm:g}"]
            if high_esr else [])
        known = farads is not None and (d.esr_mohm is None or esr is not None)
        active = True if worn else (False if known else None)
        if not i.worth("supercap_end_of_life", active):
            continue
        by_esr = high_esr and not low_f  # what it says is the quantity that tripped it
        out.append(_condition(
            i, "supercap_end_of_life", {"device": d.id, "kind": "supercap"}, active,
            esr if by_esr else farads,
            f"{d.id} at end of life: {'; '.join(worn)}" if worn
            else f"{d.id}: capacitance and ESR within their end-of-life limits" if known
            else f"{d.id}: capacitance or ESR unknown",
            threshold=max_esr if by_esr else min_f, unit="mOhm" if by_esr else None))
    return out


def _battery(i: Inputs) -> list[Condition | None]:
    """On battery (a UPS says so; a rectifier discharges its battery): the runtime left that
    a UPS reports (warning, then critical), and a generator that has not taken the load by
    its start + transfer time (NFPA 110: Type 10 means 10 s)."""
    late_s = i.site.model.generator_start_s + i.site.model.transfer_s + GENERATOR_MARGIN_S
    runtime = i.rules["battery_runtime_low"]
    ups = zip(i.devices_of("ups"), i.column("ups", "on_battery"), i.column("ups", "runtime_min"))
    rectifiers = zip(i.devices_of("rectifier"), i.column("rectifier", "battery_current_a"))
    out = []
    for d, *values in (*ups, *rectifiers):
        labels = {"device": d.id, "kind": d.kind}
        if d.kind == "ups":
            signal, minutes = values
            on = None if signal is None else signal >= 1
            left = None if minutes is None else minutes * 60
            level = None if left is None else runtime.level(left)
            low = None if on is None or left is None else on and level is not None
            if i.worth("battery_runtime_low", low):
                out.append(_condition(
                    i, "battery_runtime_low", labels, low, left,
                    f"{d.id} on battery with {'?' if left is None else f'{left:.0f}'} s left",
                    severity=level, threshold=runtime.threshold(level)))
        else:
            (current,) = values
            on, left = None if current is None else current > 0, None
        if not i.worth("generator_not_taking_load", on):
            continue
        out.append(_condition(
            i, "generator_not_taking_load", labels, on, left,
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
                True, sample.value, f"{device} {metric} reads {sample.quality.value}"
                + ("" if sample.value is None else f" ({sample.value:g})")))
    return out


def metric_rules(i: Inputs) -> list[Condition | None]:
    """The rules over a metric, the pack's and the site's own: each series they watch (a
    PDU's phases each; every rack's headroom), at the worst level it is past (a device's own
    where a level names one of its settings; a device without it is not judged). A device's
    series are among the latest samples, the model's (rack, room, site) among this tick's
    derived ones; both carry their place (room, row, rack) and row labels. Only a series
    past its first level becomes a condition; while the rule has alerts, also one within
    ``clear`` of it (it may hold its alert) and one unknown (it holds its alert). One back
    inside resolves by its absence. In the runtime, a device's series are judged as one
    array against the edge (the runtime keeps the series each rule watches in the tick's
    arrays): a quiet rule over every PDU outlet costs a vector comparison, not a sample
    looked up an outlet."""
    out = []
    devices = i.topology.device_by_id
    for name, rule in i.rules.items():
        if not (rule.metric and rule.enabled):
            continue
        alerting = i.keeps_inactive(name)
        above = rule.fires == "above"
        keys = i.watched.get(name) if i.watched is not None else None
        if isinstance(keys, SeriesKeys) and isinstance(i.latest, LatestArrays):
            samples = _past_as_column(i.latest, keys, _edges(i, name, rule, keys, alerting),
                                      above, alerting)
            read = _devices_of(i, name, keys) if alerting else set()
        else:
            samples, read = [], set()
            own, edge = rule.per_device, rule.edge(active=alerting)  # (numbers: found once)
            for s in _watched(i, name, rule):
                read.add(device := s.tags.get("device"))
                if own:
                    edge = rule.edge(rule.levels_of(devices.get(device)), alerting)
                if edge is not None and (
                        (s.value > edge if above else s.value < edge) if s.good else alerting):
                    samples.append(s)
        if alerting and rule.kind in DEVICE_KINDS:
            samples += _never_read(i, name, rule, read)
        for s in samples:
            labels = series_labels(s)
            levels = rule.levels_of(devices.get(labels.get("device")))
            v = s.value if s.good else None
            level = None if v is None else rule.level(
                v, i.is_active(fingerprint(name, i.labels(name, labels))), levels)
            limit = rule.threshold(level, levels)
            key = series_key(s.field, {k: labels[k] for k in labels.keys() - PLACE})
            out.append(_condition(i, name, labels, None if v is None else level is not None, v,
                                  _summary(rule, labels, key, v, limit, level, levels),
                                  severity=level, threshold=limit))
    return out


def paging_tests(rules: Mapping[str, Rule]) -> dict[str, dict[str, Callable[[float], tuple]]]:
    """Device kind -> metric -> which of its critical levels a value is past, for the rules
    over a device's metric that page at once (a critical level of their own, no ``for_s``):
    a poll that changes it (a leak, a source on battery) ticks the model now, not at the
    next tick."""
    levels: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for rule in rules.values():
        if rule.enabled and rule.kind in DEVICE_KINDS and not rule.for_s and \
                isinstance(rule.critical, float):
            levels.setdefault((rule.kind, rule.metric), []).append(
                (rule.critical, rule.fires == "above"))
    tests: dict[str, dict[str, Callable[[float], tuple]]] = {}
    for (kind, metric), past in levels.items():
        tests.setdefault(kind, {})[metric] = \
            lambda v, past=tuple(past): tuple(v > x if above else v < x for x, above in past)
    return tests


def _never_read(i: Inputs, name: str, rule: Rule, read: set[str]) -> list[Sample]:
    """An unknown sample of ``rule``'s metric for each device of its kind with no series of
    it read since start (dark since then) and an alert of it (from the last run): the alert
    holds its state until the device answers, as a stale series' does."""
    tags = i.topology.device_tags
    out = []
    for d in i.devices_of(rule.kind):
        if d.id not in read:
            s = Sample(rule.kind, tags[d.id], rule.metric, None, 0.0, Quality.STALE)
            if i.is_active(fingerprint(name, i.labels(name, series_labels(s)))):
                out.append(s)
    return out


def _devices_of(i: Inputs, name: str, keys: SeriesKeys) -> set[str]:
    """The devices of ``keys`` (the series ``name`` watches), found once for the same keys."""
    found = i.topology.memo.get(("devices", name))
    if found is None or found[0] is not keys:
        found = i.topology.memo["devices", name] = keys, {device for device, _ in keys}
    return found[1]


def _edges(i: Inputs, name: str, rule: Rule, keys: SeriesKeys,
           alerting: bool) -> float | np.ndarray:
    """``rule``'s edge (Rule.edge) for each of ``keys``: one number, or each device's own
    where a level names its setting (NaN: it has none), found once for the same keys."""
    if not rule.per_device:
        edge = rule.edge(active=alerting)
        return np.nan if edge is None else edge
    memo, devices = i.topology.memo, i.topology.device_by_id
    found = memo.get(("edges", name, alerting))
    if found is None or found[0] is not keys or found[1] is not rule:
        edges = [rule.edge(rule.levels_of(devices.get(device)), alerting) for device, _ in keys]
        found = memo["edges", name, alerting] = keys, rule, np.array(
            [np.nan if e is None else e for e in edges], dtype=float)
    return found[2]


def _past_as_column(latest: LatestArrays, keys: SeriesKeys, edge: float | np.ndarray,
                    above: bool, alerting: bool) -> list[Sample]:
    """The latest samples of ``keys`` past ``edge`` (and, while the rule alerts, those not
    good now where it has an edge), judged as one array: a sample is made only for those,
    not for every series watched (600,000 PDU currents at 10,000 racks)."""
    values = latest.good_values(keys)
    with np.errstate(invalid="ignore"):  # NaN: not good now, or no edge: never past
        past = values > edge if above else values < edge
    if alerting:
        past |= np.isnan(values) & ~np.isnan(edge)
    return [s for j in np.flatnonzero(past) if (s := latest.get(keys[j])) is not None]


PLACE = frozenset({"device", "kind", "room", "row", "rack"})


def series_labels(s: Sample) -> dict[str, str]:
    """A series' labels as its alerts carry them: its place and row labels, and its kind."""
    return {k: v for k, v in s.tags.items() if k != "site"} | {"kind": s.measurement}


def _watched(i: Inputs, name: str, rule: Rule) -> list[Sample]:
    """The latest sample of every series ``rule`` watches (stale ones read as such): the
    model's from the derived samples, a device's from the runtime's index of them (without
    one, a scan of every latest sample)."""
    if rule.kind not in DEVICE_KINDS:  # the model's
        kind, metric = rule.kind, rule.metric
        found: list[Sample] = []
        for d in i.derived:
            if isinstance(d, SampleColumns):
                if d.measurement == kind and metric in d.fields:
                    found += d.samples(metric)
            elif d.field == metric and d.measurement == kind:
                found.append(d)
        return [s for s in found if not rule.matchers or rule.watches(name, s)]
    if i.watched is not None:
        return [s for k in i.watched.get(name, ()) if (s := i.latest.get(k)) is not None]
    return [s for k in i.latest if (s := i.latest.get(k)) is not None and rule.watches(name, s)]


def _summary(rule: Rule, labels: dict[str, str], key: str, value: float | None,
             threshold: float | None, level: str | None, levels) -> str:
    subject = next((labels[k] for k in ("device", "rack", "room") if k in labels), "the site")
    if value is None:
        return f"{subject}: {key} unknown"
    filled = rule.filled(rule.summary, labels, key, value, threshold, level or "ok", levels)
    if filled is not None:
        return filled
    unit = f" {rule.unit}" if rule.unit else ""
    return (f"{subject} {key} {value:g}{unit}, " + (
        f"{rule.fires} the {level} level {threshold:g}{unit}" if level
        else "back inside its levels"))


def notifier_rules(i: Inputs) -> list[Condition | None]:
    return [_condition(
        i, "notifications_dead_lettered", {}, i.dead_letters > 0, float(i.dead_letters),
        f"{i.dead_letters} notification(s) refused for good by a receiver in the last hour",
        threshold=0)]


def _rectifier_redundancy(i: Inputs) -> list[Condition | None]:
    """Modules lost: warning while no more are lost than the source spares, critical beyond;
    the summary says how much usable capacity (its redundancy kept) went with them."""
    pools = {p.id: p for p in i.status.pools} if i.status else {}
    out = []
    for d, ok, reported in zip(i.devices_of("rectifier"), i.column("rectifier", "modules_ok"),
                               i.column("rectifier", "modules_total")):
        total = d.modules or reported
        lost = None if ok is None or total is None else total - ok
        active = None if lost is None else lost > 0
        if not i.worth("rectifier_redundancy_lost", active):
            continue
        spare = d.spare_modules if d.modules else (1 if d.redundancy == "N+1" else 0)
        summary = (f"{d.id}: {'?' if lost is None else f'{lost:g}'} of "
                   f"{'?' if total is None else f'{total:g}'} modules out")
        pool = pools.get(d.id)
        if d.modules and lost and pool and pool.capacity_kw is not None:
            full = min(d.rating_kw, (d.modules - spare) * d.module_kw)
            summary += (f": {pool.capacity_kw:g} of {full:g} kW usable with "
                        f"{d.redundancy} kept ({full - pool.capacity_kw:g} kW lost)")
        out.append(_condition(
            i, "rectifier_redundancy_lost", {"device": d.id, "kind": "rectifier"}, active,
            lost, summary,
            severity=CRITICAL if (lost or 0) > spare else WARNING, threshold=0))
    return out


def model_rules(i: Inputs) -> list[Condition | ConditionColumn | None]:
    s = i.status
    if s is None:
        return []
    racks, headroom, limiting = i.site.racks, s.rack_values_kw[:, HEADROOM], s.rack_limiting
    out: list[Condition | ConditionColumn | None] = [  # (the racks' records are not made)
        _rack_column(i, "rack_over_headroom", headroom, lambda r: (
            f"rack {racks[r].id} is over its {limiting[r]} limit by "
            f"{-np.nan_to_num(headroom[r]):.1f} kW")),
        _rack_column(i, "feed_redundancy_lost", s.rack_values_kw[:, FEED_HEADROOM], lambda r: (
            f"rack {racks[r].id} draws more than one feed can carry: losing a feed drops it")),
    ]
    for p in s.pools:
        hot = None if p.supply_temp_c is None else p.supply_temp_c > p.supply_limit_c
        if p.kind == "loop" and i.worth("supply_over_class", hot):
            out.append(_condition(
                i, "supply_over_class", {"loop": p.id}, hot, p.supply_temp_c,
                f"loop {p.id} facility water {p.supply_temp_c} C is over its class limit "
                f"{p.supply_limit_c:g} C", threshold=p.supply_limit_c))
    for b in s.backup:
        short = None if b.shortfall_s is None else b.shortfall_s > 0
        if i.worth("backup_shortfall", short):
            out.append(_condition(
                i, "backup_shortfall", {"supercap": b.supercap}, short, b.shortfall_s,
                f"backup behind {b.supercap} bridges {b.bridge_s} s of the {b.required_s:g} s "
                "the generator needs", threshold=0))
        swing = None if b.swing_kw is None or b.smoothing_kw is None else b.swing_kw > b.smoothing_kw
        if i.worth("power_swing_over_smoothing", swing):
            out.append(_condition(
                i, "power_swing_over_smoothing", {"supercap": b.supercap}, swing, b.swing_kw,
                f"rack power steps of {b.swing_kw} kW exceed what {b.supercap} can smooth",
                threshold=b.smoothing_kw))
    target = i.site.model.pue_target
    out.append(_condition(
        i, "pue_above_target", {}, None if s.pue is None else s.pue > target, s.pue,
        f"PUE {s.pue} above the target {target:g}", threshold=target))
    return out


RACK_RULES = ("rack_over_headroom", "feed_redundancy_lost")  # model_rules' columns


def rack_subjects(site: Site, topology: Topology, rule: str, spec: Rule
                  ) -> tuple[list[dict[str, str]], list[str]]:
    """A rack rule's labels and fingerprints for every rack, made once a site: the same
    objects every tick, which the evaluator knows again."""
    key = ("rack_subjects", rule, site.site, tuple(spec.labels.items()))
    if key not in topology.memo:
        labels = [alert_labels(spec, site, {"rack": r.id, "row": r.row}) for r in site.racks]
        topology.memo[key] = labels, [fingerprint(rule, x) for x in labels]
    return topology.memo[key]


def prepare_rack_rules(site: Site, topology: Topology, rules: Mapping[str, Rule]) -> None:
    """What the first tick would make for the rules over every rack, made before it (in a
    worker thread while the first polls run): 0.2-0.3 s at 10,000 racks."""
    for rule in RACK_RULES:
        if rules[rule].enabled:
            rack_subjects(site, topology, rule, rules[rule])


def _rack_column(i: Inputs, rule: str, headroom_kw: np.ndarray,
                 summary: Callable[[int], str]) -> ConditionColumn | None:
    """A rack rule over every rack at once: active where ``headroom_kw`` (the model's
    rounded figure of each rack) is below 0, as its alert is where it is unknown; judged only
    where active or unknown unless the rule has alerts to resolve."""
    spec = i.rules[rule]
    if not spec.enabled:
        return None
    labels, fingerprints = rack_subjects(i.site, i.topology, rule, spec)
    unknown = np.isnan(headroom_kw)
    with np.errstate(invalid="ignore"):
        over = headroom_kw < 0
    subjects = (np.arange(len(headroom_kw)) if i.keeps_inactive(rule)
                else np.flatnonzero(over | unknown))
    active = over[subjects]
    for k in np.flatnonzero(unknown[subjects]).tolist():  # unknown: hold whatever state it has
        active[k] = i.is_active(fingerprints[subjects[k]])
    return ConditionColumn(rule, labels, fingerprints, subjects, active, headroom_kw[subjects],
                           summary, spec.severity or WARNING,
                           spec.for_s if spec.for_s is not None else 0.0, spec.unit, 0)


def store_rules(i: Inputs) -> list[Condition | None]:
    """The store not taking samples (they wait in the spool: warning, critical past 80 % of
    its bound), taking them late (the oldest not taken yet is older than a level), and
    samples lost (dropped past the bound or refused by the store) within the last
    SAMPLES_LOST_HOLD_S."""
    st = i.store
    behind = i.rules["store_behind"]
    active = i.is_active(fingerprint("store_behind", i.labels("store_behind", {})))
    late = behind.level(st.behind_s, active)  # held until its `clear` back inside its level
    full = st.spooled / st.spool_bound
    lost = st.last_loss_at is not None and i.now - st.last_loss_at < SAMPLES_LOST_HOLD_S
    return [
        _condition(i, "store_unavailable", {}, not st.up, float(st.spooled),
                   f"the store is not taking samples ({st.error}): {st.spooled} wait on disk, "
                   f"{100 * full:.0f} % of the spool's bound",
                   severity=CRITICAL if full > 0.8 else WARNING),
        _condition(i, "store_behind", {}, late is not None, st.behind_s,
                   f"the store is {st.behind_s:.0f} s behind: it takes samples slower than "
                   f"they come ({st.spooled} spooled)", severity=late,
                   threshold=behind.threshold(late)),
        _condition(i, "samples_not_stored", {}, lost, float(st.dropped + st.rejected),
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
                       topology: Topology | None = None,
                       derived: Iterable[Sample | SampleColumns] = (),
                       watched: Mapping[str, Iterable[tuple[str, str]]] | None = None,
                       rules: Mapping[str, Rule] | None = None,
                       ) -> tuple[list[Condition], bool]:
    """Every rule's conditions (a column's, one by one), and whether every rule group ran.
    A group that fails (a bug) is logged and left out: the others still fire, and the caller
    holds the alerts it has no condition for (Evaluator.step(hold_absent=True)) rather than
    resolve them."""
    out: list[Condition] = []
    complete = True
    for found in conditions_by_group(Inputs(
            site, list(health), status, latest, is_active, store, now, dead_letters,
            alerting_rules, bad_series, topology, derived, watched, rules)):
        for c in found or ():
            out += c.conditions() if isinstance(c, ConditionColumn) else [c]
        complete &= found is not None
    return out, complete


def conditions_by_group(i: Inputs) -> Iterator[list[Condition | ConditionColumn] | None]:
    """Each group's conditions in turn (the runtime lets the polls run between them), a rule
    over every rack as one column; None for a group that failed (a bug: logged)."""
    for group in (device_unreachable, gateway_unreachable, device_rules, model_rules,
                  store_rules, notifier_rules, metric_rules):
        try:
            found = [c for c in group(i) if c is not None]
        except Exception:
            log.exception("event=rule_error rules=%s", group.__name__)
            found = None
        yield found
