"""SNMP collector: a device's profile read with GetRequests and GetBulkRequests (RFC 3416).

Only these two PDUs are ever sent: the collector is read-only.

- Scalars: all of a profile's scalar OIDs go out in ``ceil(OIDs / max_varbinds)``
  GetRequest-PDUs, never one GET per field.
- Tables: a point with ``rows`` names a table column. Its ``oid`` is the column, or the column
  with a ``*`` where the row index goes when more index arcs follow it (Raritan PDU2-MIB:
  ``measurementsOutletSensorValue.<pdu>.*.<sensorType>``). All of a profile's columns are
  walked side by side: each round is one GetBulkRequest carrying every column still open
  (columns of one table advance row by row together), max-repetitions = the rows still wanted,
  within ``max_varbinds`` varbinds per response. A column closes where the walk leaves it, at
  endOfMibView, or after ``rows.count`` rows. Each row is a Reading of the point's metric with
  ``labels={rows.label: index}``, the index being the sub-identifiers between the column and the
  ``*`` suffix, joined by '.'. Points with the same ``rows.label`` share one index space: a row
  that one of them, or an earlier poll, showed and another lacks reads bad ("missing from the
  walk"); a row never silently disappears.
- Counters (``counter_bits``): see ``carry``. sysUpTime.0 rides along in the GET so that an
  agent restart is told from a wrap.

- SNMPv2c (RFC 1901) goes through a small BER codec (ITU-T X.690) over one UDP socket that
  all devices share (see ``SharedSocket``). Decoding a 12-varbind response with pyasn1 costs
  about 2 ms of CPU, with this codec about 20 us: the codec is what makes a collector host
  poll thousands of PDUs per second.
- SNMPv3 (USM, RFC 3414; AES-128, RFC 3826; HMAC-SHA-2, RFC 7860) goes through pysnmp's
  engine, which keeps the discovered engine id, boots and time between polls. The engine is
  built in a thread: its ~70 ms of MIB loading would otherwise stall every other poll.

Per varbind, noSuchObject / noSuchInstance / endOfMibView, a profile sentinel (APC's -1) or an
unknown enum code gives that metric quality ``bad``; the other metrics are unaffected. An
error-status (genErr, ...) marks the varbind its error-index names (a GET) or the column it
names (a GETBULK); the rest is read again. A device that does not answer within ``timeout_s``
(one retransmission included) raises DeviceUnreachable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import fmean
from typing import Any, NamedTuple, Protocol

from pyasn1.codec.ber import encoder
from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.proto import rfc1902, rfc1905

from aidc.core.config import SnmpSettings
from aidc.core.metrics import Quality, Reading, check_limits, worth_logging
from collectors import Collector, DeviceUnreachable
from collectors.profiles import SnmpPoint, SnmpProfile

log = logging.getLogger(__name__)

Raw = int | str  # a number as the device sent it, or why there is none ("noSuchInstance")
Varbinds = list[tuple[str, Raw]]  # (dotted OID, raw) in the order the device sent them
Exchange = Callable[[list[str]], Awaitable[tuple[int, int, dict[str, Raw]]]]
Bulk = Callable[[list[str], int], Awaitable[tuple[int, int, Varbinds]]]

__all__ = ["SnmpCollector"]

ATTEMPTS = 2  # one request and one retransmission, each given timeout_s / ATTEMPTS
TOO_BIG = 1
SMI_MIN, SMI_MAX = -(2**31), 2**64 - 1  # Integer32 .. Counter64 (RFC 2578)
SYS_UP_TIME = "1.3.6.1.2.1.1.3.0"  # RFC 3418: goes back to 0 when the agent restarts
MISSING = "missing from the walk"
ERROR_STATUS = (  # RFC 3416 section 3, error-status
    "noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess",
    "wrongType", "wrongLength", "wrongEncoding", "wrongValue", "noCreation",
    "inconsistentValue", "resourceUnavailable", "commitFailed", "undoFailed",
    "authorizationError", "notWritable", "inconsistentName",
)  # fmt: skip
REDUCE: dict[str, Callable[[list[float]], float]] = {"sum": sum, "mean": fmean, "max": max}


class Session(Protocol):
    """One device's SNMP conversation: requests out, (error-status, error-index, raws) back."""

    async def open(self, host: str, port: int) -> None: ...
    async def exchange(self, oids: list[str]) -> tuple[int, int, dict[str, Raw]]: ...
    async def bulk(self, oids: list[str], max_repetitions: int) -> tuple[int, int, Varbinds]: ...
    def close(self) -> None: ...


class SnmpCollector(Collector):
    """Reads one SNMP device (v2c community, or v3 USM): scalars by GET, tables by GETBULK."""

    def __init__(self, device: Any, profile: SnmpProfile, timeout_s: float):
        super().__init__(device, profile, timeout_s)
        row_points = [p for p in profile.points if p.rows is not None]
        self._tables = table_columns(profile.name, row_points)
        # per point: the column it walks (rows points), None for scalars
        self._roots = [column_of(p)[0] if p.rows else None for p in profile.points]
        oids = [o for p in profile.points if p.rows is None for o in point_oids(p)]
        if any(p.counter_bits for p in profile.points):
            oids.append(SYS_UP_TIME)  # tells a counter reset (agent restart) from a wrap
        oids = list(dict.fromkeys(oids))
        self._budget = device.snmp.max_varbinds
        self._requests = [oids[i : i + self._budget] for i in range(0, len(oids), self._budget)]
        self._session: Session | None = None
        self._counters: dict[str, Counter] = {}  # instance OID -> its carried history
        self._uptime: int | None = None
        self._known_rows: dict[str, set[str]] = {}  # rows.label -> every row index seen
        self._empty: set[int] = set()  # rows points (positions) logged as having no rows

    async def read(self) -> list[Reading]:
        session = self._session or await self._open()
        raws: dict[str, Raw] = {}
        for oids in self._requests:
            raws.update(await get_all(session.exchange, oids))
        columns = {root: Column(root, *shape) for root, shape in self._tables.items()}
        await walk(session.bulk, list(columns.values()), self._budget)
        restarted = self._restarted(raws.get(SYS_UP_TIME))
        found = self._found_rows(columns)
        readings = []
        for i, (point, root) in enumerate(zip(self.profile.points, self._roots)):
            if root is None:
                oids = point_oids(point)
                readings.append(self._decode(point, oids, [raws[o] for o in oids], restarted))
            else:
                readings += self._rows(point, found[i], columns[root].error, restarted)
        return readings

    def _found_rows(self, columns: dict[str, Column]) -> dict[int, dict[str, tuple[str, Raw]]]:
        """{point position: {row index: (OID, raw)}} from the walk; every row index seen is
        remembered under its label."""
        found = {}
        points = list(enumerate(zip(self.profile.points, self._roots)))
        for i, (point, root) in points:
            if root is not None and point.rows is not None:
                found[i] = rows_of(point, columns[root])
                self._known_rows.setdefault(point.rows.label, set()).update(found[i])
        for i, (point, root) in points:
            if i not in found or i in self._empty or not point.rows or not root:
                continue
            if not self._known_rows[point.rows.label]:
                self._empty.add(i)
                log.warning(
                    "event=snmp_table_empty device=%s metric=%s column=%s reason=%r",
                    self.device.id, point.metric, point.oid, columns[root].error or "no rows",
                )  # fmt: skip
        return found

    async def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    async def _open(self) -> Session:
        snmp = self.device.snmp
        session: Session
        if snmp.version == "2c":
            session = CommunitySession(snmp.community.get_secret_value(), self.timeout_s)
        else:
            session = UsmSession(snmp, self.timeout_s)
        await session.open(self.device.host, self.device.port)
        self._session = session
        return session

    def _rows(
        self, point: SnmpPoint, found: dict[str, tuple[str, Raw]], error: str, restarted: bool
    ) -> list[Reading]:
        """One Reading per row of the point's index space; bad where its column lacks it."""
        assert point.rows is not None
        label = point.rows.label
        out = []
        for row in sorted(self._known_rows[label], key=index_key):
            if row in found:
                oid, raw = found[row]
                out.append(self._decode(point, [oid], [raw], restarted, {label: row}))
            else:
                out.append(Reading(point.metric, None, Quality.BAD, error or MISSING, {label: row}))
        return out

    def _decode(
        self,
        point: SnmpPoint,
        oids: list[str],
        raws: list[Raw],
        restarted: bool,
        labels: dict[str, str] | None = None,
    ) -> Reading:
        if point.counter_bits is None:
            return decode(point, raws, labels)
        carried = [self._carry(point, o, r, restarted) for o, r in zip(oids, raws)]
        return dataclasses.replace(decode(point, carried, labels), raw=raw_of(raws))

    def _carry(self, point: SnmpPoint, oid: str, raw: Raw, restarted: bool) -> Raw:
        """The counter's raw with the wraps seen so far added (see ``carry``)."""
        bits = point.counter_bits
        assert bits is not None
        if not isinstance(raw, int) or raw in point.sentinels:
            return raw
        if not 0 <= raw < 2**bits:
            return f"not a {bits}-bit counter value ({raw})"
        last = self._counters.get(oid)
        counter, event = carry(last, raw, bits, restarted)
        self._counters[oid] = counter
        if event and last is not None:
            log.info(
                "event=snmp_counter_%s device=%s metric=%s oid=%s from=%d to=%d",
                event, self.device.id, point.metric, oid, last.raw, raw,
            )  # fmt: skip
        return counter.carried + raw

    def _restarted(self, uptime: Raw | None) -> bool:
        """Whether sysUpTime went back since the last poll: the agent restarted."""
        last = self._uptime
        self._uptime = uptime if isinstance(uptime, int) else None
        return self._uptime is not None and last is not None and self._uptime < last


# ---------------------------------------------------------------- profile points


def point_oids(point: SnmpPoint) -> list[str]:
    """The point's OIDs in dotted form, without a leading dot."""
    oids = [point.oid] if isinstance(point.oid, str) else point.oid
    return [oid.strip(".") for oid in oids]


def column_of(point: SnmpPoint) -> tuple[str, str]:
    """(subtree walked, suffix after the row index) of a rows point: ``1.2.3`` -> ("1.2.3", "");
    ``1.2.3.1.*.5`` -> ("1.2.3.1", "5")."""
    (oid,) = point_oids(point)  # the profile schema allows one column per rows point
    root, star, suffix = oid.partition(".*")
    if star and suffix and not suffix.startswith("."):
        raise ValueError(f"{point.metric}: at most one '*', as a whole sub-identifier: {point.oid}")
    return root, suffix.strip(".")


def table_columns(profile: str, points: list[SnmpPoint]) -> dict[str, tuple[int, int]]:
    """{subtree walked: (index arcs after the row index, most rows)} over the rows points."""
    tables: dict[str, tuple[int, int]] = {}
    for point in points:
        assert point.rows is not None
        root, suffix = column_of(point)
        tail = len(suffix.split(".")) if suffix else 0
        known_tail, known_count = tables.get(root, (tail, 0))
        if known_tail != tail:
            raise ValueError(
                f"profile {profile}: {point.metric}: the points walking {root} put the row "
                "index at different places"
            )
        tables[root] = (tail, max(known_count, point.rows.count))
    return tables


def rows_of(point: SnmpPoint, column: Column) -> dict[str, tuple[str, Raw]]:
    """{row index: (instance OID, raw)} of the point's rows in a walked column."""
    suffix = column_of(point)[1]
    rows = {}
    for oid, raw in column.values.items():
        if not suffix or oid.endswith("." + suffix):
            rows[column.row_of(oid)] = (oid, raw)
    return rows


@lru_cache(maxsize=65536)  # the same OIDs every walk, of every device of a profile
def index_key(index: str) -> tuple[int, ...]:
    return tuple(map(int, index.split(".")))


def raw_of(raws: list[Raw]) -> object:
    return raws[0] if len(raws) == 1 else tuple(raws)


def decode(point: SnmpPoint, raws: list[Raw], labels: dict[str, str] | None = None) -> Reading:
    """One Reading from the raw values of a point's OIDs: each OID is decoded (enum, or
    raw * scale + offset), then the point's reduce combines them."""
    raw, labels = raw_of(raws), labels or {}
    numbers = [r for r in raws if isinstance(r, int) and r not in point.sentinels
               and SMI_MIN <= r <= SMI_MAX]  # an INTEGER no SMI type holds is garbage: bad
    unknown_code = point.enum is not None and any(n not in point.enum for n in numbers)
    if len(numbers) < len(raws) or unknown_code:
        return Reading(point.metric, None, Quality.BAD, raw, labels)
    if point.enum is not None:
        values = [point.enum[n] for n in numbers]
    else:
        values = [n * point.scale + point.offset for n in numbers]
    value = float(f"{REDUCE[point.reduce](values):.12g}")  # 545.3, not 545.3000000000001
    return Reading(point.metric, value, check_limits(value, point.min, point.max), raw, labels)


# ---------------------------------------------------------------- counters


@dataclass(frozen=True)
class Counter:
    raw: int  # the last raw value read
    carried: int  # 2**bits for every wrap since the counter was first read or last reset


def carry(last: Counter | None, raw: int, bits: int, restarted: bool) -> tuple[Counter, str]:
    """The next state of a wrapping counter (Counter32/64, RFC 2578 7.1.6 and 7.1.10, or an
    Unsigned32 accumulator) and what happened: "" (counted up), "wrap" or "reset".

    A raw lower than the last one is a wrap when it fell by more than half the range
    (2**(bits-1)) and the agent did not restart (sysUpTime did not go back): the value carries
    on, 2**bits higher. Otherwise it is a reset (a device reboot or a cleared counter): the
    value restarts from the device's count. So the collected value only ever goes down at a
    reset, where it reads like any counter reset (Prometheus ``rate``, InfluxDB
    ``non_negative_difference``). Wraps carried live in the collector: after an aidc restart
    the value restarts from the raw count, which reads as a reset.
    """
    if last is None or raw >= last.raw:
        return Counter(raw, last.carried if last else 0), ""
    if not restarted and last.raw - raw > 2 ** (bits - 1):
        return Counter(raw, last.carried + 2**bits), "wrap"
    return Counter(raw, 0), "reset"


# ---------------------------------------------------------------- requests


async def get_all(exchange: Exchange, oids: list[str]) -> dict[str, Raw]:
    """GET ``oids``; on tooBig split the request, on another error-status mark the varbind it
    names (error-index) and fetch the rest again (RFC 3416 4.2.1)."""
    status, index, raws = await exchange(oids)
    if status == 0:
        return raws
    if status == TOO_BIG and len(oids) > 1:
        half = len(oids) // 2
        return {**await get_all(exchange, oids[:half]), **await get_all(exchange, oids[half:])}
    reason = error_name(status)
    if not 0 < index <= len(oids):
        return dict.fromkeys(oids, reason)
    rest = oids[: index - 1] + oids[index:]
    return {oids[index - 1]: reason, **(await get_all(exchange, rest) if rest else {})}


def error_name(status: int) -> str:
    return ERROR_STATUS[status] if status < len(ERROR_STATUS) else f"error-status {status}"


@dataclass
class Column:
    """One table column being walked: where it is, how rows are told apart, what it found."""

    root: str  # the subtree walked (dotted)
    tail: int  # index sub-identifiers after the row index (PDU2-MIB's sensorType: 1)
    max_rows: int
    cursor: str = ""  # the last OID walked: where the next GETBULK starts
    values: dict[str, Raw] = field(default_factory=dict)  # instance OID -> raw, in walk order
    rows: set[str] = field(default_factory=set)
    error: str = ""  # the error-status that ended the walk early
    done: bool = False
    _at: tuple[int, ...] = field(default=(), init=False, repr=False)  # the cursor's arcs

    def __post_init__(self) -> None:
        self.cursor = self.cursor or self.root
        self._at = index_key(self.cursor)

    def row_of(self, oid: str) -> str:
        arcs = oid[len(self.root) + 1 :].split(".")
        return ".".join(arcs[: len(arcs) - self.tail])

    def wanted(self, budget: int) -> int:
        """Varbinds this column still wants: its rows, or, when more index follows the row
        (several per row, how many unknown), the whole budget."""
        return budget if self.tail else self.max_rows - len(self.rows)

    def take(self, oid: str, raw: Raw) -> bool:
        """Add one walked varbind; False when it is past the column's end (or already done)."""
        if self.done:
            return False
        at = index_key(oid) if oid.startswith(self.root + ".") else ()
        if raw == "endOfMibView" or at <= self._at:  # past the column, or not increasing
            self.done = True
            return False
        row = self.row_of(oid)
        if not row:  # too short to hold a row index: not one of ours, walk on
            self.cursor, self._at = oid, at
            return True
        if row not in self.rows:
            if len(self.rows) == self.max_rows:
                self.done = True
                return False
            self.rows.add(row)
        self.values[oid], self.cursor, self._at = raw, oid, at
        self.done = not self.tail and len(self.rows) == self.max_rows
        return True

    def stop(self, error: str) -> None:
        self.error, self.done = error, True


async def walk(bulk: Bulk, columns: list[Column], budget: int) -> None:
    """Walk ``columns`` side by side, one GetBulkRequest per round (RFC 3416 4.2.3), until
    each is done. A response may carry fewer repetitions than asked: the walk goes on from
    where each column got to. An error-status ends the column its error-index names (all of
    them when it names none); tooBig halves the repetitions first."""
    open_ = [c for c in columns if not c.done]
    while open_:
        wanted = max(c.wanted(budget) for c in open_)
        repetitions = max(1, min(wanted, budget // len(open_)))
        status, index, varbinds = await bulk([c.cursor for c in open_], repetitions)
        if status == TOO_BIG and repetitions > 1:
            budget = max(len(open_), budget // 2)
        elif status:
            failed = [open_[index - 1]] if 0 < index <= len(open_) else open_
            for column in failed:
                column.stop(error_name(status))
        else:
            taken = [open_[i % len(open_)].take(oid, raw) for i, (oid, raw) in enumerate(varbinds)]
            if not any(taken):  # nothing new: every column ended (or the agent is looping)
                for column in open_:
                    column.done = True
        open_ = [c for c in open_ if not c.done]


# ---------------------------------------------------------------- SNMPv2c: BER codec (X.690)

EXCEPTIONS = {0x80: "noSuchObject", 0x81: "noSuchInstance", 0x82: "endOfMibView"}
UNSIGNED = {0x41, 0x42, 0x43, 0x46}  # Counter32, Gauge32/Unsigned32, TimeTicks, Counter64
TYPE_NAMES = {0x04: "OCTET STRING", 0x05: "NULL", 0x06: "OBJECT IDENTIFIER", 0x40: "IpAddress"}
GET_REQUEST, GET_BULK_REQUEST, RESPONSE = 0xA0, 0xA5, 0xA2  # RFC 3416 PDU tags


class Response(NamedTuple):
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[bytes, Raw]]  # (OID contents octets, value)


def wrap(tag: int, contents: bytes) -> bytes:
    """A BER TLV with a definite length (short form below 128 octets, long form above)."""
    n = len(contents)
    if n < 0x80:
        return bytes((tag, n)) + contents
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + contents


def integer(n: int) -> bytes:
    return wrap(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))


def request(
    community: bytes, tag: int, request_id: int, fields: tuple[int, int], oids: list[bytes]
) -> bytes:
    """An SNMPv2c Message carrying a request PDU: ``fields`` are error-status and error-index
    (zero) or, in a GetBulkRequest, non-repeaters and max-repetitions; ``oids`` encoded TLVs."""
    varbinds = b"".join(wrap(0x30, oid + b"\x05\x00") for oid in oids)
    header = integer(request_id) + integer(fields[0]) + integer(fields[1])
    pdu = wrap(tag, header + wrap(0x30, varbinds))
    return wrap(0x30, b"\x02\x01\x01" + wrap(0x04, community) + pdu)


def get_request(community: bytes, request_id: int, oids: list[bytes]) -> bytes:
    return request(community, GET_REQUEST, request_id, (0, 0), oids)


def bulk_request(community: bytes, request_id: int, oids: list[bytes], repetitions: int) -> bytes:
    """A GetBulkRequest with no non-repeaters: every OID repeats ``repetitions`` times."""
    return request(community, GET_BULK_REQUEST, request_id, (0, repetitions), oids)


def read_tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start, end) of the contents of the TLV at ``data[i]``."""
    tag, length = data[i], data[i + 1]
    i += 2
    if length & 0x80:
        octets = length & 0x7F
        if not 0 < octets <= 4:
            raise ValueError("indefinite or oversized length (SNMP needs definite lengths)")
        length = int.from_bytes(data[i : i + octets], "big")
        i += octets
    if i + length > len(data):
        raise ValueError("truncated message")
    return tag, i, i + length


def expect(data: bytes, i: int, tag: int) -> tuple[int, int]:
    found, start, end = read_tlv(data, i)
    if found != tag:
        raise ValueError(f"expected tag 0x{tag:02x} at octet {i}, found 0x{found:02x}")
    return start, end


def read_integer(data: bytes, i: int) -> tuple[int, int]:
    start, end = expect(data, i, 0x02)
    return int.from_bytes(data[start:end], "big", signed=True), end


def value_of(tag: int, contents: bytes) -> Raw:
    if tag == 0x02:
        return int.from_bytes(contents, "big", signed=True)
    if tag in UNSIGNED:
        return int.from_bytes(contents, "big")
    return EXCEPTIONS.get(tag) or f"not a number ({TYPE_NAMES.get(tag, f'tag 0x{tag:02x}')})"


@lru_cache(maxsize=65536)  # the same OIDs every poll, of every device of a profile
def oid_text(contents: bytes) -> str:
    """Dotted form of OBJECT IDENTIFIER contents octets (X.690 8.19: base-128 sub-identifiers,
    the first two arcs packed into one as 40 x first + second)."""
    arcs, n = [], 0
    for octet in contents:
        n = n << 7 | octet & 0x7F
        if not octet & 0x80:
            arcs.append(n)
            n = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, (first, arcs[0] - 40 * first, *arcs[1:])))


def parse_response(data: bytes) -> Response:
    """Decode an SNMPv2c Message carrying a Response-PDU (RFC 1901, RFC 3416 section 3)."""
    start, _ = expect(data, 0, 0x30)
    version, i = read_integer(data, start)
    if version != 1:
        raise ValueError(f"message version {version} is not SNMPv2c")
    _, i = expect(data, i, 0x04)  # community
    start, _ = expect(data, i, RESPONSE)
    request_id, i = read_integer(data, start)
    error_status, i = read_integer(data, i)
    error_index, i = read_integer(data, i)
    i, end = expect(data, i, 0x30)
    varbinds = []
    while i < end:
        start, i = expect(data, i, 0x30)
        oid_start, oid_end = expect(data, start, 0x06)
        tag, value_start, value_end = read_tlv(data, oid_end)
        varbinds.append((data[oid_start:oid_end], value_of(tag, data[value_start:value_end])))
    return Response(request_id, error_status, error_index, varbinds)


class SharedSocket:
    """One unconnected UDP socket that every SNMPv2c session of an event loop sends from.

    A socket per device ran out of file descriptors: 21,752 devices against this machine's
    limit of 20,000 (and the usual default soft limit is 1,024), so devices past the limit
    read as down. Responses are matched by request-id (unique in the socket) and must come
    from the address the request went to, as a connected socket's kernel filter did. What a
    connected socket also gave, ICMP port unreachable at once, is lost: a closed port is told
    by the timeout. The socket closes with the last session that uses it.

    The socket is read here, every answer waiting at each wake-up, not through asyncio's
    datagram transport, which reads one a turn of the loop: with 4,000 PDUs polled every
    5 s, a loop held for half a second left thousands of answers unread in the socket while
    their requests timed out, and the devices flapped between up and down.
    """

    RECEIVE_BUFFER = 8 << 20  # a burst of answers; the kernel caps it at net.core.rmem_max
    READ_AT_MOST = 1024  # answers read at one wake-up, so that timers and other I/O get turns

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int):
        self.loop, self.family = loop, family
        self.opened = asyncio.Event()
        self.error: OSError | None = None
        self.sock: socket.socket | None = None
        self.users = 0
        self.pending: dict[int, tuple[tuple, asyncio.Future[Response]]] = {}
        self.sessions: dict[tuple, CommunitySession] = {}  # address -> a session polling it
        self._request_id = random.randrange(1, 2**31 - 1)
        self.send_errors = 0

    @classmethod
    async def acquire(cls, family: int) -> SharedSocket:
        """The loop's socket for ``family``, opened by its first user; hand it back with
        ``release``. (Users wait on an Event: 20,000 of them shielding one task took O(n^2).)"""
        loop = asyncio.get_running_loop()
        shared = _SHARED.setdefault(loop, {}).get(family)
        if shared is None:
            shared = _SHARED[loop][family] = cls(loop, family)
            loop.create_task(shared._open())
        shared.users += 1
        try:
            await shared.opened.wait()
            if shared.sock is None:
                raise shared.error or OSError("the shared SNMP socket did not open")
        except BaseException:
            shared.release()
            raise
        return shared

    async def _open(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RECEIVE_BUFFER)
            sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", 0))
            sock.setblocking(False)
            self.loop.add_reader(sock.fileno(), self._read)
            self.sock = sock
        except OSError as e:
            sock.close()
            self.error = e
        finally:
            self.opened.set()

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            _SHARED[self.loop].pop(self.family, None)
            if self.sock is not None:
                if not self.loop.is_closed():
                    self.loop.remove_reader(self.sock.fileno())
                self.sock.close()

    def sendto(self, data: bytes, address: tuple) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(data, address)
        except OSError as e:  # no buffer space, no route: the request times out
            self.error_received(e)

    def _read(self) -> None:
        assert self.sock is not None
        for _ in range(self.READ_AT_MOST):
            try:
                data, addr = self.sock.recvfrom(65_535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # an error the kernel queued on the socket
                self.error_received(e)
                return
            self.datagram_received(data, addr)

    def next_request_id(self) -> int:
        while True:
            self._request_id = self._request_id % (2**31 - 1) + 1
            if self._request_id not in self.pending:
                return self._request_id

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            response = parse_response(data)
        except Exception as e:  # noqa: BLE001  (whatever a peer sends: never the transport's end)
            if (session := self.sessions.get(addr[:2])) is not None:
                session.bad_response(e)
            return
        waiting = self.pending.get(response.request_id)
        if waiting is not None and waiting[0] == addr[:2] and not waiting[1].done():
            waiting[1].set_result(response)

    def error_received(self, exc: Exception) -> None:
        """A send that failed (no route, buffer full): the request times out, counted here."""
        self.send_errors += 1
        if worth_logging(self.send_errors):
            log.warning("event=snmp_send_error count=%d error=%r", self.send_errors, str(exc))


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, SharedSocket]] = (
    weakref.WeakKeyDictionary()
)


def _no_answer(future: asyncio.Future) -> None:
    """An attempt's time is up: its request is answered by None (sent again, or given up)."""
    if not future.done():
        future.set_result(None)


async def address_of(host: str, port: int) -> list[tuple]:
    """getaddrinfo for UDP; an address written as numbers is read at once (asyncio sends
    every lookup to a thread: 20,000 of them stalled the start)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)


class CommunitySession:
    """SNMPv2c GETs and GETBULKs to one device, through the loop's SharedSocket."""

    def __init__(self, community: str, timeout_s: float):
        self._community = community.encode()
        self._timeout_s = timeout_s
        self._shared: SharedSocket | None = None
        self._address: tuple = ()
        self._peer = ""
        self._oid_tlv: dict[str, bytes] = {}  # dotted OID -> encoded TLV
        self._oid_contents: dict[str, bytes] = {}  # dotted OID -> TLV contents
        self.bad_responses = 0  # datagrams that did not parse (logged at 1, 10, 100, ...)

    async def open(self, host: str, port: int) -> None:
        self._peer = f"udp {host}:{port}"
        try:
            family, *_, address = (await address_of(host, port))[0]
            self._shared = await SharedSocket.acquire(family)
        except OSError as e:
            raise DeviceUnreachable(f"{self._peer}: {e.strerror or e}") from None
        self._address = address[:2]
        self._shared.sessions[self._address] = self

    def close(self) -> None:
        if self._shared is not None:
            if self._shared.sessions.get(self._address) is self:
                del self._shared.sessions[self._address]
            self._shared.release()
            self._shared = None

    async def exchange(self, oids: list[str]) -> tuple[int, int, dict[str, Raw]]:
        tlvs = [self._encoded(o) for o in oids]
        response = await self._send(lambda rid: get_request(self._community, rid, tlvs))
        values = dict(response.varbinds)
        raws = {o: values.get(self._oid_contents[o], "missing from response") for o in oids}
        return response.error_status, response.error_index, raws

    async def bulk(self, oids: list[str], max_repetitions: int) -> tuple[int, int, Varbinds]:
        tlvs = [self._encoded(o) for o in oids]
        response = await self._send(
            lambda rid: bulk_request(self._community, rid, tlvs, max_repetitions)
        )
        varbinds = [(oid_text(oid), raw) for oid, raw in response.varbinds]
        return response.error_status, response.error_index, varbinds

    async def _send(self, message: Callable[[int], bytes]) -> Response:
        """Send ``message(request_id)``, once more after half the timeout, and wait for its
        Response."""
        shared = self._shared
        assert shared is not None and shared.sock is not None
        loop = asyncio.get_running_loop()
        request_id = shared.next_request_id()
        data = message(request_id)
        try:
            for _ in range(ATTEMPTS):  # a timer and a future an attempt: a third of the CPU
                future = loop.create_future()  # of asyncio.wait's, on every request
                shared.pending[request_id] = (self._address, future)
                shared.sendto(data, self._address)
                timer = loop.call_later(self._timeout_s / ATTEMPTS, _no_answer, future)
                try:
                    response = await future
                finally:
                    timer.cancel()
                if response is not None:
                    return response
        finally:
            del shared.pending[request_id]
        raise DeviceUnreachable(
            f"{self._peer}: no answer within {self._timeout_s:g} s "
            "(check the address, the port and the community)"
        )

    def _encoded(self, oid: str) -> bytes:
        if oid not in self._oid_tlv:
            tlv = encoder.encode(univ.ObjectIdentifier(oid))
            _, start, end = read_tlv(tlv, 0)
            self._oid_tlv[oid], self._oid_contents[oid] = tlv, tlv[start:end]
        return self._oid_tlv[oid]

    def bad_response(self, error: Exception) -> None:
        self.bad_responses += 1
        if worth_logging(self.bad_responses):
            log.warning("event=snmp_bad_response peer=%s count=%d error=%r",
                        self._peer, self.bad_responses, str(error)[:200])  # fmt: skip


# ---------------------------------------------------------------- SNMPv3: pysnmp engine (USM)

AUTH = {
    "none": config.USM_AUTH_NONE,
    "SHA": config.USM_AUTH_HMAC96_SHA,
    "SHA256": config.USM_AUTH_HMAC192_SHA256,
}
PRIV = {"none": config.USM_PRIV_NONE, "AES128": config.USM_PRIV_CFB128_AES}
ENGINE_EXCEPTIONS = {
    rfc1905.NoSuchObject: "noSuchObject",
    rfc1905.NoSuchInstance: "noSuchInstance",
    rfc1905.EndOfMibView: "endOfMibView",
}
Send = Callable[[SnmpEngine, Callable[..., None]], Any]


def engine_value(value: Any) -> Raw:
    if type(value) in ENGINE_EXCEPTIONS:
        return ENGINE_EXCEPTIONS[type(value)]
    if isinstance(value, univ.Integer):  # INTEGER, Counter32/64, Gauge32, TimeTicks
        return int(value)
    return f"not a number ({type(value).__name__})"


def null_varbinds(oids: list[str]) -> list[tuple[Any, Any]]:
    return [(rfc1902.ObjectName(oid), univ.Null()) for oid in oids]


class UsmSession:
    """SNMPv3 requests with the user-based security model, through one pysnmp engine per
    device."""

    def __init__(self, settings: SnmpSettings, timeout_s: float):
        self._settings = settings
        self._timeout_s = timeout_s
        self._engine: SnmpEngine | None = None
        self._peer = ""

    async def open(self, host: str, port: int) -> None:
        self._peer = f"udp {host}:{port}"
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
            )
        except OSError as e:
            raise DeviceUnreachable(f"{self._peer}: {e.strerror or e}") from None
        s = self._settings
        level = "authNoPriv" if s.priv_protocol == "none" else "authPriv"
        if s.auth_protocol == "none":
            level = "noAuthNoPriv"  # SnmpSettings allows privacy only with authentication
        engine = await asyncio.to_thread(SnmpEngine)  # ~70 ms of MIB loading, off the loop
        config.add_v3_user(
            engine,
            s.user,
            AUTH[s.auth_protocol],
            s.auth_key and s.auth_key.get_secret_value(),
            PRIV[s.priv_protocol],
            s.priv_key and s.priv_key.get_secret_value(),
        )
        config.add_target_parameters(engine, "aidc", s.user, level)
        config.add_transport(engine, udp.DOMAIN_NAME, udp.UdpAsyncioTransport().open_client_mode())
        config.add_target_address(
            engine,
            "device",
            udp.DOMAIN_NAME,
            infos[0][4],
            "aidc",
            timeout=self._timeout_s * 100 / ATTEMPTS,  # hundredths of a second
            retryCount=ATTEMPTS - 1,
        )
        self._engine = engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()

    async def exchange(self, oids: list[str]) -> tuple[int, int, dict[str, Raw]]:
        status, index, answer = await self._send(
            lambda engine, done: cmdgen.GetCommandGenerator().send_varbinds(
                engine, "device", None, b"", null_varbinds(oids), done
            )
        )
        return status, index, {str(name): engine_value(value) for name, value in answer}

    async def bulk(self, oids: list[str], max_repetitions: int) -> tuple[int, int, Varbinds]:
        status, index, answer = await self._send(
            lambda engine, done: cmdgen.BulkCommandGeneratorSingleRun().send_varbinds(
                engine, "device", None, b"", 0, max_repetitions, null_varbinds(oids), done
            )
        )
        return status, index, [(str(name), engine_value(value)) for name, value in answer]

    async def _send(self, send: Send) -> tuple[int, int, Any]:
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

        def done(_engine: Any, _handle: Any, indication: Any, status: Any, index: Any,
                 varbinds: Any, _ctx: Any) -> None:  # fmt: skip
            if not future.done():
                future.set_result((indication, status, index, varbinds))

        send(self._engine, done)
        indication, status, index, answer = await future
        if indication:
            raise DeviceUnreachable(
                f"{self._peer}: SNMPv3 {indication} (check the address, the port, the user, "
                "its keys and protocols)"
            )
        return int(status), int(index), answer
