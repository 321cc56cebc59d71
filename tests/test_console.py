"""The console's pieces that decide what an operator sees, on hand-made inputs: the site
state, the status bar's colour, where racks stand on the floor, what colours them, and how an
unknown limit is drawn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go

from aidc.api import alert_counts, pool_json, site_state
from aidc.core.config import load_site
from aidc.core.derive import BackupStatus, Pool
from aidc.core.topology import Topology
from alerts.evaluate import Alert
from dashboards.app import status_bar
from dashboards.pages.capacity import csv_text, rack_rows, sorted_rows
from dashboards.pages.cooling import cdu_rows, temperature_figure
from dashboards.pages.floor import floor_figure, floor_plan, rack_alert_state, rack_values
from dashboards.pages.overview import backup_rows, redundancy_rows
from dashboards.pages.power import sankey
from dashboards.pages.rack import feed_rows, limits_figure
from dashboards.widgets import AMBER, GREEN, GREY, RED, UNKNOWN

DEMO = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"
NOW = 1_800_000_000.0


class Status:  # the fields of SiteStatus that site_state reads
    def __init__(self, updated_at=NOW - 1, backup=(), pools=()):
        self.updated_at, self.backup, self.pools = updated_at, list(backup), list(pools)


def alert(rule: str, severity="critical", state="firing", **labels) -> Alert:
    return Alert(f"fp-{rule}", rule, labels, severity, f"{rule} at {labels}", 1.0, state, NOW)


def backup(battery_s):
    return BackupStatus("sc-a", 100.0, 50.0, 0.5, battery_s, None, 10.0, None, True,
                        None, None, None)


def pool(left_kw, worst="ups-b"):
    return Pool("rect-a", "rectifier", 500.0, 400.0, left_kw, 100.0, worst, ["A01"])


def test_the_site_state_in_its_order_stale_battery_degraded_normal():
    tick_s = 5.0
    assert site_state(None, [], NOW, tick_s)["state"] == "stale"
    old = site_state(Status(updated_at=NOW - 16), [alert("ups_on_battery", device="ups-b")],
                     NOW, tick_s)
    assert (old["state"], old["state_detail"]) == ("stale", "last model result 16 s ago")
    on_battery = site_state(Status(backup=[backup(300.0), backup(None), backup(120.0)]),
                            [alert("ups_on_battery", device="ups-b"),
                             alert("rectifier_redundancy_lost", device="rect-a")], NOW, tick_s)
    assert on_battery == {"state": "on_battery", "data_age_s": 1.0,
                          "state_detail": "ups-b: 2.0 min of battery left"}  # the shortest
    unknown = site_state(Status(backup=[backup(None)]),
                         [alert("ups_on_battery", device="ups-b")], NOW, tick_s)
    assert unknown["state_detail"] == "ups-b: battery runtime unknown"
    # a pending alert is not yet a fact; a pool that would not hold its worst failure is
    assert site_state(Status(), [alert("ups_on_battery", state="pending",
                                       device="ups-b")], NOW, tick_s)["state"] == "normal"
    degraded = site_state(Status(pools=[pool(-12.0), pool(None)]),
                          [alert("pump_redundancy_lost", "warning", device="cdu-1")], NOW, tick_s)
    assert degraded["state"] == "degraded"
    assert degraded["state_detail"] == ("pump_redundancy_lost at cdu-1; "
                                        "rect-a would not hold ups-b failing")
    assert site_state(Status(pools=[pool(3.0)]), [], NOW, tick_s)["state"] == "normal"


def bar(state: str, *alerts: Alert) -> tuple[str, str, str]:
    site = {"state": state, "state_detail": "", "data_age_s": 2.0,
            "alerts": alert_counts(list(alerts))}
    children, colour = status_bar(site)
    text = {c.id: c.children for c in children}
    return colour, text["alert-counts"], text["worst-alert"]


def shown(severity: str, summary: str = "s", since: float = 0.0, by: str | None = None,
          state: str = "firing") -> Alert:
    return replace(alert(summary, severity, state), summary=summary, starts_at=since,
                   suppressed_by=by)


def test_the_status_bar_colour_follows_the_worst_fact():
    assert bar("normal") == (GREEN, "0 critical · 0 warning", "no alert firing")
    assert bar("normal", shown("warning", "pump 2 of cdu-1 stopped"))[0] == AMBER
    assert bar("normal", shown("critical", state="pending"))[0] == GREEN  # not yet a fact
    assert bar("degraded")[0] == AMBER
    assert bar("on_battery")[0] == RED
    colour, counts, worst = bar("degraded", shown("warning", "pump", since=1),
                                shown("critical", "pdu dark", since=3),
                                shown("critical", "leak at cdu-1", since=2),
                                shown("critical", "rack over", since=0, by="leak{device=cdu-1}"))
    assert (colour, counts, worst) == (RED, "2 critical · 1 warning · 1 suppressed",
                                       "critical: leak at cdu-1")  # the first critical
    assert bar("stale", shown("critical"))[0] == GREY  # nothing is known now


def test_racks_stand_where_the_site_file_puts_them():
    site = load_site(DEMO)
    [hall] = floor_plan(site)
    assert (hall.rows, hall.slots) == (["A", "B"], 4)
    assert hall.cells[2] == ("A03", 0, 2) and hall.cells[5] == ("B02", 1, 1)
    # without positions: the order of the row's racks in the file, after the positioned ones
    data = site.model_copy(update={"racks": [
        site.racks[0].model_copy(update={"position": 2}),
        site.racks[1].model_copy(update={"position": None}),
        site.racks[2].model_copy(update={"position": None})]})
    [hall] = floor_plan(data)
    assert hall.cells == [("A01", 0, 1), ("A02", 0, 0), ("A03", 0, 2)]


def racks_of(site) -> list[dict]:
    out = []
    for i, r in enumerate(site.racks):
        out.append({"id": r.id, "room": r.room, "row": r.row, "design_kw": r.design_kw,
                    "power_kw": None if i == 1 else 40.0, "power_kw_peak": 41.0,
                    "headroom_kw": None if i == 1 else 80.0 - 10 * i,
                    "limiting": "unknown" if i == 1 else "feed", "complete": i != 1,
                    "unknown": []})
    return out


def test_the_floor_colours_known_racks_and_greys_the_unknown():
    site = load_site(DEMO)
    racks = racks_of(site)
    capture = {r.id: r.capture_ratio for r in site.racks}
    values = rack_values(racks, capture, {}, "pct_design")
    assert values["A01"] == 100 * 40 / 120 and values["A02"] is None
    assert rack_values(racks, capture, {}, "liquid_kw")["A01"] == 40 * 0.9
    fig = floor_figure(floor_plan(site), racks, values, "pct_design")
    go.Figure(fig)  # valid as plotly has it
    known, grey = fig["data"][0], fig["data"][1]
    assert known["z"][0][0] == values["A01"] and known["z"][0][1] != known["z"][0][1]  # NaN
    assert grey["z"][0][1] == 0 and grey["z"][0][0] != grey["z"][0][0]  # drawn grey, unknown
    assert "headroom unknown: its power" in grey["hovertext"][0][1]
    # a headroom with a limit not read is an upper bound: coloured only when it is over
    bound = [r | {"complete": False, "unknown": ["loop"]} for r in racks[2:4]]
    bound[1]["headroom_kw"] = -4.0
    assert rack_values(bound, capture, {}, "headroom_kw") == {"A03": None, "A04": -4.0}
    assert known["customdata"][1][1] == "B02"
    limiting = floor_figure(floor_plan(site), racks,
                            rack_values(racks, capture, {}, "limiting"), "limiting")
    go.Figure(limiting)
    assert {t["name"] for t in limiting["data"] if t["type"] == "scatter"} >= {"feed", "loop", "none"}


def test_a_rack_takes_the_worst_alert_of_what_it_depends_on():
    graph = Topology(load_site(DEMO))
    alerts = [{"labels": {"device": "cdu-1"}, "severity": "warning", "state": "firing"},
              {"labels": {"device": "pdu-a03-a"}, "severity": "critical", "state": "firing"},
              {"labels": {"rack": "B04"}, "severity": "critical", "state": "suppressed"}]
    state = rack_alert_state(alerts, graph)
    assert state["A03"] == "critical"  # its own PDU, over the loop's warning
    assert state["A01"] == state["B03"] == "warning"  # every rack on cdu-1's loop
    assert state["B04"] == "warning"  # a firing warning outranks a suppressed critical


def test_an_unknown_limit_is_a_hatched_bar_named_unknown_never_a_short_one():
    rack = {"design_kw": 80.0, "limiting": "feed", "limits_kw": {"feed": 12.5, "design": 30.0},
            "unknown": ["loop"], "not_applicable": ["air"]}
    [bars] = limits_figure(rack).data
    by_name = dict(zip(bars.y, zip(bars.x, bars.text, bars.marker.color,
                                   bars.marker.pattern.shape)))
    assert by_name["feeds (A/B kept)"] == (12.5, "12.5 kW · binding", RED, "")
    assert by_name["CDU loop, N+1 kept"] == (80.0, "unknown", GREY, "/")
    assert by_name["air allowance"][1] == "does not apply"


def test_the_capacity_table_filters_as_a_planner_asks():
    racks = racks_of(load_site(DEMO))
    assert [r["id"] for r in rack_rows(racks, row="B", min_kw=35)] == ["B01"]
    assert [r["id"] for r in rack_rows(racks, limit="unknown")] == ["A02"]
    assert rack_rows(racks, min_kw=0)[0]["limiting"] == "feed"
    assert rack_rows(racks, room="hall1", limit="unknown")[0]["limiting"] == \
        "unknown (upper bound)"


def test_the_capacity_table_sorts_unknowns_last_and_exports_them_as_empty_cells():
    rows = [{"id": i, "row": row, "headroom_kw": kw}
            for i, row, kw in (("A", "1", 5.0), ("B", "2", None), ("C", "1", 9.5), ("D", "2", 5.0))]

    def ids(*sort_by) -> str:
        return "".join(r["id"] for r in sorted_rows(rows, [
            {"column_id": c, "direction": d} for c, d in sort_by]))

    assert ids(("headroom_kw", "asc")) == "ADCB"
    assert ids(("headroom_kw", "desc")) == "CADB"  # unknown last either way
    assert ids(("row", "desc"), ("headroom_kw", "desc")) == "DBCA"  # the first column first
    assert ids() == "ABCD"
    assert ids(("power", "asc"), ("headroom_kw", "sideways")) == "ABCD"  # not the table's
    assert "".join(r["id"] for r in sorted_rows(rows, [None, "x", {}])) == "ABCD"
    lines = csv_text(sorted_rows(rows, [{"column_id": "headroom_kw", "direction": "asc"}]))
    assert lines.splitlines()[0] == \
        "id,room,row,power_kw,power_kw_peak,design_kw,headroom_kw,limiting"
    assert lines.splitlines()[-1] == "B,,2,,,,,"  # unknown: an empty cell, never 0


def cdu(**readings) -> dict:
    base = {"id": "cdu-1", "state": "up", "supply_temp_c": 35.0, "return_temp_c": 45.0,
            "facility_supply_temp_c": 30.0, "flow_lpm": 300.0, "dp_kpa": 20.0,
            "pumps_running": 2.0, "leak": 0.0, "max_flow_lpm": 900.0, "min_flow_lpm": 100.0,
            "max_dp_kpa": 100.0, "pumps": 2, "pumps_required": 1, "rated_kw": 500.0,
            "capacity_kw": 500.0, "heat_kw": 210.0}
    return base | readings


def loop_of(*cdus, compared="facility_supply") -> dict:
    return {"id": "loop-1", "fluid": "PG25", "ashrae_class": "W32", "redundancy": "N+1",
            "pool": {"supply_limit_c": 32.0, "supply_compared": compared}, "cdus": list(cdus)}


def test_a_cdu_is_red_where_it_leaves_its_envelope_and_only_there():
    # 35 °C technology supply is fine when the class is checked on the 30 °C facility side
    [ok] = cdu_rows(loop_of(cdu()))
    assert ok["alarm"] == "" and ok["flow"] == "300.0 of 900" and ok["leak"] == "dry"
    assert ok["pumps"] == "2 of 2 (1 required)" and ok["heat"] == "210.0 of 500.0 usable"
    [hot] = cdu_rows(loop_of(cdu(), compared="technology_supply"))
    assert hot["alarm"] == "supply_temp_c"
    [bad] = cdu_rows(loop_of(cdu(facility_supply_temp_c=33.0, flow_lpm=90.0, dp_kpa=120.0,
                                 pumps_running=0.0, leak=1.0)))
    assert bad["alarm"] == "facility_supply_temp_c flow dp pumps leak" and bad["leak"] == "LEAK"
    [unknown] = cdu_rows(loop_of(cdu(flow_lpm=None, pumps_running=None, leak=None,
                                     heat_kw=None)))
    assert unknown["alarm"] == "" and unknown["flow"] == "unknown of 900"
    assert unknown["pumps"].startswith("unknown of 2") and unknown["leak"] == "unknown"
    assert unknown["heat"] == "unknown of 500.0 usable"


def test_a_temperature_not_read_is_a_hatched_bar_that_says_unknown_not_a_gap():
    fig = temperature_figure(loop_of(cdu(), cdu(id="cdu-2", return_temp_c=None)))
    _, supply, ret = fig.data
    assert supply.y == (35.0, 35.0) and supply.text == ("", "")  # both read
    # cdu-2's return: as tall as the tallest read, grey, hatched, "unknown" in text and hover
    assert ret.y == (45.0, 45.0) and ret.text == ("", UNKNOWN)
    assert ret.marker.color == ("#bf3989", GREY) and ret.marker.pattern.shape == ("", "/")
    assert ret.customdata == ("45.0 °C", UNKNOWN)


def test_the_power_chain_leaves_out_and_names_what_is_unknown():
    power = {"sources": [{"id": "rect-a", "input_kw": 210.0, "loss_kw": 10.0},
                         {"id": "ups-b", "input_kw": None, "loss_kw": None}],
             "flows": [{"source": "rect-a", "row": "A", "kw": 120.0},
                       {"source": "rect-a", "row": "B", "kw": 80.0},
                       {"source": "ups-b", "row": "A", "kw": None}], "pdus": []}
    fig, unknown = sankey(power)
    [s] = fig.data
    assert list(s.node.label) == ["utility", "rect-a", "ups-b", "conversion loss", "row A", "row B"]
    assert list(zip(s.link.source, s.link.target, s.link.value)) == [
        (0, 1, 210.0), (1, 3, 10.0), (1, 4, 120.0), (1, 5, 80.0)]  # nothing drawn as 0
    assert unknown == ["ups-b input", "ups-b to row A"]
    # row B through its PDUs to its racks: B01's two feeds, B02's B feed dark
    power |= {"flows": power["flows"][:1] + power["flows"][2:],
              "pdus": [{"id": "pdu-b01-a", "source": "rect-a", "rack": "B01", "kw": 30.0},
                       {"id": "pdu-b01-b", "source": "ups-b", "rack": "B01", "kw": 25.0},
                       {"id": "pdu-b02-b", "source": "ups-b", "rack": "B02", "kw": None}]}
    fig, unknown = sankey(power)
    [s] = fig.data
    assert list(s.node.label) == ["utility", "rect-a", "ups-b", "conversion loss", "row A",
                                  "pdu-b01-a", "pdu-b01-b", "pdu-b02-b", "rack B01", "rack B02"]
    assert list(zip(s.link.source, s.link.target, s.link.value))[3:] == [
        (1, 5, 30.0), (5, 8, 30.0), (2, 6, 25.0), (6, 8, 25.0)]
    assert unknown == ["ups-b input", "ups-b to row A", "pdu-b02-b to rack B02"]


def test_pools_reach_the_console_without_rack_lists():
    """The API keeps each pool's racks; the console's pools leave them out (every rack of the
    site three times over, for no column), and say whether each holds its worst failure: those
    that do not first, then the unknown, each in the site's order."""
    racks = [f"R{i:05d}" for i in range(5000)]
    pools = [Pool("rect-a", "rectifier", 100.0, 80.0, 5.0, 20.0, "rect-b", racks, modules_ok=12.0),
             Pool("loop-1", "loop", None, None, None, None, None, racks[:1]),
             Pool("ups-b", "ups", 100.0, 90.0, -12.0, 10.0, "rect-a", racks)]
    assert pool_json(pools[0])["racks"] == racks
    console = [pool_json(p, with_racks=False) for p in pools]
    rows = redundancy_rows(console)
    assert [(r["id"], r["holds"], r["modules_ok"]) for r in rows] == [
        ("ups-b", "no", ""), ("loop-1", "unknown", ""), ("rect-a", "yes", "12")]
    assert all("racks" not in r for r in console + rows)


def test_a_phase_past_its_breakers_continuous_limit_marks_the_feed():
    feeds = [{"side": "A", "continuous_a": 25.6, "phase_current_a": {"1": 20.0, "2": 26.1}},
             {"side": "B", "continuous_a": 25.6, "phase_current_a": {"1": 25.6, "2": None}}]
    rows = feed_rows(feeds)
    assert [(r["phases"], r["over"]) for r in rows] == [("20.0 / 26.1", "yes"),
                                                        ("25.6 / unknown", "")]


def test_backup_chains_that_do_not_bridge_to_the_generator_come_first():
    chains = [{"supercap": "sc-a", "bridges": True, "shortfall_s": 0.0},
              {"supercap": "sc-b", "bridges": False, "shortfall_s": None},
              {"supercap": "sc-c", "bridges": False, "shortfall_s": 12.5},
              {"supercap": "sc-d", "bridges": True, "shortfall_s": 0.0}]
    assert [(r["supercap"], r["bridges"]) for r in backup_rows(chains)] == [
        ("sc-c", "no"), ("sc-b", "unknown"), ("sc-a", "yes"), ("sc-d", "yes")]
