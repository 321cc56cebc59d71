"""Modbus TCP collector: reads one device's profile with as few requests as the device allows.

Follows the Modbus Application Protocol Specification v1.1b3 and the Modbus Messaging on
TCP/IP Implementation Guide v1.0b. Read-only: only function codes 01 (coils), 02 (discrete
inputs), 03 (holding registers) and 04 (input registers) are ever sent. Addresses are
zero-based protocol addresses (documentation's 40001 is holding register 0).

Byte orders name where the value's bytes (A = most significant) travel on the wire:
ABCD big-endian (the Modbus default), DCBA little-endian, BADC bytes swapped in each word,
CDAB words swapped (the common "word-swapped float"). For 64-bit values the same rule
holds word by word: CDAB reverses the order of all four words.

Tables: a point with ``rows`` stands for one point per row, row r (1-based) at
``address + (r - 1) x stride``; each row's Reading carries ``{label: "r"}``.

Coalescing: the points of each table (rows expanded) are grouped into requests of at most
``profile.max_registers`` registers (2000 bits for coils and discrete inputs), bridging
gaps of up to ``profile.max_gap`` unmapped addresses. A request the device rejects with an
exception is split in halves, down to single points, and the working split is remembered,
so later polls do not repeat the failing request: for the life of the collector when the
exception is the device's map (01-03), for MERGE_AFTER_POLLS clean polls when it passes
(04: a sensor board failing). A single point that is still rejected reads as quality
``bad``; the rest of the device is unaffected. A busy device (05, 06) is asked again after
a short pause before its answer counts.

Gateways: devices at one host:port (different unit ids behind a Modbus TCP gateway, or one
device) share one TCP connection, and one transaction at a time is outstanding on it, as
many gateways require. The MBAP header's transaction identifier pairs answers with
requests, so a late answer to a request that timed out is discarded. Each unit's
``timeout_s`` counts from its own request, not from its place in the queue. A unit that
does not answer, or whose gateway answers exception 0A/0B, is unreachable by itself; the
connection is dropped only on a transport error or after ``SILENT_LIMIT`` requests in a
row got no answer from any unit.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from weakref import WeakKeyDictionary

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from aidc.core.config import DeviceBase
from aidc.core.metrics import Quality, Reading, check_limits
from collectors import Collector, DeviceUnreachable
from collectors.profiles import ByteOrder, ModbusPoint, ModbusProfile

Table = Literal["coil", "discrete", "holding", "input"]

BIT_TABLES = ("coil", "discrete")
TABLE_ORDER = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}
READ_FUNCTION = {  # the only requests ever sent: FC01, FC02, FC03, FC04
    "coil": AsyncModbusTcpClient.read_coils,
    "discrete": AsyncModbusTcpClient.read_discrete_inputs,
    "holding": AsyncModbusTcpClient.read_holding_registers,
    "input": AsyncModbusTcpClient.read_input_registers,
}
MAX_BITS = 2000  # per FC01/FC02 request (MAP v1.1b3, 6.1 and 6.2)
GATEWAY_FAILURES = (0x0A, 0x0B)  # the gateway answers, the device behind it does not
EXCEPTION_NAMES = {  # MAP v1.1b3, section 7
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
SILENT_LIMIT = 3  # requests in a row without any answer before a connection counts as dead
BUSY_EXCEPTIONS = {5, 6}  # acknowledge (a long operation under way), server device busy
BUSY_RETRIES = 2
BUSY_PAUSE_S = 0.05  # then 0.1 s
PERMANENT_EXCEPTIONS = {1, 2, 3}  # illegal function, address, value: the device's map
MERGE_AFTER_POLLS = 10  # clean polls before blocks split by a transient exception re-merge
CLIENT_TIMEOUT_S = 3600.0  # pymodbus' own deadline, out of the way: each unit's timeout_s rules
BYTE_ORDERS: tuple[ByteOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
NUMBERS = {  # the device's number, from its bytes most significant first
    "int16": struct.Struct(">h"),
    "uint16": struct.Struct(">H"),
    "int32": struct.Struct(">i"),
    "uint32": struct.Struct(">I"),
    "float32": struct.Struct(">f"),
    "float64": struct.Struct(">d"),
}
FLOAT_OF_WIDTH = {2: NUMBERS["float32"], 4: NUMBERS["float64"]}
BIG_ENDIAN_WORDS = {n: struct.Struct(f">{n}H") for n in (1, 2, 4)}
LITTLE_ENDIAN_WORDS = {n: struct.Struct(f"<{n}H") for n in (1, 2, 4)}
WIDTH = {"int32": 2, "uint32": 2, "float32": 2, "float64": 4}  # others: one register


class RequestRejected(Exception):
    """The device answered a read with a Modbus exception code (``code``)."""

    def __init__(self, code: int, where: str) -> None:
        super().__init__(
            f"{where}: answered exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
        )
        self.code = code


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


def to_reading(
    words: Sequence[int],
    point: ModbusPoint,
    byte_order: ByteOrder,
    labels: Mapping[str, str] | None = None,
) -> Reading:
    """The point's Reading (of the table row ``labels``): bad for a sentinel, an unknown enum
    code or a NaN; limits apply."""
    raw, labels = list(words), dict(labels or {})
    value = None if is_sentinel(words, point, byte_order) else decode(words, point, byte_order)
    if value is None or not math.isfinite(value):
        return Reading(point.metric, None, Quality.BAD, raw, labels)
    quality = check_limits(value, point.min, point.max)
    return Reading(point.metric, value, quality, raw, labels)


def float_under_all_orders(words: Sequence[int]) -> dict[ByteOrder, float]:
    """The float in 2 (float32) or 4 (float64) registers as received, decoded under each byte
    order (ABCD, CDAB, BADC, DCBA): for commissioning a map, the plausible one is the device's.
    """
    number = FLOAT_OF_WIDTH.get(len(words))
    if number is None:
        raise ValueError(f"a float spans 2 or 4 registers, not {len(words)}")
    return {order: number.unpack(value_bytes(words, order))[0] for order in BYTE_ORDERS}


# ---------------------------------------------------------------- table rows (pure)


def expand_rows(points: Sequence[ModbusPoint]) -> list[tuple[ModbusPoint, dict[str, str]]]:
    """Every point with its row labels: a table point once per row, row r (1-based) at
    ``address + (r - 1) x stride`` labelled ``{label: "r"}``; any other point unlabelled."""
    expanded: list[tuple[ModbusPoint, dict[str, str]]] = []
    for point in points:
        if point.rows is None:
            expanded.append((point, {}))
            continue
        rows = point.rows
        last = point.address + (rows.count - 1) * rows.stride
        if (rows.count > 1 and rows.stride < point_width(point)) or last > 0xFFFF:
            raise ValueError(
                f"point {point.metric}: {rows.count} rows of stride {rows.stride} from address "
                f"{point.address} overlap or pass 65535: the stride must be at least "
                f"{point_width(point)}"
            )
        for r in range(1, rows.count + 1):
            row = point.model_copy(
                update={"address": point.address + (r - 1) * rows.stride, "rows": None}
            )
            expanded.append((row, {rows.label: str(r)}))
    return expanded


# ---------------------------------------------------------------- request planning (pure)


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``,
    carrying the profile points at ``indices``."""

    table: Table
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


# ---------------------------------------------------------------- shared connections


class SharedConnection:
    """One TCP connection to ``host:port``, shared by every unit id polled through it, with
    one transaction outstanding at a time: many gateways serve no more."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.users = 0
        self.lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._silent = 0  # requests in a row that got no answer at all

    async def read(
        self, table: Table, start: int, count: int, unit_id: int, timeout_s: float
    ) -> ModbusPDU:
        """One read request to ``unit_id``, sent when the connection is free.

        Raises TimeoutError when the unit does not answer within ``timeout_s`` (the connection
        stays, unless SILENT_LIMIT requests in a row went unanswered) and ConnectionError when
        the connection cannot be opened or breaks (it is dropped; the next request reopens it).
        """
        async with self.lock:
            client = await self._open(timeout_s)
            try:
                async with asyncio.timeout(timeout_s):
                    response = await READ_FUNCTION[table](
                        client, start, count=count, device_id=unit_id
                    )
            except TimeoutError:
                self._silent += 1
                if self._silent >= SILENT_LIMIT:
                    self.close()
                raise
            except (ModbusException, OSError) as e:
                self.close()
                raise ConnectionError(f"connection broken ({e})") from e
            self._silent = 0
            return response

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _open(self, timeout_s: float) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=CLIENT_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,  # no background reconnects: the next request reconnects
        )
        try:
            async with asyncio.timeout(timeout_s):
                connected = await client.connect()
        except TimeoutError:
            connected = False
        if not connected:
            client.close()
            raise ConnectionError(f"no connection within {timeout_s} s (refused or no answer)")
        self._client, self._silent = client, 0
        return client


class ConnectionPool:
    """Shared connections by (host, port), each closed when its last user releases it."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, int], SharedConnection] = {}

    def acquire(self, host: str, port: int) -> SharedConnection:
        connection = self._connections.get((host, port))
        if connection is None:
            connection = self._connections[(host, port)] = SharedConnection(host, port)
        connection.users += 1
        return connection

    def release(self, connection: SharedConnection) -> None:
        connection.users -= 1
        if connection.users == 0:
            connection.close()
            del self._connections[(connection.host, connection.port)]


_POOLS: WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = WeakKeyDictionary()


def shared_pool() -> ConnectionPool:
    """The running event loop's pool: every collector polling from this loop shares it (an
    asyncio connection and lock belong to one loop, so the pool does too)."""
    return _POOLS.setdefault(asyncio.get_running_loop(), ConnectionPool())


# ---------------------------------------------------------------- the collector


class ModbusCollector(Collector):
    """Polls one Modbus TCP device (``device.host``, ``device.port``, ``device.modbus.unit_id``).

    Takes its connection from ``pool`` (by default the running loop's :func:`shared_pool`) on
    the first read and keeps it until :meth:`close`. Every request waits at most
    ``timeout_s`` once it is sent.
    """

    def __init__(
        self,
        device: DeviceBase,
        profile: ModbusProfile,
        timeout_s: float,
        pool: ConnectionPool | None = None,
    ) -> None:
        super().__init__(device, profile, timeout_s)
        expanded = expand_rows(profile.points)
        self._points = [point for point, _ in expanded]
        self._labels = [labels for _, labels in expanded]
        self._plan = coalesce(self._points, profile.max_registers, profile.max_gap)
        self._base_plan = list(self._plan)
        self._clean_polls = 0
        self._permanent_split = False
        self._exceptions: set[int] = set()
        self._pool = pool
        self._connection: SharedConnection | None = None

    @property
    def plan(self) -> list[Block]:
        """The requests one poll sends now (the coalesced blocks, split where rejected)."""
        return list(self._plan)

    async def read(self) -> list[Reading]:
        readings: dict[int, Reading] = {}
        plan: list[Block] = []
        self._exceptions: set[int] = set()
        for block in self._plan:
            plan += await self._read_block(block, readings)
        self._plan = self._next_plan(plan)
        return [readings[i] for i in range(len(self._points))]

    def _next_plan(self, plan: list[Block]) -> list[Block]:
        """The blocks split by a transient exception (04: a sensor board failing for a
        while) go back to the coalesced plan after MERGE_AFTER_POLLS clean polls: a passing
        fault must not multiply the requests for the life of the process. An illegal address,
        function or value (01-03) is the device's map: its split stays."""
        self._permanent_split |= bool(self._exceptions & PERMANENT_EXCEPTIONS)
        if self._exceptions or plan == self._base_plan or self._permanent_split:
            self._clean_polls = 0
            return plan
        self._clean_polls += 1
        if self._clean_polls < MERGE_AFTER_POLLS:
            return plan
        self._clean_polls = 0
        return list(self._base_plan)

    async def read_raw(self, table: Table, address: int, count: int) -> list[int]:
        """``count`` registers (bits as 0/1) of ``table`` from ``address``, as the device sent
        them, for ``aidc probe``. Raises RequestRejected if the device answers an exception."""
        answer = await self._request(Block(table, address, count, ()))
        if isinstance(answer, int):
            raise RequestRejected(answer, self._where)
        return answer

    async def close(self) -> None:
        """Release the shared connection (closed when no other unit uses it)."""
        if self._connection is not None and self._pool is not None:
            self._pool.release(self._connection)
            self._connection = None

    async def _read_block(self, block: Block, readings: dict[int, Reading]) -> list[Block]:
        """Read ``block`` into ``readings``, splitting it while the device rejects it;
        return the blocks that now stand for it in the plan."""
        points, byte_order = self._points, self.profile.byte_order
        answer = await self._request(block)
        if isinstance(answer, int):
            self._exceptions.add(answer)
        if isinstance(answer, list):
            for i in block.indices:
                first = points[i].address - block.start
                words = answer[first : first + point_width(points[i])]
                readings[i] = to_reading(words, points[i], byte_order, self._labels[i])
            return [block]
        if len(block.indices) == 1:
            i = block.indices[0]
            readings[i] = Reading(
                points[i].metric, None, Quality.BAD, f"exception {answer}", dict(self._labels[i])
            )
            return [block]
        working: list[Block] = []
        for half in split(points, block):
            working += await self._read_block(half, readings)
        return working

    async def _request(self, block: Block) -> list[int] | int:
        """The block's registers (bits as 0/1), or the exception code the device answered."""
        if self._connection is None:
            self._pool = self._pool or shared_pool()
            self._connection = self._pool.acquire(self.device.host, self.device.port)
        unit_id = self.device.modbus.unit_id
        try:
            for attempt in range(BUSY_RETRIES + 1):
                response = await self._connection.read(
                    block.table, block.start, block.count, unit_id, self.timeout_s
                )
                if not (response.isError() and response.exception_code in BUSY_EXCEPTIONS):
                    break
                if attempt < BUSY_RETRIES:  # busy (05 acknowledge, 06 busy): ask again later
                    await asyncio.sleep(BUSY_PAUSE_S * 2**attempt)
        except TimeoutError as e:
            raise DeviceUnreachable(
                f"{self._where}: no valid answer within {self.timeout_s} s: "
                "check that the device is up, its port and its unit id"
            ) from e
        except ConnectionError as e:
            raise DeviceUnreachable(
                f"{self._where}: {e}: check that the device is up and the address"
            ) from e
        if response.isError():
            if response.exception_code in GATEWAY_FAILURES:
                raise DeviceUnreachable(
                    f"{self._where}: gateway answered exception {response.exception_code}: "
                    f"unit {unit_id} does not respond behind it"
                )
            return response.exception_code
        bits = block.table in BIT_TABLES
        answer = [int(b) for b in response.bits] if bits else response.registers
        if len(answer) < block.count:
            raise DeviceUnreachable(
                f"{self._where}: answered {len(answer)} of {block.count} {block.table} values"
            )
        return answer[: block.count]

    @property
    def _where(self) -> str:
        return (
            f"device {self.device.id} at {self.device.host}:{self.device.port} "
            f"unit {self.device.modbus.unit_id}"
        )
