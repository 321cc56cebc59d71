"""Modbus TCP collector: reads one device's profile with as few requests as the device allows.

Follows the Modbus Application Protocol Specification v1.1b3 and the Modbus Messaging on
TCP/IP Implementation Guide v1.0b. Read-only: only function codes 01 (coils), 02 (discrete
inputs), 03 (holding registers) and 04 (input registers) are ever sent. Addresses are
zero-based protocol addresses (documentation's 40001 is holding register 0).

Byte orders name where the value's bytes (A = most significant) travel on the wire:
ABCD big-endian (the Modbus default), DCBA little-endian, BADC bytes swapped in each word,
CDAB words swapped (the common "word-swapped float"). For 64-bit values the same rule
holds word by word: CDAB reverses the order of all four words.

Coalescing: the points of each table are grouped into requests of at most
``profile.max_registers`` registers (2000 bits for coils and discrete inputs), bridging
gaps of up to ``profile.max_gap`` unmapped addresses. A request the device rejects with an
exception is split in halves, down to single points; the working split is remembered for
the life of the collector, so later polls do not repeat the failing request. A single
point that is still rejected reads as quality ``bad``; the rest of the device is unaffected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from aidc.config import DeviceBase
from aidc.metrics import Quality, Reading, check_limits
from collectors import Collector, DeviceUnreachable
from collectors.profiles import ByteOrder, ModbusPoint, ModbusProfile

BIT_TABLES = ("coil", "discrete")
TABLE_ORDER = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}
MAX_BITS = 2000  # per FC01/FC02 request (MAP v1.1b3, 6.1 and 6.2)
GATEWAY_FAILURES = (0x0A, 0x0B)  # the gateway answers, the device behind it does not
NUMBERS = {  # the device's number, from its bytes most significant first
    "int16": struct.Struct(">h"),
    "uint16": struct.Struct(">H"),
    "int32": struct.Struct(">i"),
    "uint32": struct.Struct(">I"),
    "float32": struct.Struct(">f"),
    "float64": struct.Struct(">d"),
}
BIG_ENDIAN_WORDS = {n: struct.Struct(f">{n}H") for n in (1, 2, 4)}
LITTLE_ENDIAN_WORDS = {n: struct.Struct(f"<{n}H") for n in (1, 2, 4)}
WIDTH = {"int32": 2, "uint32": 2, "float32": 2, "float64": 4}  # others: one register


# ---------------------------------------------------------------- decoding (pure)


def point_width(point: ModbusPoint) -> int:
    """Registers the point spans; one bit for a coil or discrete input."""
    if point.table in BIT_TABLES or point.bit is not None:
        return 1
    return WIDTH.get(point.type, 1)


def value_bytes(words: Sequence[int], byte_order: ByteOrder) -> bytes:
    """The value's bytes, most significant first (A B C D ...), from the words as received."""
    n = len(words)
    if byte_order == "ABCD":
        return BIG_ENDIAN_WORDS[n].pack(*words)
    if byte_order == "CDAB":
        return BIG_ENDIAN_WORDS[n].pack(*reversed(words))
    if byte_order == "BADC":
        return LITTLE_ENDIAN_WORDS[n].pack(*words)
    return BIG_ENDIAN_WORDS[n].pack(*words)[::-1]  # DCBA


def decode_raw(words: Sequence[int], point: ModbusPoint, byte_order: ByteOrder) -> float:
    """The number the device holds: the integer or float in the words, or the point's bit."""
    if point.table in BIT_TABLES:
        return int(words[0])
    content = value_bytes(words, point.byte_order or byte_order)
    if point.bit is not None:
        return int.from_bytes(content) >> point.bit & 1
    if point.type == "bool":
        return int(any(content))
    return NUMBERS[point.type].unpack(content)[0]


def to_value(raw: float, point: ModbusPoint) -> float | None:
    """``raw * scale + offset``, or the enum's value for a raw code (None: unknown code)."""
    if point.enum is not None:
        return point.enum.get(int(raw)) if float(raw).is_integer() else None
    return raw * point.scale + point.offset


def decode(words: Sequence[int], point: ModbusPoint, byte_order: ByteOrder) -> float | None:
    """The point's canonical value from its words (``byte_order``: the profile's)."""
    return to_value(decode_raw(words, point, byte_order), point)


def is_sentinel(words: Sequence[int], point: ModbusPoint, byte_order: ByteOrder) -> bool:
    """Whether the registers hold one of the point's sensor-fault codes.

    Compared on the raw register content at the point's width, so an int16 sentinel may be
    written 32767, 0x7FFF, -32768 or 0x8000 alike.
    """
    if not point.sentinels or point.table in BIT_TABLES:
        return False
    content = int.from_bytes(value_bytes(words, point.byte_order or byte_order))
    mask = (1 << 16 * len(words)) - 1
    return content in [sentinel & mask for sentinel in point.sentinels]


def to_reading(words: Sequence[int], point: ModbusPoint, byte_order: ByteOrder) -> Reading:
    """The point's Reading: bad for a sentinel, an unknown enum code or a NaN; limits apply."""
    raw = list(words)
    value = None if is_sentinel(words, point, byte_order) else decode(words, point, byte_order)
    if value is None or not math.isfinite(value):
        return Reading(point.metric, None, Quality.BAD, raw=raw)
    return Reading(point.metric, value, check_limits(value, point.min, point.max), raw=raw)


# ---------------------------------------------------------------- request planning (pure)


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``,
    carrying the profile points at ``indices``."""

    table: str
    start: int
    count: int
    indices: tuple[int, ...]


def block_of(points: Sequence[ModbusPoint], indices: Sequence[int]) -> Block:
    """The smallest request that covers the points at ``indices`` (all of one table)."""
    start = min(points[i].address for i in indices)
    end = max(points[i].address + point_width(points[i]) for i in indices)
    return Block(points[indices[0]].table, start, end - start, tuple(indices))


def coalesce(points: Sequence[ModbusPoint], max_registers: int, max_gap: int) -> list[Block]:
    """Group points per table into as few requests as the limits allow."""
    order = sorted(
        range(len(points)), key=lambda i: (TABLE_ORDER[points[i].table], points[i].address)
    )
    groups: list[list[int]] = []
    end = 0
    for i in order:
        point = points[i]
        limit = MAX_BITS if point.table in BIT_TABLES else max_registers
        new_end = point.address + point_width(point)
        if groups and (
            points[groups[-1][0]].table == point.table
            and point.address - end <= max_gap
            and max(end, new_end) - points[groups[-1][0]].address <= limit
        ):
            groups[-1].append(i)
            end = max(end, new_end)
        else:
            groups.append([i])
            end = new_end
    return [block_of(points, group) for group in groups]


def split(points: Sequence[ModbusPoint], block: Block) -> tuple[Block, Block]:
    """Two requests, each with half of ``block``'s points (it must hold two or more)."""
    half = len(block.indices) // 2
    return block_of(points, block.indices[:half]), block_of(points, block.indices[half:])


# ---------------------------------------------------------------- the collector


class ModbusCollector(Collector):
    """Polls one Modbus TCP device (``device.host``, ``device.port``, ``device.modbus.unit_id``).

    Connects on the first read and keeps the connection; after a transport failure the next
    read reconnects. Every request waits at most ``timeout_s``.
    """

    def __init__(self, device: DeviceBase, profile: ModbusProfile, timeout_s: float) -> None:
        super().__init__(device, profile, timeout_s)
        self._plan = coalesce(profile.points, profile.max_registers, profile.max_gap)
        self._client: AsyncModbusTcpClient | None = None

    @property
    def plan(self) -> list[Block]:
        """The requests one poll sends now (the coalesced blocks, split where rejected)."""
        return list(self._plan)

    async def read(self) -> list[Reading]:
        client = await self._connect()
        readings: dict[int, Reading] = {}
        plan: list[Block] = []
        for block in self._plan:
            plan += await self._read_block(client, block, readings)
        self._plan = plan
        return [readings[i] for i in range(len(self.profile.points))]

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _connect(self) -> AsyncModbusTcpClient:
        if self._client is None:
            self._client = AsyncModbusTcpClient(
                self.device.host,
                port=self.device.port,
                name=self.device.id,
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0,  # no background reconnects: the next read() reconnects
            )
        if not self._client.connected and not await self._client.connect():
            await self.close()
            raise DeviceUnreachable(
                f"{self._where}: no connection within {self.timeout_s} s "
                "(refused or no answer): check that the device is up and the address"
            )
        return self._client

    async def _read_block(
        self, client: AsyncModbusTcpClient, block: Block, readings: dict[int, Reading]
    ) -> list[Block]:
        """Read ``block`` into ``readings``, splitting it while the device rejects it;
        return the blocks that now stand for it in the plan."""
        points = self.profile.points
        answer = await self._request(client, block)
        if isinstance(answer, list):
            for i in block.indices:
                first = points[i].address - block.start
                words = answer[first : first + point_width(points[i])]
                readings[i] = to_reading(words, points[i], self.profile.byte_order)
            return [block]
        if len(block.indices) == 1:
            point = points[block.indices[0]]
            readings[block.indices[0]] = Reading(
                point.metric, None, Quality.BAD, raw=f"exception {answer}"
            )
            return [block]
        working: list[Block] = []
        for half in split(points, block):
            working += await self._read_block(client, half, readings)
        return working

    async def _request(self, client: AsyncModbusTcpClient, block: Block) -> list[int] | int:
        """The block's registers (bits as 0/1), or the exception code the device answered."""
        read = {
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
        }[block.table]
        try:
            response = await read(
                block.start, count=block.count, device_id=self.device.modbus.unit_id
            )
        except (TimeoutError, ModbusException, OSError) as e:
            await self.close()
            raise DeviceUnreachable(
                f"{self._where}: no valid answer within {self.timeout_s} s: "
                "check that the device is up, its port and its unit id"
            ) from e
        if response.isError():
            if response.exception_code in GATEWAY_FAILURES:
                raise DeviceUnreachable(
                    f"{self._where}: gateway answered exception {response.exception_code}: "
                    f"unit {self.device.modbus.unit_id} does not respond behind it"
                )
            return response.exception_code
        bits = block.table in BIT_TABLES
        answer = [int(b) for b in response.bits] if bits else response.registers
        if len(answer) < block.count:
            await self.close()
            raise DeviceUnreachable(
                f"{self._where}: answered {len(answer)} of {block.count} {block.table} values"
            )
        return answer[: block.count]

    @property
    def _where(self) -> str:
        return f"device {self.device.id} at {self.device.host}:{self.device.port}"
