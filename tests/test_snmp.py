"""SNMP: collector and simulator over real UDP on 127.0.0.1, against each other and net-snmp.

Every expected number is written here by hand from the profiles (collectors/profiles/
ups_rfc1628.yaml, pdu_apc_rpdu2.yaml) and RFC 1628 / PowerNet-MIB scales. net-snmp (Debian
`snmp` for snmpget/snmpwalk, `snmpd` for the agent) is required: missing, the test fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c

from aidc.config import DeviceBase, Pdu, PowerSource, SnmpSettings
from aidc.metrics import Quality, Reading
from aidc.net import free_port
from collectors import DeviceUnreachable, make_collector
from collectors.profiles import load_profile
from collectors.snmp import get_all, get_request, parse_response
from simulators.snmp import SnmpDeviceServer

UPS = "1.3.6.1.2.1.33.1"
APC = "1.3.6.1.4.1.318.1.1.26"
NET_SNMP_ENV = {**os.environ, "MIBS": "", "MIBDIRS": "/nonexistent"}  # numeric OIDs, no MIB noise

UPS_VALUES = {
    "input_voltage_v": 230.0,
    "output_voltage_v": 231.0,
    "output_power_kw": 212.4,  # 70 800 W on each of the three output lines
    "load_pct": 70.8,  # served as 71 % on each line (1 % resolution)
    "on_battery": 1.0,  # upsOutputSource 5 (battery)
    "battery_status": 2.0,
    "battery_charge_pct": 98.0,
    "runtime_min": 12.0,
    "seconds_on_battery_s": 45.0,
    "battery_voltage_v": 545.3,  # 5453 x 0.1 V
    "alarms_present": 1.0,
}
PDU_VALUES = {
    "power_kw": 18.37,  # 1837 x 0.01 kW
    "energy_kwh": 12345.6,  # 123456 x 0.1 kWh
    "current_l1_a": 26.1,
    "current_l2_a": 25.8,
    "current_l3_a": 27.0,
    "voltage_v": 230.0,
    "power_factor": 0.97,
}


def binary(name: str, package: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package '{package}' (make system-deps)")
    return path


def ups_device(port: int, **snmp: object) -> PowerSource:
    settings = SnmpSettings.model_validate(snmp)
    return PowerSource(
        id="ups-1", kind="ups", protocol="snmp", port=port, profile="ups_rfc1628",
        rating_kw=300, snmp=settings,
    )  # fmt: skip


def pdu_device(port: int) -> Pdu:
    return Pdu(
        id="pdu-a01-a", kind="pdu", protocol="snmp", port=port, profile="pdu_apc_rpdu2",
        upstream="ups-1", breaker_a=63, voltage_v=400,
    )  # fmt: skip


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    return {r.metric: r for r in readings}


async def read_once(device: DeviceBase, values: dict) -> list[Reading]:
    """Serve ``values`` on the device's port, read it once with its collector."""
    profile = load_profile(device.profile)
    server = SnmpDeviceServer(profile, "127.0.0.1", device.port, lambda: values)
    await server.start()
    collector = make_collector(device, 1.0)
    try:
        return await collector.read()
    finally:
        await collector.close()
        await server.stop()


# ---------------------------------------------------------------- round trips


def test_ups_round_trip_with_multi_oid_reduce() -> None:
    readings = by_metric(asyncio.run(read_once(ups_device(free_port("udp")), UPS_VALUES)))
    expected = {
        "input_voltage_v": 230.0,
        "output_voltage_v": 231.0,
        "output_power_kw": 212.4,  # sum of 3 x 70 800 W
        "load_pct": 71.0,  # max of 71, 71, 71
        "on_battery": 1.0,
        "battery_status": 2.0,
        "battery_charge_pct": 98.0,
        "runtime_min": 12.0,
        "seconds_on_battery_s": 45.0,
        "battery_voltage_v": 545.3,
        "alarms_present": 1.0,
    }
    assert {m: r.value for m, r in readings.items()} == pytest.approx(expected, abs=1e-9)
    assert all(r.quality is Quality.GOOD for r in readings.values())
    assert readings["output_power_kw"].raw == (70800, 70800, 70800)
    assert readings["on_battery"].raw == 5
    assert readings["battery_voltage_v"].raw == 5453


def test_pdu_round_trip() -> None:
    readings = by_metric(asyncio.run(read_once(pdu_device(free_port("udp")), PDU_VALUES)))
    assert {m: r.value for m, r in readings.items()} == pytest.approx(PDU_VALUES, abs=1e-9)
    assert all(r.quality is Quality.GOOD for r in readings.values())
    raws = {m: r.raw for m, r in readings.items()}
    assert raws == {
        "power_kw": 1837, "energy_kwh": 123456, "current_l1_a": 261, "current_l2_a": 258,
        "current_l3_a": 270, "voltage_v": 230, "power_factor": 97,
    }  # fmt: skip


# ---------------------------------------------------------------- faults, per varbind


def test_no_such_instance_and_sentinel_make_only_their_metric_bad() -> None:
    ups = {**UPS_VALUES, "battery_voltage_v": None}  # no sentinel: noSuchInstance
    del ups["runtime_min"]  # not implemented by this device: noSuchObject
    readings = by_metric(asyncio.run(read_once(ups_device(free_port("udp")), ups)))
    assert readings["battery_voltage_v"] == Reading("battery_voltage_v", None, Quality.BAD)
    assert readings["battery_voltage_v"].raw == "noSuchInstance"
    assert readings["runtime_min"].raw == "noSuchObject"
    assert readings["runtime_min"].quality is Quality.BAD
    good = set(readings) - {"battery_voltage_v", "runtime_min"}
    assert all(readings[m].quality is Quality.GOOD for m in good)
    assert readings["output_power_kw"].value == pytest.approx(212.4)

    pdu = {**PDU_VALUES, "current_l2_a": None}  # APC answers -1 (unsupported)
    readings = by_metric(asyncio.run(read_once(pdu_device(free_port("udp")), pdu)))
    assert readings["current_l2_a"].raw == -1
    assert (readings["current_l2_a"].value, readings["current_l2_a"].quality) == (None, "bad")
    assert readings["current_l1_a"].value == pytest.approx(26.1)
    assert readings["current_l3_a"].quality is Quality.GOOD


def test_out_of_limits_value_is_out_of_range() -> None:
    pdu = {**PDU_VALUES, "power_factor": 1.5}  # profile max 1
    readings = by_metric(asyncio.run(read_once(pdu_device(free_port("udp")), pdu)))
    assert readings["power_factor"].value == pytest.approx(1.5)
    assert readings["power_factor"].quality is Quality.OUT_OF_RANGE


# ---------------------------------------------------------------- requests on the wire


def test_varbinds_per_request_and_read_only() -> None:
    """UPS profile: 11 points over 15 OIDs (power and load have 3 lines each)."""

    async def main() -> dict[int, int]:
        port = free_port("udp")
        server = SnmpDeviceServer(
            load_profile("ups_rfc1628"), "127.0.0.1", port, lambda: UPS_VALUES
        )
        await server.start()
        gets = {}
        for max_varbinds in (24, 6, 1):
            collector = make_collector(ups_device(port, max_varbinds=max_varbinds), 1.0)
            before = server.pdu_types_seen.count("GetRequest")
            await collector.read()
            gets[max_varbinds] = server.pdu_types_seen.count("GetRequest") - before
            await collector.close()
        assert set(server.pdu_types_seen) == {"GetRequest"}  # the collector only ever GETs
        await server.stop()
        return gets

    assert asyncio.run(main()) == {24: 1, 6: 3, 1: 15}  # ceil(15 / max_varbinds)


def test_unreachable_within_timeout_then_recovers_on_the_same_port() -> None:
    async def main() -> None:
        port = free_port("udp")
        server = SnmpDeviceServer(
            load_profile("ups_rfc1628"), "127.0.0.1", port, lambda: UPS_VALUES
        )
        await server.start()
        collector = make_collector(ups_device(port), timeout_s=0.5)
        assert len(await collector.read()) == 11

        await server.stop()  # port closed: ICMP port unreachable
        assert not server.running
        started = time.monotonic()
        with pytest.raises(DeviceUnreachable):
            await collector.read()
        assert time.monotonic() - started < 3

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
            silent.bind(("127.0.0.1", port))
            started = time.monotonic()
            with pytest.raises(DeviceUnreachable, match="no answer within 0.5 s"):
                await collector.read()
            assert 0.45 < time.monotonic() - started < 3

        await server.start()
        readings = by_metric(await collector.read())
        assert readings["output_power_kw"].value == pytest.approx(212.4)
        await collector.close()
        await server.stop()

    asyncio.run(main())


def test_get_all_splits_on_too_big_and_isolates_an_error_index() -> None:
    """RFC 3416 4.2.1: tooBig -> fewer varbinds per request; genErr at index i -> that OID."""
    requests: list[list[str]] = []

    async def agent(oids: list[str]) -> tuple[int, int, dict[str, int | str]]:
        requests.append(oids)
        if len(oids) > 2:
            return 1, 0, {}  # tooBig
        if "1.3.6.1.9.3" in oids:
            return 5, oids.index("1.3.6.1.9.3") + 1, {}  # genErr, error-index is 1-based
        return 0, 0, {oid: int(oid.rsplit(".", 1)[1]) for oid in oids}

    oids = ["1.3.6.1.9.1", "1.3.6.1.9.2", "1.3.6.1.9.3", "1.3.6.1.9.4"]
    raws = asyncio.run(get_all(agent, oids))
    assert raws == {"1.3.6.1.9.1": 1, "1.3.6.1.9.2": 2, "1.3.6.1.9.3": "genErr", "1.3.6.1.9.4": 4}
    assert requests == [oids, oids[:2], oids[2:], ["1.3.6.1.9.4"]]


def test_ber_codec_agrees_with_pyasn1() -> None:
    """The collector's hand-written BER (X.690) against pysnmp/pyasn1's, both directions."""
    oids = ["1.3.6.1.2.1.33.1.2.1.0", "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"]
    wire = get_request(b"public", 70000, [encoder.encode(v2c.ObjectIdentifier(o)) for o in oids])
    message, _ = decoder.decode(wire, asn1Spec=v2c.Message())
    pdu = v2c.apiMessage.get_pdu(message)
    assert isinstance(pdu, rfc1905.GetRequestPDU)
    assert str(v2c.apiMessage.get_community(message)) == "public"
    assert v2c.apiPDU.get_request_id(pdu) == 70000
    assert [str(name) for name, _ in v2c.apiPDU.get_varbinds(pdu)] == oids

    values = [
        rfc1902.Integer32(-1), rfc1902.Integer32(-2147483648), rfc1902.Gauge32(4294967295),
        rfc1902.Counter32(123456), rfc1902.Counter64(2**64 - 1), rfc1902.TimeTicks(100),
        rfc1902.OctetString(b"x" * 200), rfc1905.noSuchObject, rfc1905.noSuchInstance,
        rfc1905.endOfMibView,
    ]  # fmt: skip
    response = v2c.apiPDU.get_response(pdu)
    v2c.apiPDU.set_varbinds(
        response, [(v2c.ObjectIdentifier(f"1.3.6.1.9.{i}"), v) for i, v in enumerate(values)]
    )
    v2c.apiMessage.set_pdu(message, response)
    parsed = parse_response(encoder.encode(message))  # > 255 octets: long-form lengths
    assert (parsed.request_id, parsed.error_status, parsed.error_index) == (70000, 0, 0)
    assert [raw for _, raw in parsed.varbinds] == [
        -1, -2147483648, 4294967295, 123456, 2**64 - 1, 100, "not a number (OCTET STRING)",
        "noSuchObject", "noSuchInstance", "endOfMibView",
    ]  # fmt: skip
    assert parsed.varbinds[9][0] == encoder.encode(v2c.ObjectIdentifier("1.3.6.1.9.9"))[2:]


# ---------------------------------------------------------------- net-snmp reads our simulator


def net_snmp(tool: str, *args: str) -> dict[str, str]:
    """Run snmpget/snmpwalk/snmpbulkwalk; {numeric OID: 'TYPE: value'} (a walk's closing
    endOfMibView line left out)."""
    command = [binary(tool, "snmp"), "-v2c", "-c", "public", "-On", "-t", "2", "-r", "1", *args]
    out = subprocess.run(command, check=False, capture_output=True, text=True, env=NET_SNMP_ENV)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "No more variables left" not in line]
    return dict(line.split(" = ", 1) for line in lines)


def test_net_snmp_reads_the_simulator() -> None:
    async def main() -> None:
        port = free_port("udp")
        ups = {**UPS_VALUES, "battery_voltage_v": None}
        server = SnmpDeviceServer(load_profile("ups_rfc1628"), "127.0.0.1", port, lambda: ups)
        await server.start()
        address = f"127.0.0.1:{port}"
        get = await asyncio.to_thread(
            net_snmp, "snmpget", address, f"{UPS}.4.4.1.4.2", f"{UPS}.2.5.0", "1.3.6.1.2.1.1.2.0"
        )
        assert get == {
            f".{UPS}.4.4.1.4.2": "INTEGER: 70800",
            f".{UPS}.2.5.0": "No Such Instance currently exists at this OID",
            ".1.3.6.1.2.1.1.2.0": f"OID: .{UPS}",
        }
        walk = await asyncio.to_thread(net_snmp, "snmpwalk", address, "1.3.6.1")
        bulk = await asyncio.to_thread(net_snmp, "snmpbulkwalk", address, UPS)
        assert set(server.pdu_types_seen) == {"GetRequest", "GetNextRequest", "GetBulkRequest"}
        await server.stop()

        walk.pop(".1.3.6.1.2.1.1.3.0")  # sysUpTime: Timeticks, changes
        assert walk == {
            ".1.3.6.1.2.1.1.1.0": 'STRING: "aidc simulated ups: ups_rfc1628"',
            ".1.3.6.1.2.1.1.2.0": f"OID: .{UPS}",
            f".{UPS}.2.1.0": "INTEGER: 2",
            f".{UPS}.2.2.0": "INTEGER: 45",
            f".{UPS}.2.3.0": "INTEGER: 12",
            f".{UPS}.2.4.0": "INTEGER: 98",  # .2.5.0 battery voltage: faulty, skipped
            f".{UPS}.3.3.1.3.1": "INTEGER: 230",
            f".{UPS}.4.1.0": "INTEGER: 5",
            f".{UPS}.4.4.1.2.1": "INTEGER: 231",
            f".{UPS}.4.4.1.4.1": "INTEGER: 70800",
            f".{UPS}.4.4.1.4.2": "INTEGER: 70800",
            f".{UPS}.4.4.1.4.3": "INTEGER: 70800",
            f".{UPS}.4.4.1.5.1": "INTEGER: 71",
            f".{UPS}.4.4.1.5.2": "INTEGER: 71",
            f".{UPS}.4.4.1.5.3": "INTEGER: 71",
            f".{UPS}.6.1.0": "Gauge32: 1",
        }
        assert bulk == {oid: v for oid, v in walk.items() if oid.startswith(f".{UPS}.")}

    asyncio.run(main())


def test_read_only_proof_records_a_set() -> None:
    """The simulator's PDU log would show a SET: the read-only assertions above have teeth."""

    async def main() -> list[str]:
        port = free_port("udp")
        server = SnmpDeviceServer(
            load_profile("pdu_apc_rpdu2"), "127.0.0.1", port, lambda: PDU_VALUES
        )
        await server.start()
        command = [binary("snmpset", "snmp"), "-v2c", "-c", "public", "-On", "-t", "0.3", "-r", "0",
                   f"127.0.0.1:{port}", f"{APC}.4.3.1.5.1", "i", "0"]  # fmt: skip
        await asyncio.to_thread(
            subprocess.run, command, check=False, capture_output=True, env=NET_SNMP_ENV
        )
        collector = make_collector(pdu_device(port), 1.0)
        readings = by_metric(await collector.read())
        await collector.close()
        assert readings["power_kw"].value == pytest.approx(18.37)  # nothing was written
        await server.stop()
        return server.pdu_types_seen

    assert asyncio.run(main()) == ["SetRequest", "GetRequest"]


# ---------------------------------------------------------------- our collector reads net-snmp


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """net-snmp's agent with RFC 1628 objects overridden: three unequal output lines."""
    snmpd_bin = binary("snmpd", "snmpd")
    work: Path = tmp_path_factory.mktemp("snmpd")
    port = free_port("udp")
    overrides = {
        "2.1.0": 3, "2.2.0": 120, "2.3.0": 9, "2.4.0": 41, "2.5.0": 4874,
        "3.3.1.3.1": 0, "4.1.0": 5, "4.4.1.2.1": 230,
        "4.4.1.4.1": 70000, "4.4.1.4.2": 71000, "4.4.1.4.3": 72400,
        "4.4.1.5.1": 70, "4.4.1.5.2": 71, "4.4.1.5.3": 72,
    }  # fmt: skip
    lines = [
        f"agentAddress udp:127.0.0.1:{port}",
        "rocommunity public 127.0.0.1",
        "createUser opsha SHA authpass-sha AES privpass-sha",
        "createUser opsha256 SHA-256 authpass-256 AES privpass-256",
        "rouser opsha priv",
        "rouser opsha256 priv",
        *(f"override .{UPS}.{suffix} integer {raw}" for suffix, raw in overrides.items()),
        f"override .{UPS}.6.1.0 unsigned 2",
    ]
    (work / "snmpd.conf").write_text("\n".join(lines) + "\n")
    command = [snmpd_bin, "-f", "-C", "-c", str(work / "snmpd.conf"), "-Lf", str(work / "log"),
               f"--persistentDir={work / 'persist'}"]  # fmt: skip
    process = subprocess.Popen(command, env=NET_SNMP_ENV, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    probe = [binary("snmpget", "snmp"), "-v2c", "-c", "public", "-t", "0.2", "-r", "0",
             f"127.0.0.1:{port}", f"{UPS}.4.1.0"]  # fmt: skip
    while subprocess.run(probe, check=False, capture_output=True, env=NET_SNMP_ENV).returncode:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"snmpd did not start: {(work / 'log').read_text()}")
    yield port
    process.terminate()
    process.wait(5)


SNMPD_EXPECTED = {
    "input_voltage_v": 0.0,
    "output_voltage_v": 230.0,
    "output_power_kw": 213.4,  # 70.0 + 71.0 + 72.4 kW
    "load_pct": 72.0,  # the most loaded of 70, 71, 72 %
    "on_battery": 1.0,
    "battery_status": 3.0,  # low
    "battery_charge_pct": 41.0,
    "runtime_min": 9.0,
    "seconds_on_battery_s": 120.0,
    "battery_voltage_v": 487.4,
    "alarms_present": 2.0,
}


@pytest.mark.parametrize(
    "snmp",
    [
        {},
        {"version": "3", "user": "opsha", "auth_protocol": "SHA", "auth_key": "authpass-sha",
         "priv_protocol": "AES128", "priv_key": "privpass-sha"},
        {"version": "3", "user": "opsha256", "auth_protocol": "SHA256",
         "auth_key": "authpass-256", "priv_protocol": "AES128", "priv_key": "privpass-256"},
    ],
    ids=["v2c", "v3-sha-aes128", "v3-sha256-aes128"],
)  # fmt: skip
def test_collector_reads_net_snmp_agent(snmpd: int, snmp: dict) -> None:
    async def main() -> list[Reading]:
        collector = make_collector(ups_device(snmpd, **snmp), 2.0)
        try:
            return await collector.read()
        finally:
            await collector.close()

    readings = by_metric(asyncio.run(main()))
    assert {m: r.value for m, r in readings.items()} == pytest.approx(SNMPD_EXPECTED, abs=1e-9)
    assert readings["output_power_kw"].raw == (70000, 71000, 72400)


def test_wrong_v3_key_is_reported_not_read(snmpd: int) -> None:
    device = ups_device(
        snmpd, version="3", user="opsha256", auth_protocol="SHA256", auth_key="not-the-key",
        priv_protocol="AES128", priv_key="privpass-256",
    )  # fmt: skip

    async def main() -> None:
        collector = make_collector(device, 1.0)
        with pytest.raises(DeviceUnreachable, match="SNMPv3"):
            await collector.read()
        await collector.close()

    asyncio.run(main())
