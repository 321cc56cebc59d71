"""Simulated Modbus TCP devices: one device, or a gateway with several devices behind it.

Each device serves a profile's points, encoded from its live values at every request. The
framing follows the Modbus Messaging on TCP/IP Implementation Guide v1.0b (MBAP header; the
unit identifier selects a device behind a gateway), the requests and exceptions the Modbus
Application Protocol Specification v1.1b3:

- read function codes 01-04 are answered; any other function code (every write) answers
  exception 01 (illegal function); a quantity outside 1-125 registers or 1-2000 bits answers
  exception 03 (illegal data value);
- a read that touches a register no point maps answers exception 02 (illegal data address),
  unless the register lies in a gap of at most ``profile.max_gap`` registers between mapped
  ones (a device's reserved registers, read as 0, so that a collector may bridge them);
- a faulty sensor without a sentinel, or a metric in ``refuse``, answers exception 04 (server
  device failure);
- a unit id with no device behind it, or one taken offline, answers exception 0B (gateway
  target device failed to respond), or nothing at all when taken offline ``silent``.

Requests on one connection are answered concurrently, in any order, each under its own
transaction id (MBAP header), so that ``peak_transactions`` shows what a client
imposes: a polite client never has more than one outstanding per connection.

The framing and encoding here are written independently of collectors.modbus (which decodes
with pymodbus): the two share only the profile files, so that a bug in one cannot hide itself
in the other. Byte orders name the position of the value's bytes (A = most significant) on
the wire: ABCD big-endian, DCBA little-endian, BADC bytes swapped in each word, CDAB words
swapped.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from enum import IntEnum
from itertools import pairwise

from aidc.core.metrics import series_key
from collectors.profiles import ByteOrder, ModbusPoint, ModbusProfile

Values = Callable[[], Mapping[str, float | None]]

TABLE_OF_FUNCTION = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
MAX_QUANTITY = {1: 2000, 2: 2000, 3: 125, 4: 125}  # MAP v1.1b3, 6.1-6.4
BIT_TABLES = ("coil", "discrete")
MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit id
READ_REQUEST = struct.Struct(">HH")  # starting address, quantity
PACK = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "float64": ">d",
    "bool": ">H",
}
PACK_PATTERN = {2: ">H", 4: ">I", 8: ">Q"}  # a sentinel: the raw bit pattern, by byte size
INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "bool": (0, 1),
}


class ExceptionCode(IntEnum):
    """Exception codes this simulator answers (MAP v1.1b3, section 7)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    SERVER_DEVICE_BUSY = 0x06
    GATEWAY_TARGET_FAILED_TO_RESPOND = 0x0B


def byte_size(point: ModbusPoint) -> int:
    """Bytes the point occupies in the register table (a bit of a register occupies its word)."""
    if point.bit is not None:
        return 2
    return {"int32": 4, "uint32": 4, "float32": 4, "float64": 8}.get(point.type, 2)


def span(point: ModbusPoint) -> range:
    """Addresses the point occupies: registers, or one bit of a coil/discrete input table."""
    if point.table in BIT_TABLES:
        return range(point.address, point.address + 1)
    return range(point.address, point.address + byte_size(point) // 2)


def device_number(point: ModbusPoint, value: float) -> int | float:
    """Invert ``value = raw * scale + offset`` (or the enum) into the number the device stores."""
    if point.enum:
        return min(point.enum, key=lambda code: abs(point.enum[code] - value))
    raw = (value - point.offset) / point.scale
    if point.bit is not None or point.table in BIT_TABLES:
        return int(round(raw) != 0)
    if point.type in ("float32", "float64"):
        return raw
    low, high = INT_RANGE[point.type]
    return min(max(round(raw), low), high)  # a real device saturates


def on_the_wire(big_endian: bytes, byte_order: ByteOrder) -> list[int]:
    """Registers carrying ``big_endian`` (the value's bytes, most significant first)."""
    n = len(big_endian)
    source_of = {  # wire byte k carries value byte source_of(k)
        "ABCD": lambda k: k,
        "DCBA": lambda k: n - 1 - k,
        "BADC": lambda k: k ^ 1,
        "CDAB": lambda k: n - 2 - (k & ~1) + (k & 1),
    }[byte_order]
    wire = bytes(big_endian[source_of(k)] for k in range(n))
    return [wire[k] << 8 | wire[k + 1] for k in range(0, n, 2)]


def value_bytes(point: ModbusPoint, number: float) -> bytes:
    """The device's number as big-endian bytes of the point's type."""
    return struct.pack(PACK[point.type], number)


def sentinel_bytes(point: ModbusPoint) -> bytes:
    """The point's first sentinel as the raw bit pattern of its registers."""
    size = byte_size(point)
    return struct.pack(PACK_PATTERN[size], point.sentinels[0] & ((1 << 8 * size) - 1))


def readable_addresses(points: list[ModbusPoint], max_gap: int) -> frozenset[int]:
    """Mapped addresses plus the reserved gaps of at most ``max_gap`` between them."""
    mapped = sorted({a for p in points for a in span(p)})
    readable = set(mapped)
    for low, high in pairwise(mapped):
        if high - low - 1 <= max_gap:
            readable.update(range(low + 1, high))
    return frozenset(readable)


class TableImage:
    """One table's content at one instant: words (or bits) by address, and faulty addresses."""

    def __init__(self) -> None:
        self.words: dict[int, int] = {}
        self.faulty: set[int] = set()
        self.status: dict[int, int] = {}  # native content of registers whose bits are points
        self.status_order: dict[int, ByteOrder] = {}
        self.status_fault: dict[int, int] = {}  # a sentinel replaces the whole register

    def add(self, point: ModbusPoint, value: float | None, byte_order: ByteOrder) -> None:
        """Encode one point's current value (None = sensor fault)."""
        if value is None and (point.table in BIT_TABLES or not point.sentinels):
            self.faulty.update(span(point))
        elif point.table in BIT_TABLES:
            self.words[point.address] = device_number(point, value)
        elif point.bit is not None:
            self.add_bit(point, value, byte_order)
        else:
            raw = (
                sentinel_bytes(point)
                if value is None
                else value_bytes(point, device_number(point, value))
            )
            self.words.update(zip(span(point), on_the_wire(raw, byte_order)))

    def add_bit(self, point: ModbusPoint, value: float | None, byte_order: ByteOrder) -> None:
        """Set or clear one bit of a status register."""
        self.status_order[point.address] = byte_order
        native = self.status.get(point.address, 0)
        if value is None:
            self.status_fault[point.address] = point.sentinels[0] & 0xFFFF
        elif device_number(point, value):
            native |= 1 << point.bit
        self.status[point.address] = native

    def finish(self) -> None:
        """Put the composed status registers on the wire."""
        for address, native in self.status.items():
            content = self.status_fault.get(address, native)
            order = self.status_order[address]
            self.words[address] = on_the_wire(struct.pack(">H", content), order)[0]


def table_rows(points: list[ModbusPoint]) -> list[tuple[ModbusPoint, str]]:
    """Every point with the key of its value in ``values()``: a table point once per row,
    row r (1-based) at ``address + (r - 1) x stride`` under ``metric{label=r}``."""
    expanded: list[tuple[ModbusPoint, str]] = []
    for point in points:
        if point.rows is None:
            expanded.append((point, point.metric))
            continue
        label, stride = point.rows.label, point.rows.stride
        for r in range(1, point.rows.count + 1):
            row = point.model_copy(update={"address": point.address + (r - 1) * stride})
            expanded.append((row, series_key(point.metric, {label: str(r)})))
    return expanded


class SimulatedUnit:
    """One device: answers reads of its profile's tables from its current ``values()``.

    ``values()`` gives the device's canonical values (physical units, by series key: a table
    row under ``metric{label=r}``); a key that is None or missing is a sensor fault. A read
    touching one of the ``illegal`` addresses answers exception 02, to exercise a collector's
    fallback.
    """

    def __init__(self, profile: ModbusProfile, values: Values) -> None:
        self.profile, self.values = profile, values
        self.illegal: frozenset[int] = frozenset()
        points = table_rows(profile.points)
        self.points = {
            table: [(p, key) for p, key in points if p.table == table]
            for table in TABLE_OF_FUNCTION.values()
        }
        self.readable = {
            table: readable_addresses([p for p, _ in rows], profile.max_gap)
            for table, rows in self.points.items()
        }

    def read(
        self, table: str, wanted: range, refuse: AbstractSet[str]
    ) -> list[int] | ExceptionCode:
        """Registers (or bits as 0/1) ``wanted`` of ``table``, encoded now; or the exception.

        ``refuse``: metrics (or one row's series key) whose registers answer exception 04.
        """
        if any(a not in self.readable[table] or a in self.illegal for a in wanted):
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        current = self.values()
        image = TableImage()
        for point, key in self.points[table]:
            where = span(point)
            if where.start < wanted.stop and wanted.start < where.stop:
                if refuse & {point.metric, key}:
                    image.faulty.update(where)
                else:
                    image.add(point, current.get(key), point.byte_order or self.profile.byte_order)
        image.finish()
        if image.faulty.intersection(wanted):
            return ExceptionCode.SERVER_DEVICE_FAILURE
        return [image.words.get(a, 0) for a in wanted]


def exception_pdu(function_code: int, code: ExceptionCode) -> bytes:
    """An exception response: the function code with its high bit set, then the code."""
    return bytes((function_code | 0x80, code))


def read_response_pdu(function_code: int, content: list[int]) -> bytes:
    """A read response: byte count, then bits packed eight to a byte (first bit in the least
    significant position, MAP 6.1) or big-endian registers (MAP 6.3)."""
    if TABLE_OF_FUNCTION[function_code] in BIT_TABLES:
        data = bytes(
            sum(bit << k for k, bit in enumerate(content[i : i + 8]))
            for i in range(0, len(content), 8)
        )
    else:
        data = struct.pack(f">{len(content)}H", *content)
    return bytes((function_code, len(data))) + data


def keep(tasks: set[asyncio.Task[None]], task: asyncio.Task[None] | None) -> None:
    """Hold ``task`` in ``tasks`` until it ends (so that it can be awaited or cancelled)."""
    if task is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)


class ModbusGatewayServer:
    """A Modbus TCP gateway on ``host:port`` with one simulated device per unit id.

    ``units`` maps a unit id to the device's profile and its ``values()`` callable. Fault
    hooks, changeable while running: ``delay_s`` delays every answer (a slow device or
    gateway); ``refuse`` holds metrics whose registers answer exception 04 (a failing sensor
    board); ``busy`` answers that many requests with exception 06 (a device busy with
    something else); :meth:`set_unit_offline` takes one device behind the gateway off its bus.

    For tests: ``function_codes_seen`` counts the requests received by function code,
    ``connections_accepted`` counts TCP connections, ``peak_transactions`` is the most
    requests ever received and not yet answered at one time, over all connections.
    """

    def __init__(
        self, host: str, port: int, units: Mapping[int, tuple[ModbusProfile, Values]]
    ) -> None:
        self.host, self.port = host, port
        self.units = {
            unit_id: SimulatedUnit(profile, values) for unit_id, (profile, values) in units.items()
        }
        self.delay_s = 0.0
        self.refuse: set[str] = set()
        self.busy = 0  # the next requests that answer exception 06 (server device busy)
        self.function_codes_seen: Counter[int] = Counter()
        self.connections_accepted = 0
        self.peak_transactions = 0
        self._outstanding = 0
        self._offline: dict[int, bool] = {}  # unit id -> silent (no answer at all)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()  # one task per connection
        self._answering: set[asyncio.Task[None]] = set()  # one task per request not yet answered

    @property
    def running(self) -> bool:
        return self._server is not None

    def set_unit_offline(self, unit_id: int, offline: bool, *, silent: bool = False) -> None:
        """Take the device at ``unit_id`` off the gateway's bus (or put it back): the gateway
        answers exception 0B for it, or nothing at all if ``silent`` (the client times out)."""
        if offline:
            self._offline[unit_id] = silent
        else:
            self._offline.pop(unit_id, None)

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        """Close the listening socket and every connection, dropping unanswered requests."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for writer in self._connections:
            writer.close()  # its reader sees the end of the stream
        for task in self._answering:
            task.cancel()
        await asyncio.gather(*self._serving, *self._answering, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: read requests as they come, answer each in its own task."""
        self.connections_accepted += 1
        self._connections.add(writer)
        keep(self._serving, asyncio.current_task())
        try:
            while True:
                header = await reader.readexactly(MBAP.size)
                transaction, protocol, length, unit_id = MBAP.unpack(header)
                if protocol != 0 or not 2 <= length <= 254:
                    return  # not Modbus TCP: drop the connection
                pdu = await reader.readexactly(length - 1)
                self.function_codes_seen[pdu[0]] += 1
                self._outstanding += 1
                self.peak_transactions = max(self.peak_transactions, self._outstanding)
                answer = self._answer(writer, transaction, unit_id, pdu)
                keep(self._answering, asyncio.create_task(answer))
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client closed the connection
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, transaction: int, unit_id: int, pdu: bytes
    ) -> None:
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            reply = self._reply(unit_id, pdu)
            if reply is not None and not writer.is_closing():
                writer.write(MBAP.pack(transaction, 0, len(reply) + 1, unit_id) + reply)
        finally:
            self._outstanding -= 1

    def _reply(self, unit_id: int, pdu: bytes) -> bytes | None:
        """The response PDU to one request; None: the gateway stays silent."""
        function_code = pdu[0]
        unit = self.units.get(unit_id)
        if unit is None or unit_id in self._offline:
            if self._offline.get(unit_id):
                return None
            return exception_pdu(function_code, ExceptionCode.GATEWAY_TARGET_FAILED_TO_RESPOND)
        if function_code not in TABLE_OF_FUNCTION:
            return exception_pdu(function_code, ExceptionCode.ILLEGAL_FUNCTION)
        if self.busy > 0:
            self.busy -= 1
            return exception_pdu(function_code, ExceptionCode.SERVER_DEVICE_BUSY)
        if len(pdu) != 1 + READ_REQUEST.size:
            return exception_pdu(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
        address, quantity = READ_REQUEST.unpack(pdu[1:])
        if not 1 <= quantity <= MAX_QUANTITY[function_code]:
            return exception_pdu(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
        if address + quantity > 0x10000:
            return exception_pdu(function_code, ExceptionCode.ILLEGAL_DATA_ADDRESS)
        wanted = range(address, address + quantity)
        answer = unit.read(TABLE_OF_FUNCTION[function_code], wanted, self.refuse)
        if isinstance(answer, ExceptionCode):
            return exception_pdu(function_code, answer)
        return read_response_pdu(function_code, answer)


class ModbusDeviceServer(ModbusGatewayServer):
    """One simulated Modbus TCP device on ``host:port``, answering for ``unit_id`` only.

    ``illegal_addresses`` makes any read touching them answer exception 02.
    """

    def __init__(
        self,
        profile: ModbusProfile,
        host: str,
        port: int,
        values: Values,
        unit_id: int = 1,
        illegal_addresses: AbstractSet[int] = frozenset(),
    ) -> None:
        super().__init__(host, port, {unit_id: (profile, values)})
        self.profile, self.unit_id = profile, unit_id
        self.units[unit_id].illegal = frozenset(illegal_addresses)
