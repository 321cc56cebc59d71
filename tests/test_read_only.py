"""Read-only proof: a full poll cycle over every profile sends no write of any kind.

One device per profile in collectors/profiles, three of them behind one Modbus gateway and
the UPS over SNMPv3 authPriv with its keys from the environment, polled by the real
runtime; the simulators record every request they receive.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from aidc.core.config import load_site
from aidc.core.metrics import Quality
from aidc.core.net import free_ports
from aidc.runtime import Runtime
from collectors.profiles import PROFILE_DIR
from simulators.site import SimulatedSite

SITE = """
site: every-profile
defaults: {{poll_s: 0.5, timeout_s: 3}}
model: {{tick_s: 0.5}}
rooms: [{{id: r}}]
devices:
  - {{id: meter, kind: meter, role: facility, protocol: modbus, port: {gw}, modbus: {{unit_id: 1}}, profile: power_meter}}
  - {{id: rect, kind: rectifier, protocol: modbus, port: {gw}, modbus: {{unit_id: 2}}, profile: hvdc_rectifier, rating_kw: 200}}
  - {{id: mf, kind: manifold, protocol: modbus, port: {gw}, modbus: {{unit_id: 3}}, profile: manifold_flow_meter}}
  - id: ups
    kind: ups
    protocol: snmp
    port: {ups}
    profile: ups_rfc1628
    rating_kw: 200
    snmp: {{version: "3", user: ops, auth_protocol: SHA256, auth_key: "${{AIDC_TEST_AUTH}}",
           priv_protocol: AES128, priv_key: "${{AIDC_TEST_PRIV}}"}}
  - {{id: pdu-apc, kind: pdu, protocol: snmp, port: {apc}, profile: pdu_apc_rpdu2, upstream: rect, breaker_a: 100, voltage_v: 415}}
  - {{id: pdu-rar, kind: pdu, protocol: snmp, port: {rar}, profile: pdu_raritan_pdu2, upstream: ups, breaker_a: 100, voltage_v: 415}}
  - {{id: cdu-mb, kind: cdu, protocol: modbus, port: {cdu}, profile: cdu_generic, rated_kw: 100}}
  - {{id: cdu-plc, kind: cdu, protocol: opcua, port: {plc}, profile: cdu_plc_opcua, rated_kw: 100}}
  - {{id: sc, kind: supercap, protocol: opcua, port: {sc}, profile: supercap_opcua, capacitance_f: 20, vmax_v: 400, vmin_v: 280}}
loops: [{{id: l, cdus: [cdu-mb, cdu-plc]}}]
racks:
  - {{id: R1, room: r, row: A, design_kw: 60, feed_a: pdu-apc, feed_b: pdu-rar, loop: l, supercap: sc,
      manifold: {{max_flow_lpm: 100, meter: mf}}}}
"""
READ_FUNCTION_CODES = {1, 2, 3, 4}
READ_PDUS = {"GetRequest", "GetNextRequest", "GetBulkRequest"}
WRITE_SERVICES = {"Write", "Call", "AddNodes", "DeleteNodes", "AddReferences", "DeleteReferences",
                  "HistoryUpdate", "RegisterNodes"}


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("AIDC_TEST_AUTH", "auth-key-for-tests")
    monkeypatch.setenv("AIDC_TEST_PRIV", "priv-key-for-tests")
    names = ("gw", "ups", "apc", "rar", "cdu", "plc", "sc")
    ports = dict(zip(names, free_ports(["udp" if k in ("ups", "apc", "rar") else "tcp" for k in names])))
    (tmp_path / "site.yaml").write_text(SITE.format(**ports))
    return load_site(tmp_path / "site.yaml")


def test_every_profile_is_in_the_site(site):
    assert {d.profile for d in site.devices} == {p.stem for p in PROFILE_DIR.glob("*.yaml")}


def test_a_full_poll_cycle_sends_no_write(site, tmp_path):
    async def run():
        simulated = SimulatedSite(site)
        await simulated.start()
        runtime = Runtime(site, tmp_path / "data")
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop))
        deadline = time.monotonic() + 60  # every device read well 3 times: a full poll cycle
        while min(h.polls_total - h.errors_total for h in runtime.health.values()) < 3:
            assert time.monotonic() < deadline, {h.id: h.error for h in runtime.health.values()}
            await asyncio.sleep(0.1)
        stop.set()
        await task
        await simulated.stop()
        return simulated, runtime

    simulated, runtime = asyncio.run(run())
    servers = {id(s): s for s in simulated.servers.values()}.values()
    for server in servers:
        if hasattr(server, "function_codes_seen"):
            assert server.function_codes_seen and set(server.function_codes_seen) <= READ_FUNCTION_CODES
        elif hasattr(server, "pdu_types_seen"):
            assert server.pdu_types_seen and set(server.pdu_types_seen) <= READ_PDUS
        else:
            assert server.requests["Read"] + server.requests["Publish"] > 0
            assert not WRITE_SERVICES & {k for k, n in server.requests.items() if n}
    # and each profile really read values: the Raritan outlets, the gateway's two units, v3
    good = {(d, m) for (d, m), s in runtime.latest.items() if s.quality is Quality.GOOD}
    assert ("pdu-rar", "power_kw{outlet=24}") in good and ("pdu-rar", "energy_kwh") in good
    assert ("meter", "power_kw") in good and ("rect", "module_state{module=13}") in good
    assert ("ups", "runtime_min") in good and ("cdu-plc", "supply_temp_c") in good


def test_probe_reads_one_device_and_settles_byte_orders(site, tmp_path):
    import os
    import sys

    async def probe(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aidc.cli", "probe", *args, "--site", str(tmp_path / "site.yaml"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ.copy())
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    async def run():
        simulated = SimulatedSite(site)
        await simulated.start()
        try:
            results = [await probe("ups"), await probe("meter", "--byte-orders")]
            await simulated.stop_device("cdu-mb")
            results.append(await probe("cdu-mb"))
            return results
        finally:
            await simulated.stop()

    (ups_rc, ups, ups_err), (meter_rc, meter, _), (dead_rc, dead_out, dead_err) = asyncio.run(run())
    assert ups_rc == 0 and "ups: ups over snmp" in ups, ups_err
    assert [ln.split()[-1] for ln in ups.splitlines() if ln.startswith("runtime_min")] == ["good"]
    # power_meter floats are ABCD: the profile's order is marked, the others shown beside it
    assert meter_rc == 0 and "power_kw: registers" in meter
    orders = [ln.split()[0] for ln in meter.splitlines() if ln.startswith("  ")][:4]
    assert orders == ["ABCD", "CDAB", "BADC", "DCBA"]
    assert "ABCD" in next(ln for ln in meter.splitlines() if "<- profile" in ln)
    assert dead_rc == 2 and dead_out == "" and dead_err.count("\n") == 1 and "cdu-mb" in dead_err
