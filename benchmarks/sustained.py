"""A 2,000-rack site sustained by one `aidc run` (or, with ``AIDC_BENCH_SHARDS`` N, by N
`aidc run --role collect` shards and a `--role core` on a real influxd), its devices served
by `aidc farm --snmpd` (the PDUs and UPSes by net-snmp's snmpd, the rest by the Python
simulators) in processes of their own, all on this machine.

After every device was found up and a warm-up, for ``AIDC_BENCH_SECONDS`` (default 300):
the poll intervals missed and how late polls started (p50, p99, from `/metrics`'
histogram, every poller's added), and each process's CPU share (of one core) and resident
memory, read from /proc; aidc's are the sum of its processes (influxd's apart). Baseline, the same run: the farm's CPU for answering the same polls, against
aidc's for making them (and storing, modelling, alerting and serving meanwhile).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aidc.core.config import Site, load_site
from aidc.core.metrics import POLL_DELAY_BUCKETS_S
from aidc.core.net import free_port
from benchmarks.common import write_result
from tests.conftest import Influxd

RACKS = int(os.environ.get("AIDC_BENCH_RACKS", "2000"))
SECONDS = float(os.environ.get("AIDC_BENCH_SECONDS", "300"))
WARM_UP_S = 30.0
UP_WITHIN_S = 600.0
RESULT = Path(__file__).parent / "results" / "sustained.json"
# 0: one `aidc run`; N: N `aidc run --role collect` shards and a `--role core`, on influxd
SHARDS = int(os.environ.get("AIDC_BENCH_SHARDS", "0"))
TARGETS = {"missed_intervals": "0", "poll_start_delay_p99_s": "< 0.25", "aidc_rss_mb": "< 400"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def aidc(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "aidc.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT)


def family(pid: int) -> list[int]:
    """The process and its children (the farm's snmpd agents)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, ValueError):
            pass  # ended meanwhile
    return [pid, *children]


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process and its children so far."""
    total = 0.0
    for p in family(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children."""
    total = 0.0
    for p in family(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def scrape(url: str) -> dict[str, list]:
    text = httpx.get(url + "metrics", timeout=30).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def total(metrics: dict, name: str, sample: str | None = None) -> float:
    return sum(s.value for s in metrics.get(name, []) if s.name == (sample or name))


def delays(metrics: dict) -> list[float]:
    """The poll-start histogram's cumulative counts, bucket by bucket (+Inf last)."""
    return [s.value for s in metrics["aidc_poll_start_delay_seconds"]
            if s.name.endswith("_bucket")]


def quantile(before: list[float], after: list[float], q: float) -> float:
    """The bucket bound under which a share ``q`` of the window's poll starts fell."""
    counts = [b - a for a, b in zip(before, after, strict=True)]
    for bound, count in zip((*POLL_DELAY_BUCKETS_S, float("inf")), counts, strict=True):
        if count >= q * counts[-1]:
            return bound
    return float("inf")


def free(transport: str, port: int) -> bool:
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def on_free_ports(path: Path) -> Site:
    """A generated site written to ``path`` whose every device's port is free now."""
    for first in range(10_000, 30_000, 1_000):
        subprocess.run([sys.executable, "-m", "aidc.cli", "gen-site", "--racks", str(RACKS),
                        "--first-port", str(first), "-o", str(path)], check=True)
        site = load_site(path)
        if all(free(d.transport, d.port) for d in site.devices):
            return site
    raise SystemExit("no free block of ports for the site")


def wait(predicate, timeout_s: float, what: str, up: list | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:g} s waiting for "
                             + what.format(up=up[0] if up else "?"))
        time.sleep(1)


def start_aidc(tmp: Path, site_path: Path) -> tuple[dict[str, subprocess.Popen], list[str], str]:
    """The processes measured by name, the URLs of those that poll, and the one that models:
    one `aidc run` on the embedded store, or SHARDS collectors and a core on an influxd."""
    if not SHARDS:
        port = free_port()
        run = aidc("run", "--site", str(site_path), "--data-dir", str(tmp / "data"),
                   "--web-port", str(port), log=tmp / "run.log")
        return {"aidc": run}, [f"http://127.0.0.1:{port}/"], f"http://127.0.0.1:{port}/"
    (tmp / "influxd").mkdir()
    influxd = Influxd(tmp / "influxd")
    influxd.start()
    with open(site_path, "a") as f:
        f.write(f"store: {{backend: influxdb, url: '{influxd.url}', database: bench}}\n")
    procs, urls = {"influxd": influxd.proc}, []
    for i in range(1, SHARDS + 1):
        port = free_port()
        procs[f"collect_{i}_of_{SHARDS}"] = aidc(
            "run", "--site", str(site_path), "--role", "collect", "--shard", f"{i}/{SHARDS}",
            "--data-dir", str(tmp / f"collect-{i}"), "--web-port", str(port),
            log=tmp / f"collect-{i}.log")
        urls.append(f"http://127.0.0.1:{port}/")
    port = free_port()
    procs["core"] = aidc("run", "--site", str(site_path), "--role", "core", "--data-dir",
                         str(tmp / "core"), "--web-port", str(port), log=tmp / "core.log")
    return procs, urls, f"http://127.0.0.1:{port}/"


def summed(urls: list[str]) -> dict[str, list]:
    """The pollers' /metrics as one: every sample of every process."""
    out: dict[str, list] = {}
    for url in urls:
        for name, samples in scrape(url).items():
            out.setdefault(name, []).extend(samples)
    return out


def delays_summed(metrics: dict) -> list[float]:
    """The poll-start histograms of every poller, added bucket by bucket."""
    per_bucket: dict[str, float] = {}
    for s in metrics["aidc_poll_start_delay_seconds"]:
        if s.name.endswith("_bucket"):
            per_bucket[s.labels["le"]] = per_bucket.get(s.labels["le"], 0.0) + s.value
    return list(per_bucket.values())


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        site_path = tmp / "site.yaml"
        site = on_free_ports(site_path)
        devices = len(site.devices)
        farm = aidc("farm", "--snmpd", "--site", str(site_path), log=tmp / "farm.log")
        procs: dict[str, subprocess.Popen] = {}
        try:
            wait(lambda: b"answering" in (tmp / "farm.log").read_bytes(), 600, "the farm")
            procs, pollers, core = start_aidc(tmp, site_path)
            procs["farm"] = farm
            up = [0.0]

            def all_up() -> bool:
                try:
                    up[0] = min(total(summed(pollers), "aidc_device_up"),
                                total(scrape(core), "aidc_device_up"))
                except httpx.HTTPError:
                    pass
                return up[0] == devices

            try:  # measured all the same if some never come up: how many is a figure
                wait(all_up, UP_WITHIN_S, f"all {devices} devices up (up: {{up}})", up)
            except SystemExit as e:
                print(f"  {e}; measuring with {up[0]:.0f} up")
            time.sleep(WARM_UP_S)
            up_at_start = total(scrape(core), "aidc_device_up")
            before, t0 = summed(pollers), time.monotonic()
            cpu0 = {k: cpu_s(p.pid) for k, p in procs.items()}
            peak = dict.fromkeys(procs, 0.0)
            while time.monotonic() - t0 < SECONDS:
                time.sleep(min(5.0, SECONDS - (time.monotonic() - t0)))
                for k, p in procs.items():
                    peak[k] = max(peak[k], rss_mb(p.pid))
            after, elapsed = summed(pollers), time.monotonic() - t0
            modelled = scrape(core)
            cpu = {k: (cpu_s(p.pid) - cpu0[k]) / elapsed for k, p in procs.items()}
        finally:
            for k, p in procs.items() or {"farm": farm}.items():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    p.wait(timeout=60)
    polls = total(after, "aidc_polls", "aidc_polls_total") - total(
        before, "aidc_polls", "aidc_polls_total")
    errors = total(after, "aidc_poll_errors", "aidc_poll_errors_total") - total(
        before, "aidc_poll_errors", "aidc_poll_errors_total")
    missed = total(after, "aidc_poll_intervals_missed", "aidc_poll_intervals_missed_total") - \
        total(before, "aidc_poll_intervals_missed", "aidc_poll_intervals_missed_total")
    poll_s = site.defaults.poll_s
    ours = [k for k in procs if k not in ("farm", "influxd")]
    aidc_cpu = sum(cpu[k] for k in ours)
    figures = {
        "devices": devices,
        "devices_up_at_start": int(up_at_start),
        "devices_up_at_end": int(total(modelled, "aidc_device_up")),
        "seconds": round(elapsed),
        "polls": int(polls),
        "polls_expected": round(devices * elapsed / poll_s),
        "poll_errors": int(errors),
        "missed_intervals": int(missed),
        "poll_start_delay_p50_s": quantile(delays_summed(before), delays_summed(after), 0.50),
        "poll_start_delay_p99_s": quantile(delays_summed(before), delays_summed(after), 0.99),
        "event_loop_lag_s_at_end": round(max(s.value for s in after["aidc_event_loop_lag_seconds"]), 2),
        "model_tick_s_at_end": round(total(modelled, "aidc_model_tick_seconds"), 3),
        "aidc_cpu_share": round(aidc_cpu, 3),
        "aidc_rss_mb": round(sum(peak[k] for k in ours), 1),
        **{f"{k}_cpu_share": round(v, 3) for k, v in cpu.items()},
        **{f"{k}_rss_mb": round(v, 1) for k, v in peak.items()},
    }
    ratios = {"aidc_cpu_vs_farm_cpu": round(aidc_cpu / cpu["farm"], 2)}
    for k, v in {**figures, **ratios}.items():
        print(f"  {k:<28}{v:>12}")
    targets = TARGETS if not SHARDS else {  # the memory bound is each process's
        **{k: v for k, v in TARGETS.items() if k != "aidc_rss_mb"},
        **{f"{k}_rss_mb": TARGETS["aidc_rss_mb"] for k in ours}}
    print("  targets: " + ", ".join(f"{k} {v}" for k, v in targets.items()) +
          " (p50 and p99 are the histogram's bucket bounds)")
    how = (f"{SHARDS} aidc run --role collect and a --role core on influxd" if SHARDS else
           "one aidc run on the embedded store")
    write_result(
        RESULT.with_stem(f"sustained-{SHARDS}-shards") if SHARDS else RESULT,
        machine_note=f"{RACKS:,}-rack generated site, {devices:,} devices every {poll_s:g} s; "
                     f"{how}; aidc farm --snmpd",
        figures=figures, ratios=ratios, targets=targets,
        baseline="the farm's CPU (and its snmpd agents') answering the same polls, same run")


if __name__ == "__main__":
    main()
