"""A virtual SNMP agent that serves a profile's OIDs, encoded from live values at each request.

Built on pysnmp's agent engine (RFC 3411 architecture; command responder RFC 3413) with a MIB
instrumentation of its own, so that SNMPv3 users are one ``config.add_v3_user`` away. Answers
GetRequest, GetNextRequest and GetBulkRequest (RFC 3416) over SNMPv2c (and v1) with the
device's community. No SET responder is registered: a SetRequest is recorded in
``pdu_types_seen`` and dropped unanswered; nothing is ever written. Each start builds its own
pysnmp engine (~0.1 s of CPU, mostly pysnmp compiling its MIB modules).

Each point's raw value is ``round((value - offset) / scale)`` or the enum code of the value
(the first code that maps to it). A point over several OIDs with ``reduce: sum`` serves an even
share of the value on each OID; with ``mean`` or ``max`` the value itself on each. A value of
None is a sensor fault: the point's first sentinel, or noSuchInstance when it has none. A
metric missing from ``values()`` is an object the device does not implement: noSuchObject. A
value it cannot encode (NaN, outside the type's range, no enum code) is logged as an error and
served as noSuchInstance.

Integers go out as INTEGER (Integer32), or as the SMI type the MIB gives the object (see
``SYNTAX``). The system group's sysDescr.0, sysObjectID.0 and sysUpTime.0 are served too.

The encoding here is written independently of collectors.snmp, which decodes: the two share
only the profile files, so that a bug in one cannot hide itself in the other.
"""

from __future__ import annotations

import bisect
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from pyasn1.error import PyAsn1Error
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import instrum

from collectors.profiles import SnmpPoint, SnmpProfile

log = logging.getLogger(__name__)

Values = Callable[[], Mapping[str, float | None]]
Oid = tuple[int, ...]

SYS_DESCR: Oid = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_OBJECT_ID: Oid = (1, 3, 6, 1, 2, 1, 1, 2, 0)
SYS_UP_TIME: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)
# Objects whose MIB syntax is not INTEGER, by OID without the instance suffix.
SYNTAX: dict[Oid, type] = {
    (1, 3, 6, 1, 2, 1, 33, 1, 6, 1): rfc1902.Gauge32,  # RFC 1628 upsAlarmsPresent
}
# Where the engine reports each incoming v1/v2c request, after the community check.
REQUEST_EXECPOINTS = (
    "rfc2576.prepareDataElements:confirmed",
    "rfc2576.prepareDataElements:unconfirmed",
)


def parse_oid(text: str) -> Oid:
    return tuple(int(arc) for arc in text.strip(".").split("."))


def point_oids(point: SnmpPoint) -> list[Oid]:
    return [parse_oid(o) for o in ([point.oid] if isinstance(point.oid, str) else point.oid)]


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
    return [round((share - point.offset) / point.scale)] * oids


def typed(oid: Oid, raw: int | None) -> Any:
    """``raw`` as the SMI type the MIB gives the object (INTEGER unless SYNTAX says otherwise);
    None as noSuchInstance."""
    if raw is None:
        return rfc1905.noSuchInstance
    return SYNTAX.get(oid[:-1], rfc1902.Integer32)(raw)


def device_root(profile: SnmpProfile) -> Oid:
    """The longest OID prefix of all the profile's points: the MIB subtree the device
    implements, served as its sysObjectID."""
    oids = [oid for point in profile.points for oid in point_oids(point)]
    first, last = min(oids), max(oids)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


class ProfileMib(instrum.AbstractMibInstrumController):
    """The agent's MIB: the profile's OIDs, encoded from ``values()`` when a request comes."""

    def __init__(self, profile: SnmpProfile, values: Values):
        self._profile, self._values = profile, values
        self._started = time.monotonic()
        self._points = [(point, point_oids(point)) for point in profile.points]
        self._fixed: dict[Oid, Any] = {
            SYS_DESCR: rfc1902.OctetString(f"aidc simulated {profile.kind}: {profile.name}"),
            SYS_OBJECT_ID: rfc1902.ObjectIdentifier(device_root(profile)),
        }

    def read_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        """GetRequest: each OID's value, or noSuchObject / noSuchInstance (RFC 3416 4.2.1)."""
        table = self._table()
        return [(name, table.get(tuple(name), rfc1905.noSuchObject)) for name, _ in var_binds]

    def read_next_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        """GetNext (and each GetBulk repetition): the next instance in OID order, skipping
        faulty sensors; endOfMibView past the last (RFC 3416 4.2.2)."""
        table = self._table()
        present = sorted(oid for oid, value in table.items() if value is not rfc1905.noSuchInstance)
        out = []
        for name, _ in var_binds:
            i = bisect.bisect_right(present, tuple(name))
            if i < len(present):
                out.append((rfc1902.ObjectName(present[i]), table[present[i]]))
            else:
                out.append((name, rfc1905.endOfMibView))
        return out

    def _table(self) -> dict[Oid, Any]:
        """Every OID the device answers for, with its value now."""
        values = self._values()
        uptime = rfc1902.TimeTicks(int((time.monotonic() - self._started) * 100) % 2**32)
        table = {**self._fixed, SYS_UP_TIME: uptime}
        for point, oids in self._points:
            if point.metric in values:
                for oid, value in zip(oids, self._encode(point, values[point.metric], oids)):
                    table.setdefault(oid, value)  # the first point naming an OID wins
        return table

    def _encode(self, point: SnmpPoint, value: float | None, oids: list[Oid]) -> list[Any]:
        """The point's OIDs as typed values. A value the device cannot encode (NaN, outside
        the type's range, no enum code) is logged and served as noSuchInstance."""
        try:
            return [typed(o, r) for o, r in zip(oids, raw_values(point, value, len(oids)))]
        except (ValueError, OverflowError, PyAsn1Error) as e:
            log.error("event=snmp_sim_encode_error metric=%s error=%r", point.metric, str(e))
            return [rfc1905.noSuchInstance] * len(oids)


class SnmpDeviceServer:
    """One virtual SNMP device on ``host:port`` (UDP), serving ``profile`` from ``values()``."""

    def __init__(
        self,
        profile: SnmpProfile,
        host: str,
        port: int,
        values: Values,
        community: str = "public",
    ):
        self.profile, self.host, self.port = profile, host, port
        self.values, self.community = values, community
        self.pdu_types_seen: list[str] = []  # "GetRequest", "GetNextRequest", ... as received
        self._engine: SnmpEngine | None = None
        self._sock: socket.socket | None = None

    @property
    def running(self) -> bool:
        return self._engine is not None

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
        engine = SnmpEngine()
        config.add_transport(
            engine, udp.DOMAIN_NAME, udp.UdpAsyncioTransport().open_server_mode(sock=sock)
        )
        config.add_v1_system(engine, "aidc-simulator", self.community)
        snmp_context = context.SnmpContext(engine)
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", ProfileMib(self.profile, self.values))
        for responder in (
            cmdrsp.GetCommandResponder,
            cmdrsp.NextCommandResponder,
            cmdrsp.BulkCommandResponder,
        ):
            responder(engine, snmp_context)
        engine.observer.register_observer(self._record_pdu, *REQUEST_EXECPOINTS)
        self._engine, self._sock = engine, sock

    async def stop(self) -> None:
        """Close the socket: the device stops answering and its collectors time out."""
        if self._engine is not None:
            self._engine.close_dispatcher()
        if self._sock is not None:
            self._sock.close()
        self._engine = self._sock = None

    def _record_pdu(self, _engine: Any, _execpoint: str, variables: dict, _ctx: Any) -> None:
        self.pdu_types_seen.append(type(variables["pdu"]).__name__.removesuffix("PDU"))
