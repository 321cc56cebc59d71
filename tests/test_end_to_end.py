"""The whole simulated site, end to end, over real protocols into a real store.

Simulators serve every device of site_configs/demo.yaml on free ports on 127.0.0.1 (SNMP for
PDUs and the UPS, Modbus TCP for CDUs, rectifier and meters, OPC-UA for supercaps); the
runtime polls them, writes the store, runs the model and sends alert webhooks to a real
HTTP receiver; the REST API is read over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aidc.api import SiteAPI
from aidc.core.config import Alerts, Defaults, Model, Route, RuleSettings, Site, Webhook, load_site
from aidc.core.config import Store as StoreConfig
from aidc.core.net import free_port
from aidc.runtime import Runtime
from aidc.web import WebServer
from simulators.site import SimulatedSite, on_free_ports
from tests.conftest import Relay

DEMO = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"


def fast_site(receiver_url: str, store: dict | None = None) -> Site:
    """The demo site on free ports, polled fast, with a webhook to the test's receiver."""
    site = on_free_ports(load_site(DEMO))
    return site.model_copy(
        update={
            "defaults": Defaults(poll_s=0.5, timeout_s=2.0),  # patient: a loaded machine
            "model": Model(tick_s=0.5, pue_target=1.25),
            "store": StoreConfig(flush_s=0.3, **(store or {})),
            "alerts": Alerts(unreachable_intervals=3, webhooks=[Webhook(url=receiver_url)]),
        }
    )


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


def alerts_for(receiver, device: str, status: str) -> list[dict]:
    return [
        b for b in receiver.bodies()
        if b["labels"].get("device") == device and b["status"] == status
    ]


async def scraped_metrics(web) -> dict[tuple[str, tuple], float]:
    """/metrics as Prometheus parses it, by (name, labels)."""
    scrape = await asyncio.to_thread(httpx.get, web.url + "metrics")
    assert scrape.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(s.labels.items())): s.value
            for family in text_string_to_metric_families(scrape.text) for s in family.samples}


async def run_site(site: Site, data_dir: Path, check) -> None:
    """Start simulators, runtime and web server; run ``check``; stop everything."""
    simulated = SimulatedSite(site)
    await simulated.start()
    runtime = Runtime(site, data_dir)
    web = WebServer(SiteAPI(runtime), port=free_port())
    web.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await check(simulated, runtime, web)
    finally:
        stop.set()
        await task
        web.stop()
        await simulated.stop()


async def eventually(read, done, what: str, timeout_s: float = 30):
    """What ``read()`` gives once ``done`` holds of it."""
    deadline = time.monotonic() + timeout_s
    while not done(answer := await read()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for " \
            f"{what}: {str(answer)[:500]}"
        await asyncio.sleep(0.1)
    return answer


async def get_json(url: str):
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(url)
        r.raise_for_status()
        return r.json()


async def check_readings_and_pue(simulated, runtime, web, started: float) -> None:
    await wait_until(lambda: runtime.ticks >= 2 and runtime.status and runtime.status.pue
                     and all(r.complete for r in runtime.status.racks),
                     30, "two model ticks with a PUE and every rack's headroom complete")
    def complete(path: str, done):
        """The API's answer once ``done`` holds: a loaded machine may leave one sample stale
        for a tick, and the numbers below are checked on a complete one."""
        return eventually(lambda: get_json(web.url + path), done, f"{path} complete")

    site = await complete("api/v1/site", lambda b: b["pue"] is not None)
    truth = simulated.truth()
    assert site["pue_category"] == 2  # IT measured at the PDU outputs
    assert abs(site["pue"] - truth["pue"]) / truth["pue"] < 0.02, (site, truth)
    assert abs(site["it_kw"] - truth["it_kw"]) / truth["it_kw"] < 0.02

    racks = {r["id"]: r for r in await complete(
        "api/v1/racks", lambda b: all(r["complete"] and r["power_kw"] is not None for r in b))}
    assert set(racks) == {"A01", "A02", "A03", "A04", "B01", "B02", "B03", "B04"}
    for rack_id, true_kw in truth["rack_power_kw"].items():
        assert abs(racks[rack_id]["power_kw"] - true_kw) / true_kw < 0.05
        assert racks[rack_id]["limiting"] is not None
    # A03: design 80 kW, but its B feed (125 A x 415 V x sqrt(3) x 0.95 x 0.8 = 68.27 kW) is
    # the weaker one: the feed limit (or, equal on a balanced feed, its phase limit) binds.
    a03 = racks["A03"]
    assert a03["limiting"] in ("feed", "phase") and a03["complete"]
    assert abs(a03["limits_kw"]["feed"] - (68.27 - a03["power_kw_peak"])) < 0.1
    # on a balanced feed the phase limit is the feed limit, but for the 0.1 A steps of the
    # currents and for the rack's swing between the poll's GET (power) and its GETBULK
    # (phase currents): up to ~0.5 kW/s on A03 while the machine is loaded
    assert abs(a03["limits_kw"]["phase"] - a03["limits_kw"]["feed"]) < 1.0
    assert a03["headroom_kw"] == min(a03["limits_kw"]["feed"], a03["limits_kw"]["phase"])

    # readings arrive in the store through each of the three protocols, and derived values
    expected = [
        ("pdu", "power_kw", "snmp"),
        ("ups", "output_power_kw", "snmp"),
        ("cdu", "supply_temp_c", "modbus"),
        ("meter", "power_kw", "modbus"),
        ("supercap", "voltage_v", "opcua"),
        ("rack", "headroom_kw", "derived"),
        ("site", "pue", "derived"),
    ]

    def missing_series() -> list[str]:
        found = {(m, f): runtime.store.history(m, f, started, time.time()) for m, f, _ in expected}
        return [f"{m}.{f} ({p})" for m, f, p in expected
                if not (found[m, f] and all(s.points for s in found[m, f]))]

    await wait_until(lambda: not missing_series(), 30, "every protocol's series in the store")
    now = time.time()
    # the CDU serves 30 C facility water + 5 K approach = 35.0 C supply, at 0.1 C resolution
    cdu = runtime.store.history("cdu", "supply_temp_c", started, now, where={"device": "cdu-1"})
    assert [v for _, v in cdu[0].points][-1] == 35.0
    # supercap at 98 % of 400 V = 392 V
    sc = runtime.store.history("supercap", "voltage_v", started, now, where={"device": "sc-a"})
    assert abs(sc[0].points[-1][1] - 392.0) < 0.01


def test_demo_site_end_to_end_embedded_store(tmp_path, receiver):
    site = fast_site(receiver.url)
    chat = Webhook(name="chat", url=receiver.url + "?to=chat")  # is sent the warnings only
    site = site.model_copy(update={"alerts": site.alerts.model_copy(update={
        "webhooks": [*site.alerts.webhooks, chat],
        "routes": [Route(matchers=["severity=warning"], receivers=["chat"]),
                   Route(receivers=[site.alerts.webhooks[0].name])]})})
    started = time.time()

    async def check(simulated, runtime, web):
        await check_readings_and_pue(simulated, runtime, web, started)

        assert (await get_json(web.url + "healthz"))["status"] == "ok"
        # one PDU goes dark: unreachable after 3 missed polls, a webhook fires
        await simulated.stop_device("pdu-a01-a")
        await wait_until(lambda: alerts_for(receiver, "pdu-a01-a", "firing"), 30, "firing webhook")
        fired = alerts_for(receiver, "pdu-a01-a", "firing")[0]
        assert fired["rule"] == "device_unreachable" and fired["version"] == "3"
        a01 = next(r for r in site.racks if r.id == "A01")
        assert fired["where"] == {"site": site.site, "room": a01.room, "row": "A", "rack": "A01",
                                  "device": "pdu-a01-a"}  # fmt: skip
        assert fired["affected"] == {"racks": ["A01"], "loops": [a01.loop]}
        assert (fired["unit"], fired["threshold"]) == ("polls", 3)
        assert runtime.health["pdu-a01-a"].failures >= 3
        racks = {r["id"]: r for r in await get_json(web.url + "api/v1/racks")}
        assert racks["A01"]["power_kw"] is None  # its A feed is unknown: never guessed
        alerts = await get_json(web.url + "api/v1/alerts")
        assert [a["labels"]["device"] for a in alerts] == ["pdu-a01-a"]

        # it comes back: the resolved notice follows, once
        await simulated.start_device("pdu-a01-a")
        await wait_until(lambda: alerts_for(receiver, "pdu-a01-a", "resolved"), 30, "resolved webhook")
        # both notifications were delivered: the outbox, the only sender, empties (nothing
        # waits, nothing was refused), so no duplicate can follow
        metrics = await scraped_metrics(web)
        deadline = time.monotonic() + 30
        while metrics["aidc_notifier_backlog", ()] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            metrics = await scraped_metrics(web)
        assert metrics["aidc_notifier_backlog", ()] == metrics["aidc_notifier_dead_letters", ()] == 0, (
            await get_json(web.url + "api/v1/notifications"))  # what waits, if anything
        assert metrics["aidc_device_up", (("device", "pdu-a01-a"),)] == 1
        assert len(alerts_for(receiver, "pdu-a01-a", "firing")) == 1
        assert len(alerts_for(receiver, "pdu-a01-a", "resolved")) == 1
        [resolved] = alerts_for(receiver, "pdu-a01-a", "resolved")
        assert resolved["summary"].startswith("resolved after ") and resolved["duration_s"] > 0
        assert not [b for b in receiver.bodies() if b["labels"].get("device") != "pdu-a01-a"]
        assert {r["path"] for r in receiver.requests} == {"/hook"}  # critical: not to chat

    asyncio.run(run_site(site, tmp_path, check))


def test_demo_site_end_to_end_influxdb(tmp_path, receiver, influxd):
    site = fast_site(receiver.url, {"backend": "influxdb", "url": influxd.url, "database": "e2e"})
    started = time.time()

    async def check(simulated, runtime, web):
        await check_readings_and_pue(simulated, runtime, web, started)
        assert runtime.store.version.startswith("1.")
        assert runtime.writer.store_up

    asyncio.run(run_site(site, tmp_path, check))


def test_a_slow_store_pages_as_behind_and_resolves_once_caught_up(tmp_path, receiver, influxd):
    """InfluxDB behind a relay that holds each write 0.5 s: it takes every batch, within its
    timeout, but slower than the site makes them. ``store_behind`` pages at the site's 4 s
    level while the store stays up (no ``store_unavailable``: nothing spools); /healthz and
    /metrics say how far behind; the relay made fast, the writer catches up, the alert
    resolves, and nothing was dropped or refused on the way."""
    relay = Relay()

    def paged(status: str) -> list[dict]:
        return [b for b in receiver.bodies() if b["rule"] == "store_behind"
                and b["status"] == status]

    async def check(simulated, runtime, web):
        await wait_until(lambda: runtime.ticks >= 2 and runtime.writer.store_up, 30,
                         "two model ticks, the store written")
        before = len(paged("firing"))  # (none, unless a loaded machine stalled a write)
        relay.delay_s = 0.5
        await wait_until(lambda: len(paged("firing")) > before, 60, "the store_behind page")
        fired = paged("firing")[-1]
        assert fired["severity"] == "warning" and fired["value"] > 4 and fired["unit"] == "s"
        # the lag rises and falls as each slow write ends: read until each says it
        health = await eventually(lambda: get_json(web.url + "healthz"),
                                  lambda h: h["store_behind_s"] > 4, "/healthz behind")
        assert health["store_up"] and health["spooled_samples"] == 0
        await eventually(lambda: scraped_metrics(web),
                         lambda m: m[("aidc_store_behind_seconds", ())] > 4, "/metrics behind")
        assert not any(a.rule == "store_unavailable" for a in runtime.evaluator.active_alerts())
        relay.delay_s = 0.0
        await wait_until(lambda: len(paged("resolved")) == len(paged("firing")), 60,
                         "its resolved notice")
        assert (runtime.writer.dropped_samples, runtime.writer.rejected_samples) == (0, 0)

    async def main():
        await relay.start(influxd.port)
        site = fast_site(receiver.url, {"backend": "influxdb", "database": "slow",
                                        "url": f"http://127.0.0.1:{relay.port}",
                                        "batch_size": 100})
        alerts = site.alerts.model_copy(update={"rules": {"store_behind": RuleSettings(
            warning=4, critical=600)}})
        try:
            await run_site(site.model_copy(update={"alerts": alerts}), tmp_path, check)
        finally:
            await relay.stop()

    asyncio.run(main())


def test_a_dark_modbus_gateway_pages_once_for_its_units(tmp_path, receiver):
    """Both CDUs and the manifold meter behind one Modbus gateway, as the simulator serves
    them (one server, a unit id each); the gateway goes dark: one page, for the gateway,
    its units' alerts listed as its symptoms; back: one resolved notice."""
    site = fast_site(receiver.url)
    units = ["cdu-1", "cdu-2", "mf-a01"]
    port = site.device(units[0]).port
    devices = [d.model_copy(update={"port": port, "modbus": d.modbus.model_copy(
                   update={"unit_id": units.index(d.id) + 1})}) if d.id in units else d
               for d in site.devices]  # fmt: skip
    site = site.model_copy(update={"devices": devices})
    gateway = f"127.0.0.1:{port}"

    def sent(rule: str, status: str) -> list[dict]:
        return [b for b in receiver.bodies() if b["rule"] == rule and b["status"] == status]

    async def check(simulated, runtime, web):
        await wait_until(lambda: all(runtime.health[u].last_ok for u in units), 30,
                         "a first good poll of each unit")
        await simulated.servers[units[0]].stop()  # the gateway itself
        await wait_until(lambda: sent("gateway_unreachable", "firing"), 30, "the gateway's page")
        alerts = {(a["rule"], a["labels"].get("device") or a["labels"].get("gateway")): a
                  for a in await get_json(web.url + "api/v1/alerts")}
        assert alerts[("gateway_unreachable", gateway)]["state"] == "firing"
        await wait_until(lambda: {a.labels.get("device") for a in runtime.evaluator.active_alerts()
                                  if a.rule == "device_unreachable"} >= set(units), 30,
                         "every unit's own alert")
        alerts = {(a["rule"], a["labels"].get("device") or a["labels"].get("gateway")): a
                  for a in await get_json(web.url + "api/v1/alerts")}
        for u in units:
            assert alerts[("device_unreachable", u)]["suppressed_by"] == (
                f"gateway_unreachable{{gateway={gateway}}}")
        [page] = sent("gateway_unreachable", "firing")
        assert page["affected"]["loops"] == ["loop-1"]
        await simulated.servers[units[0]].start()
        await wait_until(lambda: sent("gateway_unreachable", "resolved"), 30, "the resolve")
        await wait_until(lambda: not any(a["rule"] == "device_unreachable" for a in
                                         runtime.evaluator.active_alerts()), 30, "units back")
        assert not [b for b in receiver.bodies() if b["rule"] == "device_unreachable"]
        assert len(sent("gateway_unreachable", "firing")) == 1

    asyncio.run(run_site(site, tmp_path, check))


def test_a_rule_of_the_sites_own_pages_through_the_whole_chain(tmp_path, receiver):
    """A site's own rule over a metric read by Modbus: a pump fails at the simulator, the
    rule fires with the site's summary and label, the label's route sends it to the cooling
    team's hook, and the pump's return resolves it."""
    site = fast_site(receiver.url)
    cooling = Webhook(name="cooling", url=receiver.url + "-cooling")
    alerts = Alerts.model_validate({
        "unreachable_intervals": 3, "webhooks": [*site.alerts.webhooks, cooling],
        "routes": [{"matchers": ["team=cooling"], "receivers": ["cooling"]},
                   {"receivers": [site.alerts.webhooks[0].name]}],
        "rules": {"cdu_on_one_pump": {
            "kind": "cdu", "metric": "pumps_running", "fires": "below", "warning": 2,
            "unit": "pumps", "matchers": ["device=cdu-1"], "labels": {"team": "cooling"},
            "summary": "{device} runs {value:g} {unit}, fewer than its {threshold:g}",
            "description": "{device} lost a pump ({severity}): the loop has no spare flow",
            "steps": ["Check the pump's drive and breaker."]}}})
    site = site.model_copy(update={"alerts": alerts})

    def own(status: str) -> list[dict]:
        return [b for b in receiver.bodies()
                if b["rule"] == "cdu_on_one_pump" and b["status"] == status]

    async def check(simulated, runtime, web):
        await wait_until(lambda: runtime.ticks >= 2, 30, "two model ticks")
        assert not own("firing")
        await simulated.inject("pump_failure", "cdu-1")
        await wait_until(lambda: own("firing"), 30, "the site's own rule to page")
        [fired] = own("firing")
        assert fired["summary"] == "cdu-1 runs 1 pumps, fewer than its 2"
        assert fired["description"] == "cdu-1 lost a pump (warning): the loop has no spare flow"
        assert fired["next_step"] == "Check the pump's drive and breaker."
        assert (fired["labels"]["team"], fired["value"], fired["threshold"]) == ("cooling", 1, 2)
        assert fired["severity"] == "warning" and fired["where"]["device"] == "cdu-1"
        assert {r["path"] for r in receiver.requests
                if r["json"]["rule"] == "cdu_on_one_pump"} == {"/hook-cooling"}
        await simulated.inject("pump_failure", "cdu-1", on=False)
        await wait_until(lambda: own("resolved"), 30, "its resolved notice")
        assert len(own("firing")) == 1

    asyncio.run(run_site(site, tmp_path, check))


def test_a_leak_pages_a_poll_after_it_starts_not_a_tick_later(tmp_path, receiver):
    """A poll that flips a critical flag (a leak, a source on battery) ticks the model at
    once: with a tick a minute, the leak still pages within seconds, and so does its end."""
    site = fast_site(receiver.url)
    site = site.model_copy(update={"model": site.model.model_copy(update={"tick_s": 60.0})})

    def paged(status: str) -> list[dict]:
        return [b for b in receiver.bodies() if b["rule"] == "leak" and b["status"] == status]

    async def check(simulated, runtime, web):
        # the first tick comes once every device was first heard from; the next, a minute on
        await wait_until(lambda: runtime.ticks >= 1, 30, "the first tick")
        first = runtime.ticks
        await simulated.inject("leak", "cdu-1")
        await wait_until(lambda: paged("firing"), 20, "the leak's page")
        assert runtime.ticks > first and paged("firing")[0]["severity"] == "critical"
        await simulated.inject("leak", "cdu-1", on=False)
        await wait_until(lambda: paged("resolved"), 20, "its resolved notice")

    asyncio.run(run_site(site, tmp_path, check))


def test_a_grouped_route_pages_once_for_two_dark_pdus_and_once_for_their_return(
        tmp_path, receiver):
    """Two PDUs go dark at once; a route grouping the unreachable devices by rule sends
    its hook one notification that names both, not one each, and, once both answer again,
    notices that resolve both. The site's other alerts go to the catch-all route's hook."""
    site = fast_site(receiver.url)
    grouped = Webhook(name="grouped", url=receiver.url + "-grouped")
    alerts = Alerts.model_validate({
        "unreachable_intervals": 3, "webhooks": [*site.alerts.webhooks, grouped],
        "routes": [{"matchers": ["rule=device_unreachable"], "receivers": ["grouped"],
                    "group_by": ["rule"], "group_wait_s": 10, "group_interval_s": 1},
                   {"receivers": [site.alerts.webhooks[0].name]}]})
    site = site.model_copy(update={"alerts": alerts})
    dark = sorted({site.racks[0].feed_a, site.racks[1].feed_a})

    def groups() -> list[dict]:
        return [r["json"] for r in receiver.requests if r["path"] == "/hook-grouped"]

    def told(status: str) -> set[str]:
        return {a["labels"]["device"] for g in groups() for a in g["alerts"]
                if a["status"] == status}

    async def check(simulated, runtime, web):
        await wait_until(lambda: all(runtime.health[d].last_ok for d in dark), 30,
                         "a first good poll of each PDU")
        for d in dark:
            await simulated.stop_device(d)
        await wait_until(lambda: runtime.notifier_groups_held == 1, 60, "the group to hold")
        assert not groups()  # held for its group_wait
        assert ("aidc_notifier_groups_held", ()) in await scraped_metrics(web)
        await wait_until(lambda: groups(), 60, "the group's notification")
        [page] = groups()
        assert (page["kind"], page["status"], page["group_labels"]) == (
            "group", "firing", {"rule": "device_unreachable"})
        assert sorted(a["labels"]["device"] for a in page["alerts"]) == dark
        assert all(a["rule"] == "device_unreachable" for a in page["alerts"])
        for d in dark:
            await simulated.start_device(d)
        await wait_until(lambda: told("resolved") == set(dark), 60, "both resolved")
        assert groups()[-1]["status"] == "resolved"
        # none of them went to the catch-all's hook, one by one
        assert not [b for b in receiver.bodies() if b.get("rule") == "device_unreachable"]

    asyncio.run(run_site(site, tmp_path, check))
