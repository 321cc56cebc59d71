"""SNMP: collector and simulator over real UDP on 127.0.0.1, against each other, net-snmp and NUT.

Every expected number is written here by hand from the profiles (collectors/profiles/
ups_rfc1628.yaml, pdu_apc_rpdu2.yaml, pdu_raritan_pdu2.yaml) and the RFC 1628 / PowerNet-MIB /
PDU2-MIB scales. Required third-party programs fail the test when missing, naming the Debian
package: `snmp` (snmpget, snmpwalk, snmpbulkwalk, snmpset), `snmpd` (the agent) and
`nut-snmp` (NUT's snmp-ups driver).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c

from aidc.core.config import DeviceBase, Pdu, PowerSource, SnmpSettings
from aidc.core.metrics import Quality, Reading
from aidc.core.net import free_port, free_ports
from collectors import DeviceUnreachable, make_collector
from collectors.profiles import ProfileError, load_profile
from collectors.snmp import (
    Column,
    Counter,
    bulk_request,
    carry,
    get_all,
    get_request,
    oid_text,
    parse_response,
    walk,
)
from simulators import snmp as sim
from simulators.snmp import SnmpDeviceServer
from tests.conftest import while_the_other_waits

UPS = "1.3.6.1.2.1.33.1"
APC = "1.3.6.1.4.1.318.1.1.26"
NET_SNMP_ENV = {**os.environ, "MIBS": "", "MIBDIRS": "/nonexistent"}  # numeric OIDs, no MIB noise

UPS_VALUES = {
    "input_voltage_v": 230.0,
    "input_power_kw": 222.3,  # 74 100 W on each of the three input lines
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
PDU_VALUES = {  # APC rPDU2: device totals, then the phase table rows
    "power_kw": 18.37,  # 1837 x 0.01 kW
    "energy_kwh": 12345.6,  # 123456 x 0.1 kWh
    "power_factor": 0.97,
    "current_a{phase=1}": 26.1,  # 261 x 0.1 A
    "current_a{phase=2}": 25.8,
    "current_a{phase=3}": 27.0,
    "voltage_v{phase=1}": 230.0,
    "voltage_v{phase=2}": 231.0,
    "voltage_v{phase=3}": 229.0,
    "phase_load_state{phase=1}": 2.0,  # normal
    "phase_load_state{phase=2}": 2.0,
    "phase_load_state{phase=3}": 3.0,  # near overload
}
PDU_RAWS = {
    "power_kw": 1837, "energy_kwh": 123456, "power_factor": 97,
    "current_a{phase=1}": 261, "current_a{phase=2}": 258, "current_a{phase=3}": 270,
    "voltage_v{phase=1}": 230, "voltage_v{phase=2}": 231, "voltage_v{phase=3}": 229,
    "phase_load_state{phase=1}": 2, "phase_load_state{phase=2}": 2, "phase_load_state{phase=3}": 3,
}  # fmt: skip
RARITAN_VALUES = {
    "power_kw": 7.215,  # 7215 W on inlet 1
    "energy_kwh": 4294967.0,  # 4 294 967 000 Wh: 296 Wh below the 32-bit rollover
    "voltage_v{inlet=1}": 230.0,
    "current_a{inlet=1}": 31.3,  # 313 x 0.1 A
    **{f"current_a{{outlet={n}}}": n / 10 for n in range(1, 49)},  # outlet n: n x 0.1 A
    **{f"power_kw{{outlet={n}}}": n * 0.023 for n in range(1, 49)},  # outlet n: 23 n W
}
V3_USERS = [
    {"user": "ops256", "auth_protocol": "SHA256", "auth_key": "authpass-256",
     "priv_protocol": "AES128", "priv_key": "privpass-256"},
    {"user": "opsauth", "auth_protocol": "SHA", "auth_key": "authpass-sha"},
    {"user": "opsplain"},
]  # fmt: skip


def binary(name: str, package: str) -> str:
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin:/lib/nut"
    path = shutil.which(name, path=search)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package '{package}' (make system-deps)")
    return path


def ups_device(port: int, **snmp: object) -> PowerSource:
    settings = SnmpSettings.model_validate(snmp)
    return PowerSource(
        id="ups-1", kind="ups", protocol="snmp", port=port, profile="ups_rfc1628",
        rating_kw=300, snmp=settings,
    )  # fmt: skip


def pdu_device(port: int, profile: str = "pdu_apc_rpdu2", **snmp: object) -> Pdu:
    return Pdu(
        id="pdu-a01-a", kind="pdu", protocol="snmp", port=port, profile=profile,
        upstream="ups-1", breaker_a=63, voltage_v=400, snmp=SnmpSettings.model_validate(snmp),
    )  # fmt: skip


def by_key(readings: list[Reading]) -> dict[str, Reading]:
    return {r.key: r for r in readings}


def values_of(readings: list[Reading]) -> dict[str, float | None]:
    return {r.key: r.value for r in readings}


async def read_once(
    device: DeviceBase,
    values: dict,
    v3_users: list[dict] | None = None,
    refuse: frozenset[str] = frozenset(),
) -> list[Reading]:
    """Serve ``values`` on the device's port (``refuse``: metrics answered genErr), read it
    once with its collector."""
    profile = load_profile(device.profile)
    port = device.port
    simulator = SnmpDeviceServer(profile, "127.0.0.1", port, lambda: values, v3_users=v3_users)
    simulator.refuse = set(refuse)
    await simulator.start()
    collector = make_collector(device, 5.0)  # patient: these tests read, they do not time
    try:
        return await collector.read()
    finally:
        await collector.close()
        await simulator.stop()


# ---------------------------------------------------------------- round trips


def test_ups_round_trip_with_multi_oid_reduce() -> None:
    readings = by_key(asyncio.run(read_once(ups_device(free_port("udp")), UPS_VALUES)))
    expected = {
        "input_voltage_v": 230.0,
        "input_power_kw": 222.3,  # sum of 3 x 74 100 W
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


def test_pdu_phase_table_round_trip() -> None:
    """APC rPDU2: three device totals by GET, the phase table by one GETBULK, rows labelled."""
    readings = asyncio.run(read_once(pdu_device(free_port("udp")), PDU_VALUES))
    assert [r.key for r in readings] == list(PDU_VALUES)  # profile order, rows in index order
    assert values_of(readings) == pytest.approx(PDU_VALUES, abs=1e-9)
    assert {r.key: r.raw for r in readings} == PDU_RAWS
    assert all(r.quality is Quality.GOOD for r in readings)
    assert by_key(readings)["current_a{phase=2}"].labels == {"phase": "2"}
    assert by_key(readings)["current_a{phase=2}"].metric == "current_a"


def test_raritan_outlet_table_round_trip() -> None:
    """PDU2-MIB: the row index sits before the sensor type (``*``); 48 outlets, 1 inlet."""
    readings = by_key(asyncio.run(read_once(pdu_device(free_port("udp"), "pdu_raritan_pdu2"),
                                            RARITAN_VALUES)))  # fmt: skip
    assert len(readings) == 4 + 2 * 48
    assert values_of(list(readings.values())) == pytest.approx(RARITAN_VALUES, abs=1e-9)
    assert readings["power_kw"].raw == 7215
    assert readings["energy_kwh"].raw == 4294967000  # an Unsigned32 near its top
    assert readings["current_a{outlet=37}"].raw == 37
    assert readings["power_kw{outlet=37}"].raw == 851  # 37 x 23 W
    assert readings["power_kw{outlet=37}"].labels == {"outlet": "37"}
    assert all(r.quality is Quality.GOOD for r in readings.values())


# ---------------------------------------------------------------- tables: the walk


def test_walk_is_one_getbulk_and_count_caps_it() -> None:
    """The three phase columns share one GetBulkRequest. A chain with 5 phases is cut at the
    profile's count (3); a single-phase PDU's walk stops at the end of each column."""

    async def main(values: dict) -> tuple[list[Reading], collections.Counter[str]]:
        port = free_port("udp")
        server = SnmpDeviceServer(load_profile("pdu_apc_rpdu2"), "127.0.0.1", port, lambda: values)
        await server.start()
        collector = make_collector(pdu_device(port), 1.0)
        readings = await collector.read()
        await collector.close()
        await server.stop()
        return readings, server.pdu_types_seen

    chain = {**PDU_VALUES, **{f"{m}{{phase={n}}}": 1.0 for m in ("current_a", "voltage_v",
             "phase_load_state") for n in (4, 5)}}  # fmt: skip
    readings, pdus = asyncio.run(main(chain))
    assert pdus == collections.Counter(["GetRequest", "GetBulkRequest"])
    assert values_of(readings) == pytest.approx(PDU_VALUES, abs=1e-9)

    single = {k: v for k, v in PDU_VALUES.items() if "{" not in k or "phase=1" in k}
    readings, pdus = asyncio.run(main(single))
    assert pdus == collections.Counter(["GetRequest", "GetBulkRequest"])
    assert values_of(readings) == pytest.approx(single, abs=1e-9)


def test_getbulks_per_poll_follow_max_varbinds() -> None:
    """Raritan, 48 outlets: the outlet column holds 96 instances (2 sensors served per outlet)
    and the inlet column 4. max_varbinds bounds each response (columns x max-repetitions);
    the simulator, like a real agent, stops a response at 64 varbinds."""

    async def main() -> dict[int, int]:
        port = free_port("udp")
        profile = load_profile("pdu_raritan_pdu2")
        server = SnmpDeviceServer(profile, "127.0.0.1", port, lambda: RARITAN_VALUES)
        await server.start()
        bulks = {}
        for max_varbinds in (24, 64, 128):
            collector = make_collector(pdu_device(port, profile.name, max_varbinds=max_varbinds), 1)
            before = server.pdu_types_seen["GetBulkRequest"]
            assert len(await collector.read()) == 100
            bulks[max_varbinds] = server.pdu_types_seen["GetBulkRequest"] - before
            await collector.close()
        await server.stop()
        return bulks

    # 24: 12 repetitions for each column (inlet done), then the outlets alone 24 at a time:
    #     12 + 24 + 24 + 24 + 12 varbinds -> 5 GETBULKs
    # 64: 32 each, then 64 alone: 32 + 64, and one more to find the end of the table -> 3
    # 128: asks 64 each, then 128, but gets 64 varbinds at most: the same 3
    assert asyncio.run(main()) == {24: 5, 64: 3, 128: 3}


def test_walk_carries_on_after_short_answers_and_errors() -> None:
    """RFC 3416 4.2.3: an agent may answer fewer repetitions than asked; genErr names the
    column (error-index) that failed; tooBig halves the repetitions. Hand-made agent."""
    requests: list[tuple[list[str], int]] = []
    table = {f"1.9.{c}.{r}": 10 * c + r for c in (1, 2, 3) for r in (1, 2, 3, 4)}

    def arcs(oid: str) -> tuple[int, ...]:
        return tuple(map(int, oid.split(".")))

    order = sorted(table, key=arcs)

    def successor(oid: str) -> tuple[str, int | str]:
        later = [o for o in order if arcs(o) > arcs(oid)]
        return (later[0], table[later[0]]) if later else (oid, "endOfMibView")

    async def agent(oids: list[str], repetitions: int) -> tuple[int, int, list]:
        requests.append((oids, repetitions))
        if repetitions > 4:
            return 1, 0, []  # tooBig
        if "1.9.3.2" in oids:
            return 5, oids.index("1.9.3.2") + 1, []  # genErr at that column
        cursors, out = list(oids), []
        for _ in range(min(repetitions, 2)):  # never more than 2 repetitions
            step = [successor(c) for c in cursors]
            out += step
            cursors = [o for o, _ in step]
        return 0, 0, out

    columns = [Column(f"1.9.{c}", 0, 10) for c in (1, 2, 3)]
    asyncio.run(walk(agent, columns, budget=30))
    assert [c.values for c in columns[:2]] == [
        {f"1.9.1.{r}": 10 + r for r in (1, 2, 3, 4)},
        {f"1.9.2.{r}": 20 + r for r in (1, 2, 3, 4)},
    ]
    assert (columns[2].values, columns[2].error) == ({"1.9.3.1": 31, "1.9.3.2": 32}, "genErr")
    assert requests == [
        (["1.9.1", "1.9.2", "1.9.3"], 10),  # 30 varbinds: tooBig
        (["1.9.1", "1.9.2", "1.9.3"], 5),  # 15: tooBig
        (["1.9.1", "1.9.2", "1.9.3"], 2),  # 7 // 3 columns
        (["1.9.1.2", "1.9.2.2", "1.9.3.2"], 2),  # genErr, error-index 3: column 3 ends
        (["1.9.1.2", "1.9.2.2"], 3),  # 7 // 2; only 2 repetitions come back
        (["1.9.1.4", "1.9.2.4"], 3),  # past the ends: 1.9.2.1 and 1.9.3.1
    ]


def test_row_missing_from_one_column_reads_bad_and_never_vanishes() -> None:
    """Phase 2's current instance is absent from the table (a walk finds nothing): it reads
    bad. Then phase 3 leaves the table altogether: it still reads bad, not nothing."""

    async def main() -> tuple[list[Reading], list[Reading]]:
        values = {k: v for k, v in PDU_VALUES.items() if k != "current_a{phase=2}"}
        port = free_port("udp")
        server = SnmpDeviceServer(load_profile("pdu_apc_rpdu2"), "127.0.0.1", port, lambda: values)
        await server.start()
        collector = make_collector(pdu_device(port), 1.0)
        first = await collector.read()
        for key in [k for k in values if "phase=3" in k]:
            del values[key]
        second = await collector.read()
        await collector.close()
        await server.stop()
        return first, second

    first, second = asyncio.run(main())
    assert by_key(first)["current_a{phase=2}"] == Reading("current_a", None, Quality.BAD,
                                                          labels={"phase": "2"})  # fmt: skip
    assert by_key(first)["current_a{phase=2}"].raw == "missing from the walk"
    assert sum(r.quality is Quality.GOOD for r in first) == 11
    assert [r.key for r in second] == [r.key for r in first]
    bad = {r.key for r in second if r.quality is Quality.BAD}
    assert bad == {"current_a{phase=2}", "current_a{phase=3}", "voltage_v{phase=3}",
                   "phase_load_state{phase=3}"}  # fmt: skip


def test_rows_point_needs_one_column(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text(
        "name: bad\nkind: pdu\nprotocol: snmp\npoints:\n"
        "  - {metric: current_a, oid: [1.3.6.1.9.1, 1.3.6.1.9.2], rows: {label: phase, count: 3}}\n"
    )
    with pytest.raises(ProfileError, match="a rows point walks one column: give one oid"):
        make_collector(pdu_device(free_port("udp"), str(profile)), 1.0)


# ---------------------------------------------------------------- counters


@pytest.mark.parametrize(
    ("last", "raw", "bits", "restarted", "expected"),
    [
        (Counter(4294967000, 0), 200, 32, False, (Counter(200, 2**32), "wrap")),  # +496
        (Counter(200, 2**32), 900, 32, False, (Counter(900, 2**32), "")),  # carried on
        (Counter(5000, 0), 10, 32, False, (Counter(10, 0), "reset")),  # fell by < 2^31
        (Counter(2**31 + 10, 0), 5, 32, False, (Counter(5, 2**32), "wrap")),  # by 2^31 + 5
        (Counter(2**31, 0), 0, 32, False, (Counter(0, 0), "reset")),  # by exactly half
        (Counter(4294967000, 0), 200, 32, True, (Counter(200, 0), "reset")),  # agent restarted
        (Counter(2**64 - 616, 2**64), 100, 64, False, (Counter(100, 2**65), "wrap")),  # +716
        (None, 77, 32, False, (Counter(77, 0), "")),
    ],
)  # fmt: skip
def test_counter_carry(
    last: Counter | None, raw: int, bits: int, restarted: bool, expected: tuple
) -> None:
    assert carry(last, raw, bits, restarted) == expected


def test_energy_counter_wraps_and_resets_through_the_simulator() -> None:
    """Raritan activeEnergy, Unsigned32 Wh, served modulo 2^32: 4 294 967 000 -> 200 is a wrap
    of +496 Wh; counting on to raw 4 294 966 704 (8 589 934 kWh in all, near the second
    rollover) is not. Then the agent restarts (sysUpTime back to 0) and reads 200 Wh: the same
    kind of fall, now a reset."""

    async def main() -> list[Reading]:
        values = dict(RARITAN_VALUES)
        port = free_port("udp")
        profile = load_profile("pdu_raritan_pdu2")
        server = SnmpDeviceServer(profile, "127.0.0.1", port, lambda: values)
        await server.start()
        collector = make_collector(pdu_device(port, profile.name), 1.0)
        energy = []
        for kwh in (4294967.0, 4294967.496, 8589934.0):
            values["energy_kwh"] = kwh
            energy.append(by_key(await collector.read())["energy_kwh"])
        await asyncio.sleep(0.1)  # sysUpTime counts hundredths of a second
        await collector.read()
        await server.stop()
        await server.start()  # a reboot: sysUpTime starts again
        values["energy_kwh"] = 0.2
        energy.append(by_key(await collector.read())["energy_kwh"])
        await collector.close()
        await server.stop()
        return energy

    energy = asyncio.run(main())
    assert [r.raw for r in energy] == [4294967000, 200, 4294966704, 200]
    assert [r.value for r in energy] == pytest.approx([4294967.0, 4294967.496, 8589934.0, 0.2])
    assert all(r.quality is Quality.GOOD for r in energy)


# ---------------------------------------------------------------- faults, per varbind


def test_no_such_instance_and_sentinel_make_only_their_metric_bad() -> None:
    ups = {**UPS_VALUES, "battery_voltage_v": None}  # no sentinel: noSuchInstance
    del ups["runtime_min"]  # not implemented by this device: noSuchObject
    readings = by_key(asyncio.run(read_once(ups_device(free_port("udp")), ups)))
    assert readings["battery_voltage_v"] == Reading("battery_voltage_v", None, Quality.BAD)
    assert readings["battery_voltage_v"].raw == "noSuchInstance"
    assert readings["runtime_min"].raw == "noSuchObject"
    assert readings["runtime_min"].quality is Quality.BAD
    good = set(readings) - {"battery_voltage_v", "runtime_min"}
    assert all(readings[m].quality is Quality.GOOD for m in good)
    assert readings["output_power_kw"].value == pytest.approx(212.4)

    pdu = {**PDU_VALUES, "current_a{phase=2}": None}  # APC answers -1 (unsupported)
    readings = by_key(asyncio.run(read_once(pdu_device(free_port("udp")), pdu)))
    assert readings["current_a{phase=2}"].raw == -1
    assert (readings["current_a{phase=2}"].value, readings["current_a{phase=2}"].quality) == (
        None, Quality.BAD)  # fmt: skip
    assert readings["current_a{phase=1}"].value == pytest.approx(26.1)
    assert sum(r.quality is Quality.GOOD for r in readings.values()) == 11


def ber(tag: int, content: bytes) -> bytes:
    """One BER TLV (definite length), built by hand: pyasn1 would refuse what it carries."""
    size = len(content)
    length = bytes([size]) if size < 0x80 else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + (
        size.to_bytes((size.bit_length() + 7) // 8, "big"))
    return bytes([tag]) + length + content


def ber_int(value: int) -> bytes:
    return ber(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


class HostileAgent(asyncio.DatagramProtocol):
    """An SNMPv2c 'agent' that first sends garbage, then answers every GET with an INTEGER of
    10^40 (no SMI type holds it) for one OID and 1 for the others."""

    def __init__(self, huge_oid: str) -> None:
        self.huge_oid = huge_oid

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        request, _ = decoder.decode(data, asn1Spec=v2c.Message())
        pdu = v2c.apiMessage.get_pdu(request)
        varbinds = b"".join(
            ber(0x30, encoder.encode(oid) + ber_int(10**40 if str(oid) == self.huge_oid else 1))
            for oid, _ in v2c.apiPDU.get_varbinds(pdu))  # fmt: skip
        request_id = int(v2c.apiPDU.get_request_id(pdu))
        response = ber(0xA2, ber_int(request_id) + ber_int(0) + ber_int(0) + ber(0x30, varbinds))
        message = ber(0x30, ber_int(1) + ber(0x04, b"public") + response)
        for junk in (b"\x30\x03\x02\x01", os.urandom(40), b"\xff" * 10):
            self.transport.sendto(junk, addr)
        self.transport.sendto(message, addr)


def test_a_value_no_smi_type_holds_is_bad_and_garbage_is_counted(caplog) -> None:
    """A peer answering garbage datagrams and an INTEGER of 10^40 (it crashed the decode
    with OverflowError, an 'internal error' for the whole device): that point is bad with its
    raw value kept, the others read, and the garbage is counted and logged sparingly."""
    huge = "1.3.6.1.2.1.33.1.2.3.0"  # upsEstimatedMinutesRemaining

    async def run():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: HostileAgent(huge), local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        c = make_collector(ups_device(port), timeout_s=5.0)
        try:
            return [await c.read() for _ in range(4)], c._session.bad_responses
        finally:
            await c.close()
            transport.close()

    polls, bad = asyncio.run(run())
    got = by_key(polls[-1])
    assert got["runtime_min"].quality is Quality.BAD and got["runtime_min"].raw == 10**40
    assert got["battery_charge_pct"].quality is Quality.GOOD
    assert bad >= 3 * 4  # every junk datagram counted ...
    logged = caplog.text.count("event=snmp_bad_response")
    assert 1 <= logged <= 2  # ... and logged at the 1st and the 10th only


def test_out_of_limits_value_is_out_of_range() -> None:
    pdu = {**PDU_VALUES, "power_factor": 1.5}  # profile max 1
    readings = by_key(asyncio.run(read_once(pdu_device(free_port("udp")), pdu)))
    assert readings["power_factor"].value == pytest.approx(1.5)
    assert readings["power_factor"].quality is Quality.OUT_OF_RANGE


def test_refused_metric_answers_gen_err_for_it_alone() -> None:
    """A failing sensor board (``refuse``): genErr at its varbind. By GET only that metric is
    bad; in a GETBULK the whole column's rows are, the other columns read on."""
    ups = by_key(asyncio.run(read_once(ups_device(free_port("udp")), UPS_VALUES,
                                       refuse=frozenset({"battery_voltage_v"}))))  # fmt: skip
    failed = ups["battery_voltage_v"]
    assert (failed.value, failed.quality, failed.raw) == (None, Quality.BAD, "genErr")
    assert sum(r.quality is Quality.GOOD for r in ups.values()) == 11  # 12 points, 1 refused

    pdu = asyncio.run(read_once(pdu_device(free_port("udp")), PDU_VALUES,
                                refuse=frozenset({"current_a{phase=2}"})))  # fmt: skip
    bad = {r.key: r.raw for r in pdu if r.quality is Quality.BAD}
    assert bad == dict.fromkeys(["current_a{phase=1}", "current_a{phase=2}", "current_a{phase=3}"],
                                "genErr")  # fmt: skip
    assert by_key(pdu)["voltage_v{phase=3}"].value == 229.0


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
            before = server.pdu_types_seen["GetRequest"]
            await collector.read()
            gets[max_varbinds] = server.pdu_types_seen["GetRequest"] - before
            await collector.close()
        assert set(server.pdu_types_seen) == {"GetRequest"}  # the collector only ever GETs
        await server.stop()
        return gets

    assert asyncio.run(main()) == {24: 1, 6: 3, 1: 18}  # ceil(18 OIDs / max_varbinds)


def test_unreachable_within_timeout_then_recovers_on_the_same_port() -> None:
    async def main() -> None:
        port = free_port("udp")
        server = SnmpDeviceServer(
            load_profile("ups_rfc1628"), "127.0.0.1", port, lambda: UPS_VALUES
        )
        await server.start()
        collector = make_collector(ups_device(port), timeout_s=0.5)
        assert len(await collector.read()) == 12

        await server.stop()  # port closed: told by the timeout (the socket is not connected)
        assert not server.running
        started = time.monotonic()
        with pytest.raises(DeviceUnreachable, match="no answer within 0.5 s"):
            await collector.read()
        assert time.monotonic() - started >= 0.45  # its whole timeout

        await server.start()
        readings = by_key(await collector.read())
        assert readings["output_power_kw"].value == pytest.approx(212.4)
        await collector.close()
        await server.stop()

    asyncio.run(main())


def open_sockets() -> set[str]:
    """The sockets this process holds (``socket:[inode]``): compared as sets, so that another
    thread closing one of its own meanwhile changes nothing here."""
    links = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            links.add(os.readlink(f"/proc/self/fd/{fd}"))
    return {link for link in links if link.startswith("socket:")}


def test_every_v2c_device_is_polled_through_one_socket() -> None:
    """200 PDUs polled together hold one UDP socket, not 200 (a socket per device ran out of
    file descriptors at 20,000 devices), and it closes with the last collector."""
    async def main() -> tuple[set[str], set[str], set[str]]:
        ports = free_ports(["udp"] * 200)
        servers = [SnmpDeviceServer(load_profile("pdu_apc_rpdu2"), "127.0.0.1", p,
                                    lambda: PDU_VALUES) for p in ports]
        for server in servers:
            await server.start()
        before = open_sockets()
        collectors = [make_collector(pdu_device(p), timeout_s=5.0) for p in ports]
        polls = await asyncio.gather(*(c.read() for c in collectors))
        during = open_sockets()
        for c in collectors:
            await c.close()
        await asyncio.sleep(0)  # a transport closes its socket on the loop's next turn
        after = open_sockets()
        for server in servers:
            await server.stop()
        assert all(by_key(r)["power_kw"].value == pytest.approx(PDU_VALUES["power_kw"])
                   for r in polls)
        return before, during, after

    before, during, after = asyncio.run(main())
    opened = during - before
    assert len(opened) == 1
    assert not opened & after


def test_the_shared_socket_reads_every_waiting_answer_at_once() -> None:
    """Answers that queued in the socket while the loop was busy are all read at its next
    wake-up, before their requests' timers fire: asyncio's datagram transport reads one a
    turn of the loop, and at 4,000 PDUs a loop held half a second timed out thousands."""
    import socket

    from collectors.snmp import SharedSocket

    async def main() -> int:
        shared = await SharedSocket.acquire(socket.AF_INET)
        read: list[bytes] = []
        shared.datagram_received = lambda data, addr: read.append(data)  # type: ignore[method-assign]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for n in range(500):  # the loop is busy here: they wait in the socket
                peer.sendto(b"answer %d" % n, ("127.0.0.1", shared.sock.getsockname()[1]))
            for _ in range(3):  # three turns of the loop
                await asyncio.sleep(0)
        shared.release()
        return len(read)

    assert asyncio.run(main()) == 500


class AnswerFromElsewhere(asyncio.DatagramProtocol):
    """An 'agent' whose answers come from another port than the one asked (a spoofed or
    stray response): the collector must not take them."""

    def __init__(self, other: asyncio.DatagramTransport) -> None:
        self.other = other

    def datagram_received(self, data: bytes, addr) -> None:
        request, _ = decoder.decode(data, asn1Spec=v2c.Message())
        pdu = v2c.apiMessage.get_pdu(request)
        varbinds = b"".join(ber(0x30, encoder.encode(oid) + ber_int(1))
                            for oid, _ in v2c.apiPDU.get_varbinds(pdu))
        request_id = int(v2c.apiPDU.get_request_id(pdu))
        response = ber(0xA2, ber_int(request_id) + ber_int(0) + ber_int(0) + ber(0x30, varbinds))
        self.other.sendto(ber(0x30, ber_int(1) + ber(0x04, b"public") + response), addr)


def test_an_answer_from_another_address_is_not_taken() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
        asked, _ = await loop.create_datagram_endpoint(lambda: AnswerFromElsewhere(other),
                                                       local_addr=("127.0.0.1", 0))
        c = make_collector(ups_device(asked.get_extra_info("sockname")[1]), timeout_s=0.5)
        try:
            with pytest.raises(DeviceUnreachable, match="no answer within 0.5 s"):
                await c.read()
        finally:
            await c.close()
            asked.close()
            other.close()

    asyncio.run(main())


class LosesEachRequestOnce(asyncio.DatagramProtocol):
    """A link to an agent that loses the first copy of every request: only a collector
    that sends a request again is answered."""

    def __init__(self, agent_port: int) -> None:
        self.agent = ("127.0.0.1", agent_port)
        self.lost: set[bytes] = set()
        self.client: tuple | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if addr == self.agent:
            self.transport.sendto(data, self.client)
        elif data in self.lost:
            self.client = addr
            self.transport.sendto(data, self.agent)
        else:
            self.lost.add(data)


def test_a_lost_request_is_sent_again_and_its_answer_taken() -> None:
    """UDP loses datagrams: a request unanswered for half the timeout goes out once more
    (the same request id), and the answer to that copy is the poll's."""
    async def main() -> tuple[dict[str, Reading], int]:
        server = SnmpDeviceServer(load_profile("ups_rfc1628"), "127.0.0.1", free_port("udp"),
                                  lambda: UPS_VALUES)  # fmt: skip
        await server.start()
        link, lossy = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: LosesEachRequestOnce(server.port), local_addr=("127.0.0.1", 0))
        c = make_collector(ups_device(link.get_extra_info("sockname")[1]), timeout_s=2.0)
        try:
            return by_key(await c.read()), len(lossy.lost)
        finally:
            await c.close()
            link.close()
            await server.stop()

    readings, lost = asyncio.run(main())
    assert lost >= 1
    assert {r.quality for r in readings.values()} == {Quality.GOOD}
    assert readings["output_power_kw"].value == pytest.approx(212.4)


@pytest.mark.parametrize("version", ["2c", "3"])
def test_a_slow_device_never_delays_another(version: str) -> None:
    """One device answers a minute late (``delay_s``), a second one at once: polled together
    (asyncio.gather), the second one's whole poll ends while the first still waits."""
    snmp, users = {}, None
    if version == "3":
        snmp = {"version": "3", **V3_USERS[1]}
        users = V3_USERS

    async def main() -> None:
        ups = load_profile("ups_rfc1628")
        servers = [SnmpDeviceServer(ups, "127.0.0.1", free_port("udp"), lambda: UPS_VALUES,
                                    v3_users=users) for _ in range(2)]  # fmt: skip
        for server in servers:
            await server.start()
        slow, prompt = [make_collector(ups_device(s.port, **snmp), 30.0) for s in servers]
        await asyncio.gather(slow.read(), prompt.read())  # v3: engine ids discovered
        servers[0].delay_s = 60.0
        readings = await while_the_other_waits(prompt.read(), slow.read())
        for collector in (slow, prompt):
            await collector.close()
        for server in servers:
            await server.stop()
        assert isinstance(readings, list) and len(readings) == 12

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
    tlvs = [encoder.encode(v2c.ObjectIdentifier(o)) for o in oids]
    message, _ = decoder.decode(get_request(b"public", 70000, tlvs), asn1Spec=v2c.Message())
    pdu = v2c.apiMessage.get_pdu(message)
    assert isinstance(pdu, rfc1905.GetRequestPDU)
    assert str(v2c.apiMessage.get_community(message)) == "public"
    assert v2c.apiPDU.get_request_id(pdu) == 70000
    assert [str(name) for name, _ in v2c.apiPDU.get_varbinds(pdu)] == oids

    bulk, _ = decoder.decode(bulk_request(b"private", 128, tlvs, 300), asn1Spec=v2c.Message())
    bulk_pdu = v2c.apiMessage.get_pdu(bulk)
    assert isinstance(bulk_pdu, rfc1905.GetBulkRequestPDU)
    assert v2c.apiPDU.get_request_id(bulk_pdu) == 128
    assert v2c.apiBulkPDU.get_non_repeaters(bulk_pdu) == 0
    assert v2c.apiBulkPDU.get_max_repetitions(bulk_pdu) == 300
    assert [str(name) for name, _ in v2c.apiBulkPDU.get_varbinds(bulk_pdu)] == oids

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

    for oid in ("1.3.6.1.4.1.13742.6.5.4.3.1.4.1.48.5", "2.999.4294967295.0", "0.39.128"):
        assert oid_text(encoder.encode(v2c.ObjectIdentifier(oid))[2:]) == oid


# ---------------------------------------------------------------- SNMPv3 (USM) with the simulator


@pytest.mark.parametrize(
    "snmp",
    [
        {"user": "ops256", "auth_protocol": "SHA256", "auth_key": "authpass-256",
         "priv_protocol": "AES128", "priv_key": "privpass-256"},
        {"user": "opsauth", "auth_protocol": "SHA", "auth_key": "authpass-sha"},
        {"user": "opsplain"},
    ],
    ids=["authPriv-sha256-aes128", "authNoPriv-sha", "noAuthNoPriv"],
)  # fmt: skip
def test_collector_reads_simulator_over_v3(snmp: dict) -> None:
    device = pdu_device(free_port("udp"), version="3", **snmp)
    readings = asyncio.run(read_once(device, PDU_VALUES, v3_users=V3_USERS))
    assert values_of(readings) == pytest.approx(PDU_VALUES, abs=1e-9)
    assert all(r.quality is Quality.GOOD for r in readings)


@pytest.mark.parametrize(
    ("snmp", "reason"),
    [
        ({"auth_key": "not-the-key"}, "Wrong SNMP PDU digest"),
        ({"priv_key": "not-the-key"}, "ciphertext is broken"),
        ({"user": "nobody"}, "Unknown USM user"),
    ],
    ids=["auth-key", "priv-key", "user"],
)
def test_wrong_v3_credentials_fail_cleanly(snmp: dict, reason: str) -> None:
    credentials = {**V3_USERS[0], **snmp}
    device = pdu_device(free_port("udp"), version="3", **credentials)
    with pytest.raises(DeviceUnreachable, match=f"SNMPv3 .*{reason}"):  # a report, no timeout
        asyncio.run(read_once(device, PDU_VALUES, v3_users=V3_USERS))


# ---------------------------------------------------------------- net-snmp reads our simulator


def net_snmp(tool: str, *args: str, version: str = "-v2c") -> dict[str, str]:
    """Run snmpget/snmpwalk/snmpbulkwalk; {numeric OID: 'TYPE: value'} (a walk's closing
    endOfMibView or "End of MIB" line left out). ``args``: credentials, address, OIDs."""
    command = [binary(tool, "snmp"), version, "-On", "-t", "2", "-r", "1", *args]
    if version == "-v2c":
        command[2:2] = ["-c", "public"]
    out = subprocess.run(command, check=False, capture_output=True, text=True, env=NET_SNMP_ENV)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "No more variables left" not in line]
    return dict(line.split(" = ", 1) for line in lines if " = " in line)


@pytest.mark.parametrize("value", [
    *(rfc1902.Integer32(n) for n in (0, 1, 127, 128, 255, 256, -1, -128, -129, -(2**31), 2**31 - 1)),
    rfc1902.Counter32(2**32 - 1), rfc1902.Gauge32(2**31), rfc1902.Unsigned32(0),
    rfc1902.TimeTicks(4_000_000_000), rfc1902.Counter64(2**64 - 1),
    rfc1902.OctetString("aidc"), rfc1902.ObjectIdentifier("1.3.6.1.4.1.318"),
    rfc1905.noSuchObject, rfc1905.noSuchInstance, rfc1905.endOfMibView, sim.V2C_NULL,
])
def test_the_simulators_own_encoding_of_a_value_reads_back_as_that_value(value) -> None:
    """pyasn1 reads it back as the same type and value; the bytes are pyasn1's, but for a
    negative number whose first octet pyasn1 pads (-128: ff 80), where ours take the fewest
    octets that X.690 8.3.2 asks for."""
    ours = sim._value_ber(value)
    decoded, rest = decoder.decode(ours, asn1Spec=type(value)())
    assert (rest, decoded.tagSet, decoded) == (b"", value.tagSet, value)
    if not isinstance(value, rfc1902.Integer32) or value >= 0:
        assert ours == encoder.encode(value)
    else:
        assert ours[1] == (~int(value)).bit_length() // 8 + 1  # -128: 1 octet, -129: 2


@pytest.mark.parametrize("oid", [(1, 3, 6, 1, 2, 1, 1, 3, 0), (2, 100, 3), (0, 39),
                                 (1, 3, 6, 1, 4, 1, 13742, 6, 5, 4, 3, 1, 4, 1, 2**32 - 1, 16383)])
def test_the_simulators_own_oid_encoding_is_pyasn1s_both_ways(oid) -> None:
    encoded = encoder.encode(rfc1902.ObjectName(oid))
    assert sim._oid_ber(oid) == encoded
    assert sim._arcs(encoded[2:]) == oid


def test_the_simulators_v2c_answers_byte_for_byte_as_through_pyasn1(monkeypatch) -> None:
    """Each request answered by the simulator's own codec, then by pysnmp's message API
    (pyasn1) on the same MIB: the same message, a genErr and a wrong community included."""
    server = SnmpDeviceServer(load_profile("pdu_apc_rpdu2"), "127.0.0.1", 0, lambda: PDU_VALUES)
    server._mib = sim.ProfileMib(server.profile, server.values)  # (no socket: answered directly)
    endpoint = sim.CommunityEndpoint(server)

    def request(tag: int, oids: list[str], fields=(0, 0), community=b"public", rid=2**31 - 1):
        varbinds = b"".join(sim._ber(0x30, sim._oid_ber(sim.parse_oid(o)) + b"\x05\x00")
                            for o in oids)
        pdu = b"".join(sim._ber_integer(0x02, n) for n in (rid, *fields))
        return sim._ber(0x30, b"\x02\x01\x01" + sim._ber(0x04, community)
                        + sim._ber(tag, pdu + sim._ber(0x30, varbinds)))

    scalars = [f"{APC}.4.3.1.5.1", f"{APC}.4.3.1.9.1", f"{APC}.9.9.9.0"]  # the last: no object
    requests = [request(0xA0, scalars), request(0xA1, [APC, f"{APC}.6.3.1.5"], rid=0),
                request(0xA5, [f"{APC}.4.3.1.5.1", f"{APC}.6.3.1.5", f"{APC}.6.3.1.6"], (1, 10)),
                request(0xA5, [f"{APC}.6"], (0, 200)), request(0xA0, []),  # no varbind: none
                request(0xA0, scalars, community=b"x")]
    ours = [endpoint._respond(r) for r in requests]
    server.refuse = {"power_kw"}
    ours.append(endpoint._respond(requests[0]))
    monkeypatch.setattr(sim.V2cRequest, "parse", lambda data: None)
    server.refuse = set()
    theirs = [endpoint._respond(r) for r in requests]
    server.refuse = {"power_kw"}
    theirs.append(endpoint._respond(requests[0]))
    assert ours == theirs
    assert ours[-2] is None and all(ours[:-2]) and ours[-1]
    assert decoder.decode(ours[-1], asn1Spec=v2c.Message())[0]["data"][
        "response"]["error-status"] == 5  # genErr
    assert server.pdu_types_seen == {"GetRequest": 6, "GetNextRequest": 2, "GetBulkRequest": 4}


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
        walked = await asyncio.to_thread(net_snmp, "snmpwalk", address, "1.3.6.1")
        bulk = await asyncio.to_thread(net_snmp, "snmpbulkwalk", address, UPS)
        v1 = await asyncio.to_thread(net_snmp, "snmpwalk", "-c", "public", address, UPS,
                                     version="-v1")  # fmt: skip
        assert set(server.pdu_types_seen) == {"GetRequest", "GetNextRequest", "GetBulkRequest"}
        await server.stop()

        walked.pop(".1.3.6.1.2.1.1.3.0")  # sysUpTime: Timeticks, changes
        assert walked == {
            ".1.3.6.1.2.1.1.1.0": 'STRING: "aidc simulated ups: ups_rfc1628"',
            ".1.3.6.1.2.1.1.2.0": f"OID: .{UPS}",
            f".{UPS}.1.1.0": 'STRING: "aidc"',  # upsIdentManufacturer
            f".{UPS}.1.2.0": 'STRING: "simulated ups_rfc1628"',  # upsIdentModel
            f".{UPS}.2.1.0": "INTEGER: 2",
            f".{UPS}.2.2.0": "INTEGER: 45",
            f".{UPS}.2.3.0": "INTEGER: 12",
            f".{UPS}.2.4.0": "INTEGER: 98",  # .2.5.0 battery voltage: faulty, skipped
            f".{UPS}.3.3.1.3.1": "INTEGER: 230",
            f".{UPS}.3.3.1.5.1": "INTEGER: 74100",
            f".{UPS}.3.3.1.5.2": "INTEGER: 74100",
            f".{UPS}.3.3.1.5.3": "INTEGER: 74100",
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
        assert bulk == {oid: v for oid, v in walked.items() if oid.startswith(f".{UPS}.")}
        assert v1 == bulk

    asyncio.run(main())


def test_net_snmp_reads_the_simulator_over_v3() -> None:
    """snmpget and snmpbulkwalk with authPriv, SHA-256 and AES-128 (RFC 7860, RFC 3826), the
    PDU's phase table included; a wrong key is refused."""
    priv = ["-l", "authPriv", "-u", "ops256", "-a", "SHA-256", "-A", "authpass-256",
            "-x", "AES", "-X", "privpass-256"]  # fmt: skip

    async def main() -> None:
        port = free_port("udp")
        profile = load_profile("pdu_apc_rpdu2")
        server = SnmpDeviceServer(profile, "127.0.0.1", port, lambda: PDU_VALUES, v3_users=V3_USERS)
        await server.start()
        address = f"127.0.0.1:{port}"
        get = await asyncio.to_thread(net_snmp, "snmpget", *priv, address, f"{APC}.4.3.1.5.1",
                                      f"{APC}.6.3.1.5.2", version="-v3")  # fmt: skip
        table = await asyncio.to_thread(net_snmp, "snmpbulkwalk", *priv, address,
                                        f"{APC}.6.3.1", version="-v3")  # fmt: skip
        wrong = [*priv[:7], "not-the-key", *priv[8:]]
        command = [binary("snmpget", "snmp"), "-v3", *wrong, "-t", "1", "-r", "0", address,
                   f"{APC}.4.3.1.5.1"]  # fmt: skip
        refused = await asyncio.to_thread(
            subprocess.run, command, check=False, capture_output=True, text=True, env=NET_SNMP_ENV
        )
        await server.stop()
        assert get == {f".{APC}.4.3.1.5.1": "INTEGER: 1837", f".{APC}.6.3.1.5.2": "INTEGER: 258"}
        assert table == {
            f".{APC}.6.3.1.{column}.{phase}": f"INTEGER: {PDU_RAWS[f'{metric}{{phase={phase}}}']}"
            for column, metric in ((4, "phase_load_state"), (5, "current_a"), (6, "voltage_v"))
            for phase in (1, 2, 3)
        }
        assert refused.returncode != 0
        assert "Authentication failure" in refused.stderr

    asyncio.run(main())


def test_read_only_proof_records_a_set() -> None:
    """The simulator's PDU log would show a SET: the read-only assertions above have teeth."""

    async def main() -> collections.Counter[str]:
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
        readings = by_key(await collector.read())
        await collector.close()
        assert readings["power_kw"].value == pytest.approx(18.37)  # nothing was written
        await server.stop()
        return server.pdu_types_seen

    seen = asyncio.run(main())
    assert seen == collections.Counter(["SetRequest", "GetRequest", "GetBulkRequest"])


# ---------------------------------------------------------------- NUT reads our UPS simulator


def test_nut_snmp_ups_reads_the_ups_simulator(tmp_path: Path) -> None:
    """NUT's snmp-ups driver (Debian nut-snmp), IETF mapping (RFC 1628), reads battery charge
    and runtime as we serve them. It runs in its dump mode, no NUT service involved:
    ``snmp-ups -s aidc -d 1 -x port=127.0.0.1:PORT -x mibs=ietf -x community=public``: ``-s``
    configures from the command line (no ups.conf), ``-d 1`` dumps the variables after one
    update and exits. NUT_CONFPATH and NUT_STATEPATH point into a temp dir, so nothing of the
    system's NUT is read or written; as root, ``-u root`` keeps the driver from switching to
    the ``nut`` account. It speaks SNMPv1 unless told otherwise: our v1 path (RFC 3584) is
    what it reads. It finds an RFC 1628 device by its upsIdentModel, which the simulator
    serves."""
    driver = binary("snmp-ups", "nut-snmp")
    ups = {**UPS_VALUES, "battery_charge_pct": 87.0, "runtime_min": 23.0}

    async def main() -> subprocess.CompletedProcess:
        port = free_port("udp")
        server = SnmpDeviceServer(load_profile("ups_rfc1628"), "127.0.0.1", port, lambda: ups)
        await server.start()
        command = [driver, "-s", "aidc", "-d", "1", "-x", f"port=127.0.0.1:{port}",
                   "-x", "mibs=ietf", "-x", "community=public"]  # fmt: skip
        if os.geteuid() == 0:
            command += ["-u", "root"]
        env = {**os.environ, "NUT_CONFPATH": str(tmp_path), "NUT_STATEPATH": str(tmp_path)}
        out = await asyncio.to_thread(
            subprocess.run, command, check=False, capture_output=True, text=True, env=env,
            timeout=30,
        )  # fmt: skip
        await server.stop()
        return out

    out = asyncio.run(main())
    assert out.returncode == 0, out.stderr
    dump = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert dump["battery.charge"] == "87"  # upsEstimatedChargeRemaining, %
    assert dump["battery.runtime"] == "1380"  # upsEstimatedMinutesRemaining 23 min x 60 s
    assert dump["ups.status"] == "OB"  # upsOutputSource 5: on battery
    assert dump["ups.model"] == "simulated ups_rfc1628"


# ---------------------------------------------------------------- our collector reads net-snmp


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """net-snmp's agent with RFC 1628 objects overridden: three unequal output lines."""
    snmpd_bin = binary("snmpd", "snmpd")
    work: Path = tmp_path_factory.mktemp("snmpd")
    port = free_port("udp")
    overrides = {
        "2.1.0": 3, "2.2.0": 120, "2.3.0": 9, "2.4.0": 41, "2.5.0": 4874,
        "3.3.1.3.1": 0, "3.3.1.5.1": 0, "3.3.1.5.2": 0, "3.3.1.5.3": 0,
        "4.1.0": 5, "4.4.1.2.1": 230,
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
    deadline = time.monotonic() + 30  # a loaded machine starts it slowly
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
    "input_power_kw": 0.0,  # on battery: no input on any line
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

    readings = by_key(asyncio.run(main()))
    assert {m: r.value for m, r in readings.items()} == pytest.approx(SNMPD_EXPECTED, abs=1e-9)
    assert readings["output_power_kw"].raw == (70000, 71000, 72400)


def test_collector_walks_a_net_snmp_table(snmpd: int, tmp_path: Path) -> None:
    """GETBULK against net-snmp's own agent: the UPS output table as rows (line 1-3), v2c and
    v3, stopping at the end of the column (snmpd's overrides define exactly 3 lines)."""
    profile = tmp_path / "ups_lines.yaml"
    profile.write_text(
        "name: ups_lines\nkind: ups\nprotocol: snmp\npoints:\n"
        f"  - {{metric: output_power_kw, oid: {UPS}.4.4.1.4, rows: {{label: line, count: 8}},"
        " scale: 0.001}\n"
        f"  - {{metric: load_pct, oid: {UPS}.4.4.1.5, rows: {{label: line, count: 8}}}}\n"
    )
    v3 = {"version": "3", "user": "opsha256", "auth_protocol": "SHA256", "auth_key": "authpass-256",
          "priv_protocol": "AES128", "priv_key": "privpass-256"}  # fmt: skip

    async def main(snmp: dict) -> list[Reading]:
        device = ups_device(snmpd, **snmp).model_copy(update={"profile": str(profile)})
        collector = make_collector(device, 2.0)
        try:
            return await collector.read()
        finally:
            await collector.close()

    for snmp in ({}, v3):
        assert values_of(asyncio.run(main(snmp))) == pytest.approx({
            "output_power_kw{line=1}": 70.0, "output_power_kw{line=2}": 71.0,
            "output_power_kw{line=3}": 72.4,
            "load_pct{line=1}": 70.0, "load_pct{line=2}": 71.0, "load_pct{line=3}": 72.0,
        })  # fmt: skip


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
