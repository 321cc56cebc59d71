"""Benchmark: CPU per device poll of the Modbus and SNMP collectors, against named baselines.

Everything polls agents on 127.0.0.1 that run in other processes, so that only the collector
side is timed: ``time.process_time`` of this process (CPU ms per poll), and wall time.

1. Modbus: a 25-point profile (25 adjacent float32 input registers, written to a temp dir)
   served by ``simulators.modbus.ModbusDeviceServer`` in a ``multiprocessing`` child. Our
   ``ModbusCollector`` (one coalesced 50-register FC04 read, decoded into Readings) against
   the baseline "one request per value": pymodbus' ``AsyncModbusTcpClient`` issuing 25 separate
   2-register reads, as collectd's modbus plugin does (decoded with ``struct`` only, which
   favours the baseline). A third row, pymodbus sending the one 50-register read without any
   decoding, is the floor a collector built on pymodbus can reach.
2. SNMP: 12 INTEGER scalars (UPS-MIB objects) served by net-snmp's ``snmpd`` with ``override``
   lines (or, without snmpd, by ``simulators.snmp.SnmpDeviceServer`` in a child process). Our
   ``SnmpCollector`` (v2c, one GetRequest) against pysnmp 7's high-level ``get_cmd`` with the
   same 12 varbinds in one request, its SnmpEngine, target and varbinds made once and reused.
3. Many devices: one poll round of 200 ``SnmpCollector`` s at once (``asyncio.gather``), each
   with its own UDP socket to its own agent port (snmpd processes listening on 100 ports each,
   as one snmpd binds only the first 128 ports of its ``agentAddress``; or 200 simulated
   agents in one child process).

Repetitions of a project figure and its baseline are interleaved, so that load from other
work on the machine falls on both; each figure is the median over the repetitions. Values
read are checked against the values served (``*_values_agree``). The whole process against
collectd and snmp_exporter, polling one farm in the same run, is ``benchmarks/versus.py``.
Prints a table and writes benchmarks/results/collectors.json.
A benchmark never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import pymodbus
import pysnmp
from pymodbus.client import AsyncModbusTcpClient
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
)

from benchmarks.common import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aidc.core.config import Meter, PowerSource
from aidc.core.metrics import Quality
from aidc.core.net import free_port
from collectors import DeviceUnreachable
from collectors.modbus import ModbusCollector
from collectors.profiles import load_profile
from collectors.snmp import SnmpCollector

HOST = "127.0.0.1"
MODBUS_POINTS = 25
MODBUS_VALUES = {f"value_{i:02d}": 100.0 + 0.25 * i for i in range(MODBUS_POINTS)}  # exact
UPS = "1.3.6.1.2.1.33.1"
SNMP_OIDS = {  # 12 UPS-MIB (RFC 1628) instances -> the INTEGER served
    "2.1.0": 2, "2.2.0": 0, "2.3.0": 23, "2.4.0": 87, "2.5.0": 5440, "3.3.1.3.1": 230,
    "3.3.1.5.1": 74100, "4.1.0": 3, "4.4.1.2.1": 231, "4.4.1.4.1": 70800, "4.4.1.5.1": 71,
    "6.1.0": 0,
}  # fmt: skip
SNMP_VALUES = {f"oid_{i:02d}": float(raw) for i, raw in enumerate(SNMP_OIDS.values())}
DEVICES = 200
REPEATS = 7  # repetitions of every figure; the median is reported
MODBUS_POLLS = 100  # sequential polls per repetition
SNMP_POLLS = 200
ROUNDS = 21  # poll rounds of all DEVICES (about 30 ms each)
TIMEOUT_S = 2.0
SNMPD_PORTS = 100  # agentAddress endpoints per snmpd: net-snmp 5.9 binds only the first 128
RESULT = Path(__file__).resolve().parent / "results" / "collectors.json"
NET_SNMP_ENV = {**os.environ, "MIBS": "", "MIBDIRS": "/nonexistent"}  # numeric OIDs only

Poll = Callable[[], Awaitable[Any]]


# ------------------------------------------------------------------------------ profiles


def write_profiles(work: Path) -> tuple[Path, Path]:
    """The two temporary profiles: 25 adjacent float32 input registers; 12 SNMP scalars."""
    modbus = work / "bench_modbus_25.yaml"
    lines = ["name: bench_modbus_25", "kind: meter", "protocol: modbus", "points:"]
    lines += [
        f"  - {{metric: {name}, table: input, address: {2 * i}, type: float32}}"
        for i, name in enumerate(MODBUS_VALUES)
    ]
    modbus.write_text("\n".join(lines) + "\n")
    snmp = work / "bench_snmp_12.yaml"
    lines = ["name: bench_snmp_12", "kind: ups", "protocol: snmp", "points:"]
    lines += [
        f"  - {{metric: {name}, oid: {UPS}.{suffix}}}"
        for name, suffix in zip(SNMP_VALUES, SNMP_OIDS)
    ]
    snmp.write_text("\n".join(lines) + "\n")
    return modbus, snmp


# ------------------------------------------------------------------------------ agents


def free_udp_ports(n: int) -> list[int]:
    """``n`` distinct UDP ports free right now (``free_port`` one by one may repeat one)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def serve_modbus(profile: str, port: int, ready: EventType) -> None:
    """Child process: one simulated Modbus TCP device, until terminated."""
    from simulators.modbus import ModbusDeviceServer

    async def run() -> None:
        server = ModbusDeviceServer(load_profile(profile), HOST, port, lambda: MODBUS_VALUES)
        await server.start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(run())


def serve_snmp(profile: str, ports: list[int], ready: EventType) -> None:
    """Child process: one simulated SNMP agent per port, until terminated."""
    from simulators.snmp import SnmpDeviceServer

    async def run() -> None:
        for port in ports:
            await SnmpDeviceServer(load_profile(profile), HOST, port, lambda: SNMP_VALUES).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(run())


def start_child(target: Callable[..., None], *args: Any) -> multiprocessing.Process:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=target, args=(*args, ready), daemon=True)
    child.start()
    if not ready.wait(30):
        child.terminate()
        raise RuntimeError(f"{target.__name__} did not start")
    return child


def start_snmpd(binary: str, work: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    """net-snmp's agent on every port (at most SNMPD_PORTS), answering the 12 overridden
    objects; its config, log and persistent dir in ``work``."""
    work.mkdir()
    lines = [
        "agentAddress " + ",".join(f"udp:{HOST}:{port}" for port in ports),
        f"rocommunity public {HOST}",
        *(f"override .{UPS}.{suffix} integer {raw}" for suffix, raw in SNMP_OIDS.items()),
    ]
    (work / "snmpd.conf").write_text("\n".join(lines) + "\n")
    command = [binary, "-f", "-C", "-c", str(work / "snmpd.conf"), "-Lf", str(work / "snmpd.log"),
               f"--persistentDir={work / 'persist'}"]  # fmt: skip
    return subprocess.Popen(command, env=NET_SNMP_ENV, stdout=subprocess.DEVNULL)


async def wait_for_snmpd(
    agent: subprocess.Popen[bytes], port: int, work: Path, profile: Path
) -> None:
    """Until the agent answers a GET on ``port`` (it binds every port before answering)."""
    probe = SnmpCollector(ups_device(port, profile), load_profile(str(profile)), 0.2)
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                await probe.read()
                return
            except DeviceUnreachable:
                if agent.poll() is not None or time.monotonic() > deadline:
                    log = (work / "snmpd.log").read_text()
                    raise RuntimeError(f"snmpd did not start: {log}") from None
                await asyncio.sleep(0.1)
    finally:
        await probe.close()


# ------------------------------------------------------------------------------ measuring


async def per_poll(poll: Poll, polls: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per poll over ``polls`` sequential polls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(polls):
        await poll()
    return (
        (time.process_time() - cpu) * 1000.0 / polls,
        (time.perf_counter() - wall) * 1000.0 / polls,
    )


async def compare(polls: dict[str, Poll], n: int) -> dict[str, tuple[float, float]]:
    """Median (CPU ms, wall ms) per poll of each, repetitions interleaved."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in polls}
    for poll in polls.values():
        await per_poll(poll, max(1, n // 10))  # warm-up: connections, caches
    for _ in range(REPEATS):
        for name, poll in polls.items():
            samples[name].append(await per_poll(poll, n))
    return {
        name: (statistics.median(c for c, _ in s), statistics.median(w for _, w in s))
        for name, s in samples.items()
    }


def good_values(readings: list[Any]) -> dict[str, float | None]:
    return {r.metric: r.value if r.quality == Quality.GOOD else None for r in readings}


# ------------------------------------------------------------------------------ Modbus


async def bench_modbus(profile_path: Path, port: int) -> dict[str, Any]:
    device = Meter(id="bench-meter", kind="meter", protocol="modbus", port=port,
                   profile=str(profile_path))  # fmt: skip
    collector = ModbusCollector(device, load_profile(str(profile_path)), TIMEOUT_S)
    client = AsyncModbusTcpClient(HOST, port=port, timeout=TIMEOUT_S, retries=0)
    await client.connect()
    float32 = struct.Struct(">f")

    async def per_value() -> list[float]:  # collectd's way: one request per value
        values = []
        for i in range(MODBUS_POINTS):
            response = await client.read_input_registers(2 * i, count=2, device_id=1)
            values.append(float32.unpack(struct.pack(">2H", *response.registers))[0])
        return values

    async def one_read() -> Any:  # the floor: pymodbus, one 50-register read, no decoding
        return await client.read_input_registers(0, count=2 * MODBUS_POINTS, device_id=1)

    expected = list(MODBUS_VALUES.values())
    agree = list(good_values(await collector.read()).values()) == expected
    agree &= await per_value() == expected
    result = await compare(
        {"collector": collector.read, "per_value": per_value, "one_read": one_read},
        MODBUS_POLLS,
    )
    requests = len(collector.plan)
    await collector.close()
    client.close()
    return {"times": result, "agree": agree, "requests": requests}


# ------------------------------------------------------------------------------ SNMP


def ups_device(port: int, profile_path: Path, n: int = 0) -> PowerSource:
    return PowerSource(id=f"bench-ups-{n}", kind="ups", protocol="snmp", port=port,
                       profile=str(profile_path), rating_kw=500.0)  # fmt: skip


async def bench_snmp(profile_path: Path, port: int) -> dict[str, Any]:
    profile = load_profile(str(profile_path))
    collector = SnmpCollector(ups_device(port, profile_path), profile, TIMEOUT_S)
    engine = SnmpEngine()
    community = CommunityData("public", mpModel=1)  # v2c
    target = await UdpTransportTarget.create((HOST, port), timeout=TIMEOUT_S, retries=0)
    varbinds = [ObjectType(ObjectIdentity(f"{UPS}.{suffix}")) for suffix in SNMP_OIDS]
    context = ContextData()

    async def hlapi() -> list[int]:
        indication, status, _, answer = await get_cmd(engine, community, target, context,
                                                      *varbinds)  # fmt: skip
        if indication or status:
            raise RuntimeError(f"hlapi get_cmd: {indication or status}")
        return [int(value) for _, value in answer]

    expected = list(SNMP_VALUES.values())
    agree = list(good_values(await collector.read()).values()) == expected
    agree &= [float(v) for v in await hlapi()] == expected
    result = await compare({"collector": collector.read, "hlapi": hlapi}, SNMP_POLLS)
    await collector.close()
    engine.close_dispatcher()
    return {"times": result, "agree": agree}


async def bench_many(profile_path: Path, ports: list[int]) -> dict[str, Any]:
    """One poll round of len(ports) SNMP devices at once, ROUNDS times."""
    profile = load_profile(str(profile_path))
    collectors = [
        SnmpCollector(ups_device(port, profile_path, n), profile, TIMEOUT_S)
        for n, port in enumerate(ports)
    ]

    results: list[Any] = []  # every poll's readings, or its exception

    async def round_() -> None:
        results.extend(
            await asyncio.gather(*(c.read() for c in collectors), return_exceptions=True)
        )

    await round_()  # warm-up: opens the sockets
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c, w = await per_poll(round_, 1)
        cpu.append(c)
        wall.append(w)
    failed = sum(isinstance(r, BaseException) for r in results)
    expected = list(SNMP_VALUES.values())
    agree = failed == 0 and all(list(good_values(r).values()) == expected for r in results)
    for collector in collectors:
        await collector.close()
    return {"cpu": statistics.median(cpu), "wall": statistics.median(wall),
            "agree": agree, "failed": failed}  # fmt: skip


# ------------------------------------------------------------------------------ run


async def run(work: Path, snmpd_binary: str | None) -> dict[str, Any]:
    modbus_profile, snmp_profile = write_profiles(work)
    modbus_port = free_port("tcp")
    snmp_ports = free_udp_ports(DEVICES + 1)  # one, then DEVICES more
    children: list[multiprocessing.Process] = []
    snmpd: list[subprocess.Popen[bytes]] = []
    try:
        children.append(start_child(serve_modbus, str(modbus_profile), modbus_port))
        if snmpd_binary is not None:
            for k in range(0, len(snmp_ports), SNMPD_PORTS):
                ports = snmp_ports[k : k + SNMPD_PORTS]
                snmpd.append(start_snmpd(snmpd_binary, work / f"snmpd-{k}", ports))
                await wait_for_snmpd(snmpd[-1], ports[0], work / f"snmpd-{k}", snmp_profile)
        else:
            children.append(start_child(serve_snmp, str(snmp_profile), snmp_ports))
        modbus = await bench_modbus(modbus_profile, modbus_port)
        snmp = await bench_snmp(snmp_profile, snmp_ports[0])
        many = await bench_many(snmp_profile, snmp_ports[1:])
    finally:
        for child in children:
            child.terminate()
            child.join(5)
        for agent in snmpd:
            agent.terminate()
            agent.wait(5)
    return {"modbus": modbus, "snmp": snmp, "many": many}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", choices=("auto", "snmpd", "simulator"), default="auto",
                        help="SNMP agent: net-snmp snmpd (auto: when installed) or "
                             "simulators.snmp")  # fmt: skip
    agent = parser.parse_args().agent
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    snmpd = None if agent == "simulator" else shutil.which("snmpd", path=search)
    agent = "snmpd" if snmpd else "simulator"  # without snmpd installed: the simulator
    with tempfile.TemporaryDirectory(prefix="aidc-bench-") as tmp:
        r = asyncio.run(run(Path(tmp), snmpd))

    mb, sn, many = r["modbus"]["times"], r["snmp"]["times"], r["many"]
    agents = (f"snmpd on {DEVICES} UDP ports, {SNMPD_PORTS} per process" if agent == "snmpd"
              else f"{DEVICES} SnmpDeviceServer agents in one child process")  # fmt: skip
    figures = {
        "modbus_25_values_ms": round(mb["collector"][0], 4),
        "modbus_per_value_baseline_ms": round(mb["per_value"][0], 4),
        "modbus_pymodbus_one_read_ms": round(mb["one_read"][0], 4),
        "modbus_25_values_wall_ms": round(mb["collector"][1], 4),
        "modbus_per_value_baseline_wall_ms": round(mb["per_value"][1], 4),
        "modbus_requests_per_poll": r["modbus"]["requests"],
        "snmp_12_values_ms": round(sn["collector"][0], 4),
        "snmp_hlapi_baseline_ms": round(sn["hlapi"][0], 4),
        "snmp_12_values_polls_per_s": round(1000.0 / sn["collector"][0]),
        "snmp_hlapi_baseline_polls_per_s": round(1000.0 / sn["hlapi"][0]),
        "snmp_12_values_wall_ms": round(sn["collector"][1], 4),
        "snmp_hlapi_baseline_wall_ms": round(sn["hlapi"][1], 4),
        "snmp_200_devices_round_wall_ms": round(many["wall"], 2),
        "snmp_200_devices_round_cpu_ms": round(many["cpu"], 2),
        "snmp_200_devices_cpu_ms_per_device": round(many["cpu"] / DEVICES, 4),
        "snmp_200_devices_polls_per_s": round(DEVICES / many["wall"] * 1000.0),
        "snmp_200_devices_failed_polls": many["failed"],
        "modbus_values_agree": r["modbus"]["agree"],
        "snmp_values_agree": r["snmp"]["agree"] and many["agree"],
    }
    ratios = {
        "modbus_speedup_vs_per_value": round(mb["per_value"][0] / mb["collector"][0], 1),
        "modbus_collector_overhead_vs_pymodbus_one_read": round(
            mb["collector"][0] / mb["one_read"][0], 2
        ),
        "snmp_speedup_vs_hlapi": round(sn["hlapi"][0] / sn["collector"][0], 1),
    }
    result = {
        "name": "collectors",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(
            f"pymodbus {pymodbus.__version__}, pysnmp {pysnmp.__version__}; "
            f"agents: simulators.modbus (child process), {agents}"
        ),
        "figures": figures,
        "ratios": ratios,
    }

    row = "  {:<44}{:>12}{:>12}{:>12}"
    print(f"collector CPU per device poll (this process only; medians of {REPEATS} runs of "
          f"{MODBUS_POLLS} Modbus / {SNMP_POLLS} SNMP polls; SNMP agent: {agent})")  # fmt: skip
    print(row.format("implementation", "CPU ms/poll", "wall ms", "polls/s CPU"))
    for name, (cpu, wall) in (
        ("Modbus 25 float32: ModbusCollector", mb["collector"]),
        ("  baseline: pymodbus, 25 reads of 2 regs", mb["per_value"]),
        ("  floor: pymodbus, 1 read of 50, no decode", mb["one_read"]),
        ("SNMP 12 INTEGER: SnmpCollector (v2c)", sn["collector"]),
        ("  baseline: pysnmp hlapi get_cmd", sn["hlapi"]),
    ):
        print(row.format(name, f"{cpu:.4f}", f"{wall:.3f}", f"{1000.0 / cpu:.0f}"))
    print(f"  Modbus requests per poll: {figures['modbus_requests_per_poll']}; speedup vs one "
          f"request per value: {ratios['modbus_speedup_vs_per_value']}x")  # fmt: skip
    print(f"  SNMP speedup vs hlapi: {ratios['snmp_speedup_vs_hlapi']}x")
    print(f"{DEVICES} SNMP devices polled at once ({agents}), median of {ROUNDS} rounds:")
    print(f"  round wall {many['wall']:.1f} ms, CPU {many['cpu']:.1f} ms "
          f"({many['cpu'] / DEVICES:.4f} ms per device), "
          f"{figures['snmp_200_devices_polls_per_s']} polls/s, "
          f"{many['failed']} polls failed")  # fmt: skip
    print(f"  values read agree with the values served: Modbus {r['modbus']['agree']}, "
          f"SNMP {r['snmp']['agree']}, {DEVICES} devices {many['agree']}")  # fmt: skip
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {RESULT}")


if __name__ == "__main__":
    main()
