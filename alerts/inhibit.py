"""Inhibition: a firing cause silences the symptoms that follow from it, by the site's graph.

Alertmanager's first stage, with the topology aidc knows instead of hand-written matchers.
A suppressed condition still counts (it stays active and visible, with ``suppressed_by``
naming the cause); the evaluator only holds back its notifications. What inhibits what:

- a CDU that leaks, lost a pump or does not answer -> its loop's racks over their ``loop`` or
  ``supply_class`` limit (one page for the pump, not one per rack);
- a source on battery, short of rectifier modules, or not answering -> the racks it feeds:
  ``feed_redundancy_lost`` and ``rack_over_headroom`` on their ``upstream`` limit;
- a device that does not answer -> every other alert on that device;
- a Modbus gateway none of whose units answers -> their ``device_unreachable`` (and so, as
  above, all their alerts);
- the store not taking samples -> ``store_behind`` (the samples it has not taken age in the
  spool meanwhile, and while it replays them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from aidc.core.topology import Topology
from alerts.evaluate import Condition, ConditionColumn

LOOP_LIMITS = frozenset({"loop", "supply_class"})
SOURCE_LIMITS = frozenset({"upstream"})
CDU_CAUSES = frozenset({"leak", "pump_redundancy_lost", "device_unreachable"})
SOURCE_CAUSES = frozenset({"ups_on_battery", "rectifier_on_battery", "rectifier_redundancy_lost",
                           "device_unreachable"})
RACK_SYMPTOMS = frozenset({"rack_over_headroom", "feed_redundancy_lost"})
SITE_CAUSE = {"store_behind": "store_unavailable"}  # a symptom of the site -> its cause
# (symptom rule, subject) -> its causes, each with the limits it explains (None: any)
Causes = dict[tuple[str, str], list[tuple[str, frozenset[str] | None]]]
# a cause of rack symptoms: its name, the symptom rule, the racks' group (loop or source) in
# Topology.rack_positions and its key, and the limits it explains (None: any)
RackCause = tuple[str, str, str, str, frozenset[str] | None]


def inhibit(graph: Topology, conditions: Iterable[Condition], rack_limiting: Sequence[str],
            columns: Iterable[ConditionColumn] = ()) -> list[Condition]:
    """``conditions`` with ``suppressed_by`` set on the symptoms of an active cause, and on
    each of ``columns`` (a rack rule over every rack), its ``suppressed_by`` set;
    ``rack_limiting``, the limit that binds each rack now in the site's order (the model's
    SiteStatus.rack_limiting), says which of its causes explains a rack's symptom."""
    conditions = list(conditions)
    cause_of: Causes = {}
    rack_causes: list[RackCause] = []
    for c in conditions:
        if not c.active:
            continue
        if c.rule in SITE_CAUSE.values():
            cause_of.update({(symptom, ""): [(c.rule, None)]
                             for symptom, cause in SITE_CAUSE.items() if cause == c.rule})
            continue
        if c.rule == "gateway_unreachable":
            name = f"gateway_unreachable{{gateway={c.labels['gateway']}}}"
            for unit in graph.devices_behind_gateway.get(c.labels["gateway"], ()):
                cause_of.setdefault(("gateway", unit), []).append((name, None))
            continue
        device = c.labels.get("device")
        if device is None:
            continue
        name = f"{c.rule}{{device={device}}}"  # how the cause is shown
        if c.rule == "device_unreachable":
            cause_of.setdefault(("*", device), []).append((name, None))
        if c.rule in CDU_CAUSES and device in graph.loop_of_cdu:
            rack_causes.append((name, "rack_over_headroom", "racks_on_loop",
                                graph.loop_of_cdu[device], LOOP_LIMITS))
        if c.rule in SOURCE_CAUSES:
            rack_causes += [(name, "rack_over_headroom", "racks_on_source", device, SOURCE_LIMITS),
                            (name, "feed_redundancy_lost", "racks_on_source", device, None)]
    if rack_causes:
        _suppress_columns(graph, rack_causes, np.asarray(rack_limiting), columns)
    one_by_one = any(c.rule in RACK_SYMPTOMS for c in conditions)  # a rack rule not a column
    if rack_causes and one_by_one:
        for name, rule, group, key, limits in rack_causes:
            for rack in getattr(graph, group).get(key, ()):
                cause_of.setdefault((rule, rack), []).append((name, limits))
    if not cause_of:
        return conditions
    # by rack id, for the racks' symptoms that come one by one (none: no map to make)
    limiting = dict(zip(graph.rack_by_id, rack_limiting, strict=True)) if one_by_one else {}
    out = []
    for c in conditions:
        cause = _cause(c, cause_of, limiting)
        out.append(c.suppressed(cause) if cause else c)
    return out


def _suppress_columns(graph: Topology, rack_causes: list[RackCause], limiting: np.ndarray,
                      columns: Iterable[ConditionColumn]) -> None:
    """Each column's ``suppressed_by``: the first cause of the racks' symptom whose limits
    hold the rack's binding limit, as arrays over the racks."""
    for col in columns:
        by = np.full(len(col.labels), None, object)
        for name, rule, group, key, limits in rack_causes:
            at = graph.rack_positions[group].get(key)
            if rule != col.rule or at is None:
                continue
            if limits is not None:
                binding = limiting[at]
                at = at[np.logical_or.reduce([binding == limit for limit in limits])]
            at = at[np.equal(by[at], None)]  # the first cause holds
            by[at] = name
        col.suppressed_by = by[col.subjects]


def _cause(c: Condition, cause_of: Causes, limiting: dict[str, str | None]) -> str | None:
    if c.rule in SITE_CAUSE:
        return next((name for name, _ in cause_of.get((c.rule, ""), ())), None)
    device, rack = c.labels.get("device"), c.labels.get("rack")
    if device is not None:
        key = ("gateway", device) if c.rule == "device_unreachable" else ("*", device)
        if key in cause_of:
            return cause_of[key][0][0]
    for name, limits in cause_of.get((c.rule, rack), ()) if rack is not None else ():
        if limits is None or limiting.get(rack) in limits:
            return name
    return None
