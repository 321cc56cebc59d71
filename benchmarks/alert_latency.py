"""From a change at a device to the page at on-call, on the whole process: `aidc demo`
(simulators, collectors, model, rules, outbox) posting to an HTTP receiver on 127.0.0.1
that takes 20 ms per request. A leak is switched on at a simulated CDU through the demo's
fault API; the latency runs until its critical firing notification arrives.

- baseline: nothing queued for the receiver;
- backlog: 1,000 resolved warnings queued for the same receiver just before each leak.

Target (p95): the poll interval + 0.5 s. Medians and p95 of REPEATS leaks each; results in
benchmarks/results/alert_latency.json.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from aidc.core.config import load_site
from aidc.core.net import free_port
from alerts.outbox import Outbox
from benchmarks.common import machine
from simulators.site import free_port_offset

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "alert_latency.json"
REPEATS = 15
BACKLOG = 1000
RECEIVER_S = 0.02  # per request


class Receiver:
    def __init__(self):
        self.arrivals: list[tuple[float, dict]] = []
        arrivals = self.arrivals

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                arrivals.append((time.time(), body))
                time.sleep(RECEIVER_S)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def leak_page(self, after: float, status: str) -> float | None:
        return next((t for t, b in list(self.arrivals) if t > after and b["rule"] == "leak"
                     and b["labels"].get("device") == "cdu-1" and b["status"] == status), None)


def wait(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.005)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> None:
    site_file = ROOT / "site_configs" / "demo.yaml"
    site = load_site(site_file)
    poll_s = site.defaults.poll_s
    receiver, rng = Receiver(), random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, web_port = Path(tmp) / "data", free_port()
        offset = free_port_offset(site)
        proc = subprocess.Popen(
            [sys.executable, "-m", "aidc.cli", "demo", "--site", str(site_file), "--data-dir",
             str(data_dir), "--web-port", str(web_port), "--port-offset", str(offset),
             "--webhook", receiver.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=ROOT, env=os.environ)  # fmt: skip
        url = f"http://127.0.0.1:{web_port}"
        try:
            wait(lambda: _healthy(url), 90, "aidc demo up")
            token = (data_dir / "api-token").read_text().strip()
            outbox = Outbox(data_dir / "alerts.sqlite")

            def fault(on: bool) -> None:
                httpx.post(f"{url}/api/v1/sim/faults", timeout=10,
                           json={"fault": "leak", "device": "cdu-1", "on": on},
                           headers={"Authorization": f"Bearer {token}"}).raise_for_status()

            def one_leak(backlog: int) -> float:
                with outbox.transaction():  # resolved warnings: what an outage leaves queued
                    for i in range(backlog):
                        outbox.enqueue("demo", b'{"rule": "x", "labels": {}, "status": "x"}',
                                       {"Content-Type": "application/json"},
                                       f"backlog-{time.time()}-{i}", f"backlog-{i}", priority=4)
                time.sleep(rng.uniform(0, poll_s))  # any phase of the poll and the tick
                start = time.time()
                fault(True)
                arrived = wait(lambda: receiver.leak_page(start, "firing"), 60, "the page")
                fault(False)
                wait(lambda: receiver.leak_page(arrived, "resolved"), 120, "the resolved")
                return arrived - start

            runs = {name: [one_leak(n) for _ in range(REPEATS)]
                    for name, n in (("baseline", 0), ("backlog", BACKLOG))}
            outbox.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    receiver.server.shutdown()
    report(runs, poll_s)


def _healthy(url: str) -> bool:
    try:
        h = httpx.get(f"{url}/healthz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return h.get("devices_total") and h["devices_up"] == h["devices_total"]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def report(runs: dict[str, list[float]], poll_s: float) -> None:
    target = poll_s + 0.5
    figures = {f"{name}_{stat}_s": round(fn(v), 3) for name, v in runs.items()
               for stat, fn in (("median", statistics.median), ("p95", p95), ("max", max))}
    ratio = figures["backlog_p95_s"] / figures["baseline_p95_s"]
    print(f"a leak at a CDU to its page at on-call, aidc demo (poll {poll_s:g} s), "
          f"{REPEATS} leaks each")
    print(f"  {'queued ahead':<14}{'median s':>10}{'p95 s':>8}{'max s':>8}")
    for name, n in (("baseline", 0), ("backlog", BACKLOG)):
        print(f"  {n:<14}{figures[f'{name}_median_s']:>10.2f}{figures[f'{name}_p95_s']:>8.2f}"
              f"{figures[f'{name}_max_s']:>8.2f}")
    print(f"  p95 with {BACKLOG} queued / without: {ratio:.2f}; target p95 <= {target:g} s")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "name": "alert_latency",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(f"aidc demo, receiver {RECEIVER_S * 1000:g} ms per request"),
        "figures": figures,
        "ratios": {"backlog_p95_vs_baseline_p95": round(ratio, 2)},
        "baseline": "the same leaks with nothing queued for the receiver, same run",
        "targets": {"backlog_p95_s": f"<= {target:g} (poll interval + 0.5 s)"},
    }, indent=2) + "\n")
    print(f"  wrote {RESULT}")


if __name__ == "__main__":
    main()
