"""The operators' page in a real browser (Debian chromium, headless) on a live simulated site."""

from __future__ import annotations

import csv
import math
import re
import time
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs_version

from aidc.api import SiteAPI
from aidc.core.net import free_port
from dashboards.app import create_app
from tests.conftest import API_TOKEN
from tests.conftest import wait_for as wait_for_state


def wait_for(predicate, timeout_s: float = 30, what: str = "the page"):
    """wait_for on the page: an element replaced by a refresh while it is read is retried."""
    from selenium.common.exceptions import StaleElementReferenceException

    def shown():
        try:
            return predicate()
        except StaleElementReferenceException:
            return None

    return wait_for_state(shown, timeout_s, what)


# the plotly.js the page runs (the version, whether each trace type drew) and every plotly
# script it loaded: aidc's bundle of the trace types it draws, not Dash's full one
PLOTLY_OF_THE_PAGE = """
const drawn = {bar: '.barlayer .point', heatmap: '.hm image', sankey: '.sankey-node',
               scatter: '.scatterlayer .trace'};
return [window.Plotly && window.Plotly.version,
        Object.keys(drawn).filter(t => document.querySelector(drawn[t])),
        performance.getEntriesByType('resource').map(e => e.name.split('?')[0])
            .filter(n => n.includes('plotly'))];
"""
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
RED_CSS = "rgba(207, 34, 46, 1)"  # widgets.RED as the browser reports it


def open_page(dash_duo, path: str, element: str) -> None:
    dash_duo.driver.get(dash_duo.server_url.rstrip("/") + path)
    dash_duo.wait_for_element(element, timeout=20)


def screenshot(dash_duo, name: str) -> None:
    """For review, not committed (build/ is ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    dash_duo.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def table_rows(dash_duo, table: str) -> list[str]:
    """The text of each data row (not the header's or the filter's)."""
    return [r.text for r in dash_duo.find_elements(f"{table} tbody tr:has(td.dash-cell)")]


def click_floor_cell(dash_duo, row: str, position: int) -> None:
    """A real mouse click on the floor map's cell (row, position), found from the axes; after
    a pause on it, as a hand would: plotly clicks on the point the hover found."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    x, y = dash_duo.driver.execute_script(
        "const gd = document.querySelector('#floor-map .js-plotly-plot');"
        "const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
        "const r = gd.getBoundingClientRect();"
        "return [r.left + xa._offset + xa.d2p(arguments[1]),"
        "        r.top + ya._offset + ya.d2p(arguments[0])];", row, position)
    mouse = ActionBuilder(dash_duo.driver)
    mouse.pointer_action.move_to_location(int(x), int(y)).pause(0.5).click()
    mouse.perform()


def test_every_page_shows_the_live_site_and_a_leak_turns_the_bar_red(dash_duo, live_site):
    api = SiteAPI(live_site.runtime)
    dash_duo.start_server(create_app(api), port=free_port())
    dash_duo.wait_for_element("#pue-value", timeout=20)

    # overview: each wait is on what the page shows (a sample stale for a moment on a loaded
    # machine makes a figure unknown until the next refresh)
    pue_text = wait_for(
        lambda: re.fullmatch(r"1\.\d{3}", dash_duo.find_element("#pue-value").text), 20, "a PUE"
    ).group(0)
    truth = live_site.simulated.truth()["pue"]
    assert abs(float(pue_text) - truth) / truth < 0.02
    wait_for(lambda: "category 2" in dash_duo.find_element("#pue-note").text, what="category")
    # over 24 h, from energy counters: a number with its category, or why there is none yet
    wait_for(lambda: re.fullmatch(r"from energy counters, ISO/IEC 30134-2 category 2|not enough "
                                  r"energy counted yet: .* kWh in all",
                                  dash_duo.find_element("#pue-24h-note").text), what="24 h PUE")
    wait_for(lambda: dash_duo.find_element("#site-state").text == "Normal"
             and dash_duo.find_element("#alert-counts").text == "0 critical · 0 warning",
             what="normal, no alert")

    def bridging() -> bool:
        rows = table_rows(dash_duo, "#backup-table")
        return len(rows) == 2 and all(r.rstrip().endswith("yes") for r in rows)

    wait_for(bridging, what="both backup chains bridging to the generator")
    wait_for(lambda: [r.split()[0] for r in table_rows(dash_duo, "#redundancy-table")]
             == ["rect-a", "ups-b", "loop-1"], what="every source and loop")
    screenshot(dash_duo, "overview")
    assert "bar" in dash_duo.driver.execute_script(PLOTLY_OF_THE_PAGE)[1]

    # the floor: two rows of four racks; clicking A03 opens its page
    open_page(dash_duo, "/floor", "#floor-map .js-plotly-plot")
    wait_for(lambda: dash_duo.driver.execute_script(
        "return document.querySelector('#floor-map .js-plotly-plot').data.length") >= 2,
        what="the floor map drawn")
    screenshot(dash_duo, "floor")
    assert dash_duo.driver.execute_script(PLOTLY_OF_THE_PAGE) == [
        get_plotlyjs_version(), ["heatmap"], [dash_duo.server_url + "/assets/plotly-aidc.min.js"]]
    click_floor_cell(dash_duo, "A", 3)
    wait_for(lambda: dash_duo.driver.current_url.endswith("/rack/A03"), what="A03's page")
    wait_for(lambda: dash_duo.find_element("#page-title").text == "Rack A03", what="its title")

    # the rack: live numbers, a binding limit, each feed's power against its breaker
    wait_for(lambda: re.fullmatch(r"[\d,]+\.\d", dash_duo.find_element("#rack-headroom").text),
             20, "A03's headroom in kW")
    assert dash_duo.find_element("#rack-binding").text.startswith("binding: ")
    feeds = wait_for(lambda: (rows := table_rows(dash_duo, "#rack-feeds")) and len(rows) == 2
                     and all(re.search(r"pdu-a03-[ab] \S+ [\d.]+", r) for r in rows) and rows,
                     what="both feeds with their power")
    assert feeds[0].startswith("A pdu-a03-a rect-a") and feeds[1].startswith("B pdu-a03-b ups-b")
    assert "cdu-1" in dash_duo.find_element("#rack-devices").text

    def heat_kw() -> tuple[float, float, float] | None:  # power, liquid, air, of one refresh
        texts = [dash_duo.find_element(f"#rack-{k}").text for k in ("power", "liquid", "air")]
        return (tuple(float(t.replace(",", "")) for t in texts)
                if all(re.fullmatch(r"[\d,]+\.\d", t) for t in texts) else None)

    power, liquid, air = wait_for(heat_kw, what="A03's liquid and air heat")
    # no manifold meter on A03: its liquid share is its capture ratio, air the rest; each
    # figure shown to 0.1 kW, so two of them add up to within 0.1 kW of the third
    [a03] = [r for r in live_site.site.racks if r.id == "A03"]
    assert a03.manifold is None
    assert liquid == pytest.approx(a03.capture_ratio * power, abs=0.1 + 1e-9)
    assert liquid + air == pytest.approx(power, abs=0.1 + 1e-9)
    wait_for(lambda: dash_duo.driver.execute_script(
        "const d = document.querySelector('#rack-history .js-plotly-plot').data;"
        "return d.length == 2 && d[0].x.length > 0 && d[1].x.length > 0"),
        what="A03's power and headroom over 24 h from the store")
    screenshot(dash_duo, "rack-A03")

    # capacity: eight racks, A03 bound by its weaker feed; the pools with their worst failures
    open_page(dash_duo, "/capacity", "#rack-table")

    def a03_row() -> str | None:
        rows = table_rows(dash_duo, "#rack-table")
        a03 = [r for r in rows if r.startswith("A03")]
        return a03[0] if len(rows) == 8 and a03 and ("feed" in a03[0] or "phase" in a03[0]) \
            else None

    wait_for(a03_row, what="eight racks, A03 bound by its weaker feed")
    dash_duo.select_dcc_dropdown("#filter-row", "B")
    wait_for(lambda: [r.split()[0] for r in table_rows(dash_duo, "#rack-table")]
             == ["B01", "B02", "B03", "B04"], what="row B only")
    assert dash_duo.find_element("#rack-count").text == "4 of 8 racks"
    # sorted by the server across every page: least headroom first, then most
    def headroom_column() -> list[float]:
        return [float(c.text) for c in dash_duo.find_elements(
            "#rack-table td[data-dash-column='headroom_kw'] div")]

    for descending in (False, True):
        dash_duo.find_element("#rack-table th[data-dash-column='headroom_kw'] "
                              ".column-header--sort").click()
        wait_for(lambda d=descending: len(kw := headroom_column()) == 4 and kw != kw[::-1]
                 and kw == sorted(kw, reverse=d), what=f"row B by headroom, descending {descending}")
    # the CSV: every rack the filters keep, the table's columns
    dash_duo.find_element("#rack-csv-button").click()
    csv_file = Path(dash_duo.download_path) / "demo-headroom.csv"
    wait_for(csv_file.exists, what="the CSV downloaded")
    exported = list(csv.DictReader(csv_file.open()))
    assert sorted(r["id"] for r in exported) == ["B01", "B02", "B03", "B04"]
    assert all(float(r["design_kw"]) > 0 and r["limiting"] for r in exported)

    def pools() -> list[str] | None:
        rows = table_rows(dash_duo, "#pool-table")
        return rows if len(rows) == 3 and "ups-b" in rows[0] and "rect-a" in rows[1] else None

    assert [p.split()[0] for p in wait_for(pools, what="the pools")] == \
        ["rect-a", "ups-b", "loop-1"]

    # a planner asks whether 6 racks of 120 kW fit in row B
    for field, value in (("#whatif-racks", "6"), ("#whatif-kw", "120")):
        box = dash_duo.find_element(field)
        box.clear()
        box.send_keys(value)
    dash_duo.select_dcc_dropdown("#whatif-row", "B")

    def answer() -> str | None:  # "unknown" while a sample is stale on a loaded machine
        dash_duo.find_element("#whatif-run").click()
        time.sleep(0.5)
        text = dash_duo.find_element("#whatif-result").text
        return text if "unknown" not in text and text else None

    text = wait_for(answer, 20, "a what-if answer with every limit known")
    assert "does not fit" in text and "first limit to break: loop" in text
    assert "Not checked: feed, air" in text  # never "all fit" for what was not asked
    box = dash_duo.find_element("#whatif-kw")  # the page validates like the API
    box.clear()
    box.send_keys("-1")
    dash_duo.find_element("#whatif-run").click()
    refusal = wait_for(lambda: (t := dash_duo.find_element("#whatif-result").text)
                       .startswith("Cannot check") and t, what="the refusal")
    assert refusal.startswith("Cannot check: kw: Input should be"), refusal
    screenshot(dash_duo, "capacity")

    # devices: every device of the site, all up
    open_page(dash_duo, "/devices", "#devices-table")
    n = len(live_site.runtime.site.devices)
    wait_for(lambda: dash_duo.find_element("#devices-summary").text == f"{n} devices: {n} up",
             what="every device up")
    assert len(table_rows(dash_duo, "#devices-table")) == n
    def click_the_first_device() -> str:  # retried if a refresh replaced the cell meanwhile
        cell = dash_duo.find_element("#devices-table td[data-dash-column='id'] div")
        name = cell.text
        cell.click()
        return name

    first = wait_for(click_the_first_device, what="a device clicked")
    wait_for(lambda: dash_duo.find_element("#readings-title").text == f"Series of {first}",
             what="its readings")
    wait_for(lambda: (rows := table_rows(dash_duo, "#readings-table"))
             and all(re.fullmatch(r"\S+ -?[\d.e+-]+ good \S+", r) for r in rows),
             what="its series, each read good")
    dash_duo.find_element("#device-probe").click()  # read now: what came off the wire
    wait_for(lambda: re.fullmatch(r"Probe at \S+: \d+ series in \d+ ms",
                                  dash_duo.find_element("#probe-result").text),
             what="the probe's answer")
    assert len(table_rows(dash_duo, "#probe-table")) == len(table_rows(dash_duo, "#readings-table"))
    assert dash_duo.find_element("#device-probe-json").get_attribute("href").endswith(
        f"/api/v1/devices/{first}/probe")
    screenshot(dash_duo, "devices")

    # cooling: the loop against its class, both CDUs dry with their pumps
    open_page(dash_duo, "/cooling", "#cooling-loops")
    wait_for(lambda: dash_duo.find_element(".loop-summary").text.startswith(
        "loop-1: PG25, class W32 (supply limit 32.0 °C"), what="the loop's summary")
    wait_for(lambda: (rows := table_rows(dash_duo, "#cdus-loop-1")) and len(rows) == 2
             and all(r.endswith("dry") and "unknown" not in r for r in rows)
             and rows[0].startswith("cdu-1 up") and "(1 required)" in rows[0],
             what="both CDUs read in full")
    screenshot(dash_duo, "cooling")

    # power: the chain from the utility to the rows, modules, supercaps charged
    open_page(dash_duo, "/power", "#power-sankey .js-plotly-plot")
    nodes = wait_for(lambda: dash_duo.driver.execute_script(
        "const gd = document.querySelector('#power-sankey .js-plotly-plot');"
        "return gd.data && gd.data[0] && gd.data[0].link.value.length >= 8 && gd.data[0].node.label"),
        what="the Sankey with every link")
    assert nodes == ["utility", "rect-a", "ups-b", "conversion loss", "row A", "row B"]
    assert dash_duo.driver.execute_script(PLOTLY_OF_THE_PAGE)[1] == ["sankey"]
    dash_duo.select_dcc_dropdown("#power-row", "B")  # row B through its PDUs to its racks
    wait_for(lambda: dash_duo.driver.execute_script(
        "return document.querySelector('#power-sankey .js-plotly-plot').data[0].node.label"
    )[4:] == ["row A", *(f"pdu-b0{i}-{s}" for i in range(1, 5) for s in "ab"),
              *(f"rack B0{i}" for i in range(1, 5))], what="row B's PDUs and racks")
    wait_for(lambda: (rows := table_rows(dash_duo, "#sources-table")) and len(rows) == 2
             and re.search(r"rect-a rectifier up .* of 13 \(N\+1, \d+ carry the load\) no$",
                           rows[0]), what="both sources, rect-a's modules")
    wait_for(lambda: all(re.match(r"sc-[ab] \d+\.\d ", r)
                         for r in table_rows(dash_duo, "#supercaps-table")), what="charges")
    screenshot(dash_duo, "power")

    # trends: the site's PUE over 24 h, then the last hour, as the store downsamples them
    open_page(dash_duo, "/trends", "#trend-chart")
    wait_for(lambda: re.match(r"pue of demo: [1-9]\d* points in 1 series, means over 300 s",
                              dash_duo.find_element("#trend-note").text), what="24 h of PUE")
    # every y tick label pushed past the chart's div: the labels stay shown and the axis title
    # in place (with plotly's default, a redraw mid-layout that found them all past the div hid
    # them, and put the title at x=Infinity: a console error)
    title_x, any_hidden = dash_duo.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const gd = document.querySelector('#trend-chart .js-plotly-plot');"
        "Plotly.relayout(gd, {'yaxis.ticklabelshift': 1000}).then(() => done("
        "  [gd.querySelector('.ytitle').getAttribute('x'),"
        "   [...gd.querySelectorAll('.ytick text')].some(t => t.style.display === 'none')]));")
    assert math.isfinite(float(title_x)) and not any_hidden, (title_x, any_hidden)
    dash_duo.find_element("#trend-range input[value='1 h']").click()
    wait_for(lambda: "means over 12 s windows" in dash_duo.find_element("#trend-note").text,
             what="the last hour")
    dash_duo.select_dcc_dropdown("#trend-kind", "a rack")
    wait_for(lambda: dash_duo.find_element("#trend-note").text.startswith("power_kw of A01: "),
             what="a rack's power")
    wait_for(lambda: dash_duo.driver.execute_script(PLOTLY_OF_THE_PAGE)[1] == ["scatter"],
             what="its line drawn")
    # a device's metric over a range of days (today and the two before: 3 days, 900 s means)
    dash_duo.select_dcc_dropdown("#trend-kind", "a device")
    dash_duo.find_element("#trend-range input[value='custom']").click()
    wait_for(lambda: re.fullmatch(r"\w+ of [\w-]+: [1-9]\d* points in [1-9]\d* series, means over "
                                  r"900 s windows computed by the store",
                                  dash_duo.find_element("#trend-note").text),
             what="a device's trend over three days")
    screenshot(dash_duo, "trends")

    # faults: a leak at cdu-1 turns the bar red on whatever page is open; a dark PDU is
    # listed on the alerts page, and marked on its rack's page
    open_page(dash_duo, "/alerts", "#alerts-table")
    wait_for(lambda: dash_duo.find_element("#no-alerts").text == "No active alerts.",
             what="no alert")
    screenshot(dash_duo, "alerts")
    live_site.call(live_site.simulated.inject("leak", "cdu-1", None, True, None))
    wait_for_state(lambda: any(a["rule"] == "leak" and a["state"] == "firing"
                               for a in api.alerts()), what="the leak firing in the API")
    wait_for(lambda: dash_duo.find_element("#worst-alert").text.startswith("critical: ")
             and "leak" in dash_duo.find_element("#worst-alert").text, 20,
             "the leak in the status bar")
    bar = dash_duo.find_element("#status-bar")
    assert bar.value_of_css_property("border-bottom-color") == RED_CSS
    assert re.match(r"[1-9]\d* critical", dash_duo.find_element("#alert-counts").text)
    live_site.call(live_site.simulated.stop_device("pdu-b02-b"))
    open_page(dash_duo, "/cooling", "#cooling-loops")
    wait_for(lambda: any(r.startswith("cdu-1") and r.endswith("LEAK")
                         for r in table_rows(dash_duo, "#cdus-loop-1")), what="the leak")
    screenshot(dash_duo, "cooling-under-faults")
    open_page(dash_duo, "/alerts", "#alerts-table")
    wait_for(lambda: "pdu-b02-b" in dash_duo.find_element("#alerts-table").text, 20,
             "the unreachable alert in the alerts table")
    wait_for(lambda: any(r.split("+00:00 ", 1)[-1].startswith("fired critical leak")
                         for r in table_rows(dash_duo, "#history-table")),
             what="the leak in the last 24 h's changes")
    assert re.fullmatch(r"Every notification delivered\.|\d+ waiting for delivery, \d+ dead letters?",
                        dash_duo.find_element("#deliveries-summary").text)
    rules = [" ".join(r.split()) for r in table_rows(dash_duo, "#rules-table")]
    assert any(r.startswith("battery_runtime_low aidc fires below 600 s (warning), 300 s "
                            "(critical)") for r in rules), rules
    assert dash_duo.find_element("#rules-table a[href='/runbooks#leak']").text == "leak"
    screenshot(dash_duo, "alerts-under-faults")
    open_page(dash_duo, "/rack/B02", "#rack-devices")
    wait_for(lambda: any(r.startswith(("pdu-b02-b pdu down", "pdu-b02-b pdu stale"))
                         for r in table_rows(dash_duo, "#rack-devices")), 20,
             "B02's dark PDU on its page")
    wait_for(lambda: re.match(r"B pdu-b02-b \S+ unknown ", table_rows(dash_duo, "#rack-feeds")[1]),
             what="its B feed's power unknown, not blank")
    screenshot(dash_duo, "rack-B02-under-faults")
    open_page(dash_duo, "/", "#rack-chart .js-plotly-plot")
    wait_for(lambda: dash_duo.driver.execute_script(
        "const d = document.querySelector('#rack-chart .js-plotly-plot').data;"
        "return d[2] && [...d[2].x].includes('B02')"), what="B02's power a hatched unknown")
    screenshot(dash_duo, "overview-under-faults")
    # the other pages under the same faults, for review (each once its chart or table is in)
    for path, shown in (("/floor", "#floor-map .js-plotly-plot"),
                        ("/power", "#power-sankey .js-plotly-plot"),
                        ("/trends", "#trend-chart .js-plotly-plot"),
                        ("/capacity", "#rack-table"), ("/devices", "#devices-table")):
        open_page(dash_duo, path, shown)
        screenshot(dash_duo, f"{path[1:]}-under-faults")
    # the leak stops: its alert resolves, and the alerts page's last 24 h say so
    live_site.call(live_site.simulated.inject("leak", "cdu-1", None, False, None))
    open_page(dash_duo, "/alerts", "#history-table")
    wait_for(lambda: any(r.split("+00:00 ", 1)[-1].startswith("resolved leak")
                         for r in table_rows(dash_duo, "#history-table")), 30,
             "the leak resolved in the last 24 h's changes")
    assert dash_duo.get_logs() == []


def test_an_operator_acknowledges_and_silences_from_the_page(dash_duo, live_site):
    """With the site's API token only: a wrong one is refused and changes nothing."""
    api = SiteAPI(live_site.runtime)
    dash_duo.start_server(create_app(api, api_token=API_TOKEN), port=free_port())
    open_page(dash_duo, "/alerts", "#alerts-table")
    live_site.call(live_site.simulated.stop_device("pdu-b02-b"))
    wait_for(lambda: "pdu-b02-b" in dash_duo.find_element("#alerts-table").text, 30,
             "the unreachable alert in the alerts table")
    dash_duo.find_element("#alerts-table tbody tr input[type=radio]").click()
    dash_duo.find_element("#operator-name").send_keys("alice")
    dash_duo.find_element("#operator-token").send_keys("not-the-token")

    def result_after(button: str, expected: str) -> str:
        dash_duo.find_element(button).click()
        return wait_for(lambda: (t := dash_duo.find_element("#action-result").text)
                        .startswith(expected) and t, what=expected)

    assert result_after("#ack-selected", "Refused: missing or wrong API token.")
    assert [a["acked_by"] for a in api.alerts()] == [None]
    dash_duo.clear_input("#operator-token")  # as React sees it (clear() alone does not)
    dash_duo.find_element("#operator-token").send_keys(API_TOKEN)
    assert result_after("#ack-selected", "Acknowledged") == \
        "Acknowledged device_unreachable by alice."
    assert [a["acked_by"] for a in api.alerts()] == ["alice"]

    dash_duo.find_element("#silence-matchers").send_keys("device=pdu-b02-b")
    dash_duo.find_element("#silence-comment").send_keys("PDU swap")
    assert result_after("#silence-add", "Silenced device=pdu-b02-b until")
    [silence] = api.silences()
    assert (silence["created_by"], silence["comment"], silence["state"]) == (
        "alice", "PDU swap", "active")
    wait_for_state(lambda: [a["state"] for a in api.alerts()] == ["suppressed"],
                   what="the alert suppressed by the silence")
    wait_for(lambda: "PDU swap" in dash_duo.find_element("#silences-table").text,
             what="the silence listed")
    assert dash_duo.get_logs() == []


def test_a_large_site_charts_the_racks_with_least_headroom_unknown_first():
    """2,000 bars are neither readable nor quick to draw: past CHART_RACKS the chart keeps
    the racks nearest their limit (over it first), and those whose headroom is unknown."""
    from dashboards.pages.overview import CHART_RACKS, rack_figure

    racks = [{"id": f"R{i:04}", "power_kw": 50.0, "headroom_kw": float(i % 97) - 3,
              "limiting": "feed", "design_kw": 80.0, "unknown": [], "complete": True}
             for i in range(500)]
    racks[321] |= {"headroom_kw": None, "limiting": "unknown", "unknown": ["loop"],
                   "complete": False}
    racks[322] |= {"headroom_kw": None, "power_kw": None, "limiting": "unknown",
                   "complete": False}
    racks[97] |= {"power_kw": None, "complete": False}  # an upper bound from its loop: -3 kW
    racks[194] |= {"headroom_kw": 491.0, "unknown": ["feed"], "complete": False}  # at most
    fig = rack_figure(racks)
    shown = list(fig.data[0].x)
    assert len(shown) == CHART_RACKS and shown[:2] == ["R0321", "R0322"]
    # unknown: a hatched bar to the design rating that says what is missing, never a zero
    power, headroom, unknown = fig.data
    assert headroom.y[:2] == (None, None) and power.y[:2] == (50.0, None)
    assert (unknown.x, unknown.y, unknown.text) == (
        ("R0321", "R0322", "R0097"), (30.0, 80.0, 80.0),
        ("unknown: CDU loop, N+1 kept", "unknown: its power",
         "over by at least 3.0 kW (feed); unknown: its power"))
    # a bound is not drawn as the headroom: 491 kW at most is a hatched bar to 80 kW
    few = rack_figure(racks[190:198])
    assert few.data[1].y[4] is None and few.data[2].x == ("R0194",)
    assert (few.data[2].y, few.data[2].text) == (
        (30.0,), ("at most 491.0 kW; unknown: feeds (A/B kept)",))
    assert unknown.marker.pattern.shape == "/"
    by_id = {r["id"]: r["headroom_kw"] for r in racks}
    known = [by_id[i] for i in shown[2:]]
    assert known == sorted(known) and known[0] == -3.0
    assert max(known) <= min(h for i, h in by_id.items() if h is not None and i not in shown)
    assert f"{CHART_RACKS} of 500" in fig.layout.title.text
    assert rack_figure(racks[:8]).layout.title.text in ("", None)  # a small site: every rack
