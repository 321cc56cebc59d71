"""The REST API and the planners' CLI on a live simulated site (real HTTP, real store)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from aidc.api import SiteAPI
from aidc.core.net import free_port
from aidc.web import WebServer
from tests.conftest import API_TOKEN, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shared_web(shared_live_site):
    """The API of a site that the tests of this module only read (none injects a fault)."""
    server = WebServer(SiteAPI(shared_live_site.runtime), port=free_port(), api_token=API_TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def web(shared_live_site, shared_web):
    shared_live_site.settled()
    return shared_web


@pytest.fixture
def own_web(live_site):
    """The API of a site of the test's own, for a test that changes the site."""
    server = WebServer(SiteAPI(live_site.runtime), port=free_port(), api_token=API_TOKEN)
    server.start()
    yield server
    server.stop()


def get(web, path, timeout=5, **kw):
    return httpx.get(web.url + path.lstrip("/"), timeout=timeout, **kw)


def post(web, path, body, **kw):
    return httpx.post(web.url + path.lstrip("/"), json=body, timeout=5, **kw)


def test_rack_headroom_lists_every_limit(web):
    body = get(web, "/api/v1/racks/A03/headroom").json()
    limits = set(body["limits_kw"]) | set(body["unknown"]) | set(body["not_applicable"])
    assert limits == {"design", "feed", "phase", "upstream", "liquid_rack", "loop", "air",
                      "supply_class"}
    # the weaker feed of A03 (B, 125 A at 415 V 3-phase: 68.27 kW) against its peak power
    assert body["limits_kw"]["feed"] == pytest.approx(68.27 - body["power_kw_peak"], abs=0.05)
    assert {p["id"] for p in body["pools"]} == {"rect-a", "ups-b", "loop-1"}
    assert "Infinity" not in get(web, "/api/v1/racks/A03/headroom").text
    assert get(web, "/api/v1/racks/Z99/headroom").status_code == 404


def test_a_rack_in_detail_names_its_feeds_heat_and_devices(web, shared_live_site):
    def known() -> dict | None:  # a reading stale for a moment on a loaded machine is unknown
        body = get(web, "/api/v1/racks/A03").json()
        feeds_read = all(None not in (f["power_kw"], *f["phase_current_a"].values())
                         for f in body["feeds"])
        complete = feeds_read and body["power_kw"] is not None and not body["missing"]
        return body if complete else None

    body = wait_for(known, what="A03 with every feed read and nothing it needs missing")
    a, b = body["feeds"]
    # feed A: a DC PDU (one current) on rect-a; feed B: 3-phase, 125 A derated to 80 %
    assert (a["side"], a["pdu"], a["upstream"], list(a["phase_current_a"])) == (
        "A", "pdu-a03-a", "rect-a", ["1"])
    assert (b["pdu"], b["upstream"], b["breaker_a"], b["continuous_a"]) == (
        "pdu-a03-b", "ups-b", 125, 100.0)
    assert list(b["phase_current_a"]) == ["1", "2", "3"]
    assert all(isinstance(x, float) for x in b["phase_current_a"].values())
    # A03 sends 85 % of its power to the liquid, the rest to the air
    assert body["liquid_heat_kw"] == pytest.approx(0.85 * body["power_kw"], abs=0.01)
    assert body["air_heat_kw"] == pytest.approx(0.15 * body["power_kw"], abs=0.01)
    assert [d["id"] for d in body["devices"]] == [
        "pdu-a03-a", "pdu-a03-b", "rect-a", "ups-b", "cdu-1", "cdu-2", "sc-a"]
    assert (body["position"], body["loop"]) == (3, "loop-1")
    assert get(web, "/api/v1/racks/Z99").status_code == 404


def test_a_probe_reads_the_device_now_and_shows_what_came_off_the_wire(web):
    for device, series, raw in (("cdu-1", "flow_lpm", r"\[\d+(, \d+)*\]"),  # register words
                                ("ups-b", "battery_charge_pct", r"\d+"),     # an SNMP integer
                                ("sc-a", "soc_pct", r"[\d.]+")):           # an OPC-UA double
        probe = get(web, f"/api/v1/devices/{device}/probe", timeout=15).json()
        assert probe["error"] is None and probe["elapsed_ms"] > 0, probe
        read = {r["series"]: r for r in probe["readings"]}[series]
        assert read["quality"] == "good" and read["value"] == read["read_value"], read
        assert re.fullmatch(raw, read["raw"]), read
    assert get(web, "/api/v1/devices/nope/probe").status_code == 404
    # two at once (clicks in a row, two people): one read of the device, one answer
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: get(web, "/api/v1/devices/pdu-a01-a/probe",
                                           timeout=15).json(), range(2)))
    assert both[0] == both[1] and both[0]["error"] is None


def test_a_dark_device_reads_stale_never_its_last_value_as_current(live_site, own_web):
    """Its last good readings stay listed as what was read, with quality stale; the rack it
    feeds shows that feed's power unknown."""
    def readings() -> dict[str, dict]:
        return {r["series"]: r for r in get(own_web, "/api/v1/devices/pdu-b02-b/readings").json()}

    # good once polled within 2.5 of its 0.5 s intervals (a loaded machine may lag a moment)
    first = wait_for(lambda: (r := readings())["power_kw"]["quality"] == "good" and r,
                     what="pdu-b02-b's power read good")
    assert first["power_kw"]["value"] == first["power_kw"]["read_value"] > 0
    assert {"current_a{phase=1}", "current_a{phase=3}", "energy_kwh"} <= set(first)
    probe = get(own_web, "/api/v1/devices/pdu-b02-b/probe").json()
    assert probe["error"] is None and {r["series"] for r in probe["readings"]} == set(first)
    live_site.call(live_site.simulated.stop_device("pdu-b02-b"))
    # a probe is read again once the last is 2 s old: then it says why it read nothing
    dark = wait_for(lambda: (p := get(own_web, "/api/v1/devices/pdu-b02-b/probe",
                                      timeout=15).json())["error"] and p, what="a failed probe")
    assert dark["readings"] == [] and "no answer" in dark["error"], dark

    power = wait_for(lambda: (r := readings())["power_kw"]["quality"] == "stale" and r,
                     what="pdu-b02-b's power stale")["power_kw"]
    assert power["value"] is None and power["read_value"] > 0
    feed_b = get(own_web, "/api/v1/racks/B02").json()["feeds"][1]
    assert (feed_b["pdu"], feed_b["power_kw"]) == ("pdu-b02-b", None)
    assert set(feed_b["phase_current_a"].values()) == {None}
    assert get(own_web, "/api/v1/devices/nope/readings").status_code == 404

    def fired() -> list[dict]:
        return [h for h in get(own_web, "/api/v1/alerts/history", params={"hours": 1}).json()
                if h["rule"] == "device_unreachable" and h["kind"] == "firing"]

    [change] = wait_for(fired, what="the PDU's alert in the history")
    assert change["labels"]["device"] == "pdu-b02-b" and change["severity"] == "critical"
    assert change["at"].endswith("+00:00")  # ISO 8601 UTC, as every time in the API
    bad = get(own_web, "/api/v1/alerts/history", params={"hours": "0"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("hours: expected more")
    assert isinstance(get(own_web, "/api/v1/notifications").json(), list)


def test_metrics_parse_as_prometheus_does_in_base_units(web, shared_live_site):
    """`/metrics` as Prometheus's own parser reads it: counters end in `_total`, times are in
    seconds (a poll of a device on this host takes well under its timeout; in milliseconds
    it would not), and every device has its series."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(get(web, "/metrics").text)}
    assert not [name for name in families if "_ms" in name]
    counters = {f.name: f for f in families.values() if f.type == "counter"}
    assert set(counters) == {"aidc_polls", "aidc_poll_errors", "aidc_spool_dropped_samples",
                             "aidc_store_rejected_samples", "aidc_model_ticks",
                             "aidc_poll_intervals_missed"}
    delays = families["aidc_poll_start_delay_seconds"]
    assert delays.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in delays.samples if s.name.endswith("_bucket")}
    assert list(buckets)[-1] == "+Inf" and list(buckets.values()) == sorted(buckets.values())
    count = next(s.value for s in delays.samples if s.name.endswith("_count"))
    assert buckets["+Inf"] == count > 0
    assert all(s.name.endswith("_total") for f in counters.values() for s in f.samples)
    site = shared_live_site.runtime.site
    polls = {s.labels["device"]: s.value for s in families["aidc_poll_duration_seconds"].samples}
    assert set(polls) == {d.id for d in site.devices}
    assert all(0 < polls[d.id] < site.timeout_s(d) for d in site.devices)
    assert families["aidc_model_tick_seconds"].samples[0].value < site.model.tick_s
    # a scraper that asks for OpenMetrics gets it
    om = get(web, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")


def test_the_console_scripts_come_compressed_and_cached_for_a_year(web):
    """A cold first render fetches the Dash bundles: compressed as the browser accepts, and
    fingerprinted, so that a browser keeps them until aidc's next release."""
    import re

    page = get(web, "/", headers={"Accept-Encoding": "gzip, br"})
    scripts = re.findall(r'src="(/_dash-component-suites/[^"]+)"', page.text)
    assert len(scripts) >= 5
    for src in scripts:
        r = get(web, src, headers={"Accept-Encoding": "gzip, br"})
        assert r.headers["content-encoding"] in ("br", "gzip"), src
        assert r.num_bytes_downloaded < 0.6 * len(r.content), src
        assert "max-age=31536000" in r.headers["cache-control"], src


def test_every_rule_that_can_fire_has_a_runbook(web):
    import ast

    from alerts.rules import rule_pack

    source = (ROOT / "alerts" / "rules.py").read_text()
    fired = {node.args[1].value for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call)
             and getattr(node.func, "id", "") in ("_condition", "_rack_column")
             and isinstance(node.args[1], ast.Constant)}  # fmt: skip
    over_a_metric = {name for name, rule in rule_pack().items() if rule.metric}
    assert len(fired) >= 12 and len(over_a_metric) >= 7
    assert fired | over_a_metric == set(rule_pack()) and not fired & over_a_metric
    page = get(web, "/runbooks")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for rule in rule_pack():
        assert f'<section id="{rule}">' in page.text
    # each as the site has it: the demo keeps the pack's levels and delays
    assert "fires below 600 s (warning), 300 s (critical)" in page.text
    flow_low = ("cdu flow_lpm; fires below its min_flow_lpm (critical); clears 5% inside it; "
                "after 30 s. Value in L/min.")  # each CDU against its own
    assert flow_low in page.text
    # and so does the API, for scripts
    rules = {r["name"]: r for r in get(web, "/api/v1/rules").json()}
    assert rules.keys() == set(rule_pack()) and {r["source"] for r in rules.values()} == {"aidc"}
    low = rules["battery_runtime_low"]
    assert (low["warning"], low["critical"], low["fires"], low["unit"]) == (600, 300, "below", "s")
    assert rules["coolant_flow_low"]["settings"] == flow_low
    assert rules["coolant_flow_low"]["critical"] == "min_flow_lpm"


def test_headroom_filters_by_row_and_min_kw(web):
    all_racks = get(web, "/api/v1/headroom").json()["racks"]
    row_b = get(web, "/api/v1/headroom", params={"row": "B", "min_kw": 20}).json()["racks"]
    expected = {r["id"] for r in all_racks if r["row"] == "B" and r["headroom_kw"] >= 20}
    assert {r["id"] for r in row_b} == expected and expected  # not an empty comparison
    bad = get(web, "/api/v1/headroom", params={"min_kw": "lots"})
    assert bad.status_code == 400 and "min_kw" in bad.json()["error"]


def test_whatif_answers_and_rejects_bad_input(web):
    # unknown while a sample it needs is stale for a moment (a loaded machine): the numbers
    # are checked on an answer from complete data
    w = wait_for(lambda: (w := post(web, "/api/v1/whatif", {
        "row": "B", "racks": 6, "kw": 120, "capture": 0.9}).json())["first_to_break"] != "unknown"
        and w, what="a what-if on complete data")
    # the loop keeps ~200 kW of heat with a CDU in reserve: one 120 kW rack (108 kW) fits
    assert (w["feasible"], w["racks_fit"], w["first_to_break"]) == (False, 1, "loop")
    assert w["not_checked"] == ["feed", "air"] and "feed" not in w["racks_fit_by_limit"]
    small = post(web, "/api/v1/whatif", {"row": "A", "racks": 2, "kw": 10}).json()
    assert small["feasible"] and small["racks_fit"] == 2
    r = post(web, "/api/v1/whatif", {"row": "A", "racks": 0, "kw": 10})
    assert r.status_code == 400 and r.json()["error"].startswith("racks:")
    r = post(web, "/api/v1/whatif", {"row": "Q", "racks": 1, "kw": 10})
    assert r.status_code == 404 and r.json() == {"error": "no row 'Q' (rows: A, B)"}


def test_whatif_holds_after_a_source_failure(web):
    """12 racks of 45 kW at capture 0.05 in row B would put ~1,000 kW on one source once
    the other fails: refused by upstream, with as many racks as the failover pool holds."""
    w = post(web, "/api/v1/whatif", {"row": "B", "racks": 12, "kw": 45, "capture": 0.05}).json()
    assert (w["feasible"], w["first_to_break"]) == (False, "upstream")
    pools = {p["id"]: p for p in get(web, "/api/v1/headroom").json()["pools"]}
    # after ups-b fails, rect-a (720 kW usable) carries every rack: ~460 kW, ~260 kW left
    it_kw = sum(r["power_kw_peak"] for r in get(web, "/api/v1/racks").json())
    assert pools["rect-a"]["worst_failure"] == "ups-b"
    assert pools["rect-a"]["left_kw"] == pytest.approx(720 - it_kw, abs=15)
    assert w["racks_fit"] * 45 <= w["source_pool_kw"] < (w["racks_fit"] + 1) * 45
    # (asked a tick apart: the racks swing in between)
    assert w["source_pool_kw"] == pytest.approx(pools["rect-a"]["left_kw"], abs=15)


def test_backup_chain_bridges_to_the_generator(web):
    chains = {b["supercap"]: b for b in get(web, "/api/v1/backup").json()}
    a = chains["sc-a"]
    # 20 F from 392 V down to 280 V: 1/2 x 20 x (392^2 - 280^2) = 752.64 kJ
    assert a["usable_energy_kj"] == pytest.approx(752.64, abs=0.01)
    assert a["supercap_s"] == pytest.approx(0.95 * 752.64 / a["load_kw"], rel=1e-3)
    assert a["bridges"] and a["shortfall_s"] == 0 and a["required_s"] == 10


def test_acknowledge_needs_the_token(live_site, own_web):
    web = own_web
    live_site.call(live_site.simulated.stop_device("pdu-b04-b"))
    alerts = wait_for(lambda: get(web, "/api/v1/alerts").json(), what="an alert")
    fp = alerts[0]["fingerprint"]
    assert post(web, f"/api/v1/alerts/{fp}/ack", {"by": "ops"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert post(web, f"/api/v1/alerts/{fp}/ack", {"by": "ops"}, headers=wrong).status_code == 401
    ok = post(web, f"/api/v1/alerts/{fp}/ack", {"by": "ops"},
              headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert ok.status_code == 200 and ok.json()["acked_by"] == "ops"
    assert get(web, "/api/v1/alerts").json()[0]["acked_by"] == "ops"
    live_site.call(live_site.simulated.start_device("pdu-b04-b"))
    wait_for(lambda: get(web, "/api/v1/alerts").json() == [], what="the alert to resolve")


def test_a_silence_holds_the_page_until_it_is_expired(live_site, own_web, tmp_path, monkeypatch):
    """Through the CLI, as an operator would: the leak still shows, silenced, and pages only
    once the silence is expired."""
    url, pages = own_web.url, live_site.receiver
    monkeypatch.setenv("AIDC_TEST_TOKEN", API_TOKEN)
    token = ["--url", url, "--token", "env:AIDC_TEST_TOKEN", "--by", "alice"]
    added = cli("silence", "add", *token, "--match", "device=cdu-1", "--match", "rule=~leak|x",
                "--duration", "2h", "--comment", "pump swap, wet floor expected")
    assert added.returncode == 0, added.stderr
    silence_id = added.stdout.split()[0]
    assert "active" in added.stdout and "device=cdu-1 rule=~leak|x" in added.stdout
    assert post(own_web, "/api/v1/silences", {"matchers": ["device=cdu-1"], "duration_s": 60,
                                              "created_by": "eve", "comment": "x"}
                ).status_code == 401  # fmt: skip

    live_site.call(live_site.simulated.inject("leak", "cdu-1", None, True, None))
    try:
        leak = wait_for(lambda: [a for a in get(own_web, "/api/v1/alerts").json()
                                 if a["rule"] == "leak"], what="the leak, silenced")  # fmt: skip
        assert (leak[0]["state"], leak[0]["suppressed_by"]) == ("suppressed", f"silence {silence_id}")
        assert "leak" not in {b["rule"] for b in pages.bodies()}
        listed = cli("silence", "list", "--url", url)
        assert listed.returncode == 0 and silence_id in listed.stdout

        expired = cli("silence", "expire", *token, silence_id)
        assert expired.returncode == 0 and "expired by alice" in expired.stdout
        wait_for(lambda: "leak" in {b["rule"] for b in pages.bodies()}, what="the leak's page")
        again = cli("silence", "expire", *token, silence_id)
        assert again.returncode == 2 and "404" in again.stderr
    finally:
        live_site.call(live_site.simulated.inject("leak", "cdu-1", None, False, None))
    [listed] = get(own_web, "/api/v1/silences").json()
    assert (listed["state"], listed["created_by"], listed["expired_by"]) == (
        "expired", "alice", "alice")  # the audit trail stays
    bad = cli("silence", "add", *token, "--match", "device", "--duration", "1h", "--comment", "c")
    assert bad.returncode == 2 and "is not a matcher" in bad.stderr


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aidc.cli", *args],
                          capture_output=True, text=True, check=False)


def strict(text: str):
    """JSON as any parser reads it: a bare NaN or Infinity is an error, not a number."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_silence_starts_at_an_iso_8601_time_with_its_zone(web):
    """One time format in the API, in as out: a silence's start is ISO 8601 with its zone;
    a time without a zone, unix seconds and a time past 2099 are refused."""
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    body = {"matchers": ["device=nowhere"], "duration_s": 3600, "created_by": "alice",
            "comment": "planned"}
    r = post(web, "/api/v1/silences", body | {"starts_at": "2030-01-01T01:00:00+01:00"},
             headers=auth)
    assert r.status_code == 201, r.text
    assert (r.json()["starts_at"], r.json()["ends_at"], r.json()["state"]) == (
        "2030-01-01T00:00:00+00:00", "2030-01-01T01:00:00+00:00", "pending")
    for wrong, words in (("2030-01-01T00:00:00", "timezone"), (1893456000, "ISO 8601"),
                         ("2100-01-01T00:00:00Z", "1970 to 2099")):
        r = post(web, "/api/v1/silences", body | {"starts_at": wrong}, headers=auth)
        assert r.status_code == 400 and "starts_at" in r.json()["error"], r.text
        assert words in r.json()["error"]


def test_cli_headroom_and_whatif_read_the_store(shared_live_site, tmp_path):
    shared_live_site.settled()
    common = ["--site", str(ROOT / "site_configs" / "demo.yaml"),
              "--data-dir", str(shared_live_site.data_dir)]

    def store_complete() -> bool:
        """The CLI reads the store, which a loaded machine may leave a flush behind."""
        racks = strict(cli("headroom", *common, "--json").stdout)["racks"]
        return all(r["complete"] for r in racks)

    wait_for(store_complete, what="every rack complete in the store")
    out = cli("headroom", *common, "--row", "A")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[1:5]] == ["A01", "A02", "A03", "A04"]
    assert "loop loop-1:" in out.stdout and "kW of heat left keeping" in out.stdout
    assert "rectifier rect-a:" in out.stdout and "left with ups-b lost" in out.stdout
    body = strict(cli("headroom", *common, "--json").stdout)
    assert {r["id"] for r in body["racks"]} == {"A01", "A02", "A03", "A04", "B01", "B02",
                                                "B03", "B04"}
    assert body["racks"][0]["not_applicable"] == ["supply_class"]  # A01 has its manifold
    ask = [*common, "--row", "B", "--racks", "6", "--kw", "120", "--capture", "0.9"]
    w = cli("whatif", *ask)
    assert w.returncode == 1 and "does NOT fit" in w.stdout and "first to break: loop" in w.stdout
    assert "feed         not checked" in w.stdout
    # the same answer and exit code as JSON, which any parser reads
    wj = cli("whatif", *ask, "--json")
    assert wj.returncode == 1 and strict(wj.stdout)["first_to_break"] == "loop"
    # one small rack fits: exit 0 once every limit is known in the store (a loaded machine
    # may leave one series a flush behind for a moment; unknown never passes as a fit)
    wait_for(lambda: cli("whatif", *common, "--row", "B", "--racks", "1", "--kw", "5"
                         ).returncode == 0, what="one 5 kW rack to fit")
    # a mistyped data directory: exit 2, the path named, and no store made there
    typo = tmp_path / "dta"
    bad = cli("headroom", "--site", str(ROOT / "site_configs" / "demo.yaml"), "--data-dir", str(typo))
    assert bad.returncode == 2 and f"no store at {typo / 'aidc.sqlite'}" in bad.stderr
    assert not typo.exists()


def test_a_store_held_by_another_process_stops_aidc_run_in_one_line(tmp_path):
    """Another process holds the write lock of the store's file (a second `aidc run` on the
    same data directory, mid-transaction): the run that cannot make its store says so."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    holder = sqlite3.connect(data / "aidc.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        out = cli("run", "--site", str(ROOT / "site_configs" / "demo.yaml"), "--data-dir",
                  str(data), "--web-port", str(free_port()))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"error: {data / 'aidc.sqlite'}: database is locked" in out.stderr


def test_demo_signs_with_a_secret_from_env_or_file_never_the_command_line(tmp_path, monkeypatch):
    from aidc.cli import _secret_arg

    monkeypatch.setenv("DEMO_HOOK_KEY", "k-from-env")
    (tmp_path / "key").write_text("k-from-file\n")
    assert _secret_arg("env:DEMO_HOOK_KEY") == "k-from-env"
    assert _secret_arg(f"file:{tmp_path / 'key'}") == "k-from-file"
    hook = ["demo", "--data-dir", str(tmp_path / "d"), "--webhook", "http://127.0.0.1:9/h"]
    typed = cli(*hook, "--webhook-secret", "hunter2")
    assert typed.returncode == 2 and "env:NAME or file:PATH" in typed.stderr
    assert "hunter2" not in typed.stderr
    unset = cli(*hook, "--webhook-secret", "env:AIDC_NOT_SET_ANYWHERE")
    assert unset.returncode == 2 and "AIDC_NOT_SET_ANYWHERE is not set" in unset.stderr
    alone = cli("demo", "--data-dir", str(tmp_path / "d"), "--webhook-secret", "env:X")
    assert alone.returncode == 2 and "give both" in alone.stderr
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_interval_pue_from_energy_counters(tmp_path):
    """Hand-written counter readings in a real store; PUE from their growth."""
    from aidc.core.config import load_site
    from aidc.core.metrics import Sample
    from aidc.runtime import Runtime

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    runtime = Runtime(site, tmp_path)
    now = time.time()
    pdus = [p.id for p in site.devices_of("pdu")]

    def counter(kind, device, kwh_then, kwh_now):
        # read once long before the hour (not counted), once in the minute before it or the
        # first minute of it (the hour starts at a whole minute): counted from then
        return [Sample(kind, {"device": device}, "energy_kwh", kwh_then - 100, now - 5000),
                Sample(kind, {"device": device}, "energy_kwh", kwh_then, now - 3650),
                Sample(kind, {"device": device}, "energy_kwh", kwh_now, now - 600)]

    samples = [s for p in pdus for s in counter("pdu", p, 1000.0, 1025.0)]  # 16 x 25 kWh
    samples += counter("meter", "meter-main", 5000.0, 5460.0)  # 460 kWh
    # the cooling meter was replaced: its counter restarted from 0 and reads 32 kWh since
    samples += counter("meter", "meter-cooling", 900.0, 32.0)
    runtime.store.write(samples)
    api = SiteAPI(runtime)
    body = api.interval_pue("1h")
    # IT = 16 x 25 = 400 kWh; PUE = 460 / 400 = 1.15; cooling pPUE = (400 + 32) / 400 = 1.08
    assert (body["it_kwh"], body["facility_kwh"], body["pue"]) == (400.0, 460.0, 1.15)
    assert body["cooling_ppue"] == 1.08 and body["missing"] == [] and body["pue_category"] == 2
    assert body["note"] is None  # 400 kWh >> 100 steps x 16 PDUs x 0.1 kWh = 160 kWh
    # asked again at once (every open overview asks each 30 s): the same read, not another
    runtime.store.write([Sample("meter", {"device": "meter-main"}, "energy_kwh", 9000.0, now)])
    assert api.interval_pue("1h") is body
    with pytest.raises(ValueError, match="1h, 24h, 30d"):
        api.interval_pue("1y")


def test_interval_pue_waits_for_enough_energy(tmp_path):
    """Minutes of a demo: the PDUs' 0.1 kWh steps would dominate the ratio. No number yet."""
    from aidc.core.config import load_site
    from aidc.core.metrics import Sample
    from aidc.runtime import Runtime

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    runtime = Runtime(site, tmp_path)
    now = time.time()
    samples = [Sample("pdu", {"device": p.id}, "energy_kwh", kwh, now - dt)
               for p in site.devices_of("pdu") for kwh, dt in ((1000.0, 130), (1000.2, 10))]
    samples += [Sample("meter", {"device": m}, "energy_kwh", kwh, now - dt)
                for m in ("meter-main", "meter-cooling") for kwh, dt in ((50.0, 130), (50.5, 10))]
    runtime.store.write(samples)
    body = SiteAPI(runtime).interval_pue("1h")
    # IT counted 16 x 0.2 = 3.2 kWh; the counters step by 16 x 0.1 = 1.6 kWh in all
    assert body["pue"] is None and body["it_kwh"] == 3.2
    assert body["note"] == ("not enough energy counted yet: 3.20 kWh of IT energy against "
                            "counters that step by 1.6 kWh in all")


def test_interval_pue_says_what_is_missing(tmp_path):
    from aidc.core.config import load_site
    from aidc.runtime import Runtime

    api = SiteAPI(Runtime(load_site(ROOT / "site_configs" / "demo.yaml"), tmp_path))
    body = api.interval_pue("30d")
    assert body["pue"] is None and "meter-main.energy_kwh" in body["missing"]
    assert len(body["missing"]) == 16 + 2


def test_the_api_and_the_cli_give_every_rack_the_same_numbers(tmp_path, monkeypatch):
    """A steady site (no GPU swing): the REST API (the runtime's model) and `aidc headroom
    --json` (the same model evaluated from the store, in another process) agree on every
    rack's limits, binding limit and pools."""
    import simulators.physics
    from aidc.api import pool_json
    from tests.conftest import start_live_site

    monkeypatch.setattr(simulators.physics, "SWING_FRACTION", 0.0)
    live = start_live_site(tmp_path / "data")
    api = SiteAPI(live.runtime)

    def both_complete():
        """The CLI's answer and the API's right after it, once both are complete: a loaded
        machine may leave one sample stale for a tick, on either side."""
        out = subprocess.run(
            [sys.executable, "-m", "aidc.cli", "headroom", "--json", "--site",
             str(ROOT / "site_configs" / "demo.yaml"), "--data-dir", str(live.data_dir)],
            capture_output=True, text=True, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr
        cli, racks = json.loads(out.stdout), api.racks()
        pools = {p.id: pool_json(p) for p in live.runtime.status.pools}
        complete = all(r["complete"] for r in [*cli["racks"], *racks])
        return complete and (cli, {r["id"]: r for r in racks}, pools)

    try:
        wait_for(lambda: live.runtime.ticks >= 6, what="a few ticks in the store")
        cli, by_id, pools = wait_for(both_complete, timeout_s=60,
                                     what="complete answers from the CLI and the API")
    finally:
        live.stop()
    assert len(cli["racks"]) == 8
    for rack in cli["racks"]:
        mine = by_id[rack["id"]]
        assert (rack["limiting"], rack["complete"], rack["unknown"], rack["not_applicable"]) == (
            mine["limiting"], mine["complete"], mine["unknown"], mine["not_applicable"])
        assert rack["limits_kw"] == pytest.approx(mine["limits_kw"], abs=0.05)
        assert rack["headroom_kw"] == pytest.approx(mine["headroom_kw"], abs=0.05)
    for pool in cli["pools"]:
        for key in ("capacity_kw", "left_kw", "left_normal_kw"):
            assert pool[key] == pytest.approx(pools[pool["id"]][key], abs=0.1), (pool["id"], key)
        assert pool["worst_failure"] == pools[pool["id"]]["worst_failure"]


def test_healthz_is_degraded_while_an_input_has_never_read_good(tmp_path):
    """A rule whose input never arrives can neither fire nor clear: /healthz must not say
    "ok" then. Past the start-up grace, series the model needed and never once read good
    make it "degraded" and are named; one good read each and it is "ok" again."""
    from aidc.core.config import load_site
    from aidc.runtime import Runtime, TickView

    runtime = Runtime(load_site(ROOT / "site_configs" / "demo.yaml"), tmp_path)
    runtime.view = TickView(runtime.model.evaluate({}, time.time()),  # every input missing
                            runtime.evaluator.alerts())
    api = SiteAPI(runtime)
    assert api.health()[1]["status"] == "ok"  # still starting: the grace
    runtime.started_at -= 600
    ok, body = api.health()
    assert ok and body["status"] == "degraded" and "pdu-a01-a.power_kw" in body["inputs_never_read"]
    runtime.ever_good |= {tuple(m.split(".", 1)) for m in runtime.status.missing}
    assert api.health()[1]["status"] == "ok"
    runtime.writer.close()
    runtime.outbox.close()
