"""Modbus TCP: pure decoders, the collector against the simulator over real loopback TCP
(single devices and gateways with several unit ids), fault injection, and mbpoll (Debian,
libmodbus) reading the simulator.

Every expected number is written by hand (IEEE 754 words worked out on paper), never
recomputed with the code under test.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
from pymodbus.client import AsyncModbusTcpClient

from aidc.core.config import DeviceBase, ModbusSettings
from aidc.core.metrics import Quality, Reading, series_key
from aidc.core.net import free_port
from collectors import DeviceUnreachable, make_collector
from collectors.modbus import (
    SILENT_LIMIT,
    Block,
    ConnectionPool,
    ModbusCollector,
    RequestRejected,
    coalesce,
    decode,
    expand_rows,
    float_under_all_orders,
    is_sentinel,
    to_reading,
)
from collectors.profiles import ModbusPoint, ModbusProfile, Rows, load_profile
from simulators.modbus import ModbusDeviceServer, ModbusGatewayServer
from tests.conftest import while_the_other_waits

HOST = "127.0.0.1"
TIMEOUT_S = 0.5  # where a test waits for a timeout on purpose
PATIENT_S = 5.0  # everywhere else: a loaded machine answers late, and these tests read


def point(**fields: object) -> ModbusPoint:
    """An input-register point (metric x, address 0 unless given)."""
    return ModbusPoint(**{"metric": "x", "address": 0, **fields})


def adjacent_profile(n: int, **settings: object) -> ModbusProfile:
    """n uint16 input registers at addresses 0 .. n-1, metrics r0 .. r(n-1)."""
    points = [point(metric=f"r{i}", address=i) for i in range(n)]
    return ModbusProfile(name="adjacent", kind="meter", protocol="modbus", points=points, **settings)


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    """Readings by series key: ``metric``, or ``metric{label=r}`` for a table row."""
    return {r.key: r for r in readings}


def module(metric: str, n: int) -> str:
    """The series key of one rectifier module's metric: ``module_temp_c{module=3}``."""
    return series_key(metric, {"module": str(n)})


@asynccontextmanager
async def device(
    profile: ModbusProfile, values: Mapping[str, float | None], unit_id: int = 1,
    timeout_s: float = PATIENT_S, **kwargs: object,
) -> AsyncIterator[tuple[ModbusDeviceServer, ModbusCollector]]:
    """A simulator serving ``values`` and a collector pointed at it."""
    server = ModbusDeviceServer(profile, HOST, free_port(), lambda: values, unit_id, **kwargs)
    await server.start()
    config = DeviceBase(
        id="dev-1", protocol="modbus", port=server.port, profile=profile.name,
        modbus=ModbusSettings(unit_id=unit_id),
    )
    collector = ModbusCollector(config, profile, timeout_s)
    try:
        yield server, collector
    finally:
        await collector.close()
        await server.stop()


# ---------------------------------------------------------------- pure decoders

FLOAT_123_456 = {  # 123.456 as float32 is 0x42F6E979
    "ABCD": [0x42F6, 0xE979],
    "CDAB": [0xE979, 0x42F6],
    "BADC": [0xF642, 0x79E9],
    "DCBA": [0x79E9, 0xF642],
}


@pytest.mark.parametrize("order", FLOAT_123_456)
def test_float32_in_each_byte_order(order: str) -> None:
    value = decode(FLOAT_123_456[order], point(type="float32"), order)
    assert value == pytest.approx(123.456, rel=1e-7)


def test_point_byte_order_overrides_the_profile() -> None:
    words = [0xE979, 0x42F6]
    assert decode(words, point(type="float32", byte_order="CDAB"), "ABCD") == pytest.approx(
        123.456, rel=1e-7
    )


def test_integers() -> None:
    assert decode([0xFFFB], point(type="int16"), "ABCD") == -5
    assert decode([0xFFFB], point(type="uint16"), "ABCD") == 65531
    assert decode([0x3412], point(type="uint16"), "DCBA") == 0x1234
    # -123456 = 0xFFFE1DC0
    assert decode([0xFFFE, 0x1DC0], point(type="int32"), "ABCD") == -123456
    assert decode([0x1DC0, 0xFFFE], point(type="int32"), "CDAB") == -123456
    # 4 000 000 000 = 0xEE6B2800, above the int32 range
    assert decode([0xEE6B, 0x2800], point(type="uint32"), "ABCD") == 4_000_000_000


def test_float64() -> None:
    # 100.5 = 1.5703125 x 2^6 -> 0x4059 2000 0000 0000
    assert decode([0x4059, 0x2000, 0, 0], point(type="float64"), "ABCD") == 100.5
    assert decode([0, 0, 0x2000, 0x4059], point(type="float64"), "CDAB") == 100.5
    assert decode([0, 0, 0x0020, 0x5940], point(type="float64"), "DCBA") == 100.5


def test_scale_offset_enum_and_bit() -> None:
    assert decode([452], point(type="int16", scale=0.1), "ABCD") == pytest.approx(45.2)
    assert decode([500], point(scale=0.1, offset=-40), "ABCD") == pytest.approx(10.0)
    on_battery = point(enum={3: 0.0, 5: 1.0})
    assert decode([5], on_battery, "ABCD") == 1.0
    assert decode([4], on_battery, "ABCD") is None  # a code the profile does not know
    status = 0b0000_0000_0000_0100
    assert decode([status], point(type="bool", bit=2), "ABCD") == 1.0
    assert decode([status], point(type="bool", bit=1), "ABCD") == 0.0


def test_sentinels_compare_the_raw_register_content() -> None:
    temp = point(type="int16", scale=0.1, sentinels=[32767, -32768])
    assert is_sentinel([0x7FFF], temp, "ABCD")
    assert is_sentinel([0x8000], temp, "ABCD")
    assert not is_sentinel([0x7FFE], temp, "ABCD")
    assert is_sentinel([0x8000], point(type="int16", sentinels=[0x8000]), "ABCD")
    assert is_sentinel([0xFFFF], point(type="uint16", sentinels=[0xFFFF]), "ABCD")
    fault = to_reading([0x7FFF], temp, "ABCD")
    assert (fault.value, fault.quality, fault.raw) == (None, Quality.BAD, [0x7FFF])


def test_limits_and_nan() -> None:
    hot = to_reading([950], point(type="int16", scale=0.1, max=90), "ABCD")
    assert hot.quality is Quality.OUT_OF_RANGE and hot.value == pytest.approx(95.0)
    nan = to_reading([0x7FC0, 0x0000], point(type="float32"), "ABCD")
    assert (nan.value, nan.quality) == (None, Quality.BAD)


def test_coalesce_bridges_small_gaps_and_respects_the_request_size() -> None:
    points = [
        point(address=0), point(address=1), point(address=2),
        point(address=5, type="float32"),  # registers 5-6; gap 3-4 bridged
        point(address=20),  # gap 7-19 is 13 registers > max_gap 8
        point(address=0, table="discrete", type="bool"),
    ]
    assert coalesce(points, max_registers=100, max_gap=8) == [
        Block("discrete", 0, 1, (5,)),
        Block("input", 0, 7, (0, 1, 2, 3)),
        Block("input", 20, 1, (4,)),
    ]
    assert coalesce(points[:3], max_registers=2, max_gap=8) == [
        Block("input", 0, 2, (0, 1)),
        Block("input", 2, 1, (2,)),
    ]


# ---------------------------------------------------------------- collector against simulator

CDU_VALUES: dict[str, float | None] = {
    "supply_temp_c": 45.2, "return_temp_c": 55.1, "flow_lpm": 1502.5, "dp_kpa": 85.3,
    "facility_supply_temp_c": 32.0, "facility_return_temp_c": 41.7, "facility_flow_lpm": 1210.4,
    "pump_speed_pct_1": 72.5, "pump_speed_pct_2": 0.0, "pumps_running": 1,
    "reservoir_pct": 88.0, "valve_pct": 41.3, "power_kw": 12.5, "alarm": 1, "leak": 0,
}
RECTIFIER_VALUES: dict[str, float | None] = {
    "input_power_kw": 416.8, "output_voltage_v": 800.0, "output_current_a": 500.25,
    "output_power_kw": 400.2, "battery_voltage_v": 812.5, "battery_current_a": -123.456,
    "modules_ok": 12, "modules_total": 13, "alarm": 1,
    **{module("module_state", n): 0 for n in range(1, 14)},
    **{module("module_current_a", n): 41.6 + n for n in range(1, 14)},  # 42.6 .. 54.6 A
    **{module("module_temp_c", n): 35.0 + 0.5 * n for n in range(1, 14)},  # 35.5 .. 41.5 C
    module("module_state", 7): 2, module("module_current_a", 7): 0.0,  # module 7: AC fail
}
METER_VALUES: dict[str, float | None] = {
    "voltage_v": 415.2, "current_a": 612.5, "power_kw": 421.75, "frequency_hz": 50.02,
    "energy_kwh": 123_456_789.25,
}


def assert_read_back(readings: list[Reading], served: Mapping[str, float | None], tol: float):
    """Every metric good and equal to what was served within ``tol`` (relative for floats)."""
    got = by_metric(readings)
    assert set(got) == set(served)
    for metric, value in served.items():
        assert got[metric].quality is Quality.GOOD, got[metric]
        assert got[metric].value == pytest.approx(value, rel=1e-6, abs=tol), metric


def test_cdu_round_trip_in_two_requests() -> None:
    async def run() -> None:
        async with device(load_profile("cdu_generic"), CDU_VALUES, unit_id=3) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == Counter([2, 4])  # 1 discrete, 1 coalesced input
        assert_read_back(readings, CDU_VALUES, tol=0.05)  # registers hold 0.1 units
        got = by_metric(readings)
        assert got["supply_temp_c"].raw == [452]
        assert got["power_kw"].raw == [0x4148, 0x0000]  # 12.5 = 0x41480000
        assert got["alarm"].raw == [0b100]  # bit 2 of the status word

    asyncio.run(run())


def test_rectifier_round_trip_word_swapped_with_its_module_table() -> None:
    async def run() -> None:
        async with device(load_profile("hvdc_rectifier"), RECTIFIER_VALUES) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == Counter([4, 4])  # system totals, module table
            assert [(b.start, b.count) for b in c.plan] == [(0, 15), (100, 51)]
        assert len(readings) == 9 + 3 * 13
        assert_read_back(readings, RECTIFIER_VALUES, tol=0.05)  # module rows hold 0.1 units
        got = by_metric(readings)
        # -123.456 = 0xC2F6E979, low word first on the wire (CDAB)
        assert got["battery_current_a"].raw == [0xE979, 0xC2F6]
        # module 13 at 148-150: state 0, 54.6 A as 546 = 0x0222, 41.5 C as 415 = 0x019F
        last = [got[module(m, 13)] for m in ("module_state", "module_current_a", "module_temp_c")]
        assert [r.raw for r in last] == [[0], [0x0222], [0x019F]]
        assert [(r.metric, r.labels) for r in last] == [
            ("module_state", {"module": "13"}),
            ("module_current_a", {"module": "13"}),
            ("module_temp_c", {"module": "13"}),
        ]
        assert got[module("module_state", 7)].value == 2  # the code is the value: AC fail

    asyncio.run(run())


def test_meter_round_trip_keeps_a_large_energy_counter_exact() -> None:
    async def run() -> None:
        async with device(load_profile("power_meter"), METER_VALUES) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == Counter([3, 3])
        assert_read_back(readings, METER_VALUES, tol=0)
        assert by_metric(readings)["energy_kwh"].value == 123_456_789.25

    asyncio.run(run())


@pytest.mark.parametrize("order", FLOAT_123_456)
def test_simulator_puts_each_byte_order_on_the_wire(order: str) -> None:
    profile = ModbusProfile(
        name="order", kind="meter", protocol="modbus", byte_order=order,
        points=[point(metric="v", type="float32")],
    )

    async def run() -> Reading:
        async with device(profile, {"v": 123.456}) as (_, c):
            return (await c.read())[0]

    got = asyncio.run(run())
    assert got.raw == FLOAT_123_456[order]
    assert got.value == pytest.approx(123.456, rel=1e-7)


def test_adjacent_points_are_read_in_few_requests() -> None:
    values = {f"r{i}": float(i) for i in range(20)}

    async def run() -> None:
        async with device(adjacent_profile(20), values) as (server, c):
            await c.read()
            assert server.function_codes_seen == Counter([4])
        async with device(adjacent_profile(20, max_registers=8), values) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == Counter([4, 4, 4])  # 8 + 8 + 4 registers
        assert [r.value for r in readings] == [float(i) for i in range(20)]

    asyncio.run(run())


def test_illegal_address_in_a_block_spoils_only_its_point_and_the_split_is_kept() -> None:
    values = {f"r{i}": 100.0 + i for i in range(10)}

    async def run() -> None:
        async with device(adjacent_profile(10), values, illegal_addresses={4}) as (server, c):
            first = await c.read()
            # halving: 0-9 x, 0-4 x, 0-1, 2-4 x, 2, 3-4 x, 3, 4 x, 5-9  (x = exception 02)
            assert server.function_codes_seen.total() == 9
            assert [(b.start, b.count) for b in c.plan] == [(0, 2), (2, 1), (3, 1), (4, 1), (5, 5)]
            server.function_codes_seen.clear()
            second = await c.read()
            assert server.function_codes_seen.total() == 5  # only the single 4 fails now
        for readings in (first, second):
            for i, r in enumerate(readings):
                if i == 4:
                    assert (r.value, r.quality, r.raw) == (None, Quality.BAD, "exception 2")
                else:
                    assert (r.value, r.quality) == (100.0 + i, Quality.GOOD)

    asyncio.run(run())


def test_refused_gap_register_splits_into_good_points() -> None:
    profile = ModbusProfile(
        name="gap", kind="meter", protocol="modbus",
        points=[point(metric="a", address=0), point(metric="b", address=3)],
    )

    async def run() -> None:
        async with device(profile, {"a": 1, "b": 2}, illegal_addresses={1}) as (_, c):
            readings = await c.read()
            assert [(b.start, b.count) for b in c.plan] == [(0, 1), (3, 1)]
        assert [(r.value, r.quality) for r in readings] == [(1, Quality.GOOD), (2, Quality.GOOD)]

    asyncio.run(run())


def test_a_transient_exception_split_merges_back_after_clean_polls() -> None:
    """A sensor board fails for a while (exception 04 on one metric): its block is split to
    read the others; once it answers again, MERGE_AFTER_POLLS clean polls later the device
    is read with the coalesced requests again, not the split ones for ever."""
    from collectors.modbus import MERGE_AFTER_POLLS

    async def run() -> None:
        async with device(load_profile("cdu_generic"), CDU_VALUES) as (server, c):
            await c.read()
            base = c.plan
            server.refuse = {"flow_lpm"}
            got = by_metric(await c.read())
            assert got["flow_lpm"].raw == "exception 4" and len(c.plan) > len(base)
            server.refuse = set()
            for _ in range(MERGE_AFTER_POLLS - 1):
                await c.read()
                assert len(c.plan) > len(base)  # not yet: the fault may come back
            await c.read()
            assert c.plan == base
            assert {r.quality for r in await c.read()} == {Quality.GOOD}

    asyncio.run(run())


def test_a_busy_device_is_asked_again_not_split() -> None:
    """Exception 06 (server device busy) twice, then an answer: the poll reads every point
    and the plan stays coalesced."""

    async def run() -> None:
        async with device(load_profile("cdu_generic"), CDU_VALUES) as (server, c):
            await c.read()
            base = c.plan
            server.busy = 2
            readings = await c.read()
            assert {r.quality for r in readings} == {Quality.GOOD} and c.plan == base
            assert server.busy == 0

    asyncio.run(run())


def test_sensor_faults_and_out_of_range() -> None:
    cdu = {**CDU_VALUES, "supply_temp_c": None, "return_temp_c": 95.0}
    rectifier = {**RECTIFIER_VALUES, "battery_voltage_v": None}  # float: no sentinel

    async def run() -> tuple[list[Reading], list[Reading]]:
        async with device(load_profile("cdu_generic"), cdu) as (_, c):
            cdu_readings = await c.read()
        async with device(load_profile("hvdc_rectifier"), rectifier) as (_, c):
            rectifier_readings = await c.read()
        return cdu_readings, rectifier_readings

    cdu_readings, rectifier_readings = asyncio.run(run())
    got = by_metric(cdu_readings)
    assert (got["supply_temp_c"].value, got["supply_temp_c"].quality) == (None, Quality.BAD)
    assert got["supply_temp_c"].raw == [0x7FFF]
    assert got["return_temp_c"].quality is Quality.OUT_OF_RANGE
    assert got["return_temp_c"].value == pytest.approx(95.0)
    assert got["flow_lpm"].quality is Quality.GOOD
    got = by_metric(rectifier_readings)
    assert (got["battery_voltage_v"].value, got["battery_voltage_v"].raw) == (None, "exception 4")
    assert [m for m, r in got.items() if r.quality is not Quality.GOOD] == ["battery_voltage_v"]


def test_stopped_device_is_unreachable_quickly_and_read_again_after_restart() -> None:
    profile = load_profile("power_meter")

    async def run() -> None:
        async with device(profile, METER_VALUES) as (server, c):
            await c.read()
            await server.stop()
            with pytest.raises(DeviceUnreachable) as closed:
                await c.read()
            assert "no valid answer" not in str(closed.value)  # the closed socket, no timeout
            with pytest.raises(DeviceUnreachable, match="refused"):  # nothing listens
                await c.read()
            await server.start()
            assert_read_back(await c.read(), METER_VALUES, tol=0)

    asyncio.run(run())


def test_silent_device_is_unreachable_after_the_timeout_and_its_connection_renewed() -> None:
    connections: list[asyncio.StreamWriter] = []
    served: list[asyncio.Task[None]] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        served.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.read()  # accepts and reads, never answers

    async def run() -> list[float]:
        silent = await asyncio.start_server(swallow, HOST, 0)
        port = silent.sockets[0].getsockname()[1]
        config = DeviceBase(id="silent", protocol="modbus", port=port, profile="power_meter")
        collector = ModbusCollector(config, load_profile("power_meter"), TIMEOUT_S)
        took = []
        try:
            for _ in range(SILENT_LIMIT + 1):
                started = time.monotonic()
                with pytest.raises(DeviceUnreachable, match="no valid answer"):
                    await collector.read()
                took.append(time.monotonic() - started)
            # kept through SILENT_LIMIT unanswered requests (a late answer would be discarded
            # by its transaction id), then dropped as dead and opened anew
            assert len(connections) == 2
            return took
        finally:
            await collector.close()
            for writer in connections:
                writer.close()
            await asyncio.gather(*served)
            silent.close()

    assert all(s >= TIMEOUT_S * 0.9 for s in asyncio.run(run()))  # each waited its timeout


def test_wrong_unit_id_behind_a_gateway_is_unreachable() -> None:
    async def run() -> None:
        server = ModbusDeviceServer(load_profile("power_meter"), HOST, free_port(), dict, 1)
        await server.start()
        config = DeviceBase(
            id="m", protocol="modbus", port=server.port, profile="power_meter",
            modbus=ModbusSettings(unit_id=2),
        )
        collector = make_collector(config, PATIENT_S)
        assert isinstance(collector, ModbusCollector)
        try:
            with pytest.raises(DeviceUnreachable, match="unit 2"):
                await collector.read()
        finally:
            await collector.close()
            await server.stop()

    asyncio.run(run())


def test_collector_sends_only_read_function_codes() -> None:
    async def run() -> None:
        for name, values in (
            ("cdu_generic", CDU_VALUES),
            ("hvdc_rectifier", RECTIFIER_VALUES),
            ("power_meter", METER_VALUES),
        ):
            async with device(load_profile(name), values) as (server, c):
                for _ in range(3):
                    await c.read()
                assert server.function_codes_seen
                assert set(server.function_codes_seen) <= {1, 2, 3, 4}
        # the record is not vacuous: a write is seen (and refused)
        async with device(load_profile("power_meter"), METER_VALUES) as (server, _):
            client = AsyncModbusTcpClient(HOST, port=server.port, timeout=PATIENT_S)
            await client.connect()
            response = await client.write_register(0, 1, device_id=1)
            client.close()
            assert response.isError() and response.exception_code == 1
            assert server.function_codes_seen == Counter([6])

    asyncio.run(run())


# ---------------------------------------------------------------- table rows and byte-order probe


def test_table_rows_expand_at_their_stride_with_labels() -> None:
    rows = Rows(label="module", count=3, stride=4)
    temp = point(metric="t", address=100, type="int16", rows=rows)
    expanded = expand_rows([point(metric="v", address=0), temp])
    assert [(p.metric, p.address, labels) for p, labels in expanded] == [
        ("v", 0, {}),
        ("t", 100, {"module": "1"}),
        ("t", 104, {"module": "2"}),
        ("t", 108, {"module": "3"}),
    ]
    with pytest.raises(ValueError, match="stride 1 is less than the point.s 2 registers"):
        expand_rows([point(type="float32", rows=Rows(label="phase", count=3, stride=1))])


def test_a_faulty_row_spoils_only_that_row() -> None:
    table = ModbusProfile(
        name="rows", kind="pdu", protocol="modbus", points=[
            point(metric="current_a", table="holding", address=10, type="int16", scale=0.1,
                  sentinels=[32767], rows=Rows(label="phase", count=3, stride=2)),
        ],
    )
    values = {"current_a{phase=1}": 12.5, "current_a{phase=2}": None, "current_a{phase=3}": -3.2}

    async def run() -> list[Reading]:
        async with device(table, values) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == Counter([3])  # registers 10, 12, 14 in one read
        return readings

    readings = asyncio.run(run())
    assert [(r.key, r.value, r.quality, r.raw) for r in readings] == [
        ("current_a{phase=1}", pytest.approx(12.5), Quality.GOOD, [125]),
        ("current_a{phase=2}", None, Quality.BAD, [0x7FFF]),
        ("current_a{phase=3}", pytest.approx(-3.2), Quality.GOOD, [0xFFE0]),  # -32
    ]


def test_float_under_all_orders() -> None:
    # 0x0000 0x4148 as received: CDAB 0x41480000 = 12.5; DCBA 0x48410000 = 1.5078125 x 2^17;
    # ABCD 0x00004148 and BADC 0x00004841 are subnormal: 0x4148 x 2^-149, 0x4841 x 2^-149
    assert float_under_all_orders([0x0000, 0x4148]) == {
        "ABCD": 0x4148 * 2.0**-149,
        "CDAB": 12.5,
        "BADC": 0x4841 * 2.0**-149,
        "DCBA": 197_632.0,
    }
    assert list(float_under_all_orders([0, 0])) == ["ABCD", "CDAB", "BADC", "DCBA"]
    for order, words in FLOAT_123_456.items():
        assert float_under_all_orders(words)[order] == pytest.approx(123.456, rel=1e-7)
    # 123.456 read word-swapped: 0xE97942F6, as mbpoll prints it (-1.88337e+25)
    assert float_under_all_orders([0x42F6, 0xE979])["CDAB"] == pytest.approx(-1.88337e25, 1e-5)
    assert float_under_all_orders([0, 0, 0x2000, 0x4059])["CDAB"] == 100.5  # float64
    assert float_under_all_orders([0, 0, 0x0020, 0x5940])["DCBA"] == 100.5
    with pytest.raises(ValueError, match="2 or 4 registers"):
        float_under_all_orders([0x4148])


def test_read_raw_for_probe_sends_only_reads() -> None:
    async def run() -> None:
        async with device(load_profile("hvdc_rectifier"), RECTIFIER_VALUES) as (server, c):
            # battery_current_a -123.456 = 0xC2F6E979, word-swapped on the wire
            assert await c.read_raw("input", 10, 2) == [0xE979, 0xC2F6]
            assert await c.read_raw("input", 12, 2) == [12, 13]  # modules ok, total
            with pytest.raises(RequestRejected, match="exception 2 .illegal data address") as e:
                await c.read_raw("holding", 0, 1)  # the rectifier maps no holding registers
            assert e.value.code == 2
            assert server.function_codes_seen == Counter([4, 4, 3])

    asyncio.run(run())


# ---------------------------------------------------------------- gateways: units on one connection


def meter_values(unit_id: int) -> dict[str, float | None]:
    """A meter per unit id, told apart by its power: 100 kW x unit id."""
    return {**METER_VALUES, "power_kw": 100.0 * unit_id}


@asynccontextmanager
async def gateway(
    unit_ids: list[int], pools: list[ConnectionPool] | None = None
) -> AsyncIterator[tuple[ModbusGatewayServer, list[ModbusCollector]]]:
    """A gateway with a power meter behind each unit id, one collector per unit (sharing the
    loop's pool, unless ``pools`` gives each its own)."""
    profile = load_profile("power_meter")
    units = {u: (profile, lambda u=u: meter_values(u)) for u in unit_ids}
    server = ModbusGatewayServer(HOST, free_port(), units)
    await server.start()
    collectors = [
        ModbusCollector(
            DeviceBase(id=f"meter-{u}", protocol="modbus", port=server.port, profile=profile.name,
                       modbus=ModbusSettings(unit_id=u)),
            profile, PATIENT_S, pools[i] if pools else None,
        )
        for i, u in enumerate(unit_ids)
    ]
    try:
        yield server, collectors
    finally:
        for collector in collectors:
            await collector.close()
        await server.stop()


def test_units_behind_a_gateway_share_one_connection_one_request_at_a_time() -> None:
    unit_ids = [1, 2, 5, 7]

    async def run() -> None:
        async with gateway(unit_ids) as (server, collectors):
            server.delay_s = 0.02  # a request left outstanding would overlap the next
            for _ in range(3):
                polls = await asyncio.gather(*(c.read() for c in collectors))
                for u, readings in zip(unit_ids, polls, strict=True):
                    assert_read_back(readings, meter_values(u), tol=0)
            assert server.connections_accepted == 1
            assert server.peak_transactions == 1
            assert server.function_codes_seen.total() == 3 * 4 * 2
        # the count is not vacuous: one connection per unit interleaves their requests
        async with gateway(unit_ids, [ConnectionPool() for _ in unit_ids]) as (server, collectors):
            server.delay_s = 0.02
            await asyncio.gather(*(c.read() for c in collectors))
            assert server.connections_accepted == 4
            assert server.peak_transactions == 4

    asyncio.run(run())


def test_one_unit_offline_behind_a_gateway_spoils_only_that_unit() -> None:
    async def poll(collectors: list[ModbusCollector]) -> list[list[Reading] | BaseException]:
        return await asyncio.gather(*(c.read() for c in collectors), return_exceptions=True)

    async def run() -> None:
        async with gateway([1, 2, 3]) as (server, collectors):
            server.set_unit_offline(2, True)  # the gateway answers exception 0B for it
            one, two, three = await poll(collectors)
            assert isinstance(two, DeviceUnreachable) and "exception 11" in str(two)
            assert_read_back(one, meter_values(1), tol=0)
            assert_read_back(three, meter_values(3), tol=0)

            server.set_unit_offline(2, True, silent=True)  # no answer at all: a timeout
            collectors[1].timeout_s = TIMEOUT_S  # waited on purpose
            one, two, three = await poll(collectors)
            assert isinstance(two, DeviceUnreachable) and "no valid answer" in str(two)
            assert_read_back(one, meter_values(1), tol=0)
            assert_read_back(three, meter_values(3), tol=0)

            server.set_unit_offline(2, False)
            collectors[1].timeout_s = PATIENT_S
            for u, readings in zip([1, 2, 3], await poll(collectors), strict=True):
                assert_read_back(readings, meter_values(u), tol=0)
            assert server.connections_accepted == 1  # the silent unit kept the connection

    asyncio.run(run())


# ---------------------------------------------------------------- fault hooks


def test_a_slow_device_never_delays_another() -> None:
    """One device answers a minute late, another at once: polled together, the prompt one's
    whole poll ends while the slow one still waits."""

    async def run() -> None:
        async with (
            device(load_profile("power_meter"), METER_VALUES, timeout_s=30.0) as (slow, slow_c),
            device(load_profile("cdu_generic"), CDU_VALUES) as (_, fast_c),
        ):
            slow.delay_s = 60.0
            readings = await while_the_other_waits(fast_c.read(), slow_c.read())
            assert isinstance(readings, list)
            assert_read_back(readings, CDU_VALUES, tol=0.05)

    asyncio.run(run())


def test_refused_metrics_read_bad_and_the_rest_good() -> None:
    async def run() -> list[Reading]:
        async with device(load_profile("hvdc_rectifier"), RECTIFIER_VALUES) as (server, c):
            server.refuse = {"battery_voltage_v", module("module_temp_c", 3)}  # exception 04
            return await c.read()

    got = by_metric(asyncio.run(run()))
    refused = ["battery_voltage_v", module("module_temp_c", 3)]
    assert sorted(k for k, r in got.items() if r.quality is not Quality.GOOD) == refused
    for key in refused:
        assert (got[key].value, got[key].raw) == (None, "exception 4")
    assert got[module("module_temp_c", 4)].value == pytest.approx(37.0)


# ---------------------------------------------------------------- interoperability: mbpoll

MBPOLL_PROFILE = ModbusProfile(  # the same numbers in both tables; floats in both word orders
    name="interop", kind="meter", protocol="modbus", points=[
        point(metric=m, table=table, address=a, type=t, byte_order=o)
        for table in ("input", "holding")
        for m, a, t, o in (
            ("signed", 0, "int16", None),
            ("unsigned", 1, "uint16", None),
            ("big_endian", 2, "float32", "ABCD"),
            ("word_swapped", 4, "float32", "CDAB"),
        )
    ],
)
MBPOLL_VALUES = {"signed": -1234, "unsigned": 54321, "big_endian": 123.456,
                 "word_swapped": -123.456}


async def run_mbpoll(port: int, *args: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one read-only mbpoll run (-1: poll once, -o 1: 1 s
    timeout); the test fails, naming the package, if mbpoll is missing."""
    if shutil.which("mbpoll") is None:
        pytest.fail("mbpoll not found: install the Debian package 'mbpoll'")
    process = await asyncio.create_subprocess_exec(
        "mbpoll", "-m", "tcp", *args, "-1", "-o", "1", "-p", str(port), HOST,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 10)
    return process.returncode or 0, out.decode(), err.decode()


async def mbpoll(port: int, *args: str) -> dict[int, str]:
    """The values mbpoll printed, by 1-based reference."""
    status, out, err = await run_mbpoll(port, *args)
    assert status == 0, out + err
    found = re.findall(r"^\[(\d+)\]:\s+(.+)$", out, re.MULTILINE)
    return {int(ref): value for ref, value in found}


def test_mbpoll_reads_the_simulator_both_word_orders() -> None:
    """mbpoll 1.0 (libmodbus) prints a 16-bit register unsigned, with the signed value in
    parentheses when the top bit is set. Its float word order is little-endian by default:
    the low word first, i.e. CDAB; -B selects big-endian words, i.e. ABCD (verified here:
    without -B it reads the ABCD float as 0xE97942F6 = -1.88337e+25)."""

    async def run() -> None:
        server = ModbusDeviceServer(MBPOLL_PROFILE, HOST, free_port(), lambda: MBPOLL_VALUES)
        await server.start()
        try:
            for table in ("3", "4"):  # -t 3 input registers (FC04), -t 4 holding (FC03)
                # -1234 = 0xFB2E = 64302; 54321 = 0xD431 (above 32767: signed -11215)
                words = await mbpoll(server.port, "-a", "1", "-t", table, "-r", "1", "-c", "2")
                assert words == {1: "64302 (-1234)", 2: "54321 (-11215)"}
                big = await mbpoll(server.port, "-a", "1", "-t", f"{table}:float", "-B",
                                   "-r", "3", "-c", "1")
                assert big == {3: "123.456"}
                swapped = await mbpoll(server.port, "-a", "1", "-t", f"{table}:float",
                                       "-r", "3", "-c", "2")
                assert swapped == {3: "-1.88337e+25", 5: "-123.456"}
            assert server.function_codes_seen == Counter([4, 4, 4, 3, 3, 3])  # reads only
        finally:
            await server.stop()

    asyncio.run(run())


def test_mbpoll_reads_units_behind_a_gateway_and_sees_exceptions() -> None:
    async def run() -> None:
        profile = load_profile("hvdc_rectifier")
        units = {1: (profile, lambda: RECTIFIER_VALUES),
                 2: (profile, lambda: {**RECTIFIER_VALUES, "modules_ok": 11})}
        server = ModbusGatewayServer(HOST, free_port(), units)
        await server.start()
        try:
            # modules_ok, modules_total at 30013-30014
            assert await mbpoll(server.port, "-a", "2", "-t", "3", "-r", "13", "-c", "2") == {
                13: "11", 14: "13"
            }
            assert await mbpoll(server.port, "-a", "1", "-t", "3", "-r", "13", "-c", "1") == {
                13: "12"
            }
            # module 2's temperature at 30107: 36.0 C as 360
            assert await mbpoll(server.port, "-a", "1", "-t", "3", "-r", "107") == {107: "360"}
            # the output current float at 30005-30006, word-swapped: 500.25
            assert await mbpoll(server.port, "-a", "1", "-t", "3:float", "-r", "5") == {
                5: "500.25"
            }
            # libmodbus names our exception responses: 02 (no holding registers here), 0B
            _, _, err = await run_mbpoll(server.port, "-a", "1", "-t", "4", "-r", "1")
            assert "Illegal data address" in err
            server.set_unit_offline(2, True)
            _, _, err = await run_mbpoll(server.port, "-a", "2", "-t", "3", "-r", "1")
            assert "Target device failed to respond" in err
            assert server.function_codes_seen == Counter([4, 4, 4, 4, 3, 4])  # reads only
        finally:
            await server.stop()

    asyncio.run(run())
