"""The model tick's wiring (config + samples -> models -> status), checked by hand.

models/ has its own formula tests; these check that each number reaches the right limit of
the right rack: indexes of sources, loops and feeds, units, and what unknown inputs do.
"""

from __future__ import annotations

import math
import time

import pytest
import yaml

from aidc.core.config import Site
from aidc.core.derive import SiteModel, what_if
from aidc.core.metrics import FreshLatest, LatestTable, LatestValues, Quality, Sample
from alerts.rules import RULE_KEYS_READ, Inputs, builtin_conditions

SITE = yaml.safe_load("""
site: hand
rooms: [{id: r}]
devices:
  - {id: meter, kind: meter, role: facility, protocol: modbus, port: 1, profile: power_meter}
  - {id: ups-1, kind: ups, protocol: snmp, port: 2, profile: ups_rfc1628, rating_kw: 100, redundancy: N}
  - {id: pdu-1, kind: pdu, protocol: snmp, port: 3, profile: pdu_apc_rpdu2, upstream: ups-1, phases: dc, voltage_v: 400, breaker_a: 150}
  - {id: pdu-2, kind: pdu, protocol: snmp, port: 4, profile: pdu_apc_rpdu2, upstream: ups-1, phases: dc, voltage_v: 400, breaker_a: 200}
  - {id: cdu-1, kind: cdu, protocol: modbus, port: 5, profile: cdu_generic, rated_kw: 90}
  - {id: cdu-2, kind: cdu, protocol: modbus, port: 6, profile: cdu_generic, rated_kw: 90}
loops:
  - {id: loop-1, cdus: [cdu-1, cdu-2], redundancy: N+1, fluid: water, ashrae_class: W32, design_dt_k: 10}
racks:
  - {id: R1, room: r, row: A, design_kw: 70, capture_ratio: 1.0, feed_a: pdu-1, loop: loop-1}
  - {id: R2, room: r, row: A, design_kw: 80, capture_ratio: 1.0, feed_a: pdu-2, loop: loop-1}
""")

READINGS = {
    ("meter", "power_kw"): 80.0,
    ("ups-1", "output_power_kw"): 70.0,
    ("pdu-1", "power_kw"): 40.0,
    ("pdu-1", "current_a{phase=1}"): 100.0,  # 40 kW / 400 V
    ("pdu-2", "power_kw"): 30.0,
    ("pdu-2", "current_a{phase=1}"): 75.0,
    **{(c, m): v for c in ("cdu-1", "cdu-2") for m, v in (
        ("flow_lpm", 200.0), ("supply_temp_c", 30.0), ("pumps_running", 2.0), ("leak", 0.0),
        ("facility_supply_temp_c", 25.0))},
}


KIND = {d["id"]: d["kind"] for d in SITE["devices"]} | {"sc": "supercap"}  # (sc: added in a test)


def latest(overrides: dict | None = None, bad: tuple = ()) -> dict:
    values = READINGS | (overrides or {})
    return {
        key: Sample(KIND[key[0]], {"device": key[0]}, key[1], None if key in bad else v,
                    1000.0, Quality.BAD if key in bad else Quality.GOOD)
        for key, v in values.items()
    }


@pytest.fixture
def model():
    return SiteModel(Site.model_validate(SITE))


def test_each_limit_of_each_rack_by_hand(model):
    s = model.evaluate(latest(), 1000.0)
    r1, r2 = s.racks
    # PUE = 80 kW / (40 + 30) kW = 1.142857, IT at the PDU outputs: category 2
    assert s.pue == pytest.approx(1.143, abs=1e-3) and s.pue_category == 2
    # R1: design 70 - 40 = 30; feed 400 V x 150 A x 0.8 = 48 kW - 40 = 8;
    # phase (DC): (0.8 x 150 A - 100 A) x 400 V = 8 kW; upstream 100 - 70 = 30 (one source:
    # no failure moves load onto it); loop: each CDU its 90 kW rating (the 200 L/min it runs
    # now is no capacity), N+1 keeps one: 90 kW - heat (40 + 30) x 1.0 = 20 kW; no air
    assert r1.limits_kw["design"] == 30
    assert r1.limits_kw["feed"] == pytest.approx(8)
    assert r1.limits_kw["phase"] == pytest.approx(8)
    assert r1.limits_kw["upstream"] == 30
    assert r1.limits_kw["loop"] == pytest.approx(20)
    assert r1.limits_kw["air"] == math.inf and r1.limits_kw["supply_class"] == math.inf
    assert (r1.headroom_kw, r1.limiting, r1.complete) == (pytest.approx(8), "feed", True)
    # R2: design 50; feed 400 x 200 x 0.8 = 64 - 30 = 34; upstream 30; loop 20: the loop binds
    assert (r2.headroom_kw, r2.limiting) == (pytest.approx(20), "loop")
    pools = {p.id: p for p in s.pools}
    assert (pools["ups-1"].left_kw, pools["loop-1"].left_kw) == (30, pytest.approx(20))
    assert pools["ups-1"].worst_failure is None and pools["loop-1"].worst_failure == "cdu-1"
    # no return temperatures: the loop's heat is the racks' estimate, not a measurement
    assert pools["loop-1"].heat_measured_kw is None and pools["loop-1"].heat_from_racks_kw == 70


def test_facility_water_over_its_class_stops_all_growth(model):
    # W32: facility supply 33 C > 32 C: no rack may add load, whatever else is left
    s = model.evaluate(latest({("cdu-1", "facility_supply_temp_c"): 33.0}), 1000.0)
    assert [(r.headroom_kw, r.limiting) for r in s.racks] == [(0, "supply_class")] * 2


def test_an_unknown_feed_never_becomes_a_number(model):
    s = model.evaluate(latest(bad=(("pdu-2", "power_kw"),)), 1000.0)
    r1, r2 = s.racks
    assert r2.power_kw is None and s.pue is None and "pdu-2.power_kw" in s.missing
    # R2's own power is unknown: design, feed and loop are unknown; what is still known
    # (the UPS's measured 30 kW left, its feed's measured current: 0.8 x 200 - 75 = 85 A x
    # 400 V = 34 kW) bounds it from above, and says so
    assert [k for k, v in r2.limits_kw.items() if v is None] == ["design", "feed", "loop"]
    assert (r2.headroom_kw, r2.limiting, r2.complete) == (30, "upstream", False)
    assert r2.limits_kw["phase"] == pytest.approx(34)
    # R1 is still known on its own limits, but the loop heat is unknown (R2 feeds it)
    assert r1.limits_kw["loop"] is None and not r1.complete
    assert (r1.headroom_kw, r1.limiting) == (pytest.approx(8), "feed")


def test_a_value_not_refreshed_in_2_5_polls_is_unknown_to_the_tick(model):
    """The runtime's view judges staleness on lookup: pdu-2 polls every 4 s, so its power
    read 10.5 s ago is stale (> 2.5 x 4 s) and R2 is unknown, named as missing; read 9.5 s
    ago it is still fresh. The same samples as a plain mapping (judged by their reader)
    count as they are."""
    samples = latest()
    poll_s = dict.fromkeys(["meter", "ups-1", "pdu-1", "pdu-2", "cdu-1", "cdu-2"], 4.0)
    stale = FreshLatest(samples, poll_s, 1010.5)
    assert stale.get(("pdu-2", "power_kw")).quality is Quality.STALE
    assert samples[("pdu-2", "power_kw")].quality is Quality.GOOD  # the view copies nothing
    s = model.evaluate(stale, 1010.5)
    assert [r.power_kw for r in s.racks] == [None, None] and "pdu-2.power_kw" in s.missing
    s = SiteModel(model.site).evaluate(FreshLatest(samples, poll_s, 1009.5), 1009.5)
    assert [r.power_kw for r in s.racks] == [40.0, 30.0] and "pdu-2.power_kw" not in s.missing
    s = SiteModel(model.site).evaluate(samples, 1010.5)  # a plain mapping: as they are
    assert [r.power_kw for r in s.racks] == [40.0, 30.0]


def test_the_runtimes_input_arrays_answer_as_the_samples_do(model):
    """The runtime's tick reads its inputs from a LatestTable's copy, not the samples: the
    same status, stale and bad values unknown alike; a series first read after the copy is
    unknown to it (and known to the next), a reading after it is not seen (the rules judge
    the copy's samples, which the model computed from), and the table grows past its first
    1024 slots."""
    poll_s = dict.fromkeys(["meter", "ups-1", "pdu-1", "pdu-2", "cdu-1", "cdu-2"], 4.0)
    samples = latest(bad=(("cdu-2", "flow_lpm"),))
    samples[("pdu-2", "power_kw")] = samples[("pdu-2", "power_kw")]._replace(ts=989.0)  # stale
    table = LatestTable(model.keys_read, poll_s)
    for key, s in samples.items():
        if key != ("ups-1", "output_power_kw"):
            table.put(key, s)
    copy = table.at(1000.0, samples)
    table.put(("ups-1", "output_power_kw"), samples[("ups-1", "output_power_kw")])  # after it
    leak = samples[("cdu-1", "leak")]
    table.put(("cdu-1", "leak"), leak._replace(value=1.0, ts=1000.5))  # a leak polled after it
    assert copy.get(("cdu-1", "leak")) == leak and copy.good_value(("cdu-1", "leak")) == 0.0
    assert copy.get(("pdu-2", "power_kw")).quality is Quality.STALE
    assert copy.get(("ups-1", "output_power_kw")) is None  # first put after it: not in it
    for n in range(1100):  # past the first allocation; reads nothing the model reads
        table.put(("pdu-1", f"current_a{{phase={n + 4}}}"), samples[("pdu-1", "power_kw")])

    def seen(status):
        return [(r.power_kw, r.headroom_kw, r.limiting, r.limits_kw) for r in status.racks], \
            status.pue, status.missing

    expected = dict(samples)
    del expected[("ups-1", "output_power_kw")]
    by_arrays = SiteModel(model.site).evaluate(copy, 1000.0)
    assert seen(by_arrays) == seen(SiteModel(model.site).evaluate(
        FreshLatest(expected, poll_s, 1000.0), 1000.0))
    assert "ups-1.output_power_kw" in by_arrays.missing and "pdu-2.power_kw" in by_arrays.missing
    assert "cdu-2.flow_lpm" in by_arrays.missing
    later = SiteModel(model.site)
    later.evaluate(copy, 1000.0)  # its keys found once: a series added since is found again
    samples[("cdu-1", "leak")] = table.at(1000.5, samples).get(("cdu-1", "leak"))
    assert seen(later.evaluate(table.at(1000.0, samples), 1000.0)) == seen(
        SiteModel(model.site).evaluate(FreshLatest(samples, poll_s, 1000.0), 1000.0))


def test_the_rules_judge_a_column_of_the_tick_arrays_as_they_judge_each_sample(model):
    """The pack's rules read each kind's series from the tick's arrays, a column at a time
    (RULE_KEYS_READ; those over a metric, the series they watch), and make conditions only
    for what is active or unknown unless a rule has alerts to resolve: the same conditions
    as from the samples one by one, with bad, stale and never-polled values unknown alike."""
    poll_s = dict.fromkeys(["meter", "ups-1", "pdu-1", "pdu-2", "cdu-1", "cdu-2"], 4.0)
    samples = latest({("ups-1", "on_battery"): 1.0, ("ups-1", "runtime_min"): 2.0,
                      ("cdu-1", "leak"): 1.0, ("cdu-2", "pumps_running"): 1.0},
                     bad=(("cdu-2", "flow_lpm"),))
    samples[("cdu-1", "pumps_running")] = samples[("cdu-1", "pumps_running")]._replace(ts=989.0)
    table = LatestTable(model.keys_read | RULE_KEYS_READ, poll_s)
    for key, s in samples.items():
        table.put(key, s)
    copy, one_by_one = table.at(1000.0, samples), FreshLatest(samples, poll_s, 1000.0)
    status = model.evaluate(copy, 1000.0)
    inputs = Inputs(model.site, [], status, copy, lambda fp: False)
    assert inputs.column("cdu", "leak") == [1.0, 0.0]
    assert inputs.column("cdu", "pumps_running") == [None, 1.0]  # stale; and one short
    assert inputs.column("cdu", "flow_lpm") == [200.0, None]  # bad
    assert inputs.column("ups", "modules_ok") == [None]  # never polled

    def judged(latest, alerting_rules):
        conditions, complete = builtin_conditions(model.site, [], status, latest, now=1000.0,
                                                  alerting_rules=alerting_rules)
        assert complete
        return sorted((c.rule, sorted(c.labels.items()), c.active, c.value, c.summary,
                       c.severity, c.threshold) for c in conditions)

    for alerting_rules in (None, ()):  # every rule with alerts to resolve; none
        assert judged(copy, alerting_rules) == judged(one_by_one, alerting_rules)
    fired = {(c[0], dict(c[1]).get("device")) for c in judged(copy, ()) if c[2]}
    assert {("leak", "cdu-1"), ("ups_on_battery", "ups-1"), ("battery_runtime_low", "ups-1"),
            ("pump_redundancy_lost", "cdu-2")} <= fired
    assert len(judged(copy, None)) > len(judged(copy, ()))  # the inactive, to resolve


def test_a_cdu_with_no_pump_running_carries_nothing(model):
    # cdu-2 stopped: N+1 must lose the largest remaining (cdu-1, 90 kW): 0 kW capacity left
    s = model.evaluate(latest({("cdu-2", "pumps_running"): 0.0}), 1000.0)
    # the rack rule judges the tick's arrays: what the racks' records say
    conditions, _ = builtin_conditions(model.site, [], s, {}, now=1000.0, alerting_rules=())
    over = {c.labels["rack"]: c for c in conditions if c.rule == "rack_over_headroom"}
    assert {p.id: p.capacity_kw for p in s.pools}["loop-1"] == 0
    assert s.racks[1].limiting == "loop" and s.racks[1].headroom_kw == pytest.approx(-70)
    assert over[s.racks[1].id].active and over[s.racks[1].id].value == s.racks[1].headroom_kw
    assert over[s.racks[1].id].summary == f"rack {s.racks[1].id} is over its loop limit by 70.0 kW"


def test_capacity_holds_the_peak_of_the_window(model):
    model.evaluate(latest({("pdu-1", "power_kw"): 45.0}), 1000.0)  # a training step peak
    s = model.evaluate(latest(), 1002.0)
    # design 70 - peak 45 = 25 (not 70 - 40 = 30)
    assert s.racks[0].power_kw == 40 and s.racks[0].power_kw_peak == 45
    assert s.racks[0].limits_kw["design"] == 25


def test_what_if_draws_on_the_row_pools(model):
    s = model.evaluate(latest(), 1000.0)
    # loop pool 20 kW heat: 2 racks of 8 kW at capture 1.0 fit (16), 3 do not (24);
    # upstream pool 30 kW: 3 racks
    w = what_if(model, s, "A", 3, 8.0, capture_ratio=1.0)
    assert (w.racks_fit, w.feasible, w.first_to_break) == (2, False, "loop")
    assert w.racks_fit_by_limit["upstream"] == 3
    with pytest.raises(ValueError, match="no row 'Z'"):
        what_if(model, s, "Z", 1, 8.0)


def test_without_a_facility_meter_declared_loads_complete_the_facility(model):
    # no facility meter: facility = UPS input 74 + declared unmetered cooling 6 + office 2
    site = Site.model_validate(SITE | {
        "devices": [d for d in SITE["devices"] if d["id"] != "meter"],
        "model": {"unmetered_kw": {"cooling": 6.0, "office": 2.0}},
    })
    s = SiteModel(site).evaluate(latest({("ups-1", "input_power_kw"): 74.0}), 1000.0)
    assert s.facility_kw == 82.0
    assert s.measured_share == pytest.approx(74 / 82, abs=1e-3)
    assert s.pue == pytest.approx(82 / 70, abs=1e-3)
    # conversion loss: UPS input 74 - output 70 = 4 kW; power pPUE = (70 + 4) / 70
    assert s.conversion_loss_kw == 4.0 and s.power_ppue == pytest.approx(74 / 70, abs=1e-3)


def test_cooling_neither_metered_nor_declared_leaves_facility_power_unknown(model):
    # no facility meter, no cooling meter, only the office declared: the facility's cooling
    # is missing, so facility power and PUE are unknown, never the UPS input + 2 kW
    site = Site.model_validate(SITE | {
        "devices": [d for d in SITE["devices"] if d["id"] != "meter"],
        "model": {"unmetered_kw": {"office": 2.0}},
    })
    s = SiteModel(site).evaluate(latest({("ups-1", "input_power_kw"): 74.0}), 1000.0)
    assert (s.facility_kw, s.pue, s.measured_share) == (None, None, None)
    assert s.unaccounted == ["cooling"] and "cooling" in s.note
    # from what is known, (74 + 2) / 70 = 1.086: PUE is at least that
    assert s.pue_at_least == pytest.approx(76 / 70, abs=1e-3)


@pytest.mark.parametrize("where, category, it_kw", [
    ("ups_output", 1, 70.0),  # the UPS's measured output
    ("pdu_output", 2, 70.0),  # the PDUs: 40 + 30
    ("it_input", 3, 66.0),  # the outlets: 2 x 20 + 2 x 13
])
def test_pue_category_follows_where_it_is_measured(where, category, it_kw):
    site = Site.model_validate(SITE | {"model": {"it_measured_at": where}})
    outlets = {(p, f"power_kw{{outlet={n}}}"): kw for p, kw in (("pdu-1", 20.0), ("pdu-2", 13.0))
               for n in (1, 2)}
    for read in (latest(outlets), LatestValues.of(latest(outlets))):  # the runtime's, a reader's
        s = SiteModel(site).evaluate(read, 1000.0)
        assert (s.pue_category, s.it_kw) == (category, it_kw)
        assert s.pue == pytest.approx(80 / it_kw, abs=1e-3)
    # an outlet not read well: that PDU's input is unknown, and so are IT power and PUE
    s = SiteModel(site).evaluate(LatestValues.of(latest(outlets, bad=(("pdu-2", "power_kw{outlet=1}"),))), 1000.0)
    assert (s.it_kw is None) == (category == 3)


def test_derived_samples_name_each_rack_value_and_leave_out_unknown_and_unlimited(model):
    s = model.evaluate(latest(bad=(("pdu-2", "power_kw"),)), 1000.0)
    rack = {(x.tags["rack"], x.field): x.value for x in model.derived_samples(s) if x.measurement == "rack"}
    r1 = s.racks[0]
    assert rack[("R1", "power_kw")] == 40 and rack[("R1", "headroom_kw")] == pytest.approx(8)
    assert rack[("R1", "headroom_feed_kw")] == pytest.approx(r1.limits_kw["feed"])
    assert rack[("R1", "headroom_upstream_kw")] == 30
    assert ("R1", "headroom_loop_kw") not in rack  # unknown: R2's heat on the loop is
    assert ("R1", "headroom_air_kw") not in rack  # no air limit: +inf is not a sample
    assert ("R2", "power_kw") not in rack and ("R2", "headroom_design_kw") not in rack  # unknown
    assert rack[("R2", "headroom_phase_kw")] == pytest.approx(34)


def test_power_swings_over_the_last_minute():
    sc = {"id": "sc", "kind": "supercap", "protocol": "opcua", "port": 7, "profile": "supercap_opcua",
          "capacitance_f": 20, "vmax_v": 400, "vmin_v": 280}
    site = Site.model_validate(SITE | {
        "devices": [*SITE["devices"], sc],
        "racks": [r | {"supercap": "sc"} for r in SITE["racks"]],
    })
    model = SiteModel(site)
    extra = {("sc", "voltage_v"): 392.0, ("sc", "capacitance_f"): 20.0, ("sc", "esr_mohm"): 4.0}
    for t, kw in ((1000.0, 40.0), (1002.0, 50.0), (1004.0, 45.0)):
        s = model.evaluate(latest({("pdu-1", "power_kw"): kw} | extra), t)
    # the racks' sum went 70 -> 80 -> 75 kW: swing 10 kW, steepest 10 kW / 2 s = 5 kW/s;
    # the supercap can deliver 392^2 V^2 / (4 x 0.004 ohm) = 9 604 kW, far more than the swing
    (b,) = s.backup
    assert (b.swing_kw, b.ramp_kw_per_s, b.smoothing_kw) == (10.0, 5.0, 9604.0)
    assert s.racks[0].power_kw_peak == 50


@pytest.mark.parametrize("where", ["pdu_output", "ups_output"])
def test_a_reader_that_fetches_only_series_read_gets_the_same_answer(where):
    """`aidc headroom` fetches from the store only `SiteModel.series_read()`, a list kept
    beside `evaluate`: every series `evaluate` reads on the demo site must be in it, and the
    answer from those alone must equal the answer from everything a poll gives."""
    from pathlib import Path

    from aidc.core.config import load_site
    from simulators.physics import SitePhysics

    site = load_site(Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml")
    site = site.model_copy(update={"model": site.model.model_copy(
        update={"it_measured_at": where})})
    physics, now = SitePhysics(site), time.time()
    everything = {(d.id, key): Sample(d.kind, {}, key, value, now)
                  for d in site.devices for key, value in physics.values(d.id).items()
                  if value is not None}

    read: set[str] = set()

    class Recording(dict):
        def get(self, key, default=None):
            read.add(key[1])
            return super().get(key, default)

    keys = SiteModel(site).series_read()
    full = SiteModel(site).evaluate(Recording(everything), now)
    assert read and read <= keys, read - keys
    fetched = {k: s for k, s in everything.items() if k[1] in keys}
    assert len(fetched) < len(everything)
    assert repr(SiteModel(site).evaluate(fetched, now)) == repr(full)  # NaN and arrays too


def test_the_store_history_of_rack_power_is_tick_by_tick_in_the_last_minute_and_a_maximum_before(
        tmp_path):
    """What `aidc headroom` and a restarted runtime hold the peak against: the model's own
    `rack` `power_kw`, each point in the last minute (the backup model's swing), and before
    it, each rack's maximum, stamped at the last minute's start."""
    import numpy as np

    from aidc.core.snapshot import rack_power_history
    from aidc.core.store.sqlite import SqliteStore

    model = SiteModel(Site.model_validate(SITE))
    assert model.site.model.peak_window_s == 300
    now = time.time() - 600  # within the store's retention
    rack = {"R1": {"site": "s", "rack": "R1"}, "R2": {"site": "s", "rack": "R2"}}
    store = SqliteStore(tmp_path / "store.sqlite")
    store.write([Sample("rack", rack[r], "power_kw", kw, now - ago, q) for r, kw, ago, q in [
        ("R1", 90.0, 250, Quality.GOOD),  # R1's peak before the last minute
        ("R1", 85.0, 200, Quality.GOOD),
        ("R1", 99.0, 210, Quality.BAD),  # not a good value: not a peak
        ("R2", 40.0, 400, Quality.GOOD),  # before the window: R2 has none before the minute
        ("R1", 80.0, 30, Quality.GOOD), ("R2", 50.0, 30, Quality.GOOD),
        ("R1", 60.0, 5, Quality.GOOD),
        ("R2", 70.0, 60, Quality.GOOD),  # on the minute's start: in both reads, held once
    ]])
    history = rack_power_history(model, store, now)
    store.close()
    assert [t - now for t, _ in history] == [-60, -30, -5]
    assert np.array_equal(np.stack([kw for _, kw in history]),
                          [[90, 70], [80, 50], [60, np.nan]], equal_nan=True)
