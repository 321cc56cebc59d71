"""A Modbus TCP device that serves a profile's points, encoded from live values at each request.

Follows the Modbus Application Protocol Specification v1.1b3: read function codes 01-04 are
answered; every write answers exception 01 (illegal function), a read that touches a register
no point maps answers exception 02 (illegal data address) unless the register lies in a gap
of at most ``profile.max_gap`` registers between mapped ones (a device's reserved registers,
read as 0, so that a collector may bridge them), and a read of a faulty sensor that has no
sentinel answers exception 04 (server device failure). A request for another unit id
answers exception 0B (gateway target device failed to respond).

The encoding here is written independently of collectors.modbus, which decodes: the two share
only the profile files, so that a bug in one cannot hide itself in the other. Byte orders
name the position of the value's bytes (A = most significant) on the wire: ABCD big-endian,
DCBA little-endian, BADC bytes swapped in each word, CDAB words swapped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from itertools import pairwise

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer

from collectors.profiles import ByteOrder, ModbusPoint, ModbusProfile

Values = Callable[[], Mapping[str, float | None]]

TABLE_OF_FUNCTION = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
BIT_TABLES = ("coil", "discrete")
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


class ProfileDatastore(ModbusServerContext):
    """A pymodbus 3.x server context that encodes the device's current values per request.

    It speaks pymodbus' datastore protocol (async_getValues / async_setValues / device_ids)
    instead of holding registers. The newer SimDevice API does not fit yet: its bit blocks
    cannot refuse single unmapped coils or discrete inputs, and its per-request action sees
    the register count, not the bit count, of an FC01/FC02 read.
    """

    def __init__(
        self, profile: ModbusProfile, values: Values, unit_id: int, illegal: AbstractSet[int]
    ) -> None:
        # No super().__init__(): it would build register blocks this store does not use.
        self.old_simulator, self.simdevices = True, []  # pymodbus: call this context directly
        self.profile, self.values, self.unit_id, self.illegal = profile, values, unit_id, illegal
        self.points = {
            table: [p for p in profile.points if p.table == table]
            for table in TABLE_OF_FUNCTION.values()
        }
        self.readable = {
            table: readable_addresses(points, profile.max_gap)
            for table, points in self.points.items()
        }

    def device_ids(self) -> list[int]:
        return [self.unit_id]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Registers (or bits) ``address`` .. ``address + count - 1``, encoded now."""
        if device_id != self.unit_id:
            raise NoSuchIdException(f"unit id {device_id} (this device is {self.unit_id})")
        table = TABLE_OF_FUNCTION.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        wanted = range(address, address + count)
        if any(a not in self.readable[table] or a in self.illegal for a in wanted):
            return ExcCodes.ILLEGAL_ADDRESS
        image = self.image(table, wanted)
        if image.faulty.intersection(wanted):
            return ExcCodes.DEVICE_FAILURE
        if table in BIT_TABLES:
            return [bool(image.words.get(a, 0)) for a in wanted]
        return [image.words.get(a, 0) for a in wanted]

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes:
        """Writes are refused: a monitored device, not a controlled one."""
        return ExcCodes.ILLEGAL_FUNCTION

    def image(self, table: str, wanted: range) -> TableImage:
        """The table's current content for the points that ``wanted`` touches."""
        current = self.values()
        image = TableImage()
        for point in self.points[table]:
            where = span(point)
            if where.start < wanted.stop and wanted.start < where.stop:
                order = point.byte_order or self.profile.byte_order
                image.add(point, current.get(point.metric), order)
        image.finish()
        return image


class ModbusDeviceServer:
    """One simulated Modbus TCP device on ``host:port``, answering for ``unit_id``.

    ``values()`` gives the device's current canonical values (physical units, by metric); a
    metric that is None or missing is a sensor fault. ``illegal_addresses`` makes any read
    touching them answer exception 02, to exercise a collector's fallback.
    ``function_codes_seen`` records the function code of every request received.
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
        self.profile, self.host, self.port, self.unit_id = profile, host, port, unit_id
        self.datastore = ProfileDatastore(profile, values, unit_id, frozenset(illegal_addresses))
        self.function_codes_seen: list[int] = []
        self._server: ModbusTcpServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        server = ModbusTcpServer(
            self.datastore, address=(self.host, self.port), trace_pdu=self._trace
        )
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        """Close the listening socket and every client connection."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.function_codes_seen.append(pdu.function_code)
        return pdu
