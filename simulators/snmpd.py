"""SNMP devices served by net-snmp's ``snmpd``, for a farm of thousands (`aidc farm --snmpd`).

The Python simulator answers a PDU's poll in some 2.3 ms of CPU (pyasn1 encodes every
value): 4,000 PDUs polled every 5 s would take two cores. snmpd answers in C. Each agent
listens on up to ``PORTS_PER_AGENT`` ports (net-snmp 5.9 binds only the first 128 of its
``agentAddress``) and answers every one with the same objects: those of the group's first
device at start, as ``override`` lines. For load, not for faults: the values do not change,
and the PDUs of a group read alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pysnmp.proto import rfc1902

from collectors.profiles import load_profile
from simulators.snmp import SYS_UP_TIME, ProfileMib

SYSTEM = SYS_UP_TIME[:-2]  # 1.3.6.1.2.1.1: sysDescr, sysObjectID, sysUpTime...

PORTS_PER_AGENT = 100
NET_SNMP_ENV = {**os.environ, "MIBS": "", "MIBDIRS": "/nonexistent"}  # numeric OIDs only
OVERRIDE_TYPES = (  # the SMI type of a value, as snmpd.conf's override names it; subclasses first
    (rfc1902.Counter64, "counter64"), (rfc1902.Counter32, "counter"),
    (rfc1902.TimeTicks, "timeticks"), (rfc1902.Gauge32, "unsigned"),
    (rfc1902.Integer32, "integer"), (rfc1902.OctetString, "octet_str"),
    (rfc1902.ObjectIdentifier, "object_id"),
)


def overrides(profile_name: str, values: Mapping[str, float | None]) -> list[str]:
    """snmpd.conf ``override`` lines serving what the simulator would for ``values``."""
    snapshot = ProfileMib(load_profile(profile_name), lambda: values).snapshot(set())
    lines = []
    for oid in snapshot.order:
        value = snapshot.values[oid]
        kind = next((name for cls, name in OVERRIDE_TYPES if isinstance(value, cls)), None)
        if oid[:len(SYSTEM)] == SYSTEM or kind is None:
            continue  # snmpd answers the system group itself
        if kind == "object_id":
            text = ".".join(map(str, value))
        else:
            text = f'"{value.prettyPrint()}"' if kind == "octet_str" else value.prettyPrint()
        lines.append(f"override .{'.'.join(map(str, oid))} {kind} {text}")
    return lines


class SnmpdFarm:
    """snmpd agents for the SNMPv2c devices of ``devices``, grouped by profile and phases."""

    def __init__(self, devices: list[Any], values: Callable[[str], Mapping[str, float | None]],
                 work: Path, binary: str | None = None):
        self.binary = binary or shutil.which("snmpd") or shutil.which("snmpd", path="/usr/sbin")
        if self.binary is None and devices:
            raise RuntimeError("snmpd not found: install net-snmp's agent (Debian: snmpd)")
        self.work, self.agents = work, []
        groups: dict[tuple, list[Any]] = {}
        for d in devices:
            key = (d.profile, getattr(d, "phases", None), d.snmp.community.get_secret_value())
            groups.setdefault(key, []).append(d)
        self._configs = []
        for (profile, _, community), members in groups.items():
            lines = overrides(profile, values(members[0].id))
            for i in range(0, len(members), PORTS_PER_AGENT):
                chunk = members[i:i + PORTS_PER_AGENT]
                self._configs.append([
                    "agentAddress " + ",".join(f"udp:{d.host}:{d.port}" for d in chunk),
                    f"rocommunity {community} 127.0.0.1",
                    "dontLogTCPWrappersConnects yes",  # not a log line a request
                    *lines])
        self.devices = [d.id for members in groups.values() for d in members]

    def start(self) -> None:
        for n, lines in enumerate(self._configs):
            work = self.work / f"snmpd-{n}"
            work.mkdir(parents=True, exist_ok=True)
            (work / "snmpd.conf").write_text("\n".join(lines) + "\n")
            self.agents.append(subprocess.Popen(
                [self.binary, "-f", "-C", "-c", str(work / "snmpd.conf"), "-Lf",
                 str(work / "snmpd.log"), f"--persistentDir={work / 'persist'}"],
                env=NET_SNMP_ENV, stdout=subprocess.DEVNULL))

    def stop(self) -> None:
        for agent in self.agents:
            agent.terminate()
        for agent in self.agents:
            agent.wait(10)
        self.agents = []
