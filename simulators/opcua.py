"""A virtual OPC-UA device: one asyncua server serving one profile's points.

The address space follows OPC UA Part 3: the profile's namespace is registered, one Object per
device sits under Objects, and every point is a Variable whose NodeId (or browse path) is the
profile's ``node`` and whose DataType is the point's ``type`` (Int16 for a PLC's INT, Float for
its REAL, Boolean for a BOOL, ...). Values are encoded from canonical units with the profile
(raw = (value - offset) / scale, rounded for integer types; enum reversed); a value of None is
a sensor fault, served as the point's first sentinel if it has one, otherwise as the Bad status
BadSensorFailure (Part 4 §7.34 StatusCode). A value the type cannot hold (32768 in an Int16, 0.5
in a Boolean, no enum code) is logged as an error and served as BadOutOfRange.

Faults (the same attribute names on every protocol's server):
- ``stop()``: the device goes offline (its port closes, every session is forgotten).
- ``delay_s``: every answer (from the transport's Acknowledge to each Read and Publish response)
  leaves ``delay_s`` seconds late: a slow device. The device's port is a small TCP relay in
  front of the asyncua server that holds each answer on the event loop, in order, so nothing
  else waits.
- ``refuse``: metric names whose variables answer BadDeviceFailure, as a PLC's OPC-UA server
  does for a value whose field device (an IO-Link sensor, a drive on Profibus) stopped answering.
  Reads and subscriptions both see it; the other variables are served as usual.

Deadbands: CreateMonitoredItems answers BadMonitoredItemFilterUnsupported for an item with a
deadband (Part 4 §5.12.2), as a device without deadband support does, and the client monitors
without one. asyncua's own deadband check fails on the null value of a Bad status, so a
deadbanded item there would never report a sensor fault.

Security (``security=DeviceSecurity(...)``): Basic256Sha256 endpoints with Sign and/or
SignAndEncrypt (OPC UA Part 7 security profiles), the device's certificate and key read from
files, and optionally user names with passwords (UserNameIdentityToken, Part 4 §7.41) instead
of anonymous sessions. Client certificates are not checked against a trust list.

It shares nothing with collectors.opcua but the profile files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import hmac
import logging
import math
import pickle
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from asyncua.server.address_space import AddressSpace, NodeManagementService
from asyncua.server.standard_address_space.standard_address_space import fill_address_space
from cryptography import x509

from collectors.profiles import OpcuaPoint, OpcuaProfile

log = logging.getLogger("aidc.simulator.opcua")
REFRESH_S = 0.1
CHUNK_BYTES = 65536
NODEID_KEYS = ("ns=", "nsu=", "i=", "s=", "g=", "b=")
SERVICE_NAMES = {
    getattr(ua.ObjectIds, name): name.removesuffix("Request_Encoding_DefaultBinary")
    for name in dir(ua.ObjectIds)
    if name.endswith("Request_Encoding_DefaultBinary")
}
INTEGER_RANGES = {
    "Int16": (-(2**15), 2**15 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt32": (0, 2**32 - 1),
}
SECURITY_MODES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}


class ServiceLog(PermissionRuleset):
    """Counts every service request the server is asked to run, by name (Read, Write, ...).

    asyncua asks the permission ruleset about every request of an open session, so this sees
    them all except the session set-up ones (CreateSession, ActivateSession, CloseSession,
    GetEndpoints, FindServers), none of which can change a value. It allows everything: a real
    device would accept a Write too, and the point is to prove that none arrives.
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()

    def check_validity(self, user: Any, action_type_id: ua.NodeId, body: Any) -> bool:
        self.requests[SERVICE_NAMES.get(action_type_id.Identifier, str(action_type_id))] += 1
        return True


@dataclasses.dataclass(frozen=True)
class DeviceSecurity:
    """What a secured device demands of its clients.

    ``modes``: the Basic256Sha256 message security modes it offers ("Sign", "SignAndEncrypt"),
    plus "None" for an unsecured endpoint beside them. ``users``: user name -> password; when
    empty, sessions are anonymous.
    """

    certificate: Path  # the device's application instance certificate, DER or PEM
    private_key: Path  # its private key, PEM or DER, not encrypted
    modes: frozenset[str] = frozenset({"SignAndEncrypt"})
    users: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.modes or not self.modes <= SECURITY_MODES.keys():
            raise ValueError(f"modes {sorted(self.modes)}: choose from {sorted(SECURITY_MODES)}")


class DeviceUsers:
    """ActivateSession's identity check (Part 4 §5.6.3).

    With ``users``, a session needs one of their names and passwords; without, it is anonymous.
    A session on a channel without security is refused unless the device offers "None"
    (asyncua itself would open one for a client that ignores the endpoints it was shown).
    """

    def __init__(self, users: Mapping[str, str], unsecured_allowed: bool) -> None:
        self._users, self._unsecured_allowed = dict(users), unsecured_allowed

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: bytes | None = None,
    ) -> User | None:
        """``certificate`` is the client's channel certificate: None on an unsecured channel."""
        if certificate is None and not self._unsecured_allowed:
            return None
        if not self._users:
            return User(role=UserRole.User)
        expected = self._users.get(username or "")
        if expected is None or not hmac.compare_digest(
            (password or "").encode(), expected.encode()
        ):
            return None
        return User(role=UserRole.User, name=username)


class OpcuaDeviceServer:
    """One device's OPC-UA endpoint at opc.tcp://host:port, serving ``values()``."""

    def __init__(
        self,
        profile: OpcuaProfile,
        host: str,
        port: int,
        values: Callable[[], Mapping[str, float | None]],
        security: DeviceSecurity | None = None,
    ):
        self.profile, self.host, self.port, self.values = profile, host, port, values
        self.security = security
        self.delay_s = 0.0  # every answer this late: a slow device
        self.refuse: set[str] = set()  # metrics whose field device stopped answering
        self.service_log = ServiceLog()
        self._server: Server | None = None
        self._port: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._variables: list[tuple[OpcuaPoint, Node]] = []
        self._unencodable: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def requests(self) -> Counter[str]:
        """Service requests received since creation, by name: Counter({"Read": 12, ...})."""
        return self.service_log.requests

    async def start(self) -> None:
        """Build the address space and listen; returns once the endpoint accepts sessions."""
        if self.running:
            return
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server()
        server.iserver.load_standard_address_space = _load_standard_address_space(server)
        await server.init()  # the standard address space (shared: see _LazyNodes)
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}")
        server.socket_address = ("127.0.0.1", 0)  # behind the device's port (see _relay)
        server.iserver.match_discovery_source_ip = False  # endpoints name the device's port
        server.set_server_name(f"aidc simulator: {self.profile.name}")
        await self._secure(server)
        _refuse_deadbands(server)
        self._variables = await _build_address_space(server, self.profile)
        await self._write_values(server)
        await server.start()
        inner_port = server.bserver.port
        try:
            self._port = await asyncio.start_server(
                lambda r, w: self._relay(r, w, inner_port), self.host, self.port
            )
        except OSError:  # the device's port is taken
            await server.stop()
            raise
        self._server = server
        self._refresher = asyncio.create_task(self._refresh_forever(), name="opcua-refresh")
        log.info("event=opcua_started profile=%s port=%d", self.profile.name, self.port)

    async def stop(self) -> None:
        """Close every session and the listening socket (the device leaves the network)."""
        if self._refresher:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._port:
            self._port.close()
            for link in list(self._links):
                link.cancel()
            await asyncio.gather(*self._links, return_exceptions=True)
            await self._port.wait_closed()
            self._port = None
        if self._server:
            server, self._server = self._server, None
            await server.stop()
            await _forget_sessions(server)

    async def refresh(self) -> None:
        """Write the current values() into the variables (subscribers see the change)."""
        if self._server is not None:
            await self._write_values(self._server)

    async def _secure(self, server: Server) -> None:
        """Endpoints, certificate and identity check of ``security``; anonymous and None if
        there is none."""
        security = self.security
        if security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity], self.service_log)
            server.set_identity_tokens([ua.AnonymousIdentityToken])
            return
        await server.load_certificate(str(security.certificate))
        await server.load_private_key(str(security.private_key))
        uri = _certificate_uri(server.iserver.certificate)
        if uri:  # a device's ApplicationUri is the one in its certificate (Part 6 §6.2.2)
            await server.set_application_uri(uri)
        server.set_security_policy(
            [SECURITY_MODES[m] for m in sorted(security.modes)], self.service_log
        )
        server.iserver.set_user_manager(DeviceUsers(security.users, "None" in security.modes))
        token = ua.UserNameIdentityToken if security.users else ua.AnonymousIdentityToken
        server.set_identity_tokens([token])

    async def _write_values(self, server: Server) -> None:
        values = self.values()
        for point, variable in self._variables:
            await server.write_attribute_value(variable.nodeid, self._datavalue(point, values))

    def _datavalue(self, point: OpcuaPoint, values: Mapping[str, float | None]) -> ua.DataValue:
        if point.metric in self.refuse:
            return _status(ua.StatusCodes.BadDeviceFailure)
        try:
            datavalue = encode(point, values.get(point.metric))
        except ValueError as e:
            if point.metric not in self._unencodable:
                log.error("event=opcua_unencodable profile=%s %s", self.profile.name, e)
                self._unencodable.add(point.metric)
            return _status(ua.StatusCodes.BadOutOfRange)
        self._unencodable.discard(point.metric)
        return datavalue

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception:  # a bug: show it, keep serving
                log.exception("event=opcua_refresh_failed profile=%s", self.profile.name)

    async def _relay(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, inner_port: int
    ) -> None:
        """Carry one TCP connection between a client and the asyncua server, holding every
        answer ``delay_s`` seconds. Ends when either side closes, or at stop()."""
        link = asyncio.create_task(self._carry_both(client_r, client_w, inner_port))
        self._links.add(link)
        try:
            await link
        except (OSError, asyncio.CancelledError):
            pass  # a peer went away, or the device left the network: the connection is dropped
        finally:
            self._links.discard(link)

    async def _carry_both(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, inner_port: int
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", inner_port)
        except OSError:
            client_w.close()
            raise
        await asyncio.gather(  # a reset on one side ends the other at its end of stream
            _carry(client_r, server_w, lambda: 0.0),
            _carry(server_r, client_w, lambda: self.delay_s),
            return_exceptions=True,
        )


async def _carry(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay_s: Callable[[], float]
) -> None:
    """Copy bytes until end of stream, each chunk leaving delay_s() after it arrived, in order;
    then close ``sink`` (OPC UA TCP has no half-closed connections)."""
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while (item := await due.get())[1]:
            await asyncio.sleep(item[0] - loop.time())
            sink.write(item[1])
            await sink.drain()

    sender = asyncio.create_task(send())
    try:
        while chunk := await source.read(CHUNK_BYTES):
            due.put_nowait((loop.time() + delay_s(), chunk))
        due.put_nowait((loop.time(), b""))  # end of stream, after what is still due
        await sender
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sender
        sink.close()


def _refuse_deadbands(server: Server) -> None:
    """Answer BadMonitoredItemFilterUnsupported for each monitored item with a deadband and
    create the others (see the module's docstring)."""
    service = server.iserver.subscription_service
    create = service.create_monitored_items
    refused = ua.MonitoredItemCreateResult(
        StatusCode=ua.StatusCode(ua.StatusCodes.BadMonitoredItemFilterUnsupported)
    )

    def deadband(item: ua.MonitoredItemCreateRequest) -> bool:
        none = ua.DeadbandType.None_  # an EventFilter or AggregateFilter has no deadband
        return getattr(item.RequestedParameters.Filter, "DeadbandType", none) != none

    async def create_without_deadbands(
        params: ua.CreateMonitoredItemsParameters,
    ) -> list[ua.MonitoredItemCreateResult]:
        wanted = [item for item in params.ItemsToCreate if not deadband(item)]
        created = iter(await create(dataclasses.replace(params, ItemsToCreate=wanted)))
        return [refused if deadband(item) else next(created) for item in params.ItemsToCreate]

    service.create_monitored_items = create_without_deadbands  # type: ignore[method-assign]


_STANDARD_NODES_LOCK = threading.Lock()  # servers starting together build it once


def _standard_nodes() -> dict[ua.NodeId, bytes]:
    """asyncua's standard address space (~6,000 nodes, Part 5), built once per process, each
    node kept pickled (bytes, which the garbage collector never scans)."""
    with _STANDARD_NODES_LOCK:
        return _build_standard_nodes()


@functools.cache
def _build_standard_nodes() -> dict[ua.NodeId, bytes]:
    space = AddressSpace()
    with _cycle_collector_paused():
        fill_address_space(NodeManagementService(space))
    return {nodeid: pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL)
            for nodeid, node in space._nodes.items()}


class _LazyNodes(dict):
    """One server's nodes: its own, and a standard node unpickled on first access (as
    asyncua's own shelf, AddressSpace.load_aspace_shelf, does from a file). A whole copy
    per server was a million small objects, which the cycle collector scanned in every
    full collection: seconds with the event loop held, while two simulated supercaps ran."""

    def __init__(self, standard: dict[ua.NodeId, bytes]):
        super().__init__()
        self.standard = standard

    def __missing__(self, nodeid: ua.NodeId) -> Any:
        node = self[nodeid] = pickle.loads(self.standard[nodeid])
        return node

    def get(self, nodeid: Any, default: Any = None) -> Any:
        return self[nodeid] if nodeid in self else default  # noqa: SIM401 (dict.get skips __missing__)

    def __contains__(self, nodeid: object) -> bool:
        return dict.__contains__(self, nodeid) or nodeid in self.standard


def _load_standard_address_space(server: Server) -> Callable[..., Any]:
    """A replacement for the server's own loader (InternalServer.load_standard_address_space)
    that shares the process's one standard address space."""

    async def load(shelf_file: Any = None) -> None:
        server.iserver.aspace._nodes = _LazyNodes(await asyncio.to_thread(_standard_nodes))

    return load


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """asyncua builds its standard address space from millions of small objects, which sets
    off one full garbage collection after another: pausing the cycle collector for that
    second makes the build ~40 % faster (reference counting still frees memory)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _forget_sessions(server: Server) -> None:
    """Close the sessions that outlived their connection: asyncua keeps a session with
    subscriptions for a reconnect (Part 4 §6.7) and Server.stop() leaves it (and its publish
    timer) running, but a device that leaves the network forgets every session."""
    for session in list(server.iserver._external_sessions.values()):
        await session.close_session()


def _certificate_uri(certificate: x509.Certificate) -> str | None:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _status(code: int) -> ua.DataValue:
    return ua.DataValue(StatusCode=ua.StatusCode(code))


def encode(point: OpcuaPoint, value: float | None) -> ua.DataValue:
    """The DataValue a device would hold for canonical ``value`` (Part 4 §7.11 DataValue);
    ValueError when the point's type cannot hold it."""
    if value is None and point.sentinels:
        raw: float = point.sentinels[0]
    elif value is None:
        return _status(ua.StatusCodes.BadSensorFailure)
    elif point.enum is not None:
        codes = [code for code, canonical in point.enum.items() if canonical == value]
        if not codes:
            raise ValueError(f"{point.metric}={value} has no code in the profile's enum")
        raw = codes[0]
    else:
        raw = (value - point.offset) / point.scale
    return ua.DataValue(ua.Variant(wire_value(point, raw), getattr(ua.VariantType, point.type)))


def wire_value(point: OpcuaPoint, raw: float) -> bool | int | float:
    """``raw`` as the point's type holds it: rounded to an integer type's range, 0/1 as a
    Boolean, as is for Float and Double."""
    if point.type == "Boolean":
        if raw not in (0, 1):
            raise ValueError(f"{point.metric}: {raw:g} is not a Boolean (0 or 1)")
        return bool(raw)
    if point.type in INTEGER_RANGES:
        low, high = INTEGER_RANGES[point.type]
        if not math.isfinite(raw) or not low <= round(raw) <= high:
            raise ValueError(f"{point.metric}: {raw:g} does not fit an {point.type}")
        return round(raw)
    return float(raw)


async def _build_address_space(
    server: Server, profile: OpcuaProfile
) -> list[tuple[OpcuaPoint, Node]]:
    """Register the namespace, add the device Object and one Variable per point."""
    ns = await server.register_namespace(profile.namespace)
    device = await server.nodes.objects.add_object(ns, profile.name)
    variables = []
    for point in profile.points:
        if point.node.startswith(NODEID_KEYS):
            nodeid = await _nodeid(server, point, ns)
            name = ua.QualifiedName(str(nodeid.Identifier), nodeid.NamespaceIndex)
            variable = await device.add_variable(nodeid, name, *_initial(point))
        else:
            variable = await _add_at_browse_path(server, point, ns)
        variables.append((point, variable))
    return variables


async def _nodeid(server: Server, point: OpcuaPoint, ns: int) -> ua.NodeId:
    """The point's NodeId on this server; an ``nsu=`` URI is registered here if it is new."""
    parsed = ua.NodeId.from_string(point.node)
    uri = getattr(parsed, "NamespaceUri", None)
    index = await server.register_namespace(uri) if uri else parsed.NamespaceIndex
    if not uri:
        _check_index(point, index, ns)
    return ua.NodeId(parsed.Identifier, index, parsed.NodeIdType)


def _check_index(point: OpcuaPoint, index: int, ns: int) -> None:
    if index not in (0, ns):
        raise ValueError(
            f"{point.metric}: {point.node} uses namespace index {index}, but this server puts "
            f"the profile's namespace at {ns}: write ns={ns} or the nsu= form"
        )


def _initial(point: OpcuaPoint) -> tuple[bool | int | float, ua.VariantType]:
    """The variable's first value (zero) and its DataType, the point's wire type."""
    return wire_value(point, 0), getattr(ua.VariantType, point.type)


async def _add_at_browse_path(server: Server, point: OpcuaPoint, ns: int) -> Node:
    """Objects along "0:Objects/2:Folder/.../2:Name", the last one a Variable."""
    names = [ua.QualifiedName.from_string(part) for part in point.node.split("/")]
    if names[0] != ua.QualifiedName("Objects", 0) or len(names) < 2:
        raise ValueError(f"{point.metric}: browse path {point.node} must start at 0:Objects")
    for name in names[1:]:
        _check_index(point, name.NamespaceIndex, ns)
    parent = server.nodes.objects
    for name in names[1:-1]:
        children = [c for c in await parent.get_children() if await c.read_browse_name() == name]
        parent = children[0] if children else await parent.add_object(ns, name.Name)
    return await parent.add_variable(ns, names[-1].Name, *_initial(point))
