"""A whole virtual site: SitePhysics served device by device over each one's real protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Any

from aidc.core.config import Site
from collectors.profiles import load_profile
from simulators.physics import SitePhysics

log = logging.getLogger("aidc.simulator")
STEP_S = 0.2
FAULTS = ("offline", "slow", "refuse", "stuck", "sensor_fault", "pump_failure", "leak",
          "module_loss", "utility_outage")


def _values(physics: SitePhysics, device_id: str):
    return lambda: physics.values(device_id)


def make_server(device: Any, physics: SitePhysics) -> Any:
    """The protocol server for one device, answering from the physics' current values."""
    profile = load_profile(device.profile)
    values = _values(physics, device.id)
    if device.protocol == "snmp":
        from simulators.snmp import SnmpDeviceServer

        snmp = device.snmp
        users = None
        if snmp.version == "3":
            users = [{"user": snmp.user, "auth_protocol": snmp.auth_protocol,
                      "auth_key": snmp.auth_key.get_secret_value() if snmp.auth_key else None,
                      "priv_protocol": snmp.priv_protocol,
                      "priv_key": snmp.priv_key.get_secret_value() if snmp.priv_key else None}]
        return SnmpDeviceServer(profile, device.host, device.port, values,
                                snmp.community.get_secret_value(), v3_users=users)
    from simulators.opcua import OpcuaDeviceServer

    return OpcuaDeviceServer(profile, device.host, device.port, values)


class SimulatedSite:
    """Start, stop and fault every device of ``site`` (ports as the config gives them)."""

    def __init__(self, site: Site, physics: SitePhysics | None = None,
                 served_elsewhere: Collection[str] = ()):
        self.site = site
        self.physics = physics or SitePhysics(site)
        self.servers = {d.id: make_server(d, self.physics) for d in site.devices
                        if d.protocol != "modbus" and d.id not in served_elsewhere}
        self.servers |= self._modbus_gateways(site)
        self._stepper: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.active: dict[tuple[str, str | None, str | None], float | None] = {}

    def _modbus_gateways(self, site: Site) -> dict[str, Any]:
        """Modbus devices sharing a host:port sit behind one gateway, by unit id."""
        from simulators.modbus import ModbusGatewayServer

        groups: dict[tuple[str, int], list[Any]] = {}
        for d in site.devices:
            if d.protocol == "modbus":
                groups.setdefault((d.host, d.port), []).append(d)
        out = {}
        for (host, port), devices in groups.items():
            units = {d.modbus.unit_id: (load_profile(d.profile), _values(self.physics, d.id))
                     for d in devices}
            server = ModbusGatewayServer(host, port, units)
            out |= {d.id: server for d in devices}
        return out

    def _unit(self, device_id: str) -> int | None:
        """The unit id of a device behind a shared Modbus gateway, else None."""
        d = self.site.device(device_id)
        if d.protocol != "modbus":
            return None
        sharing = [x for x in self.site.devices if x.protocol == "modbus" and (x.host, x.port) == (d.host, d.port)]
        return d.modbus.unit_id if len(sharing) > 1 else None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await asyncio.gather(*(s.start() for s in {id(s): s for s in self.servers.values()}.values()))
        self._stepper = asyncio.create_task(self._step_forever(), name="simulator-physics")
        log.info("event=simulator_started devices=%d", len(self.servers))

    async def stop(self) -> None:
        if self._stepper:
            self._stepper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stepper
        unique = {id(s): s for s in self.servers.values()}.values()
        await asyncio.gather(*(s.stop() for s in unique if s.running))

    async def stop_device(self, device_id: str) -> None:
        """Take one device off the network (it stops answering; behind a shared gateway the
        gateway answers 'target device failed to respond' for it)."""
        unit = self._unit(device_id)
        if unit is None:
            await self.servers[device_id].stop()
        else:
            self.servers[device_id].set_unit_offline(unit, True)

    async def start_device(self, device_id: str) -> None:
        unit = self._unit(device_id)
        if unit is None:
            await self.servers[device_id].start()
        else:
            self.servers[device_id].set_unit_offline(unit, False)

    def truth(self) -> dict:
        return self.physics.truth()

    async def inject(self, fault: str, device: str | None = None, metric: str | None = None,
                     on: bool = True, value: float | None = None) -> None:
        """Start (``on``) or end one fault. Protocol faults act on a device's server
        (offline, slow: answers delayed by ``value`` s, refuse: ``metric`` answers an error);
        physical ones on the site (stuck and sensor_fault on ``metric``, pump_failure and
        leak on a CDU, module_loss of module ``value`` on a rectifier, utility_outage)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault '{fault}' (known: {', '.join(FAULTS)})")
        if fault != "utility_outage" and device not in self.servers:
            raise ValueError(f"fault {fault} needs a device of this site, got {device!r}")
        if fault in ("refuse", "stuck", "sensor_fault") and not metric:
            raise ValueError(f"fault {fault} needs a metric")
        f, server = self.physics.faults, self.servers.get(device)
        if fault == "offline":
            await (self.stop_device(device) if on else self.start_device(device))
        elif fault == "slow":
            server.delay_s = (value or 5.0) if on else 0.0
        elif fault == "refuse":
            (server.refuse.add if on else server.refuse.discard)(metric)
        elif fault == "stuck":
            if on:
                f.stuck[(device, metric)] = self.physics.values(device).get(metric)
            else:
                f.stuck.pop((device, metric), None)
        elif fault == "sensor_fault":
            (f.sensor_fault.add if on else f.sensor_fault.discard)((device, metric))
        elif fault in ("pump_failure", "leak"):
            group = f.pump_failed if fault == "pump_failure" else f.leak
            (group.add if on else group.discard)(device)
        elif fault == "module_loss":
            lost = f.modules_lost.setdefault(device, set())
            (lost.add if on else lost.discard)(int(value or 1))
        else:
            f.utility_outage_since = self.physics.clock() if on else None
        self.physics.step()
        if on:
            self.active[(fault, device, metric)] = value
        else:
            self.active.pop((fault, device, metric), None)
        log.info("event=fault fault=%s device=%s metric=%s on=%s", fault, device, metric, on)

    async def _step_forever(self) -> None:
        while True:
            self.physics.step()
            await asyncio.sleep(STEP_S)


def relocate(site: Site, port_of) -> Site:
    """A copy of ``site`` whose devices listen where ``port_of(device)`` says (127.0.0.1)."""
    devices = [d.model_copy(update={"host": "127.0.0.1", "port": port_of(d)}) for d in site.devices]
    return site.model_copy(update={"devices": devices})


def on_free_ports(site: Site) -> Site:
    """Every device on its own port, free right now: for tests and side-by-side demos."""
    from aidc.core.net import free_ports

    ports = free_ports([d.transport for d in site.devices])
    by_device = dict(zip((d.id for d in site.devices), ports))
    return relocate(site, lambda d: by_device[d.id])


def free_port_offset(site: Site) -> int:
    """An `aidc demo --port-offset` that puts every device of ``site`` on a port free now."""
    from aidc.core.net import free_offset

    return free_offset([(d.transport, d.port) for d in site.devices])
