"""`aidc export grafana`: every panel's and variable's InfluxQL, as Grafana expands it, answers
with numbers from a real influxd holding what aidc writes (device series and model results)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from aidc.core.config import Store as StoreConfig
from aidc.core.config import load_site
from aidc.core.derive import SiteModel
from aidc.core.metrics import Sample
from aidc.core.net import free_port
from aidc.core.store.influx import InfluxStore
from aidc.core.topology import Topology
from simulators.physics import SitePhysics
from tests.conftest import ROOT

DEMO = ROOT / "site_configs" / "demo.yaml"


def expand(query: str) -> str:
    """Grafana's macros as it expands them: the last hour, 1-minute buckets, "All" rooms."""
    return (query.replace("$timeFilter", "time >= now() - 1h").replace("$__interval", "1m")
            .replace("$room", ".*").replace("$row", ".*"))


def test_every_panel_and_variable_answers_from_what_aidc_writes(influxd):
    site = load_site(DEMO)
    physics, tags, now = SitePhysics(site), Topology(site).device_tags, time.time()
    physics.step()
    polled = [Sample(d.kind, tags[d.id], key, float(value), now - ago)
              for ago in (60, 0) for d in site.devices
              for key, value in physics.values(d.id).items() if value is not None and "{" not in key]
    model = SiteModel(site)
    derived = model.derived_samples(model.evaluate({(s.device, s.field): s for s in polled}, now))
    database = f"grafana{free_port()}"
    store = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url, database=database))
    store.write(polled + derived)
    store.close()

    out = subprocess.run([sys.executable, "-m", "aidc.cli", "export", "grafana", "--site", str(DEMO)],
                         capture_output=True, text=True, check=True)
    board = json.loads(out.stdout)
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"${DS_AIDC}"}
    assert board["__inputs"][0]["name"] == "DS_AIDC"

    def answer(query: str) -> list[dict]:
        body = httpx.get(influxd.url + "/query", params={"db": database, "q": expand(query)}).json()
        assert "error" not in body["results"][0], (query, body)
        return body["results"][0].get("series", [])

    for panel in board["panels"]:
        for target in panel["targets"]:
            series = answer(target["query"])
            numbers = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
            assert numbers, f"{panel['title']}: no number from {target['query']}"
    cdu_supply = next(p for p in board["panels"] if p["title"] == "CDU supply temperature")
    assert {s["tags"]["device"] for s in answer(cdu_supply["targets"][0]["query"])} == {
        d.id for d in site.devices_of("cdu")}
    rooms, rows = (answer(v["query"]) for v in board["templating"]["list"])
    assert {v[1] for v in rooms[0]["values"]} == {r.room for r in site.racks}
    assert {v[1] for v in rows[0]["values"]} == {r.row for r in site.racks}
