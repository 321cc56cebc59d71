"""OPC-UA collector: one session per device, every point in one subscription or one Read.

Options (``opcua:`` of a device in the site file, aidc.core.config.OpcuaSettings):

- ``mode: subscribe`` (default) creates one subscription with one monitored item per point
  (OPC UA Part 4 §5.13, §5.12: sampling at a quarter of the publishing interval, a queue of
  QUEUE_SIZE samples), publishing twice per poll interval with a keep-alive whenever nothing
  changed. A point with a ``deadband`` is monitored with an absolute DataChangeFilter (Part 4
  §7.22.2, in the served units: tenths for a PLC's scaled INT). read() returns the latest value
  of each point while publish responses (data or keep-alive) keep arriving; it makes one
  integrity Read of every point instead when none arrived since the previous read(), and every
  INTEGRITY_S anyway. Where the server does not allow it, polling takes over: a deadband the
  server refuses is dropped for that item, an item it refuses is read at every poll, and a
  server that refuses subscriptions is polled.
- ``mode: poll`` reads every point with one Read service call per poll (Part 4 §5.10.2).
- ``security``: "None" (default), or "Policy,Mode,certificate,private_key[,server_certificate]"
  with Policy Basic256Sha256 (or Aes128Sha256RsaOaep, Aes256Sha256RsaPss: OPC UA Part 7
  security profiles), Mode Sign or SignAndEncrypt (Part 4 §7.20), and paths relative to the
  working directory or absolute: e.g. "Basic256Sha256,SignAndEncrypt,cert.der,key.pem". The
  session's ApplicationUri is the certificate's URI (Part 4 §5.6.2). The server certificate is
  the one its endpoint shows, unless a server_certificate file pins it. ``key_password``
  decrypts an encrypted private key.
- ``username`` / ``password``: a UserName identity token (Part 4 §7.41); anonymous without.

A profile point's ``node`` is a NodeId string ("ns=2;s=Supercap.Voltage"), the same with the
namespace named by URI ("nsu=urn:aidc:simulator;s=Supercap.Voltage", resolved through the
server's NamespaceArray, Part 5 §6.3.13) or a browse path from the Root folder
("0:Objects/2:Supercap/2:Voltage", resolved with TranslateBrowsePathsToNodeIds, Part 4 §5.8.4).
Both are resolved again at every connect, because a restarted server may number its
namespaces differently. Its ``type`` is the DataType the device is expected to serve (Part 3
§5.6.2: Int16 for a PLC's INT, Float for a REAL, Boolean for a BOOL, ...): a hint, because
servers publish Double, Float, Int32 or UInt16 for the same quantity. Any numeric value is
read, except a floating one where a scaled integer is expected (its scale would be wrong).

Read-only: the collector sends no Write, Call or node-management request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.crypto import security_policies, uacrypto
from cryptography import x509

from aidc.core.metrics import Quality, Reading, check_limits
from collectors import Collector, DeviceUnreachable
from collectors.profiles import OpcuaPoint

log = logging.getLogger("aidc.collectors.opcua")
NODEID_KEYS = ("ns=", "nsu=", "i=", "s=", "g=", "b=")
SESSION_TIMEOUT_S = 600.0  # the server drops a session we could not close after this long
QUEUE_SIZE = 4  # samples a monitored item keeps between two publishes
KEEPALIVE_PROBE_S = SESSION_TIMEOUT_S / 3  # asyncua's own server-state Read; polls probe too
LIFETIME_COUNT = 10_000  # publishing intervals without a Publish request before the server
# ends the subscription (Part 4 §5.13.1.1): far longer than any wait between two polls
INTEGRITY_S = 300.0  # a subscribed device is also read whole this often
# A read that opens a session makes some nine requests (channels, endpoints, session,
# activation, browse paths, subscription, the first Read), each bounded by the timeout by
# asyncua: bounded whole by one timeout, a server slow to set up (a loaded one) never came
# up, each attempt torn down and begun again from scratch.
SETUP_TIMEOUTS = 3
FLOATING = {"Float", "Double"}
NUMERIC = FLOATING | {"Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32",
                      "Int64", "UInt64"}
FILTER_REFUSED = {  # CreateMonitoredItems results that refuse the deadband, not the node
    ua.StatusCodes.BadFilterNotAllowed,
    ua.StatusCodes.BadMonitoredItemFilterUnsupported,
    ua.StatusCodes.BadMonitoredItemFilterInvalid,
    ua.StatusCodes.BadDeadbandFilterInvalid,
}
HINTS = {  # what the operator can do about a refused session
    ua.StatusCodes.BadUserAccessDenied: "check opcua.username and opcua.password",
    ua.StatusCodes.BadIdentityTokenInvalid: "check opcua.username and opcua.password",
    ua.StatusCodes.BadIdentityTokenRejected: (
        "the server does not accept this kind of login: set opcua.username and "
        "opcua.password, or remove them for an anonymous session"
    ),
    ua.StatusCodes.BadCertificateUntrusted: (
        "the server does not trust the client certificate of opcua.security: add it to the "
        "server's trusted certificates"
    ),
}


class _WithoutIdentityToken(logging.Filter):
    """asyncua logs each request it sends at DEBUG level, the UserNameIdentityToken of
    ActivateSession (the password) included: that request is logged without its content."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(arg, ua.ActivateSessionRequest) for arg in args):
            record.msg, record.args = "Sending: ActivateSessionRequest (content not logged)", ()
        return True


logging.getLogger("asyncua.client.ua_client.UASocketProtocol").addFilter(_WithoutIdentityToken())


@dataclass(frozen=True)
class Target:
    """Where a point lives: a NodeId (maybe with a namespace URI) or a browse path."""

    nodeid: ua.NodeId | None
    namespace_uri: str | None
    browse_path: str | None


@dataclass(frozen=True)
class Security:
    """A parsed ``opcua.security``: the SecurityPolicy and MessageSecurityMode to ask for and
    the client's certificate and key (Part 4 §7.40, §7.20)."""

    policy: type[security_policies.SecurityPolicy]
    mode: ua.MessageSecurityMode
    certificate: Path
    private_key: Path
    server_certificate: Path | None  # pinned: the server must show this one


def parse_node(point: OpcuaPoint) -> Target:
    """Parse a profile ``node``; a malformed one is a profile mistake, named with its metric."""
    try:
        if point.node.startswith(NODEID_KEYS):
            nodeid = ua.NodeId.from_string(point.node)
            return Target(nodeid, getattr(nodeid, "NamespaceUri", None), None)
        ua.RelativePath.from_string(_relative(point.node))
        return Target(None, None, point.node)
    except (ValueError, ua.UaError) as e:
        raise ValueError(
            f"point {point.metric}: node '{point.node}' is neither a NodeId "
            f"('ns=2;s=Name', 'nsu=URI;s=Name') nor a browse path ('0:Objects/2:Name'): {e}"
        ) from None


def parse_security(text: str) -> Security | None:
    """``opcua.security`` ("None" or "Policy,Mode,cert,key[,server_cert]"), already checked
    by the site config (aidc.core.config.OpcuaSettings)."""
    parts = [part.strip() for part in text.split(",")]
    if parts == ["None"]:
        return None
    return Security(
        getattr(security_policies, f"SecurityPolicy{parts[0]}"),
        getattr(ua.MessageSecurityMode, parts[1]),
        Path(parts[2]).expanduser(),
        Path(parts[3]).expanduser(),
        Path(parts[4]).expanduser() if len(parts) == 5 else None,
    )


def _relative(browse_path: str) -> str:
    """'0:Objects/2:A' -> '/0:Objects/2:A' (hierarchical references, Part 4 Annex A.2)."""
    return "/" + browse_path.lstrip("/")


class _Latest:
    """Subscription handler: the newest DataValue of each monitored point (by its index, the
    item's ClientHandle), and whether the server ended the subscription."""

    def __init__(self) -> None:
        self.subscription: Subscription | None = None
        self.monitored: set[int] = set()
        self.values: dict[int, ua.DataValue] = {}
        self.ended = False
        self._publish_seen: float | None = None
        self._integrity_at = -math.inf

    def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
        self.values[data.monitored_item.ClientHandle] = data.monitored_item.Value

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        """Part 4 §7.25.4: e.g. BadTimeout (lifetime expired) or BadShutdown."""
        self.ended = self.ended or status.Status.is_bad()

    def integrity_due(self) -> bool:
        """True when no publish response (data or keep-alive) arrived since the last call, or
        the periodic integrity Read is due; True restarts the INTEGRITY_S clock."""
        assert self.subscription is not None
        publish_at = self.subscription.last_publish_at
        quiet = publish_at is None or publish_at == self._publish_seen
        self._publish_seen = publish_at
        now = time.monotonic()
        if quiet or now - self._integrity_at >= INTEGRITY_S:
            self._integrity_at = now
            return True
        return False


class OpcuaCollector(Collector):
    """Reads one OPC-UA device; keeps its session between polls and rebuilds it on failure."""

    timeouts_a_read = SETUP_TIMEOUTS

    def __init__(self, device: Any, profile: Any, timeout_s: float):
        super().__init__(device, profile, timeout_s)
        self.url = f"opc.tcp://{device.host}:{device.port}"
        self.targets = [parse_node(p) for p in profile.points]
        self.security = parse_security(device.opcua.security)
        self._client: Client | None = None
        self._nodeids: list[ua.NodeId | ua.StatusCode] = []  # per point, or why it has none
        self._latest: _Latest | None = None  # while subscribed

    async def read(self) -> list[Reading]:
        """One Reading per point; DeviceUnreachable when the session does not answer within
        timeout_s, or none is opened within SETUP_TIMEOUTS of them."""
        opening = self._client is None
        deadline = asyncio.timeout(self.timeout_s * (SETUP_TIMEOUTS if opening else 1))
        try:
            async with deadline:
                values = await self._datavalues()
        except (OSError, TimeoutError, ua.UaError) as e:
            await self.close()
            setup_timed_out = opening and deadline.expired()
            raise DeviceUnreachable(f"{self.url}: {self._reason(e, setup_timed_out)}") from e
        except asyncio.CancelledError as e:
            if not _our_timeout(deadline):
                raise
            await self.close()  # the timeout, raced by an answer (see _our_timeout)
            raise DeviceUnreachable(f"{self.url}: {self._reason(TimeoutError(), opening)}") from e
        return [decode(p, v) for p, v in zip(self.profile.points, values, strict=True)]

    async def close(self) -> None:
        """Close the session and its subscription (CloseSession, Part 4 §5.6.4) if the
        server still answers, then the socket."""
        client, self._client = self._client, None
        self._latest = None
        if client is None:
            return
        protocol = client.uaclient.protocol  # disconnect() forgets it
        deadline = asyncio.timeout(self.timeout_s / 2)
        try:
            async with deadline:
                await client.disconnect()
        except (OSError, TimeoutError, ua.UaError):
            pass
        except asyncio.CancelledError:
            if not _our_timeout(deadline):
                raise
        finally:
            _tear_down(client, protocol)

    def _reason(self, error: Exception, setup_timed_out: bool = False) -> str:
        """One line for the operator: what failed and, where it helps, what to do."""
        if setup_timed_out:
            return f"no session within {self.timeout_s * SETUP_TIMEOUTS:g} s"
        if isinstance(error, TimeoutError):
            return f"no answer within {self.timeout_s:g} s"
        if isinstance(error, ua.UaStatusCodeError) and error.code in HINTS:
            return f"{ua.StatusCode(error.code).name}: {HINTS[error.code]}"
        return str(error) or type(error).__name__

    # ---------------------------------------------------------------- session

    async def _session(self) -> Client:
        """The connected client, reconnecting (and resolving nodes again) if it was lost."""
        lost = self._client is not None and self._client.state is not UaClientState.CONNECTED
        if lost or (self._latest is not None and self._latest.ended):
            await self.close()  # e.g. the server restarted since the last poll
        if self._client is None:
            self._client = await self._connect()
            self._nodeids = await self._resolve(self._client)
            if self.device.opcua.mode == "subscribe":
                self._latest = await self._subscribe(self._client)
        return self._client

    async def _connect(self) -> Client:
        """Channel and activated session (Part 4 §5.5-5.6) at the endpoint that matches
        ``security``; nothing left open if it fails."""
        client = self._new_client()
        try:
            endpoint = _endpoint(await client.connect_and_get_server_endpoints(), self.security)
            if self.security is not None:
                await self._secure(client, self.security, endpoint)
            await client.connect()
        except BaseException:  # also cancelled by read()'s timeout: never leak the socket
            _tear_down(client, client.uaclient.protocol)
            raise
        return client

    @property
    def _publish_s(self) -> float:
        return self.poll_s / 2  # two publishes per poll

    def _new_client(self) -> Client:
        client = Client(self.url, timeout=self.timeout_s, watchdog_intervall=KEEPALIVE_PROBE_S)
        client.session_timeout = SESSION_TIMEOUT_S * 1000
        # asyncua deletes and creates again a subscription whose publish is 1.5 intervals
        # late (1 s at least): on a loaded machine, a late one, not a lost one, and the
        # values stop meanwhile. A quiet poll reads whole and an ended subscription is
        # rebuilt (_session), so leave it to asyncua only after INTEGRITY_S of silence.
        client._stale_check_margin = INTEGRITY_S / self._publish_s  # keep-alive count 1
        client.name = client.description = f"aidc {self.device.id}"
        settings = self.device.opcua
        if settings.username:
            client.set_user(settings.username)
        if settings.password is not None:
            client.set_password(settings.password.get_secret_value())
        return client

    async def _secure(
        self, client: Client, security: Security, endpoint: ua.EndpointDescription
    ) -> None:
        """Sign (and encrypt) the channel with the client's certificate and key, for the
        server certificate its endpoint shows, which must be the pinned one if there is one."""
        key_password = self.device.opcua.key_password
        server_certificate = uacrypto.x509_from_der(endpoint.ServerCertificate)
        try:
            certificate = await uacrypto.load_certificate(security.certificate)
            pinned = security.server_certificate
            if pinned and await uacrypto.load_certificate(pinned) != server_certificate:
                raise ua.UaError(f"the server's certificate is not {pinned} (opcua.security)")
            client.application_uri = _application_uri(certificate) or client.application_uri
            await client.set_security(
                security.policy,
                uacrypto.der_from_x509(certificate),
                security.private_key,
                key_password.get_secret_value() if key_password else None,
                uacrypto.der_from_x509(server_certificate),
                security.mode,
            )
        except (OSError, ValueError, TypeError) as e:  # unreadable file, wrong key password
            raise ua.UaError(f"cannot load the certificate or key of opcua.security: {e}") from None

    async def _resolve(self, client: Client) -> list[ua.NodeId | ua.StatusCode]:
        """NodeIds of this server for every point (namespace URIs and browse paths)."""
        namespaces: list[str] = []
        if any(t.namespace_uri for t in self.targets):
            namespaces = await client.get_namespace_array()
        paths = [t.browse_path for t in self.targets if t.browse_path]
        found = iter(await self._translate(client, paths) if paths else [])
        resolved: list[ua.NodeId | ua.StatusCode] = []
        for t in self.targets:
            if t.browse_path:
                resolved.append(next(found))
            elif t.namespace_uri and t.namespace_uri not in namespaces:
                resolved.append(ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
            elif t.namespace_uri:
                index = namespaces.index(t.namespace_uri)
                resolved.append(ua.NodeId(t.nodeid.Identifier, index, t.nodeid.NodeIdType))
            else:
                resolved.append(t.nodeid)
        return resolved

    @staticmethod
    async def _translate(client: Client, paths: list[str]) -> list[ua.NodeId | ua.StatusCode]:
        """All browse paths in one TranslateBrowsePathsToNodeIds call (Part 4 §5.8.4)."""
        root = ua.NodeId(ua.ObjectIds.RootFolder)
        results = await client.translate_browsepaths(root, [_relative(p) for p in paths])
        return [r.Targets[0].TargetId if r.StatusCode.is_good() else r.StatusCode for r in results]

    async def _subscribe(self, client: Client) -> _Latest | None:
        """One subscription, one monitored item per resolved point (Part 4 §5.13, §5.12), or
        None when the server refuses subscriptions (the device is then polled)."""
        publish_ms = self._publish_s * 1000
        sampling_ms = publish_ms / QUEUE_SIZE
        items = {
            i: _monitored_item(i, nodeid, sampling_ms, point.deadband)
            for i, (nodeid, point) in enumerate(zip(self._nodeids, self.profile.points))
            if isinstance(nodeid, ua.NodeId)
        }
        if not items:  # no point resolves here (its namespace is not on this server): each is
            return None  # bad, and there is nothing to monitor (BadNothingToDo)
        latest = _Latest()
        try:
            latest.subscription = await client.create_subscription(
                _subscription_parameters(publish_ms), latest
            )
            latest.monitored = await self._monitor(latest.subscription, items)
        except ua.UaStatusCodeError as e:
            log.warning("event=opcua_subscription_refused device=%s reason=%s action=poll",
                        self.device.id, ua.StatusCode(e.code).name)  # fmt: skip
            if latest.subscription is not None:
                with contextlib.suppress(Exception):
                    await latest.subscription.delete()
            return None
        client.connection_lost_callback = partial(_stop_publishing, client)
        return latest

    async def _monitor(
        self, subscription: Subscription, items: dict[int, ua.MonitoredItemCreateRequest]
    ) -> set[int]:
        """CreateMonitoredItems; an item whose deadband is refused is asked again without one.
        The indexes of the points now monitored: the others are read at every poll."""
        results = dict(zip(items, await subscription.create_monitored_items(items.values())))
        filtered = {
            i: _without_deadband(items[i])
            for i, result in results.items()
            if isinstance(result, ua.StatusCode) and result.value in FILTER_REFUSED
        }
        if filtered:
            log.info("event=opcua_deadband_refused device=%s metrics=%s reasons=%s",
                     self.device.id, ",".join(self.profile.points[i].metric for i in filtered),
                     ",".join(sorted({results[i].name for i in filtered})))  # fmt: skip
            results |= zip(filtered, await subscription.create_monitored_items(filtered.values()))
        return {i for i, result in results.items() if not isinstance(result, ua.StatusCode)}

    # ---------------------------------------------------------------- values

    async def _datavalues(self) -> list[ua.DataValue]:
        """One DataValue per point: the subscription's latest (and a Read of the points it
        does not monitor), or one Read of every point."""
        client = await self._session()
        everything = range(len(self._nodeids))
        latest = self._latest
        if latest is None:
            return await self._read(client, everything)
        await asyncio.sleep(0)  # asyncua hands each notification over in a task: let them run
        if latest.integrity_due():
            values = await self._read(client, everything)
            latest.values |= {i: values[i] for i in latest.monitored}
            return values
        unmonitored = [i for i in everything if i not in latest.monitored]
        polled = iter(await self._read(client, unmonitored))
        waiting = _missing(ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData))
        return [
            latest.values.get(i, waiting) if i in latest.monitored else next(polled)
            for i in everything
        ]

    async def _read(self, client: Client, indexes: Iterable[int]) -> list[ua.DataValue]:
        """The points at ``indexes`` in one Read service call (Part 4 §5.10.2); a point
        without a NodeId keeps the status that says why."""
        wanted = [self._nodeids[i] for i in indexes]
        nodes = [client.get_node(n) for n in wanted if isinstance(n, ua.NodeId)]
        read = iter(await client.read_attributes(nodes) if nodes else [])
        return [next(read) if isinstance(n, ua.NodeId) else _missing(n) for n in wanted]


def _our_timeout(deadline: asyncio.Timeout) -> bool:
    """Whether a CancelledError that left ``async with deadline`` is that deadline's own.

    On Python 3.11 asyncua waits for each answer with wait_for2, which raises
    CancelledWithResultError, a subclass of CancelledError, when our timeout's cancellation
    races with the answer arriving; asyncio.timeout only turns CancelledError itself into
    TimeoutError, so the subclass would escape as a cancellation of the whole poll (it ended
    the supercaps' poll loops for good). Ours when the deadline expired and nobody else has
    asked the task to stop."""
    task = asyncio.current_task()
    return deadline.expired() and task is not None and task.cancelling() == 0


def _tear_down(client: Client, protocol: Any) -> None:
    """Close the client's socket whatever state a cancelled connect() or disconnect() left it
    in: asyncua's disconnect_socket() does nothing once the client calls itself DISCONNECTING
    or DISCONNECTED, which a cancellation landing mid-way can leave with the socket open."""
    client.uaclient.request_disconnect()  # its supervisor loops end
    client.disconnect_socket()
    transport = getattr(protocol, "transport", None)
    if transport is not None and not transport.is_closing():
        transport.abort()


async def _stop_publishing(client: Client, exc: Exception) -> None:
    """The connection dropped: end the session's publish loop now, rather than let it retry
    every second until the next read() replaces the session. Runs in asyncua's supervisor,
    so it closes only the session (Client.disconnect() would cancel the supervisor itself)."""
    await client.uaclient.close_session(delete_subscriptions=False)


def _endpoint(
    endpoints: list[ua.EndpointDescription], security: Security | None
) -> ua.EndpointDescription:
    """The server's endpoint for ``security`` (GetEndpoints, Part 4 §5.4.4), or an error that
    names the ones it offers."""
    policy = security.policy if security else security_policies.SecurityPolicyNone
    mode = security.mode if security else ua.MessageSecurityMode.None_
    for endpoint in endpoints:
        if endpoint.SecurityPolicyUri == policy.URI and endpoint.SecurityMode == mode:
            return endpoint
    offered = sorted({_security_name(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints})
    raise ua.UaError(
        f"the server offers no endpoint with security {_security_name(policy.URI, mode)}, only "
        f"{' / '.join(offered)}: set opcua.security to one of these"
    )


def _security_name(policy_uri: str, mode: ua.MessageSecurityMode) -> str:
    policy = policy_uri.rsplit("#", 1)[-1]
    return policy if mode == ua.MessageSecurityMode.None_ else f"{policy},{mode.name}"


def _application_uri(certificate: x509.Certificate) -> str | None:
    """The URI in the certificate's subjectAltName, which a session's ApplicationUri must
    equal (Part 4 §5.6.2, Part 6 §6.2.2)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _subscription_parameters(publish_ms: float) -> ua.CreateSubscriptionParameters:
    """CreateSubscription (Part 4 §5.13.2): a keep-alive after one quiet publishing interval,
    so that each poll learns the server is still publishing."""
    return ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=publish_ms,
        RequestedLifetimeCount=LIFETIME_COUNT,
        RequestedMaxKeepAliveCount=1,
        MaxNotificationsPerPublish=0,  # no limit
        PublishingEnabled=True,
    )


def _monitored_item(
    handle: int, nodeid: ua.NodeId, sampling_ms: float, deadband: float | None
) -> ua.MonitoredItemCreateRequest:
    """A Value monitored item (Part 4 §7.21 MonitoringParameters), with an absolute
    ``deadband`` if given (DataChangeFilter, Part 4 §7.22.2)."""
    parameters = ua.MonitoringParameters(
        ClientHandle=handle, SamplingInterval=sampling_ms, QueueSize=QUEUE_SIZE, DiscardOldest=True
    )
    if deadband is not None:
        parameters.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute,
            DeadbandValue=deadband,
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=nodeid, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=parameters,
    )


def _without_deadband(item: ua.MonitoredItemCreateRequest) -> ua.MonitoredItemCreateRequest:
    parameters = item.RequestedParameters
    return _monitored_item(
        parameters.ClientHandle, item.ItemToMonitor.NodeId, parameters.SamplingInterval, None
    )


def _missing(status: ua.StatusCode) -> ua.DataValue:
    return ua.DataValue(StatusCode=status)


def decode(point: OpcuaPoint, datavalue: ua.DataValue) -> Reading:
    """A point's Reading from its DataValue: status, type, sentinel, enum, scale/offset, limits.

    Reading.raw is the value as the device sent it; the status name ("BadNodeIdUnknown") when
    the status is not Good; "Float 35.0, not Int16 scaled by 0.1: ..." when the device sent a
    floating value where the profile expects a scaled integer (a REAL where it expects an INT
    in tenths would be off by its scale); any other numeric type is converted. Uncertain
    counts as bad for now: the model must not average in a value
    the device itself doubts (Part 4 §7.34: Uncertain = "less than normal"). A Float is read
    as the shortest decimal that is that float (92.1, not 92.0999984741211).
    """
    status = datavalue.StatusCode or ua.StatusCode(ua.StatusCodes.Good)
    if not status.is_good():
        return Reading(point.metric, None, Quality.BAD, status.name)
    variant = datavalue.Value
    raw = variant.Value if variant is not None else None
    served = variant.VariantType.name if variant is not None else point.type
    if raw is not None and served != point.type and not _convertible(served, point):
        described = f"{served} {raw!r}, not {point.type}"
        if served in FLOATING:
            described += f" scaled by {point.scale:g}: this map does not fit the device"
        return Reading(point.metric, None, Quality.BAD, described)
    number = _number(raw, served)
    if number is None or number in point.sentinels:
        return Reading(point.metric, None, Quality.BAD, raw)
    if point.enum is not None:
        code = int(number) if number.is_integer() else None
        if code not in point.enum:
            return Reading(point.metric, None, Quality.BAD, raw)
        value = point.enum[code]
    else:
        value = number * point.scale + point.offset
    return Reading(point.metric, value, check_limits(value, point.min, point.max), raw)


def _convertible(served: str, point: OpcuaPoint) -> bool:
    """Whether a value of another numeric type than the profile's can be read as its point:
    servers publish Double, Float, Int32 or UInt16 for the same quantity, so the profile's
    type is a hint. Not a floating value where the profile expects a scaled integer (a PLC's
    INT in tenths): its scale would then be applied to a value that has none."""
    if served not in NUMERIC:
        return False
    scaled = point.scale != 1 or point.offset != 0
    return not (served in FLOATING and point.type not in FLOATING and scaled)


def _number(raw: Any, wire_type: str) -> float | None:
    """A finite scalar number (booleans as 0/1), or None for anything else."""
    if not isinstance(raw, bool | int | float) or not math.isfinite(raw):
        return None
    return float(str(np.float32(raw))) if wire_type == "Float" else float(raw)
