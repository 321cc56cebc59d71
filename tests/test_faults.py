"""Injected faults on a live simulated site: each gives the right quality or alert, and none
delays another device's poll. Every test has a site of its own (ports, data, simulators): a
fault that wedged one could not leak into the next."""

from __future__ import annotations

import time

import pytest

from aidc.core.metrics import Quality
from tests.conftest import wait_for


@pytest.fixture
def live(live_site):
    return live_site


def inject(live, fault, device=None, metric=None, on=True, value=None):
    live.call(live.simulated.inject(fault, device, metric, on, value))


def alerts(live) -> dict[tuple[str, str], object]:
    return {(a.rule, next(iter(a.labels.get(k) for k in ("device", "rack", "supercap", "loop")
                                 if k in a.labels), "")): a
            for a in live.runtime.evaluator.active_alerts()}


def paged(live) -> set[str]:
    """The rules on-call was notified of."""
    return {b["rule"] for b in live.receiver.bodies()}


def sample(live, device, metric):
    return live.runtime.latest.get((device, metric))


def pool(status, pool_id: str):
    return {p.id: p for p in status.pools}[pool_id]


def a_tick(live, holds, what: str):
    """The status of the next tick for which ``holds(status)``, its figures read together
    (two reads could straddle ticks). A tick may find a device's last sample stale (the live
    site polls every 0.5 s, stale after 1.25 s, which a loaded machine can delay a poll by):
    what it measures is then unknown, never a number, so a test waits for a tick that knows
    before it checks the number."""
    return wait_for(lambda: holds(s := live.runtime.status) and s, what=what)


def known_pool(live, pool_id: str):
    """The pool at the next tick that knows its capacity: the first number shown must be
    right."""
    return pool(a_tick(live, lambda s: pool(s, pool_id).capacity_kw is not None,
                       f"{pool_id}'s capacity known"), pool_id)


def test_utility_outage_puts_the_ups_on_battery_and_the_supercaps_to_work(live):
    inject(live, "utility_outage")
    try:
        wait_for(lambda: ("ups_on_battery", "ups-b") in alerts(live), what="ups_on_battery")
        assert sample(live, "ups-b", "on_battery").value == 1
        # the A side too: rect-a's DC feeds run on its battery
        a_side = wait_for(lambda: alerts(live).get(("rectifier_on_battery", "rect-a")),
                          what="rectifier_on_battery")
        assert a_side.severity == "critical" and a_side.value > 0 and a_side.unit == "A"
        # the supercap carries its row first (about 3 s at ~240 kW): it leaves its 392 V float
        wait_for(lambda: sample(live, "sc-a", "voltage_v").value < 392.0, what="sc-a discharging")
        assert sample(live, "sc-a", "state").value in (0, 2)  # 2 discharging, 0 once spent
    finally:
        inject(live, "utility_outage", on=False)
    wait_for(lambda: not {("ups_on_battery", "ups-b"), ("rectifier_on_battery", "rect-a")}
             & set(alerts(live)), what="the alerts to resolve")


def test_leak_and_pump_failure_alert_and_cut_the_loop_capacity(live):
    assert known_pool(live, "loop-1").capacity_kw == 600  # 2 x 600 kW, N+1: one in reserve
    # cdu-2 loses one of its two pumps: one still gives its full flow, so its capacity
    # holds and only the spare pump is gone
    inject(live, "pump_failure", "cdu-2")
    wait_for(lambda: ("pump_redundancy_lost", "cdu-2") in alerts(live), what="pump alert")
    assert alerts(live)[("pump_redundancy_lost", "cdu-2")].severity == "warning"
    assert known_pool(live, "loop-1").capacity_kw == 600
    # cdu-1 leaks: it is to be isolated, so the loop keeps cdu-2 in reserve and has nothing
    # left with its redundancy kept; without a further loss, 600 kW minus the heat
    inject(live, "leak", "cdu-1")
    racks = {r.id for r in live.site.racks}
    try:
        wait_for(lambda: ("leak", "cdu-1") in alerts(live), what="leak alert")
        status = a_tick(live, lambda s: pool(s, "loop-1").capacity_kw == 0,
                        "the loop's capacity cut")
        cut = pool(status, "loop-1")
        assert cut.worst_failure == "cdu-2"
        assert cut.left_normal_kw == pytest.approx(600 - cut.load_kw, abs=0.01)
        assert all(r.limiting == "loop" for r in status.racks)
        # every rack is over its loop limit: symptoms of the CDUs, shown but suppressed
        over = wait_for(lambda: (o := {k[1]: a for k, a in alerts(live).items()
                                       if k[0] == "rack_over_headroom" and a.state == "firing"})
                        .keys() == racks and o, what="every rack over its loop limit")
        assert {a.suppressed_by for a in over.values()} <= {
            "pump_redundancy_lost{device=cdu-2}", "leak{device=cdu-1}"}
        wait_for(lambda: {"leak", "pump_redundancy_lost"} <= paged(live), what="the pages")
    finally:
        inject(live, "leak", "cdu-1", on=False)
        inject(live, "pump_failure", "cdu-2", on=False)
    wait_for(lambda: not {("leak", "cdu-1"), ("pump_redundancy_lost", "cdu-2")} & set(alerts(live)),
             what="both alerts to resolve")
    a_tick(live, lambda s: pool(s, "loop-1").capacity_kw == 600, "the loop's capacity back")
    def pages() -> list[tuple[str, str]]:  # (a loaded machine may page a missed poll too)
        return sorted((b["rule"], b["status"]) for b in live.receiver.bodies()
                      if b["rule"] in ("leak", "pump_redundancy_lost", "rack_over_headroom"))

    wait_for(lambda: len(pages()) >= 4, what="both resolved notices")
    # one page per cause, firing then resolved; not one per rack
    assert pages() == [
        ("leak", "firing"), ("leak", "resolved"),
        ("pump_redundancy_lost", "firing"), ("pump_redundancy_lost", "resolved"),
    ]  # fmt: skip


def test_rectifier_module_loss_costs_its_n_plus_1(live):
    assert known_pool(live, "rect-a").capacity_kw == 720  # (13 - 1 spare) x 60 kW
    inject(live, "module_loss", "rect-a", value=4)
    try:
        wait_for(lambda: ("rectifier_redundancy_lost", "rect-a") in alerts(live),
                 what="rectifier_redundancy_lost")
        assert sample(live, "rect-a", "modules_ok").value == 12
        # with N+1 kept, (12 - 1) x 60 = 660 kW: the alert says what went with the module
        alert = alerts(live)[("rectifier_redundancy_lost", "rect-a")]
        assert alert.severity == "warning"
        assert "660 of 720 kW usable with N+1 kept (60 kW lost)" in alert.summary
        a_tick(live, lambda s: pool(s, "rect-a").capacity_kw == 660, "660 kW usable")
        # a second module, more than it spares: critical, 600 kW
        inject(live, "module_loss", "rect-a", value=5)
        alert = wait_for(lambda: (a := alerts(live).get(("rectifier_redundancy_lost", "rect-a")))
                         and a.severity == "critical" and a, what="the alert to escalate")
        a_tick(live, lambda s: pool(s, "rect-a").capacity_kw == 600, "600 kW usable")
    finally:
        inject(live, "module_loss", "rect-a", value=4, on=False)
        inject(live, "module_loss", "rect-a", value=5, on=False)
    wait_for(lambda: ("rectifier_redundancy_lost", "rect-a") not in alerts(live), what="resolve")
    # on-call heard every step: it fired, escalated, came back down (or straight to resolved
    # when both modules returned in one poll) and resolved
    pages = wait_for(lambda: (b := [(x["kind"], x["previous_severity"])
                                    for x in live.receiver.bodies()
                                    if x["rule"] == "rectifier_redundancy_lost"])
                     and b[-1][0] == "resolved" and b, what="the resolved notice")  # fmt: skip
    assert pages[:2] == [("firing", None), ("escalated", "warning")]
    assert pages[2:] in ([("resolved", None)], [("deescalated", "critical"), ("resolved", None)])


def test_a_source_short_of_modules_pages_once_and_holds_its_racks_alerts(live):
    """rect-a loses 10 of its 13 modules: 120 kW left with N+1 kept, under the 230 kW its
    racks draw. Every rack goes over its upstream limit, shown as the symptom of the
    source's alert; on-call is paged for the source alone, and the racks' alerts resolve
    with it, unpaged."""
    lost = range(4, 14)
    for module in lost:
        inject(live, "module_loss", "rect-a", value=module)
    racks, cause = {r.id for r in live.site.racks}, "rectifier_redundancy_lost{device=rect-a}"
    try:
        over = wait_for(lambda: (o := {k[1]: a for k, a in alerts(live).items()
                                       if k[0] == "rack_over_headroom" and a.state == "firing"})
                        .keys() == racks and o, what="every rack over its upstream limit")
        assert {a.suppressed_by for a in over.values()} == {cause}
        known = a_tick(live, lambda s: all(r.limits_kw["upstream"] is not None
                                           for r in s.racks), "every rack's upstream limit known")
        assert all(r.limiting == "upstream" for r in known.racks)
        wait_for(lambda: "rectifier_redundancy_lost" in paged(live), what="the source's page")
    finally:
        for module in lost:
            inject(live, "module_loss", "rect-a", value=module, on=False)
    wait_for(lambda: not {k for k in alerts(live) if k[0] in (
        "rack_over_headroom", "rectifier_redundancy_lost")}, what="every alert resolved")
    wait_for(lambda: [b for b in live.receiver.bodies() if b["rule"] ==
                      "rectifier_redundancy_lost" and b["status"] == "resolved"],
             what="the source's resolved notice")
    assert not paged(live) & {"rack_over_headroom", "feed_redundancy_lost"}


@pytest.mark.parametrize("device, metric", [
    ("cdu-1", "supply_temp_c"),  # Modbus: the int16 sentinel 0x7FFF
    ("pdu-a02-b", "power_kw"),  # SNMP: APC's -1 (unsupported)
    ("sc-b", "voltage_v"),  # OPC-UA: a Bad status code
])
def test_a_sensor_fault_is_bad_for_that_metric_only(live, device, metric):
    inject(live, "sensor_fault", device, metric)
    try:
        s = wait_for(lambda: (x := sample(live, device, metric)) and x.quality is Quality.BAD and x,
                     what=f"{device}.{metric} bad")
        assert s.value is None
        others = [v for (d, m), v in live.runtime.latest.items() if d == device and m != metric]
        assert others and all(o.quality is Quality.GOOD for o in others)
        health = wait_for(lambda: (h := live.runtime.health[device]).state == "degraded" and h,
                          what=f"{device} degraded")
        assert health.error == f"reachable, 1 of {health.points} points bad"
        # the rule counts 5 minutes of it before it pages
        bad = wait_for(lambda: [a for a in live.runtime.evaluator.active_alerts()
                                if a.rule == "metric_bad_quality"], what="metric_bad_quality")
        assert [(a.labels["device"], a.labels["metric"], a.state) for a in bad] == [
            (device, metric, "pending")]  # fmt: skip
    finally:
        inject(live, "sensor_fault", device, metric, on=False)
    wait_for(lambda: sample(live, device, metric).quality is Quality.GOOD, what="recovery")
    wait_for(lambda: live.runtime.health[device].state == "up", what="up again")
    wait_for(lambda: not [a for a in live.runtime.evaluator.active_alerts()
                          if a.rule == "metric_bad_quality"], what="the pending alert dropped")


def test_a_stuck_sensor_keeps_its_value(live):
    inject(live, "stuck", "meter-main", "power_kw")
    stuck_at = time.time()
    try:
        first = live.simulated.physics.values("meter-main")["power_kw"]

        def polled_after(t: float):
            s = sample(live, "meter-main", "power_kw")
            return s if s is not None and s.ts > t else None

        # two polls after the fault, the racks swinging meanwhile: polls, not a time (a
        # loaded machine may poll late)
        after = wait_for(lambda: polled_after(stuck_at), what="a poll after the fault")
        wait_for(lambda: polled_after(after.ts), what="the next poll")
        assert live.simulated.physics.values("meter-main")["power_kw"] == first
        assert sample(live, "meter-main", "power_kw").value == pytest.approx(first, rel=1e-6)
    finally:
        inject(live, "stuck", "meter-main", "power_kw", on=False)


@pytest.mark.parametrize("device, metric", [("cdu-2", "flow_lpm"), ("pdu-b01-a", "power_kw"),
                                            ("sc-a", "soc_pct")])
def test_a_refused_point_is_bad_and_the_device_stays_up(live, device, metric):
    inject(live, "refuse", device, metric)
    try:
        wait_for(lambda: sample(live, device, metric).quality is Quality.BAD,
                 what=f"{device}.{metric} refused")
        wait_for(lambda: live.runtime.health[device].state == "degraded", what="degraded")
    finally:
        inject(live, "refuse", device, metric, on=False)
    wait_for(lambda: sample(live, device, metric).quality is Quality.GOOD, what="recovery")
    wait_for(lambda: live.runtime.health[device].state == "up", what="up again")


@pytest.mark.parametrize("slow", ["cdu-1", "pdu-a01-b", "sc-b"])
def test_a_slow_device_never_delays_the_others(live, slow):
    def good_polls() -> dict[str, int]:
        return {h.id: h.polls_total - h.errors_total for h in live.runtime.health.values()}

    before = good_polls()
    inject(live, "slow", slow, value=3.0)
    try:
        wait_for(lambda: live.runtime.health[slow].failures >= 2, what=f"{slow} to time out")
        # while it timed out twice (each poll waits its 1 s timeout), every other device
        # went on answering at its own 0.5 s pace: at least two good polls each
        after = good_polls()
        stalled = {d: after[d] - before[d] for d in after if d != slow and after[d] - before[d] < 2}
        assert stalled == {}
    finally:
        inject(live, "slow", slow, on=False)
    wait_for(lambda: live.runtime.health[slow].state == "up", 15, what=f"{slow} to answer again")
