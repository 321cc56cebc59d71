"""The console's first render in headless Chromium, as an operator's browser loads it from
`aidc demo` serving a generated site: cold (a new browser, nothing cached) and warm (the same
browser opening it again). Timed from the navigation's start until the rack chart shows its
racks (the CHART_RACKS with least headroom); bytes as the browser counts them (Resource
Timing): over the wire, against what it decoded in the same load, which is what the same
load would have cost uncompressed.

The floor page's callback (every rack of the site as a coloured cell) is timed as the browser
calls it, one HTTP request to the app; its baseline is the request for the rack list it draws
from (`GET /api/v1/racks`), in the same run.

The capacity page's table callback (filtered, sorted and paged on the server) is timed and
weighed the same way; its baseline is what the page used to send the browser each refresh,
every rack's headroom (`GET /api/v1/headroom`).

A 30-day trend of a site metric is asked of each store as the trends page asks it (the store
computes about 300 means); its baseline is the same 30 days read raw into Python. Each store
holds 30 days of every site metric at the 5 s tick and the last 5 minutes of every rack
series of the site, so its index holds a large site's series.

Baselines, measured in the same run: the decoded bytes (for the wire bytes) and the cold load
(for the warm one). Medians of REPEATS, each cold load in a fresh browser profile. The demo
simulates every device in its own process, so the web server shares the CPU with the device
farm as well as with the runtime: an upper bound on what `aidc run` would show.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options

from aidc.core.config import Store as StoreConfig
from aidc.core.config import load_site
from aidc.core.derive import RACK_FIELDS, SITE_FIELDS
from aidc.core.metrics import Sample
from aidc.core.net import free_port
from aidc.core.sitegen import generate
from aidc.core.store.influx import InfluxStore
from aidc.core.store.sqlite import SqliteStore
from benchmarks.common import write_result
from dashboards.pages.capacity import TABLE_ROWS
from dashboards.pages.overview import CHART_RACKS
from simulators.site import free_port_offset
from tests.conftest import Influxd

RACKS = int(os.environ.get("AIDC_BENCH_RACKS", "2000"))
REPEATS = 3
RESULT = Path(__file__).parent / "results" / "dashboard.json"
TARGETS_MS = {"cold_render_ms": 3000.0, "warm_render_ms": 1500.0, "floor_callback_ms": 100.0,
              "trend_30d_sqlite_ms": 500.0, "trend_30d_influxdb_ms": 500.0}
CALLS = 30  # floor callbacks timed (the median taken)
FLOOR_CALL = {"output": "floor-map.figure", "outputs": {"id": "floor-map", "property": "figure"},
              "inputs": [{"id": "refresh", "property": "n_intervals", "value": 1},
                         {"id": "floor-metric", "property": "value", "value": "headroom_kw"}],
              "state": [], "changedPropIds": ["refresh.n_intervals"]}

CAPACITY_CALL = {
    "output": "..pool-table.data...rack-table.data...rack-table.page_count..."
              "rack-table.page_current...rack-count.children..",
    "outputs": [{"id": i, "property": p} for i, p in (
        ("pool-table", "data"), ("rack-table", "data"), ("rack-table", "page_count"),
        ("rack-table", "page_current"), ("rack-count", "children"))],
    "inputs": [{"id": "refresh", "property": "n_intervals", "value": 1},
               *({"id": f"filter-{f}", "property": "value", "value": None}
                 for f in ("room", "row", "min-kw", "limit")),
               {"id": "rack-table", "property": "page_current", "value": 0},
               {"id": "rack-table", "property": "sort_by",
                "value": [{"column_id": "headroom_kw", "direction": "asc"}]}],
    "state": [], "changedPropIds": ["refresh.n_intervals"]}
TREND_DAYS, TREND_POINTS, TREND_CALLS, TICK_S = 30, 300, 10, 5

# resolves with performance.now() once the rack chart holds its racks (polled every 5 ms)
CHART_SHOWS_RACKS = """
const [racks, done] = arguments;
(function check() {
  const plot = document.querySelector('#rack-chart .js-plotly-plot');
  const bars = ((plot && plot.data && plot.data[0] && plot.data[0].x) || []).length;
  if (bars >= racks) done(performance.now()); else setTimeout(check, 5);
})();
"""
# bytes over the wire and decoded, and the longest callback request (the server's share)
RESOURCES = """
const all = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
const callbacks = all.filter(e => e.name.includes('_dash-update-component'));
return [all.reduce((n, e) => n + e.transferSize, 0), all.reduce((n, e) => n + e.decodedBodySize, 0),
        Math.max(0, ...callbacks.map(e => e.responseEnd - e.startTime))];
"""


def start_demo(site_path: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port, offset = free_port(), free_port_offset(load_site(site_path))
    with open(data_dir.parent / "demo.log", "ab") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            [sys.executable, "-m", "aidc.cli", "demo", "--site", str(site_path), "--web-port",
             str(port), "--port-offset", str(offset), "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "api/v1/racks") as r:
                if len(json.load(r)) == RACKS:  # none before the first model tick
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("aidc demo did not list every rack")


def racks_known(url: str) -> int:
    """Racks whose power the model knows: the farm of 2,000 racks, simulated in the demo's
    own process, does not keep every device answering (see the README)."""
    with urllib.request.urlopen(url + "api/v1/racks") as r:
        return sum(rack["power_kw"] is not None for rack in json.load(r))


def browser(profile: Path) -> webdriver.Chrome:
    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-sync", "--disable-background-networking",
                "--window-size=1600,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options)
    driver.set_script_timeout(120)
    return driver


def load(driver: webdriver.Chrome, url: str) -> tuple[float, int, int, float]:
    """ms until the chart shows its racks, bytes over the wire, bytes decoded, and ms of
    the longest callback request."""
    driver.get(url)
    ms = driver.execute_async_script(CHART_SHOWS_RACKS, min(RACKS, CHART_RACKS))
    return (ms, *driver.execute_script(RESOURCES))


def request_ms(url: str, body: dict | None = None) -> float:
    """One request as the browser makes it (gzip accepted), until its body is read."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                          "Accept-Encoding": "gzip"})
    start = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        r.read()
        assert r.status == 200
    return (time.perf_counter() - start) * 1000


def capacity_calls(url: str) -> tuple[float, float, int, int]:
    """Median ms of the capacity table's callback and of every rack's headroom, interleaved,
    and the bytes of each answer (uncompressed)."""
    table, headroom = [], []
    for _ in range(CALLS):
        table.append(request_ms(url + "_dash-update-component", CAPACITY_CALL))
        headroom.append(request_ms(url + "api/v1/headroom"))
    sizes = [len(urllib.request.urlopen(urllib.request.Request(
        url + path, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})).read())
        for path, body in (("_dash-update-component", CAPACITY_CALL), ("api/v1/headroom", None))]
    return statistics.median(table), statistics.median(headroom), *sizes


def trend_queries(tmp: Path, site_path: Path) -> dict[str, float]:
    """Median ms of a 30-day site trend on each store, against reading the same days raw."""
    now = time.time()
    start = now - TREND_DAYS * 86400 + 3600  # inside the embedded store's 30-day retention
    stores = {"sqlite": SqliteStore(tmp / "trend.sqlite")}
    (tmp / "influxd").mkdir()
    influxd = Influxd(tmp / "influxd")
    influxd.start()
    try:
        stores["influxdb"] = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url,
                                                     database="trend"))
        racks = [r.id for r in load_site(site_path).racks]
        for store in stores.values():
            for day in range(TREND_DAYS):
                store.write([Sample("site", {"site": "bench"}, f, 1.2 + (t % 600) / 6000, t)
                             for t in range(int(start + day * 86400),
                                            int(min(now, start + (day + 1) * 86400)), TICK_S)
                             for f in SITE_FIELDS])
            for t in range(int(now - 300), int(now), TICK_S):
                store.write([Sample("rack", {"site": "bench", "rack": r}, f, 40.0, t)
                             for r in racks for f in RACK_FIELDS])
        out: dict[str, float] = {}
        for name, store in stores.items():
            trend, raw = [], []
            for _ in range(TREND_CALLS):
                t0 = time.perf_counter()
                series = store.history("site", "pue", now - TREND_DAYS * 86400, now,
                                       every_s=TREND_DAYS * 86400 / TREND_POINTS)
                trend.append((time.perf_counter() - t0) * 1000)
                assert 250 <= len(series[0].points) <= TREND_POINTS + 1, len(series[0].points)
                t0 = time.perf_counter()
                everything = store.history("site", "pue", now - TREND_DAYS * 86400, now)
                raw.append((time.perf_counter() - t0) * 1000)
            out |= {f"trend_30d_{name}_ms": round(statistics.median(trend), 1),
                    f"raw_30d_{name}_ms": round(statistics.median(raw), 1),
                    f"raw_30d_{name}_points": len(everything[0].points)}
            store.close()
        return out
    finally:
        influxd.stop()


def floor_calls(url: str) -> tuple[float, float]:
    """Median ms of the floor callback and of the rack list, interleaved."""
    floor, racks = [], []
    for _ in range(CALLS):
        floor.append(request_ms(url + "_dash-update-component", FLOOR_CALL))
        racks.append(request_ms(url + "api/v1/racks"))
    return statistics.median(floor), statistics.median(racks)


def main() -> None:
    runs: dict[str, list[tuple[float, int, int, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        site_path = Path(tmp) / "site.yaml"
        site_path.write_text(generate(RACKS))
        proc, url = start_demo(site_path, Path(tmp) / "data")
        try:
            floor_ms, racks_ms = floor_calls(url)
            capacity_ms, headroom_ms, capacity_bytes, headroom_bytes = capacity_calls(url)
            known = racks_known(url)
            for i in range(REPEATS):
                driver = browser(Path(tmp) / f"profile{i}")
                try:
                    runs["cold"].append(load(driver, url))
                    runs["warm"].append(load(driver, url))
                finally:
                    driver.quit()
        except Exception:
            print((Path(tmp) / "demo.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait()

        trends = trend_queries(Path(tmp), site_path)

    figures: dict[str, float] = {}
    for name, loads in runs.items():
        ms, wire, decoded, callback = (statistics.median(column) for column in zip(*loads))
        figures |= {f"{name}_render_ms": round(ms), f"{name}_wire_bytes": wire,
                    f"{name}_decoded_bytes": decoded, f"{name}_longest_callback_ms": round(callback)}
    figures |= {"floor_callback_ms": round(floor_ms, 1), "racks_api_ms": round(racks_ms, 1),
                "capacity_callback_ms": round(capacity_ms, 1),
                "headroom_api_ms": round(headroom_ms, 1),
                "capacity_callback_bytes": capacity_bytes, "headroom_api_bytes": headroom_bytes,
                "racks_with_power_known": known,
                **trends}
    ratios = {
        "floor_callback_vs_racks_api": round(floor_ms / racks_ms, 2),
        "capacity_callback_vs_headroom_api": round(capacity_ms / headroom_ms, 2),
        "capacity_bytes_vs_headroom_api": round(capacity_bytes / headroom_bytes, 3),
        **{f"trend_30d_{n}_vs_raw": round(trends[f"trend_30d_{n}_ms"] / trends[f"raw_30d_{n}_ms"], 3)
           for n in ("sqlite", "influxdb")},
        "cold_wire_vs_decoded_bytes": round(figures["cold_wire_bytes"] / figures["cold_decoded_bytes"], 2),
        "warm_vs_cold_render": round(figures["warm_render_ms"] / figures["cold_render_ms"], 2),
    }
    print(f"the console's first render, {RACKS} racks ({known} with their power known), "
          f"headless Chromium (medians of {REPEATS})")
    print(f"  {'load':<6}{'render ms':>11}{'wire KB':>10}{'decoded KB':>12}{'callback ms':>13}")
    for name in runs:
        print(f"  {name:<6}{figures[f'{name}_render_ms']:>11.0f}{figures[f'{name}_wire_bytes'] / 1024:>10.0f}"
              f"{figures[f'{name}_decoded_bytes'] / 1024:>12.0f}"
              f"{figures[f'{name}_longest_callback_ms']:>13.0f}")
    print(f"  floor callback ({RACKS} racks): {floor_ms:.0f} ms, {ratios['floor_callback_vs_racks_api']}"
          f" x the rack list it draws from ({racks_ms:.0f} ms); medians of {CALLS}")
    print(f"  capacity table ({RACKS} racks, one page of {TABLE_ROWS}): {capacity_ms:.0f} ms, "
          f"{capacity_bytes / 1024:.0f} KB; every rack's headroom (what it sent before): "
          f"{headroom_ms:.0f} ms, {headroom_bytes / 1024:.0f} KB")
    for n in ("sqlite", "influxdb"):
        print(f"  30-day trend of site pue, {n}: {trends[f'trend_30d_{n}_ms']:.0f} ms "
              f"({TREND_POINTS} means); raw, {trends[f'raw_30d_{n}_points']} points: "
              f"{trends[f'raw_30d_{n}_ms']:.0f} ms")
    targets = {k: f"< {v:g}" for k, v in TARGETS_MS.items()}
    print(f"  wire/decoded (cold): {ratios['cold_wire_vs_decoded_bytes']}; warm/cold render: "
          f"{ratios['warm_vs_cold_render']}; targets: {targets}")
    write_result(
        RESULT, machine_note=f"headless Chromium, `aidc demo` serving {RACKS} racks",
        figures=figures, ratios=ratios, targets=targets,
        baseline="the bytes the browser decoded in the same load; the cold load for the warm; "
                 "GET /api/v1/racks for the floor callback; GET /api/v1/headroom for the "
                 "capacity table; the same 30 days read raw for each store's trend")


if __name__ == "__main__":
    main()
