"""Benchmark: the whole `aidc run` process against collectd and Prometheus' snmp_exporter,
polling the same farm in the same run: CPU per device poll.

The farm, in processes of its own: 200 SNMPv2c agents (net-snmp's ``snmpd``, 100 ports an
agent) serving 12 UPS-MIB integers each, and 100 Modbus TCP devices (the simulator's
servers, all in one child process) serving 25 float32 input registers each. Each system
polls every device every 5 s, alone on the machine but for the farm, and is measured over
the same window after a warm-up:

- **aidc**: `aidc run` on a site of those devices (embedded store): collection, the store's
  writes, the model tick, alerts and the web server, the whole process. Polls: its own
  counters, less failed ones.
- **collectd** (Debian ``collectd-core``) and its ``csv`` writer, with its ``snmp`` plugin
  told two ways: one Data block of the 12 OIDs with a type of 12 gauges (one GET a poll,
  the lightest it can be told to do), and a Data block a value, as its manual's examples
  do (12 GETs a poll); or its ``modbus`` plugin (a Data block a value: it reads each on its
  own, it cannot do otherwise). Polls: the rows it wrote over the window.
- **snmp_exporter** (Debian ``prometheus-snmp-exporter``), one module of the 12 OIDs,
  scraped for each agent every 5 s as Prometheus would (the scrapes are made by this
  process and not counted). Polls: scrapes that returned the 12 values.

- **the floor** (benchmarks/floors.py): a Python process that polls the same devices on
  aidc's own grid and does nothing else: a request made once, the answers counted, no value
  decoded; for Modbus also through pymodbus, the collector's library. No Python collector
  of this design can cost less a poll. It counts its polls and its CPU itself, at the same
  instant, over half the window.

Each figure is CPU seconds of the whole process over the window (the sum of its threads'
run time, from /proc), per poll. The ratios are aidc's against collectd's (targets: SNMP
<= 0.5, Modbus <= 0.2) and against snmp_exporter's, and the floor's against collectd's:
what a target leaves above the floor is all a Python process has a poll to decode the
values, store them and run the model. Values read are checked against those served.
Prints a table and writes benchmarks/results/versus.json. A benchmark never asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from aidc.core.net import free_port
from benchmarks.collectors import (
    HOST,
    MODBUS_VALUES,
    SNMP_OIDS,
    SNMP_VALUES,
    UPS,
    free_udp_ports,
    start_child,
    start_snmpd,
    write_profiles,
)
from benchmarks.common import write_result
from benchmarks.sustained import cpu_s, family, scrape

SNMP_DEVICES = 200
MODBUS_DEVICES = 100
POLL_S = 5
WARM_UP_S = 15  # past every device's move to its phase (its second poll, 1-2 intervals on)
FLOOR_WARM_UP_S = 5  # the floor's polls keep one phase from the first
WINDOW_S = float(os.environ.get("AIDC_BENCH_WINDOW_S", "30"))
FLOOR_WINDOW_S = WINDOW_S / 2  # its polls and CPU are counted at one instant: exact
SNMPD_PORTS = 100
RESULT = Path(__file__).parent / "results" / "versus.json"
TARGETS = {"snmp": 0.5, "modbus": 0.2}  # aidc's CPU a poll against collectd's


# --------------------------------------------------------------------------- the farm


def serve_modbus_many(profile: str, ports: list[int], ready) -> None:
    """Child process: one simulated Modbus TCP device per port, until terminated."""
    from collectors.profiles import load_profile
    from simulators.modbus import ModbusDeviceServer

    async def run() -> None:
        for port in ports:
            await ModbusDeviceServer(load_profile(profile), HOST, port,
                                     lambda: MODBUS_VALUES).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(run())


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def first_poll(proc: subprocess.Popen, polls: Callable[[], float], log: Path) -> None:
    """Until ``polls()`` counts one (a minute at most, and while ``proc`` runs)."""
    deadline = time.monotonic() + 60
    while not polls():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{Path(proc.args[0]).name} did not poll: "
                             f"{log.read_text()[-2000:]}")
        time.sleep(0.5)


def measured(proc: subprocess.Popen, polls: Callable[[], float], log: Path,
             agree: Callable[[], bool]) -> dict:
    """The polls ``polls()`` counts and the CPU seconds of ``proc`` over WINDOW_S, from
    WARM_UP_S after its first poll, and whether the values it read agree with those served
    (``agree()``, asked at the window's end); ``proc`` is stopped after."""
    try:
        first_poll(proc, polls, log)
        time.sleep(WARM_UP_S)
        polls0, cpu0, threads0 = polls(), cpu_s(proc.pid), threads_cpu_s(proc.pid)
        time.sleep(WINDOW_S)
        polls1, cpu1, threads1 = polls(), cpu_s(proc.pid), threads_cpu_s(proc.pid)
        cpu = (sum(threads1.values()) - sum(threads0.values()) if threads0.keys() <= threads1.keys()
               else cpu1 - cpu0)  # a thread ended: its time is in /proc/PID/stat only
        return {"polls": polls1 - polls0, "cpu_s": cpu, "values_agree": agree()}
    finally:
        proc.terminate()
        proc.wait(30)


def threads_cpu_s(pid: int) -> dict[tuple[int, str], float]:
    """CPU seconds of each thread of a process and its children so far, counted in
    nanoseconds (/proc/PID/task/TID/schedstat): /proc/PID/stat counts clock ticks of 10 ms,
    a sixth of what collectd's SNMP polls take in a window."""
    seconds = {}
    for p in family(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):  # ended meanwhile
                seconds[(p, task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
    return seconds


def free_tcp_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


# --------------------------------------------------------------------------- aidc


def aidc_site(work: Path, name: str, snmp_ports: list[int], modbus_ports: list[int]) -> Path:
    """A site of these devices, and of the one rack and PDU a site needs (its PDU, and its
    UPS without SNMP devices, served by nobody: a failed poll a backoff, not counted)."""
    modbus_profile, snmp_profile = write_profiles(work)
    ups_ports = snmp_ports or free_udp_ports(1)
    lines = ["site: versus", f"defaults: {{poll_s: {POLL_S}, timeout_s: 2}}",
             "store: {backend: embedded, path: aidc.sqlite}", f"model: {{tick_s: {POLL_S}}}",
             "rooms: [{id: r1, rows: [A]}]", "devices:"]
    lines += [f"  - {{id: ups-{i:03d}, kind: ups, protocol: snmp, port: {port}, "
              f"profile: {snmp_profile}, rating_kw: 100}}" for i, port in enumerate(ups_ports)]
    lines += [f"  - {{id: meter-{i:03d}, kind: meter, protocol: modbus, port: {port}, "
              f"profile: {modbus_profile}}}" for i, port in enumerate(modbus_ports)]
    lines += [(f"  - {{id: pdu-1, kind: pdu, protocol: snmp, port: {free_udp_ports(1)[0]}, "
               "profile: pdu_apc_rpdu2, upstream: ups-000, phases: 3, voltage_v: 415, "
               "breaker_a: 32}"),
              "racks:", "  - {id: R1, room: r1, row: A, position: 1, design_kw: 10, feed_a: pdu-1}"]
    path = work / f"site-{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def good_polls(url: str, prefix: str) -> float:
    """Polls that answered, of the devices whose ids start with ``prefix`` (0 before the
    web server answers)."""
    try:
        metrics = scrape(url)
    except httpx.HTTPError:
        return 0.0
    return sum(s.value if s.name == "aidc_polls_total" else -s.value
               for family in ("aidc_polls", "aidc_poll_errors") for s in metrics.get(family, ())
               if s.name.endswith("_total") and s.labels["device"].startswith(prefix))


def run_aidc(site: Path, work: Path, prefix: str) -> dict:
    """`aidc run` on ``site``; the polls of the devices whose ids start with ``prefix``, and
    whether each read every value as served (checked at the window's end)."""
    port, log = free_port(), work / f"aidc-{prefix}.log"
    proc = start([sys.executable, "-m", "aidc.cli", "run", "--site", str(site), "--data-dir",
                  str(work / f"data-{prefix}"), "--web-port", str(port)], log)
    url, served = f"http://127.0.0.1:{port}/", SNMP_VALUES if prefix == "ups" else MODBUS_VALUES

    def agree() -> bool:
        ids = [d["id"] for d in httpx.get(url + "api/v1/devices", timeout=30).json()
               if d["id"].startswith(prefix)]
        return bool(ids) and all(
            {r["series"]: r["value"] for r in httpx.get(
                f"{url}api/v1/devices/{device}/readings", timeout=30).json()} == served
            for device in ids)

    return measured(proc, lambda: good_polls(url, prefix), log, agree)


# --------------------------------------------------------------------------- collectd

TYPES_DB = "ups12 " + ", ".join(f"v{i:02d}:GAUGE:U:U" for i in range(len(SNMP_OIDS))) + "\n"


def collectd_conf(work: Path, snmp_ports: list[int], modbus_ports: list[int],
                  snmp_per_value: bool) -> Path:
    """collectd polling either set of devices every POLL_S, into CSV files; the SNMP values
    as one Data block (one GET a poll) or one block a value (a GET each)."""
    lines = [f'BaseDir "{work}"', f'PIDFile "{work}/collectd.pid"', "AutoLoadPlugin false",
             'Hostname "bench"', "FQDNLookup false", f"Interval {POLL_S}",
             'TypesDB "/usr/share/collectd/types.db"', f'TypesDB "{work}/types.db"',
             "ReadThreads 5", "LoadPlugin csv",
             f'<Plugin csv>\n  DataDir "{work}/csv"\n  StoreRates false\n</Plugin>']
    (work / "types.db").write_text(TYPES_DB)
    if snmp_ports:
        oids = [f'".{UPS}.{suffix}"' for suffix in SNMP_OIDS]
        blocks = ({f"v{i:02d}": ("gauge", oid) for i, oid in enumerate(oids)} if snmp_per_value
                  else {"ups12": ("ups12", " ".join(oids))})
        data = "\n".join(f'  <Data "{name}">\n    Type "{kind}"\n    Table false\n'
                         f'    Instance "{name}"\n    Values {values}\n  </Data>'
                         for name, (kind, values) in blocks.items())
        collect = " ".join(f'"{name}"' for name in blocks)
        hosts = "\n".join(f'  <Host "ups-{i:03d}">\n    Address "{HOST}:{port}"\n'
                          f'    Version 2\n    Community "public"\n    Collect {collect}\n'
                          f"    Interval {POLL_S}\n    Timeout 2\n    Retries 0\n  </Host>"
                          for i, port in enumerate(snmp_ports))
        lines += ["LoadPlugin snmp", "<Plugin snmp>", data, hosts, "</Plugin>"]
    if modbus_ports:
        data = "\n".join(f'  <Data "v{i:02d}">\n    RegisterBase {2 * i}\n'
                         '    RegisterType Float\n    RegisterCmd ReadInput\n'
                         f'    Type "gauge"\n    Instance "v{i:02d}"\n  </Data>'
                         for i in range(len(MODBUS_VALUES)))
        collect = "".join(f'      Collect "v{i:02d}"\n' for i in range(len(MODBUS_VALUES)))
        hosts = "\n".join(f'  <Host "meter-{i:03d}">\n    Address "{HOST}"\n'
                          f'    Port "{port}"\n    Interval {POLL_S}\n'
                          f'    <Slave 1>\n      Instance "meter"\n{collect}'
                          "    </Slave>\n  </Host>" for i, port in enumerate(modbus_ports))
        lines += ["LoadPlugin modbus", "<Plugin modbus>", data, hosts, "</Plugin>"]
    path = work / "collectd.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(folder: Path) -> tuple[int, list[list[str]]]:
    """Rows written so far under ``folder`` (headers not counted), and the last of each file."""
    rows, last = 0, []
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, newline="") as f:
                lines = list(csv.reader(f))[1:]
            rows += len(lines)
            if lines:
                last.append([path.parent.name, path.name, *lines[-1]])
    return rows, last


def run_collectd(work: Path, snmp_ports: list[int], modbus_ports: list[int],
                 snmp_per_value: bool = False) -> dict:
    binary = shutil.which("collectd", path="/usr/sbin")
    work.mkdir()
    conf = collectd_conf(work, snmp_ports, modbus_ports, snmp_per_value)
    check = subprocess.run([binary, "-t", "-C", str(conf)], capture_output=True, text=True,
                           check=False)
    if check.returncode:
        raise SystemExit(f"collectd refused its config: {check.stderr or check.stdout}")
    log = work / "collectd.log"
    proc = start([binary, "-f", "-C", str(conf)], log)
    per_poll = (len(SNMP_OIDS) if snmp_per_value else 1) if snmp_ports else len(MODBUS_VALUES)
    served = list((SNMP_VALUES if snmp_ports else MODBUS_VALUES).values())

    def agree() -> bool:  # a file a value, gauge-v07-<date> the 8th; or ups12-<date>, 12 a row
        last = csv_rows(work / "csv")[1]
        return bool(last) and all(
            float(row[3]) == served[int(row[1].split("-")[1][1:])] if row[1].startswith("gauge-")
            else sorted(float(v) for v in row[3:]) == sorted(served) for row in last)

    return measured(proc, lambda: csv_rows(work / "csv")[0] / per_poll, log, agree)


# --------------------------------------------------------------------------- snmp_exporter


def exporter_conf(work: Path) -> Path:
    oids = [f"{UPS}.{suffix}" for suffix in SNMP_OIDS]
    module = {"ups12": {"version": 2, "auth": {"community": "public"}, "timeout": "2s",
                        "retries": 0, "get": oids,
                        "metrics": [{"name": f"v{i:02d}", "oid": oid, "type": "gauge"}
                                    for i, oid in enumerate(oids)]}}
    path = work / "snmp.yml"
    path.write_text(json.dumps(module))  # YAML is a superset of JSON
    return path


async def scrape_forever(url: str, targets: list[str], stop: threading.Event,
                         counts: dict[str, int]) -> None:
    """Each target every POLL_S, as Prometheus' scrapes would, spread over the interval,
    until ``stop``."""
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as client:
        async def one(target: str, offset: float) -> None:
            await asyncio.sleep(offset)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = await client.get(url, params={"module": "ups12", "target": target})
                    values = sorted(float(line.split()[-1]) for line in r.text.splitlines()
                                    if line.startswith("v"))
                    good = r.status_code == 200 and values == sorted(SNMP_VALUES.values())
                    counts["good" if good else "bad"] += 1
                except httpx.HTTPError:  # not listening yet, or too slow: no poll, no value
                    pass
                await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - started)))

        await asyncio.gather(*(one(t, POLL_S * i / len(targets)) for i, t in enumerate(targets)))


def run_exporter(work: Path, snmp_ports: list[int]) -> dict:
    binary = shutil.which("prometheus-snmp-exporter")
    work.mkdir()
    port = free_port()
    log = work / "exporter.log"
    proc = start([binary, f"--config.file={exporter_conf(work)}",
                  f"--web.listen-address=127.0.0.1:{port}"], log)
    counts, stop = {"good": 0, "bad": 0}, threading.Event()
    scraper = threading.Thread(target=asyncio.run, args=(scrape_forever(
        f"http://127.0.0.1:{port}/snmp", [f"{HOST}:{p}" for p in snmp_ports], stop, counts),))
    scraper.start()
    try:
        return measured(proc, lambda: counts["good"], log, lambda: counts["bad"] == 0)
    finally:
        stop.set()
        scraper.join()


# --------------------------------------------------------------------------- the floor


def run_floor(work: Path, kind: str, ports: list[int]) -> dict:
    """benchmarks/floors.py's ``kind`` polling ``ports``: its polls answered and its CPU
    seconds over FLOOR_WINDOW_S, both as it counted them at one step of its grid."""
    report, log = work / f"floor-{kind}.report", work / f"floor-{kind}.log"
    proc = start([sys.executable, "-m", "benchmarks.floors", kind, str(POLL_S), str(report),
                  *map(str, ports)], log)

    def counted() -> tuple[float, float]:  # (polls answered, CPU seconds)
        polls, cpu = report.read_text().split() if report.exists() else (0, 0)
        return float(polls), float(cpu)

    try:
        first_poll(proc, lambda: counted()[0], log)
        time.sleep(FLOOR_WARM_UP_S)
        polls0, cpu0 = counted()
        time.sleep(FLOOR_WINDOW_S)
        polls1, cpu1 = counted()
        return {"polls": polls1 - polls0, "cpu_s": cpu1 - cpu0, "values_agree": None}
    finally:
        proc.terminate()
        proc.wait(30)


# --------------------------------------------------------------------------- main


def main() -> None:
    snmpd = shutil.which("snmpd") or shutil.which("snmpd", path="/usr/sbin")
    missing = [package for binary, package in (
        (snmpd, "snmpd"), (shutil.which("collectd", path="/usr/sbin"), "collectd-core"),
        (shutil.which("prometheus-snmp-exporter"), "prometheus-snmp-exporter")) if not binary]
    if missing:
        raise SystemExit(f"missing: install the Debian packages {' '.join(missing)}")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as name:
        work = Path(name)
        snmp_ports, modbus_ports = free_udp_ports(SNMP_DEVICES), free_tcp_ports(MODBUS_DEVICES)
        agents = [start_snmpd(snmpd, work / f"snmpd{i}", snmp_ports[i:i + SNMPD_PORTS])
                  for i in range(0, SNMP_DEVICES, SNMPD_PORTS)]
        modbus_farm = start_child(serve_modbus_many, str(write_profiles(work)[0]), modbus_ports)
        try:
            time.sleep(2)  # the agents bind their ports
            runs = {
                "snmp_aidc": run_aidc(aidc_site(work, "snmp", snmp_ports, []), work, "ups"),
                "snmp_collectd": run_collectd(work / "collectd-snmp", snmp_ports, []),
                "snmp_collectd_per_value": run_collectd(work / "collectd-snmp-12", snmp_ports,
                                                        [], snmp_per_value=True),
                "snmp_exporter": run_exporter(work / "exporter", snmp_ports),
                "modbus_aidc": run_aidc(aidc_site(work, "modbus", [], modbus_ports), work,
                                        "meter"),
                "modbus_collectd": run_collectd(work / "collectd-modbus", [], modbus_ports),
                "snmp_floor": run_floor(work, "snmp", snmp_ports),
                "modbus_floor": run_floor(work, "modbus", modbus_ports),
                "modbus_pymodbus_floor": run_floor(work, "pymodbus", modbus_ports),
            }
        finally:
            for agent in agents:
                agent.terminate()
            modbus_farm.terminate()

    figures, ratios = {}, {}
    print(f"CPU per device poll, whole process, {WINDOW_S:g} s window, polls every {POLL_S} s")
    print(f"  {'system':<26}{'polls':>8}{'CPU s':>9}{'CPU ms/poll':>13}{'values ok':>11}")
    for name, r in runs.items():
        per_poll = 1000 * r["cpu_s"] / r["polls"] if r["polls"] else float("nan")
        figures[f"{name}_cpu_ms_per_poll"] = round(per_poll, 3)
        figures[f"{name}_polls"] = round(r["polls"])
        if r["values_agree"] is not None:
            figures[f"{name}_values_agree"] = r["values_agree"]
        agree = "-" if r["values_agree"] is None else r["values_agree"]
        print(f"  {name:<26}{r['polls']:>8.0f}{r['cpu_s']:>9.3f}{per_poll:>13.3f}{agree!s:>11}")
    for proto, system, baseline in (
            ("snmp", "aidc", "collectd"), ("snmp", "aidc", "collectd_per_value"),
            ("snmp", "aidc", "exporter"), ("modbus", "aidc", "collectd"),
            ("snmp", "floor", "collectd"), ("modbus", "floor", "collectd"),
            ("modbus", "pymodbus_floor", "collectd")):
        ratio = (figures[f"{proto}_{system}_cpu_ms_per_poll"]
                 / figures[f"{proto}_{baseline}_cpu_ms_per_poll"])
        ratios[f"{proto}_{system}_vs_{baseline}"] = round(ratio, 2)
        whose = "target" if system == "aidc" else "aidc's target"
        target = f" ({whose} <= {TARGETS[proto]:g})" if baseline == "collectd" else ""
        print(f"  {proto} {system} / {baseline}: {ratio:.2f}{target}")
    write_result(RESULT, machine_note=f"{SNMP_DEVICES} SNMP + {MODBUS_DEVICES} Modbus devices, "
                 f"{WINDOW_S:g} s windows", figures=figures, ratios=ratios,
                 baseline="collectd (snmp, modbus, csv) and snmp_exporter, same farm, same run",
                 targets={f"{p}_aidc_vs_collectd": f"<= {t:g}" for p, t in TARGETS.items()})


if __name__ == "__main__":
    main()
