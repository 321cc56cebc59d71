"""The operators' page in a real browser (Debian chromium, headless) on a live simulated site."""

from __future__ import annotations

import re
import time

from aidc.api import SiteAPI
from aidc.net import free_port
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


def test_overview_shows_live_pue_racks_and_alerts(dash_duo, live_site, tmp_path):
    app = create_app(SiteAPI(live_site.runtime))
    dash_duo.start_server(app, port=free_port())

    # each wait is on what the page shows: a sample stale for a moment on a loaded machine
    # blanks a figure until the next refresh
    pue_text = wait_for(
        lambda: re.fullmatch(r"1\.\d{3}", dash_duo.find_element("#pue-value").text), 20, "a PUE"
    ).group(0)
    truth = live_site.simulated.truth()["pue"]
    assert abs(float(pue_text) - truth) / truth < 0.02
    wait_for(lambda: "category 2" in dash_duo.find_element("#pue-note").text, what="category")

    def a03_row() -> str | None:
        rows = [r.text for r in dash_duo.find_elements("#rack-table tbody tr")[1:]]
        a03 = [r for r in rows if r.startswith("A03")]  # the header row is the first <tr>
        return a03[0] if len(rows) == 8 and a03 and ("feed" in a03[0] or "phase" in a03[0]) \
            else None

    wait_for(a03_row, what="eight racks, A03 bound by its weaker feed")
    wait_for(lambda: dash_duo.find_element("#no-alerts").text == "No active alerts.",
             what="no alert")

    def bridging() -> bool:
        rows = dash_duo.find_elements("#backup-table tbody tr")[1:]
        return len(rows) == 2 and all(r.text.rstrip().endswith("yes") for r in rows)

    wait_for(bridging, what="both backup chains bridging to the generator")

    # a PDU goes dark: the alert shows up on the page without a reload
    live_site.call(live_site.simulated.stop_device("pdu-b02-b"))
    wait_for(lambda: "pdu-b02-b" in dash_duo.find_element("#alerts-table").text, 20,
             "the unreachable alert in the alerts table")
    dash_duo.driver.save_screenshot(str(tmp_path / "overview.png"))

    # the capacity tab: a planner asks whether 6 racks of 120 kW fit in row B
    dash_duo.find_elements(".tab")[1].click()
    dash_duo.wait_for_element("#whatif-run")
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
    def pools() -> list[str] | None:
        """The rows once each source names the other as its worst failure (a sample stale
        for a moment on a loaded machine blanks a pool's figures)."""
        rows = [r.text for r in dash_duo.find_elements("#pool-table tbody tr")[1:]]
        return rows if len(rows) == 3 and "ups-b" in rows[0] and "rect-a" in rows[1] else None

    rows = wait_for(pools, what="the pools with their worst failures")
    assert [p.split()[0] for p in rows] == ["rect-a", "ups-b", "loop-1"]

    # the page validates like the API: a negative rack power is refused, not "fits"
    box = dash_duo.find_element("#whatif-kw")
    box.clear()
    box.send_keys("-1")
    dash_duo.find_element("#whatif-run").click()
    refusal = wait_for(lambda: (t := dash_duo.find_element("#whatif-result").text)
                       .startswith("Cannot check") and t, what="the refusal")
    assert refusal.startswith("Cannot check: kw: Input should be"), refusal
    dash_duo.driver.save_screenshot(str(tmp_path / "capacity.png"))
    assert dash_duo.get_logs() == []  # no errors in the browser console


def test_an_operator_acknowledges_and_silences_from_the_page(dash_duo, live_site):
    """With the site's API token only: a wrong one is refused and changes nothing."""
    api = SiteAPI(live_site.runtime)
    dash_duo.start_server(create_app(api, api_token=API_TOKEN), port=free_port())
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
    from dashboards.app import CHART_RACKS, rack_figure

    racks = [{"id": f"R{i:04}", "power_kw": 50.0, "headroom_kw": float(i % 97) - 3,
              "limiting": "feed"} for i in range(500)]
    racks[321]["headroom_kw"] = None  # unknown: shown, never ranked as a number
    fig = rack_figure(racks)
    shown = list(fig.data[0].x)
    assert len(shown) == CHART_RACKS and shown[0] == "R0321"
    by_id = {r["id"]: r["headroom_kw"] for r in racks}
    known = [by_id[i] for i in shown[1:]]
    assert known == sorted(known) and known[0] == -3.0
    assert max(known) <= min(h for i, h in by_id.items() if h is not None and i not in shown)
    assert f"{CHART_RACKS} of 500" in fig.layout.title.text
    assert rack_figure(racks[:8]).layout.title.text in ("", None)  # a small site: every rack
