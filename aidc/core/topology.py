"""The site as a graph: which rack a PDU feeds, which source feeds a PDU, the tags of a series.

Tags stay bounded by the topology (site, room, row, rack, device): never values or times.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from aidc.core.config import Rack, Site
from aidc.core.metrics import SeriesKeys


@dataclass(frozen=True)
class Topology:
    site: Site

    @cached_property
    def device_by_id(self) -> dict:
        return {d.id: d for d in self.site.devices}

    @cached_property
    def devices_by_kind(self) -> dict[str, list]:
        """The devices of each kind, in the file's order."""
        out: dict[str, list] = {}
        for d in self.site.devices:
            out.setdefault(d.kind, []).append(d)
        return out

    @cached_property
    def _series_keys(self) -> dict[tuple[str, str], SeriesKeys]:
        return {}

    def series_keys(self, kind: str, metric: str) -> SeriesKeys:
        """(device, metric) of each device of ``kind``, made once: a reader of a tick's
        arrays finds their slots once, not at every tick."""
        keys = self._series_keys.get((kind, metric))
        if keys is None:
            keys = self._series_keys[kind, metric] = SeriesKeys(
                (d.id, metric) for d in self.devices_by_kind.get(kind, []))
        return keys

    @cached_property
    def rack_by_id(self) -> dict[str, Rack]:
        return {r.id: r for r in self.site.racks}

    @cached_property
    def cdus_of_loop(self) -> dict[str, list[str]]:
        return {lp.id: lp.cdus for lp in self.site.loops}

    @cached_property
    def rack_of_pdu(self) -> dict[str, Rack]:
        out = {}
        for r in self.site.racks:
            out[r.feed_a] = r
            if r.feed_b:
                out[r.feed_b] = r
        return out

    @cached_property
    def racks_on_loop(self) -> dict[str, list[str]]:
        return self._racks_by("loop")

    @cached_property
    def loop_of_cdu(self) -> dict[str, str]:
        return {cdu: lp.id for lp in self.site.loops for cdu in lp.cdus}

    @cached_property
    def racks_on_source(self) -> dict[str, list[str]]:
        """Racks with a feed from each rectifier or UPS (through its PDUs)."""
        source_of_pdu = {p.id: p.upstream for p in self.site.devices_of("pdu")}
        out: dict[str, list[str]] = {}
        for r in self.site.racks:
            for source in dict.fromkeys(source_of_pdu.get(p) for p in (r.feed_a, r.feed_b)):
                if source is not None:
                    out.setdefault(source, []).append(r.id)
        return out

    @cached_property
    def devices_behind_gateway(self) -> dict[str, list[str]]:
        """The Modbus units that share one ``host:port`` (a Modbus TCP gateway's), by it; an
        endpoint with one device is no gateway."""
        by_endpoint: dict[str, list[str]] = {}
        for d in self.site.devices:
            if d.protocol == "modbus":
                by_endpoint.setdefault(f"{d.host}:{d.port}", []).append(d.id)
        return {k: units for k, units in by_endpoint.items() if len(units) > 1}

    @cached_property
    def rack_positions(self) -> dict[str, dict[str, np.ndarray]]:
        """``racks_on_loop`` and ``racks_on_source`` as the racks' positions in the site's
        order (the model's): a rule over every rack at once reads them as arrays."""
        index = {r.id: i for i, r in enumerate(self.site.racks)}
        return {name: {k: np.array([index[r] for r in racks], np.intp)
                       for k, racks in getattr(self, name).items()}
                for name in ("racks_on_loop", "racks_on_source")}

    @cached_property
    def memo(self) -> dict:
        """What a layer above derives once a site from it (alerts.rules: every rack's labels
        and fingerprints for a rule)."""
        return {}

    @cached_property
    def racks_on_supercap(self) -> dict[str, list[str]]:
        return self._racks_by("supercap")

    def _racks_by(self, field: str) -> dict[str, list[str]]:
        """Rack ids grouped by a rack's ``loop`` or ``supercap``."""
        out: dict[str, list[str]] = {}
        for r in self.site.racks:
            if key := getattr(r, field):
                out.setdefault(key, []).append(r.id)
        return out

    def affected(self, labels: dict[str, str]) -> tuple[list[str], list[str]]:
        """The racks and loops an alert on these labels touches (rack, loop, supercap or
        device: a PDU's rack, a source's racks, a CDU's loop and its racks; gateway: what its
        units touch)."""
        racks: dict[str, None] = {}
        loops: dict[str, None] = {}
        for unit in self.devices_behind_gateway.get(labels.get("gateway", ""), ()):
            unit_racks, unit_loops = self.affected({"device": unit})
            racks |= dict.fromkeys(unit_racks)
            loops |= dict.fromkeys(unit_loops)
        if rack := labels.get("rack"):
            racks[rack] = None
        device = labels.get("device", "")
        if device in self.rack_of_pdu:
            racks[self.rack_of_pdu[device].id] = None
        racks |= dict.fromkeys(self.racks_on_source.get(device, ()))
        racks |= dict.fromkeys(self.racks_on_supercap.get(labels.get("supercap") or device, ()))
        if loop := labels.get("loop") or self.loop_of_cdu.get(device):
            loops[loop] = None
            racks |= dict.fromkeys(self.racks_on_loop.get(loop, ()))
        loop_of = self.loop_of_rack
        loops |= dict.fromkeys(loop_of[r] for r in racks if loop_of.get(r))
        return list(racks), list(loops)  # type: ignore[arg-type]

    @cached_property
    def loop_of_rack(self) -> dict[str, str | None]:
        return {r.id: r.loop for r in self.site.racks}

    @cached_property
    def device_tags(self) -> dict[str, dict[str, str]]:
        """Tags of every device's series: a PDU carries its rack's room/row/rack."""
        tags = {}
        for d in self.site.devices:
            t = {"site": self.site.site, "device": d.id}
            rack = self.rack_of_pdu.get(d.id)
            if rack is not None:
                t |= {"room": rack.room, "row": rack.row, "rack": rack.id}
            tags[d.id] = t
        return tags

    def rack_tags(self, rack: Rack) -> dict[str, str]:
        return {"site": self.site.site, "room": rack.room, "row": rack.row, "rack": rack.id}

    def summary(self) -> str:
        """A human-readable topology summary (what `aidc check` prints)."""
        s = self.site
        lines = [f"site {s.site}: {len(s.rooms)} room(s), {len(s.racks)} racks, {len(s.devices)} devices"]
        by_kind: dict[str, int] = {}
        for d in s.devices:
            by_kind[d.kind] = by_kind.get(d.kind, 0) + 1
        lines.append("  devices: " + ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())))
        by_proto: dict[str, int] = {}
        for d in s.devices:
            by_proto[d.protocol] = by_proto.get(d.protocol, 0) + 1
        lines.append("  protocols: " + ", ".join(f"{n} {p}" for p, n in sorted(by_proto.items())))
        feeds: dict[str, list[str]] = {}
        for p in s.devices_of("pdu"):
            feeds.setdefault(p.upstream, []).append(p.id)
        for src in s.devices_of("rectifier") + s.devices_of("ups"):
            fed = feeds.get(src.id, [])
            racks = sorted({self.rack_of_pdu[p].id for p in fed if p in self.rack_of_pdu})
            size = f"{src.rating_kw:g} kW, {src.redundancy}"
            if src.modules:
                usable = min(src.rating_kw, (src.modules - src.spare_modules) * src.module_kw)
                size = (f"{src.modules} x {src.module_kw:g} kW modules, {src.redundancy}: "
                        f"{usable:g} of {src.rating_kw:g} kW usable")
            lines.append(f"  {src.kind} {src.id} ({size}) -> {len(fed)} PDU feeds -> racks "
                         f"{_few(racks)}")
        on_loop: dict[str, list[str]] = {}
        for r in s.racks:
            on_loop.setdefault(r.loop or "", []).append(r.id)
        for lp in s.loops:
            lines.append(
                f"  loop {lp.id} ({lp.fluid}, {lp.ashrae_class}, {lp.redundancy}): "
                f"CDUs {', '.join(lp.cdus)} -> racks {_few(on_loop.get(lp.id, []))}"
            )
        rows: dict[tuple[str, str], list[Rack]] = {}
        for r in s.racks:
            rows.setdefault((r.room, r.row), []).append(r)
        for (room, row), racks in sorted(rows.items()):
            design = sum(r.design_kw for r in racks)
            ab = sum(1 for r in racks if r.feed_b)
            lines.append(
                f"  {room} row {row}: {len(racks)} racks, {design:g} kW design, {ab} with A/B feeds"
            )
        return "\n".join(lines)


def shard_of(device, shards: int) -> int:
    """The collector shard (1..``shards``) that polls ``device``: a stable hash of its
    endpoint, the same in every process and run (Python's own ``hash`` of a str is not), so
    that the Modbus units behind one gateway stay in one shard and queue on one connection."""
    digest = hashlib.blake2b(f"{device.host}:{device.port}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards + 1


def _few(ids: list[str], most: int = 8) -> str:
    """A list of ids that stays one readable line on a large site."""
    if not ids:
        return "-"
    return ", ".join(ids) if len(ids) <= most else f"{ids[0]} .. {ids[-1]} ({len(ids)} racks)"
