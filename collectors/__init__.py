"""Collectors: one module per protocol, each turning one device's profile into Readings.

Collectors are read-only: no Modbus write function code, SNMP SET or OPC-UA Write is ever sent.
They import aidc (config, metrics) and the profiles, never models or dashboards.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from aidc.core.metrics import Reading
from collectors.profiles import load_profile


class DeviceUnreachable(Exception):
    """The device did not answer (connect refused, timeout, transport error)."""


class Collector(ABC):
    """Reads one device once per call to :meth:`read`."""

    poll_s: float = 5.0  # the device's effective poll interval (subscriptions pace by it)
    timeouts_a_read: int = 1  # the most timeouts one read() takes before it gives up itself

    def __init__(self, device: Any, profile: Any, timeout_s: float):
        self.device, self.profile, self.timeout_s = device, profile, timeout_s

    @abstractmethod
    async def read(self) -> list[Reading]:
        """One reading per profile point, each with its quality; raise DeviceUnreachable
        when the device cannot be reached at all. A point the device rejects gives a
        Reading with quality bad, never an exception for the whole device."""

    async def close(self) -> None:
        """Release connections; the next read() reconnects."""


PROTOCOL_MODULES = {"modbus": ("collectors.modbus", "ModbusCollector"),
                    "snmp": ("collectors.snmp", "SnmpCollector"),
                    "opcua": ("collectors.opcua", "OpcuaCollector")}


def collector_class(protocol: str) -> type[Collector]:
    """The collector of a protocol, its module (and protocol library) imported when first
    asked for: a process that polls no OPC-UA device never imports asyncua."""
    module, name = PROTOCOL_MODULES[protocol]
    return getattr(importlib.import_module(module), name)


def import_protocols(protocols: Iterable[str]) -> None:
    """Import the collectors of ``protocols`` ahead of their first poll (the runtime calls
    this in a worker thread): asyncua takes 0.6 s to import and pysnmp 0.2 s, which held the
    event loop at the first poll of a device of theirs."""
    for protocol in protocols:
        collector_class(protocol)


def make_collector(device: Any, timeout_s: float, poll_s: float | None = None) -> Collector:
    """The collector for ``device`` (an aidc.core.config device) by its protocol."""
    profile = load_profile(device.profile)
    if profile.protocol != device.protocol:
        raise ValueError(
            f"device {device.id}: profile {device.profile} is for {profile.protocol}, "
            f"not {device.protocol}"
        )
    collector = collector_class(device.protocol)(device, profile, timeout_s)
    collector.poll_s = poll_s or device.poll_s or Collector.poll_s
    return collector
