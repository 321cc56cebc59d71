"""Modbus TCP: pure decoders, and the collector against the simulator over real loopback TCP.

Every expected number is written by hand (IEEE 754 words worked out on paper), never
recomputed with the code under test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
from pymodbus.client import AsyncModbusTcpClient

from aidc.config import DeviceBase, ModbusSettings
from aidc.metrics import Quality, Reading
from aidc.net import free_port
from collectors import DeviceUnreachable, make_collector
from collectors.modbus import Block, ModbusCollector, coalesce, decode, is_sentinel, to_reading
from collectors.profiles import ModbusPoint, ModbusProfile, load_profile
from simulators.modbus import ModbusDeviceServer

HOST = "127.0.0.1"
TIMEOUT_S = 0.5


def point(**fields: object) -> ModbusPoint:
    """An input-register point (metric x, address 0 unless given)."""
    return ModbusPoint(**{"metric": "x", "address": 0, **fields})


def adjacent_profile(n: int, **settings: object) -> ModbusProfile:
    """n uint16 input registers at addresses 0 .. n-1, metrics r0 .. r(n-1)."""
    points = [point(metric=f"r{i}", address=i) for i in range(n)]
    return ModbusProfile(name="adjacent", kind="meter", protocol="modbus", points=points, **settings)


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    return {r.metric: r for r in readings}


@asynccontextmanager
async def device(
    profile: ModbusProfile, values: Mapping[str, float | None], unit_id: int = 1, **kwargs: object
) -> AsyncIterator[tuple[ModbusDeviceServer, ModbusCollector]]:
    """A simulator serving ``values`` and a collector pointed at it."""
    server = ModbusDeviceServer(profile, HOST, free_port(), lambda: values, unit_id, **kwargs)
    await server.start()
    config = DeviceBase(
        id="dev-1", protocol="modbus", port=server.port, profile=profile.name,
        modbus=ModbusSettings(unit_id=unit_id),
    )
    collector = ModbusCollector(config, profile, TIMEOUT_S)
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
    "modules_ok": 18, "modules_total": 19, "alarm": 1,
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
            assert server.function_codes_seen == [2, 4]  # 1 discrete + 1 coalesced input read
        assert_read_back(readings, CDU_VALUES, tol=0.05)  # registers hold 0.1 units
        got = by_metric(readings)
        assert got["supply_temp_c"].raw == [452]
        assert got["power_kw"].raw == [0x4148, 0x0000]  # 12.5 = 0x41480000
        assert got["alarm"].raw == [0b100]  # bit 2 of the status word

    asyncio.run(run())


def test_rectifier_round_trip_word_swapped() -> None:
    async def run() -> None:
        async with device(load_profile("hvdc_rectifier"), RECTIFIER_VALUES) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == [4]
        assert_read_back(readings, RECTIFIER_VALUES, tol=0)
        # -123.456 = 0xC2F6E979, low word first on the wire (CDAB)
        assert by_metric(readings)["battery_current_a"].raw == [0xE979, 0xC2F6]

    asyncio.run(run())


def test_meter_round_trip_keeps_a_large_energy_counter_exact() -> None:
    async def run() -> None:
        async with device(load_profile("power_meter"), METER_VALUES) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == [3, 3]
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
            assert server.function_codes_seen == [4]
        async with device(adjacent_profile(20, max_registers=8), values) as (server, c):
            readings = await c.read()
            assert server.function_codes_seen == [4, 4, 4]  # 8 + 8 + 4 registers
        assert [r.value for r in readings] == [float(i) for i in range(20)]

    asyncio.run(run())


def test_illegal_address_in_a_block_spoils_only_its_point_and_the_split_is_kept() -> None:
    values = {f"r{i}": 100.0 + i for i in range(10)}

    async def run() -> None:
        async with device(adjacent_profile(10), values, illegal_addresses={4}) as (server, c):
            first = await c.read()
            # halving: 0-9 x, 0-4 x, 0-1, 2-4 x, 2, 3-4 x, 3, 4 x, 5-9  (x = exception 02)
            assert len(server.function_codes_seen) == 9
            assert [(b.start, b.count) for b in c.plan] == [(0, 2), (2, 1), (3, 1), (4, 1), (5, 5)]
            del server.function_codes_seen[:]
            second = await c.read()
            assert len(server.function_codes_seen) == 5  # only the single 4 fails now
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
            started = time.monotonic()
            with pytest.raises(DeviceUnreachable):
                await c.read()
            assert time.monotonic() - started < 3
            with pytest.raises(DeviceUnreachable):  # nothing listens: refused at once
                await c.read()
            await server.start()
            assert_read_back(await c.read(), METER_VALUES, tol=0)

    asyncio.run(run())


def test_silent_device_is_unreachable_after_the_timeout() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # accepts and reads, never answers

    async def run() -> float:
        silent = await asyncio.start_server(swallow, HOST, 0)
        port = silent.sockets[0].getsockname()[1]
        config = DeviceBase(id="silent", protocol="modbus", port=port, profile="power_meter")
        collector = ModbusCollector(config, load_profile("power_meter"), TIMEOUT_S)
        started = time.monotonic()
        try:
            with pytest.raises(DeviceUnreachable, match="no valid answer"):
                await collector.read()
            return time.monotonic() - started
        finally:
            await collector.close()
            for writer in connections:
                writer.close()
            silent.close()

    assert asyncio.run(run()) < 3


def test_wrong_unit_id_behind_a_gateway_is_unreachable() -> None:
    async def run() -> None:
        server = ModbusDeviceServer(load_profile("power_meter"), HOST, free_port(), dict, 1)
        await server.start()
        config = DeviceBase(
            id="m", protocol="modbus", port=server.port, profile="power_meter",
            modbus=ModbusSettings(unit_id=2),
        )
        collector = make_collector(config, TIMEOUT_S)
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
            client = AsyncModbusTcpClient(HOST, port=server.port, timeout=TIMEOUT_S)
            await client.connect()
            response = await client.write_register(0, 1, device_id=1)
            client.close()
            assert response.isError() and response.exception_code == 1
            assert server.function_codes_seen == [6]

    asyncio.run(run())
