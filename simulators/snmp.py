"""A virtual SNMP agent that serves a profile's OIDs, encoded from live values at each request.

Answers GetRequest, GetNextRequest and GetBulkRequest (RFC 3416 4.2.1-4.2.3) from one MIB of
its own, reached two ways:

- SNMPv2c with the device's community: a BER codec of this module's own (``V2cRequest``) on a
  plain asyncio UDP endpoint. Through pyasn1 a PDU's poll took some 2 ms of CPU, and a farm
  of 4,000 PDUs polled every 5 s more than a core: `aidc demo` of a 2,000-rack site answered
  its polls late, and a tenth of its devices read as down. SNMPv1 goes through pysnmp's
  message API (pysnmp.proto.api over pyasn1's BER codec), translated per RFC 3584 (pysnmp's
  proxy). No SNMP engine: a server starts in well under a millisecond. (A pysnmp engine costs
  ~70 ms of event-loop CPU, mostly compiling pysnmp's own MIB modules from source.)
- SNMPv3, when ``v3_users`` are given: pysnmp's agent engine (RFC 3411 architecture, USM
  RFC 3414 with HMAC-SHA-1/SHA-256 and AES-128, VACM RFC 3415: each user reads everything at
  the security level it was given, and nothing below it). The community still answers on the
  same port.

No SET responder exists: a SetRequest is recorded in ``pdu_types_seen`` and dropped
unanswered; nothing is ever written. A wrong community or key gets no answer, as from a real
agent (v3: a USM report, RFC 3414 3.2).

Values. Each point's raw value is ``round((value - offset) / scale)`` or the enum code of the
value (the first code that maps to it); a ``counter_bits`` point serves it modulo
2**counter_bits, as a real counter rolls over. A point over several OIDs with ``reduce: sum``
serves an even share of the value on each OID; with ``mean`` or ``max`` the value itself on
each. A ``rows`` point serves one instance per ``values()`` key ``metric{label=index}``
(``aidc.core.metrics.series_key`` form, e.g. ``current_a{phase=2}``): the column's OID + index, or
the index in place of the ``*``. A value of None is a sensor fault: the point's first
sentinel, or noSuchInstance when it has none (a walk skips it). A metric missing from
``values()`` is an object the device does not implement: noSuchObject. A value it cannot
encode (NaN, outside the type's range, no enum code) is logged as an error and served as
noSuchInstance. Integers go out as INTEGER (Integer32), or as the SMI type the MIB gives the
object (``SYNTAX``). sysDescr.0, sysObjectID.0 and sysUpTime.0 (back to 0 at each start: a
restart) are served too, and a UPS-MIB device's upsIdentManufacturer and upsIdentModel.

Faults (the same attribute names on every protocol's server):
- ``stop()``: the device goes offline (its port closes).
- ``delay_s``: every answer leaves ``delay_s`` seconds late: a slow device. The answer is
  scheduled on the event loop, so nothing else waits.
- ``refuse``: metric names (or series keys such as ``current_a{phase=2}``) whose sensor board
  fails: any request that reaches one of their OIDs is answered genErr, error-index at that
  varbind (RFC 3416 4.2.1, 4.2.2, 4.2.3). This is what net-snmp-based management cards (most
  UPS and PDU cards) answer when the handler behind an object (the serial link to the UPS, a
  metering board) fails, and the SNMP counterpart of a Modbus exception code. A None value
  (sentinel / noSuchInstance) is the other, quieter failure.

A GetBulk response carries at most ``MAX_BULK_VARBINDS`` varbinds (a real agent stops where its
message size ends): managers must carry on from a short one.

The encoding here is written independently of collectors.snmp, which decodes: the two share
only the profile files, so that a bug in one cannot hide itself in the other; net-snmp's
tools read this agent, and the collector reads net-snmp's agent (tests/test_snmp.py).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, NamedTuple

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import api, rfc1902, rfc1905
from pysnmp.proto.api import v2c
from pysnmp.proto.proxy import rfc2576
from pysnmp.smi import error as smi_error

from aidc.core.metrics import series_key
from collectors.profiles import SnmpPoint, SnmpProfile

log = logging.getLogger(__name__)

Values = Callable[[], Mapping[str, float | None]]
Oid = tuple[int, ...]
Answer = tuple[int, int, list[tuple[Any, Any]]]  # error-status, error-index, varbinds

SYS_DESCR: Oid = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_OBJECT_ID: Oid = (1, 3, 6, 1, 2, 1, 1, 2, 0)
SYS_UP_TIME: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)
UPS_MIB: Oid = (1, 3, 6, 1, 2, 1, 33)  # RFC 1628
UPS_IDENT: Oid = (*UPS_MIB, 1, 1)  # upsIdent group
# Objects whose MIB syntax is not INTEGER, by object OID (a scalar, or a table column).
SYNTAX: dict[Oid, type] = {
    (*UPS_MIB, 1, 6, 1): rfc1902.Gauge32,  # RFC 1628 upsAlarmsPresent
    (1, 3, 6, 1, 4, 1, 13742, 6, 5, 2, 3, 1, 4): rfc1902.Unsigned32,  # PDU2-MIB inlet sensors
    (1, 3, 6, 1, 4, 1, 13742, 6, 5, 4, 3, 1, 4): rfc1902.Unsigned32,  # PDU2-MIB outlet sensors
}
GEN_ERR, AUTHORIZATION_ERROR = 5, 16  # RFC 3416 error-status
MAX_BULK_VARBINDS = 64
PDU_KINDS = {  # the requests answered
    v2c.GetRequestPDU.tagSet: "GetRequest",
    v2c.GetNextRequestPDU.tagSet: "GetNextRequest",
    v2c.GetBulkRequestPDU.tagSet: "GetBulkRequest",
}
READ_PDUS, READ_KINDS = tuple(PDU_KINDS), frozenset(PDU_KINDS.values())
ROW_KEY = re.compile(r"([a-z][a-z0-9_]*)\{([a-z][a-z0-9_]*)=(\d+(?:\.\d+)*)\}")
AUTH = {
    "none": config.USM_AUTH_NONE,
    "SHA": config.USM_AUTH_HMAC96_SHA,
    "SHA256": config.USM_AUTH_HMAC192_SHA256,
}
PRIV = {"none": config.USM_PRIV_NONE, "AES128": config.USM_PRIV_CFB128_AES}


def parse_oid(text: str) -> Oid:
    return tuple(int(arc) for arc in text.strip(".").split("."))


def texts(point: SnmpPoint) -> list[str]:
    return [point.oid] if isinstance(point.oid, str) else point.oid


def point_oids(point: SnmpPoint) -> list[Oid]:
    """A scalar point's instance OIDs."""
    return [parse_oid(o) for o in texts(point)]


def row_oid(point: SnmpPoint, index: str) -> Oid:
    """Row ``index`` of a rows point: its column + the index, or the index in place of ``*``."""
    columns = texts(point)
    if len(columns) != 1:
        raise ValueError(f"{point.metric}: a rows point serves one table column, not a list")
    column = columns[0].strip(".")
    return parse_oid(column.replace("*", index) if "*" in column else f"{column}.{index}")


def raw_values(point: SnmpPoint, value: float | None, oids: int) -> list[int | None]:
    """The integer each of the point's ``oids`` OIDs carries for ``value``; None: no such
    instance."""
    if value is None:
        return [point.sentinels[0] if point.sentinels else None] * oids
    if point.enum is not None:
        codes = [code for code, meaning in point.enum.items() if meaning == value]
        if not codes:
            raise ValueError(f"{point.metric}={value} has no code in the profile's enum")
        return [codes[0]] * oids
    share = value / oids if point.reduce == "sum" else value
    raw = round((share - point.offset) / point.scale)
    return [raw % 2**point.counter_bits if point.counter_bits else raw] * oids


@cache
def syntax(oid: Oid) -> type:
    """The SMI type of the object ``oid`` is an instance of: INTEGER unless SYNTAX says so."""
    for n in range(len(oid) - 1, 0, -1):
        if oid[:n] in SYNTAX:
            return SYNTAX[oid[:n]]
    return rfc1902.Integer32


def typed(oid: Oid, raw: int | None) -> Any:
    """``raw`` as the SMI type of its object; None as noSuchInstance."""
    return rfc1905.noSuchInstance if raw is None else syntax(oid)(raw)


def device_root(profile: SnmpProfile) -> Oid:
    """The longest OID prefix of all the profile's points: the MIB subtree the device
    implements, served as its sysObjectID."""
    oids = [parse_oid(oid.split("*")[0]) for p in profile.points for oid in texts(p)]
    first, last = min(oids), max(oids)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def identity(profile: SnmpProfile, root: Oid) -> dict[Oid, Any]:
    """The identification a manager reads first: for a UPS-MIB device, upsIdentManufacturer
    and upsIdentModel (NUT's snmp-ups tells an RFC 1628 UPS by its upsIdentModel)."""
    if root[: len(UPS_MIB)] != UPS_MIB:
        return {}
    return {
        (*UPS_IDENT, 1, 0): rfc1902.OctetString("aidc"),
        (*UPS_IDENT, 2, 0): rfc1902.OctetString(f"simulated {profile.name}"),
    }


def rows_by_metric(values: Mapping[str, float | None]) -> dict[tuple[str, str], list[Any]]:
    """{(metric, label): [(row index, value)]} of the ``metric{label=index}`` keys."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for key, value in values.items():
        if row := _row_of(key):
            rows.setdefault(row[:2], []).append((row[2], value))
    return rows


@functools.lru_cache(maxsize=4096)
def _row_of(key: str) -> tuple[str, str, str] | None:
    """(metric, label, index) of a ``metric{label=index}`` key, parsed once a key (a farm of
    4,000 PDUs asks for the same few dozen keys hundreds of times a second)."""
    match = ROW_KEY.fullmatch(key)
    if match and series_key(match[1], {match[2]: match[3]}) == key:
        return match[1], match[2], match[3]
    return None


class Snapshot(NamedTuple):
    """Every OID the device answers for, with its value at one request."""

    values: dict[Oid, Any]
    order: list[Oid]  # the OIDs a walk visits, in order (faulty sensors left out)
    refused: set[Oid]

    def get(self, oid: Oid) -> Any:
        return self.values.get(oid, rfc1905.noSuchObject)

    def next(self, oid: Oid) -> tuple[Oid, Any]:
        i = bisect.bisect_right(self.order, oid)
        if i == len(self.order):
            return oid, rfc1905.endOfMibView
        return self.order[i], self.values[self.order[i]]


class ProfileMib:
    """The device's MIB: the profile's OIDs, encoded from ``values()`` when a request comes."""

    def __init__(self, profile: SnmpProfile, values: Values):
        self._values = values
        self._started = time.monotonic()
        self._scalars = [(p, point_oids(p)) for p in profile.points if p.rows is None]
        self._rows = [p for p in profile.points if p.rows is not None]
        for point in self._rows:
            row_oid(point, "1")  # a profile error shows at start, not at the first request
        root = device_root(profile)
        self._fixed: dict[Oid, Any] = {
            SYS_DESCR: rfc1902.OctetString(f"aidc simulated {profile.kind}: {profile.name}"),
            SYS_OBJECT_ID: rfc1902.ObjectIdentifier(root),
            **identity(profile, root),
        }
        self._last: tuple[Mapping, set[str], Snapshot] | None = None

    def answer(self, pdu: Any, refuse: set[str]) -> Answer:
        """The Response to a Get, GetNext or GetBulk request PDU (SNMPv2, RFC 3416 4.2)."""
        request = v2c.apiPDU.get_varbinds(pdu)
        fields = (0, 0)
        if pdu.tagSet == v2c.GetBulkRequestPDU.tagSet:
            fields = (int(v2c.apiBulkPDU.get_non_repeaters(pdu)),
                      int(v2c.apiBulkPDU.get_max_repetitions(pdu)))
        status, index, found = self.lookup(PDU_KINDS[pdu.tagSet], [tuple(n) for n, _ in request],
                                           fields, refuse)
        if status:
            return status, index, list(request)
        return 0, 0, [(rfc1902.ObjectName(name), value) for name, value in found]

    def lookup(self, kind: str, names: list[Oid], fields: tuple[int, int],
               refuse: set[str]) -> tuple[int, int, list[tuple[Oid, Any]]]:
        """(error-status, error-index, [(OID, value)]) of a request of ``kind`` for ``names``;
        ``fields``: a GetBulk's non-repeaters and max-repetitions."""
        snapshot = self.snapshot(refuse)
        if kind == "GetRequest":
            found = [(i, name, snapshot.get(name)) for i, name in enumerate(names)]
        elif kind == "GetNextRequest":
            found = [(i, *snapshot.next(name)) for i, name in enumerate(names)]
        else:
            found = bulk(snapshot, names, *fields)
        for i, name, _ in found:
            if name in snapshot.refused:
                return GEN_ERR, i + 1, []
        return 0, 0, [(name, value) for _, name, value in found]

    def snapshot(self, refuse: set[str]) -> Snapshot:
        """Every OID's typed value: made again when the values or ``refuse`` changed since
        the last request (a poll's requests come within milliseconds of each other)."""
        values = self._values()
        uptime = rfc1902.TimeTicks(int((time.monotonic() - self._started) * 100) % 2**32)
        if self._last is not None and self._last[0] == values and self._last[1] == refuse:
            self._last[2].values[SYS_UP_TIME] = uptime
            return self._last[2]
        snapshot = self._snapshot(values, uptime, refuse)
        self._last = dict(values), set(refuse), snapshot
        return snapshot

    def _snapshot(self, values: Mapping[str, float | None], uptime: Any,
                  refuse: set[str]) -> Snapshot:
        table = {**self._fixed, SYS_UP_TIME: uptime}
        refused: set[Oid] = set()
        for point, oids in self._scalars:
            if point.metric in values:
                self._serve(table, point, oids, values[point.metric])
                if point.metric in refuse:
                    refused.update(oids)
        rows = rows_by_metric(values)
        for point in self._rows:
            assert point.rows is not None
            for index, value in rows.get((point.metric, point.rows.label), []):
                oid = row_oid(point, index)
                self._serve(table, point, [oid], value)
                if {point.metric, series_key(point.metric, {point.rows.label: index})} & refuse:
                    refused.add(oid)
        order = sorted(o for o, v in table.items() if v is not rfc1905.noSuchInstance)
        return Snapshot(table, order, refused)

    @staticmethod
    def _serve(table: dict[Oid, Any], point: SnmpPoint, oids: list[Oid], value: Any) -> None:
        """Put the point's OIDs in ``table`` as typed values (the first point naming an OID
        wins). A value the device cannot encode (NaN, outside the type's range, no enum code)
        is logged and served as noSuchInstance."""
        try:
            typed_values = [typed(o, r) for o, r in zip(oids, raw_values(point, value, len(oids)))]
        except (ValueError, OverflowError, PyAsn1Error) as e:
            log.error("event=snmp_sim_encode_error metric=%s error=%r", point.metric, str(e))
            typed_values = [rfc1905.noSuchInstance] * len(oids)
        for oid, typed_value in zip(oids, typed_values):
            table.setdefault(oid, typed_value)


def bulk(snapshot: Snapshot, names: list[Oid], non_repeaters: int, repetitions: int) -> list[Any]:
    """GetBulk (RFC 3416 4.2.3): one GetNext for each of the first ``non_repeaters`` names, then
    up to ``repetitions`` successive GetNexts for each of the others, stopping early once all
    of them are at endOfMibView. [(request position, OID, value)]."""
    n = min(max(non_repeaters, 0), len(names))
    found = [(i, *snapshot.next(names[i])) for i in range(n)]
    cursors = names[n:]
    if cursors:
        repetitions = min(max(repetitions, 0), (MAX_BULK_VARBINDS - n) // len(cursors))
    else:
        repetitions = 0
    for _ in range(repetitions):
        step = [snapshot.next(cursor) for cursor in cursors]
        found += [(n + j, name, value) for j, (name, value) in enumerate(step)]
        cursors = [name for name, _ in step]
        if all(value is rfc1905.endOfMibView for _, value in step):
            break
    return found


class SnmpDeviceServer:
    """One virtual SNMP device on ``host:port`` (UDP), serving ``profile`` from ``values()``.

    ``v3_users``: SNMPv3 users, each ``{"user": ..., "auth_protocol": "none" | "SHA" |
    "SHA256", "auth_key": ..., "priv_protocol": "none" | "AES128", "priv_key": ...}`` (the
    names of aidc.core.config.SnmpSettings); without them the server speaks v1/v2c only."""

    def __init__(
        self,
        profile: SnmpProfile,
        host: str,
        port: int,
        values: Values,
        community: str = "public",
        v3_users: list[dict] | None = None,
    ):
        self.profile, self.host, self.port = profile, host, port
        self.values, self.community = values, community
        self.v3_users = v3_users or []
        self.delay_s = 0.0  # every answer this late: a slow device
        self.refuse: set[str] = set()  # metrics (or series keys) whose OIDs answer genErr
        self.pdu_types_seen: Counter[str] = Counter()  # "GetRequest", "GetNextRequest", ...
        self._mib: ProfileMib | None = None
        self._sock: socket.socket | None = None
        self._endpoint: asyncio.DatagramTransport | None = None
        self._engine: SnmpEngine | None = None

    @property
    def running(self) -> bool:
        return self._sock is not None

    async def start(self) -> None:
        """Bind the UDP socket (raises OSError if the port is taken) and start answering."""
        if self.running:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._mib = ProfileMib(self.profile, self.values)  # sysUpTime starts again from 0
        if self.v3_users:
            self._engine = self._start_engine(await asyncio.to_thread(SnmpEngine), sock)
        else:
            self._endpoint, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: CommunityEndpoint(self), sock=sock
            )
        self._sock = sock

    async def stop(self) -> None:
        """Close the socket: the device stops answering and its collectors time out."""
        if self._engine is not None:
            self._engine.close_dispatcher()
        if self._endpoint is not None:
            self._endpoint.close()
        if self._sock is not None:
            self._sock.close()
        self._engine = self._endpoint = self._sock = None

    def answer(self, pdu: Any) -> Answer | None:
        """The answer to one request PDU (SNMPv2 form), or None: not answered (a SET)."""
        self.pdu_types_seen[type(pdu).__name__.removesuffix("PDU")] += 1
        if pdu.tagSet not in READ_PDUS or self._mib is None:
            return None
        return self._mib.answer(pdu, self.refuse)

    def answer_v2c(self, request: V2cRequest) -> bytes | None:
        """The Response message to an SNMPv2c request, or None: not answered (a SET, or
        another community: silence, as from a real agent)."""
        if request.community != self.community.encode():
            return None
        self.pdu_types_seen[request.kind] += 1
        if self._mib is None or request.kind not in READ_KINDS:
            return None
        status, index, found = self._mib.lookup(request.kind, request.names, request.fields,
                                                self.refuse)
        return request.response(status, index, found if not status else
                                [(name, V2C_NULL) for name in request.names])

    def _start_engine(self, engine: SnmpEngine, sock: socket.socket) -> SnmpEngine:
        """pysnmp's agent engine (built off the event loop: ~70 ms of MIB loading) set up for
        the SNMPv3 users and the community."""
        transport = DelayedUdpTransport(lambda: self.delay_s).open_server_mode(sock=sock)
        config.add_transport(engine, udp.DOMAIN_NAME, transport)
        config.add_v1_system(engine, "aidc-simulator", self.community)
        for model in (1, 2):
            config.add_vacm_user(engine, model, "aidc-simulator", "noAuthNoPriv", (1, 3, 6))
        for user in self.v3_users:
            add_user(engine, user)
        snmp_context = context.SnmpContext(engine)
        EngineResponder(engine, snmp_context, self)
        return engine


def add_user(engine: SnmpEngine, user: dict) -> None:
    """A USM user (RFC 3414) who may read the whole MIB at its own security level (VACM)."""
    auth, priv = user.get("auth_protocol", "none"), user.get("priv_protocol", "none")
    config.add_v3_user(
        engine, user["user"], AUTH[auth], user.get("auth_key"), PRIV[priv], user.get("priv_key")
    )
    level = "noAuthNoPriv" if auth == "none" else "authNoPriv" if priv == "none" else "authPriv"
    config.add_vacm_user(engine, 3, user["user"], level, (1, 3, 6))


# ---------------------------------------------------------------- SNMPv2c: BER (X.690), our own

V2C_KINDS = {0xA0: "GetRequest", 0xA1: "GetNextRequest", 0xA3: "SetRequest",
             0xA5: "GetBulkRequest"}  # RFC 3416 PDU tags
V2C_NULL = univ.Null("")  # a varbind's value in a request, and in an error's response


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the contents of the TLV at ``data[at]`` (definite length)."""
    size, start = data[at + 1], at + 2
    if size & 0x80:
        octets = size & 0x7F
        if not 1 <= octets <= 3:
            raise ValueError("not a definite length of 1-3 octets")
        size, start = int.from_bytes(data[start:start + octets], "big"), start + octets
    if start + size > len(data):
        raise ValueError("truncated")
    return data[at], start, start + size


def _ber(tag: int, contents: bytes) -> bytes:
    size = len(contents)
    if size < 0x80:
        return bytes((tag, size)) + contents
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + contents


def _ber_integer(tag: int, n: int) -> bytes:
    """Two's complement in the fewest octets (X.690 8.3.2); unsigned SMI types alike."""
    return _ber(tag, n.to_bytes((n if n >= 0 else ~n).bit_length() // 8 + 1, "big", signed=True))


@functools.lru_cache(maxsize=65536)
def _arcs(contents: bytes) -> Oid:
    """An OBJECT IDENTIFIER's arcs from its contents (X.690 8.19)."""
    arcs, n = [], 0
    for octet in contents:
        n = (n << 7) | (octet & 0x7F)
        if octet < 0x80:
            arcs.append(n)
            n = 0
    first = min(arcs[0] // 40, 2)
    return (first, arcs[0] - 40 * first, *arcs[1:])


@functools.lru_cache(maxsize=65536)
def _oid_ber(oid: Oid) -> bytes:
    out = bytearray()
    for arc in (40 * oid[0] + oid[1], *oid[2:]):
        septets = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            septets.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(septets))
    return _ber(0x06, bytes(out))


@functools.cache
def _tag_of(smi_type: type) -> int:
    return encoder.encode(smi_type(0))[0]


@functools.lru_cache(maxsize=1024)
def _fixed_ber(smi_type: type, value: Any) -> bytes:  # (the type: Null == noSuchObject)
    return encoder.encode(value)


def _value_ber(value: Any) -> bytes:
    """A typed value's BER: integers (nearly every value served) here, the rest by pyasn1."""
    if isinstance(value, univ.Integer):
        return _ber_integer(_tag_of(type(value)), int(value))
    return _fixed_ber(type(value), value)


class V2cRequest(NamedTuple):
    community: bytes
    kind: str  # "GetRequest", "GetNextRequest", "SetRequest" or "GetBulkRequest"
    request_id: int
    fields: tuple[int, int]  # error-status and -index; a GetBulk's non-repeaters, repetitions
    names: list[Oid]

    @classmethod
    def parse(cls, data: bytes) -> V2cRequest | None:
        """An SNMPv2c Message with one of those PDUs (RFC 1901, RFC 3416), or None: another
        version or PDU, or not BER (pyasn1 then decodes it, or says why it cannot)."""
        try:
            tag, at, _ = _tlv(data, 0)
            version, v_start, v_end = _tlv(data, at)
            tag_c, c_start, c_end = _tlv(data, v_end)
            pdu, at, _ = _tlv(data, c_end)
            if (tag, version, data[v_start:v_end], tag_c) != (0x30, 0x02, b"\x01", 0x04) \
                    or pdu not in V2C_KINDS:
                return None
            integers = []
            for _ in range(3):  # request-id, and the two fields
                tag, start, at = _tlv(data, at)
                if tag != 0x02:
                    return None
                integers.append(int.from_bytes(data[start:at], "big", signed=True))
            tag, at, end = _tlv(data, at)
            if tag != 0x30:  # the varbind list
                return None
            names = []
            while at < end:
                tag, start, at = _tlv(data, at)
                tag_o, start, stop = _tlv(data, start)
                if (tag, tag_o) != (0x30, 0x06):
                    return None
                names.append(_arcs(data[start:stop]))
        except (IndexError, ValueError):
            return None
        return cls(data[c_start:c_end], V2C_KINDS[pdu], integers[0], (integers[1], integers[2]),
                   names)

    def response(self, status: int, index: int, varbinds: list[tuple[Oid, Any]]) -> bytes:
        """The Response-PDU message to this request."""
        body = b"".join(_ber(0x30, _oid_ber(name) + _value_ber(value)) for name, value in varbinds)
        pdu = b"".join(_ber_integer(0x02, n) for n in (self.request_id, status, index))
        return _ber(0x30, b"\x02\x01\x01" + _ber(0x04, self.community)
                    + _ber(0xA2, pdu + _ber(0x30, body)))


class CommunityEndpoint(asyncio.DatagramProtocol):
    """SNMPv1/v2c over UDP without an engine: decode, check the community, answer."""

    def __init__(self, server: SnmpDeviceServer):
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            response = self._respond(data)
        except (PyAsn1Error, ValueError, KeyError) as e:
            log.debug("event=snmp_sim_bad_request peer=%s error=%r", addr, str(e))
            return
        if response is None:
            return
        delay_s = self._server.delay_s
        if delay_s > 0:
            asyncio.get_running_loop().call_later(delay_s, self._send, response, addr)
        else:
            self._send(response, addr)

    def _respond(self, data: bytes) -> bytes | None:
        request = V2cRequest.parse(data)
        if request is not None:
            return self._server.answer_v2c(request)
        version = int(api.decodeMessageVersion(data))
        p_mod = api.PROTOCOL_MODULES[version]
        message, _ = decoder.decode(data, asn1Spec=p_mod.Message())
        if str(p_mod.apiMessage.get_community(message)) != self._server.community:
            return None  # as a real agent: silence, and snmpInBadCommunityNames + 1
        pdu = p_mod.apiMessage.get_pdu(message)
        request = rfc2576.v1_to_v2(pdu) if version == api.SNMP_VERSION_1 else pdu
        answer = self._server.answer(request)
        if answer is None:
            return None
        response = v2c.apiPDU.get_response(request)
        status, index, varbinds = answer
        v2c.apiPDU.set_error_status(response, status)
        v2c.apiPDU.set_error_index(response, index)
        v2c.apiPDU.set_varbinds(response, varbinds)
        if version == api.SNMP_VERSION_1:
            response = rfc2576.v2_to_v1(response, pdu)
        p_mod.apiMessage.set_pdu(message, response)
        return encoder.encode(message)

    def _send(self, response: bytes, addr: tuple[str | Any, int]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(response, addr)


class DelayedUdpTransport(udp.UdpAsyncioTransport):
    """pysnmp's UDP transport, sending each message ``delay_s()`` seconds late (a slow
    device) without holding up the event loop."""

    def __init__(self, delay_s: Callable[[], float]):
        super().__init__()
        self._delay_s = delay_s

    def send_message(self, message: Any, address: Any) -> None:
        delay_s = self._delay_s()
        if delay_s > 0:
            self.loop.call_later(delay_s, super().send_message, message, address)
        else:
            super().send_message(message, address)


class EngineResponder(cmdrsp.CommandResponderBase):
    """Requests through pysnmp's engine, answered by the server's MIB after the VACM read
    check (RFC 3415 3.2) for the request's user and security level. A Set is taken only to be
    recorded, and left unanswered."""

    SUPPORTED_PDU_TYPES = (*READ_PDUS, v2c.SetRequestPDU.tagSet)

    def __init__(self, engine: SnmpEngine, snmp_context: Any, server: SnmpDeviceServer):
        super().__init__(engine, snmp_context)
        self._server = server

    def handle_management_operation(
        self, engine: SnmpEngine, state_reference: Any, context_name: Any, pdu: Any
    ) -> None:
        varbinds = v2c.apiPDU.get_varbinds(pdu)
        try:
            if varbinds:
                self.verify_access("read", (varbinds[0][0], None), snmpEngine=engine)
            answer = self._server.answer(pdu)
        except smi_error.AuthorizationError:
            answer = AUTHORIZATION_ERROR, 1, list(varbinds)
        if answer is not None:
            self.send_varbinds(engine, state_reference, *answer)
        self.release_state_information(state_reference)
