"""The console's first render in headless Chromium, as an operator's browser loads it from
`aidc demo` serving a generated site: cold (a new browser, nothing cached) and warm (the same
browser opening it again). Timed from the navigation's start until the rack chart shows its
racks (the CHART_RACKS with least headroom); bytes as the browser counts them (Resource
Timing): over the wire, against what it decoded in the same load, which is what the same
load would have cost uncompressed.

The floor page's callback (every rack of the site as a coloured cell) is timed as the browser
calls it, one HTTP request to the app; its baseline is the request for the rack list it draws
from (`GET /api/v1/racks`), in the same run.

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
from datetime import UTC, datetime
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options

from aidc.config import load_site
from aidc.net import free_port
from aidc.sitegen import generate
from benchmarks.common import machine
from dashboards.pages.overview import CHART_RACKS
from simulators.site import free_port_offset

RACKS = int(os.environ.get("AIDC_BENCH_RACKS", "2000"))
REPEATS = 5
RESULT = Path(__file__).parent / "results" / "dashboard.json"
TARGETS_MS = {"cold_render_ms": 3000.0, "warm_render_ms": 1500.0, "floor_callback_ms": 100.0}
CALLS = 30  # floor callbacks timed (the median taken)
FLOOR_CALL = {"output": "floor-map.figure", "outputs": {"id": "floor-map", "property": "figure"},
              "inputs": [{"id": "refresh", "property": "n_intervals", "value": 1},
                         {"id": "floor-metric", "property": "value", "value": "headroom_kw"}],
              "state": [], "changedPropIds": ["refresh.n_intervals"]}

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
                if all(rack["power_kw"] is not None for rack in json.load(r)):
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("aidc demo did not show every rack's power")


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

    figures: dict[str, float] = {}
    for name, loads in runs.items():
        ms, wire, decoded, callback = (statistics.median(column) for column in zip(*loads))
        figures |= {f"{name}_render_ms": round(ms), f"{name}_wire_bytes": wire,
                    f"{name}_decoded_bytes": decoded, f"{name}_longest_callback_ms": round(callback)}
    figures |= {"floor_callback_ms": round(floor_ms, 1), "racks_api_ms": round(racks_ms, 1)}
    ratios = {
        "floor_callback_vs_racks_api": round(floor_ms / racks_ms, 2),
        "cold_wire_vs_decoded_bytes": round(figures["cold_wire_bytes"] / figures["cold_decoded_bytes"], 2),
        "warm_vs_cold_render": round(figures["warm_render_ms"] / figures["cold_render_ms"], 2),
    }
    print(f"the console's first render, {RACKS} racks, headless Chromium (medians of {REPEATS})")
    print(f"  {'load':<6}{'render ms':>11}{'wire KB':>10}{'decoded KB':>12}{'callback ms':>13}")
    for name in runs:
        print(f"  {name:<6}{figures[f'{name}_render_ms']:>11.0f}{figures[f'{name}_wire_bytes'] / 1024:>10.0f}"
              f"{figures[f'{name}_decoded_bytes'] / 1024:>12.0f}"
              f"{figures[f'{name}_longest_callback_ms']:>13.0f}")
    print(f"  floor callback ({RACKS} racks): {floor_ms:.0f} ms, {ratios['floor_callback_vs_racks_api']}"
          f" x the rack list it draws from ({racks_ms:.0f} ms); medians of {CALLS}")
    targets = {k: f"< {v:g}" for k, v in TARGETS_MS.items()}
    print(f"  wire/decoded (cold): {ratios['cold_wire_vs_decoded_bytes']}; warm/cold render: "
          f"{ratios['warm_vs_cold_render']}; targets: {targets}")
    result = {
        "name": "dashboard",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(f"headless Chromium, `aidc demo` serving {RACKS} racks"),
        "figures": figures,
        "ratios": ratios,
        "baseline": "the bytes the browser decoded in the same load; the cold load for the "
                    "warm; GET /api/v1/racks for the floor callback",
        "targets": targets,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {RESULT}")


if __name__ == "__main__":
    main()
