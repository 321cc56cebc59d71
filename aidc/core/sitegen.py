"""`aidc gen-site`: a consistent large site file, for benchmarks and for trying aidc at scale.

Rows of 20 racks of 40-120 kW, two rows to a pod. Each pod has a modular HVDC rectifier
(A feeds, DC PDUs) and a UPS (B feeds, 3-phase PDUs), each able to carry the whole pod
alone; a PG25 loop of three CDUs (N+1) sized for the pod's heat; and a supercap per row.
Each pod has its own incomer and cooling-plant feeder, each metered (roles facility and
cooling): a single low-voltage meter would read a 2,000-rack site's 100 MW, past its range
(10 kA), and its PUE unknown. Every device on 127.0.0.1: SNMP devices on UDP
ports, the others on TCP ports, both counted up from ``first_port`` and kept below the
kernel's ephemeral range (about 22,000 devices of each kind), so that ``aidc demo --site``
can serve the whole site from the simulators.
"""

from __future__ import annotations

import random

RACKS_PER_ROW = 20
ROWS_PER_POD = 2
ROWS_PER_ROOM = 50
DESIGNS_KW = (40, 60, 80, 120)
CAPTURE = {40: 0.8, 60: 0.85, 80: 0.85, 120: 0.9}
MODULE_KW = 100
CDUS_PER_LOOP = 3
LAST_PORT = 32767  # below Linux's ephemeral range


def generate(racks: int, seed: int = 1, first_port: int = 10_000) -> str:
    """The YAML text of a site with ``racks`` racks (deterministic for a seed)."""
    if racks < 1:
        raise ValueError("racks: expected at least 1")
    rng = random.Random(seed)
    udp, tcp = iter(range(first_port, LAST_PORT + 1)), iter(range(first_port, LAST_PORT + 1))

    def port(iterator) -> int:
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError(f"{racks} racks need more ports than {first_port}..{LAST_PORT} "
                             "hold on one address") from None

    designs = [rng.choice(DESIGNS_KW) for _ in range(racks)]
    rows = (racks + RACKS_PER_ROW - 1) // RACKS_PER_ROW
    pods = (rows + ROWS_PER_POD - 1) // ROWS_PER_POD
    rooms = (rows + ROWS_PER_ROOM - 1) // ROWS_PER_ROOM
    out = [
        f"# aidc gen-site --racks {racks} --seed {seed}: {rows} rows in {pods} pods, {rooms} rooms",
        f"site: gen-{racks}",
        "defaults: {poll_s: 5, timeout_s: 2}",
        f"model: {{tick_s: 5, pue_target: 1.25, unmetered_kw: {{lighting: {max(10, racks // 100)}}}}}",
        "rooms:",
        *(f"  - {{id: hall{h + 1}, rows: [{_rows(h * ROWS_PER_ROOM, rows)}]}}" for h in range(rooms)),
        "devices:",
    ]
    rack_lines, loop_lines = [], []
    for pod in range(pods):
        pod_racks = range(pod * ROWS_PER_POD * RACKS_PER_ROW,
                          min(racks, (pod + 1) * ROWS_PER_POD * RACKS_PER_ROW))
        peak_kw = sum(designs[i] for i in pod_racks)  # every rack at its design rating
        modules = -(-peak_kw // MODULE_KW) + 1  # N+1
        rect, ups = f"rect-{pod + 1}", f"ups-{pod + 1}"
        out += [
            *(f"  - {{id: {role}-{pod + 1}, kind: meter, role: {role}, protocol: modbus, "
              f"port: {port(tcp)}, profile: power_meter}}" for role in ("facility", "cooling")),
            (f"  - {{id: {rect}, kind: rectifier, protocol: modbus, port: {port(tcp)}, "
             f"profile: hvdc_rectifier, rating_kw: {modules * MODULE_KW}, modules: {modules}, "
             f"module_kw: {MODULE_KW}, redundancy: N+1, efficiency: 0.975, "
             "battery_runtime_min: 8}"),
            (f"  - {{id: {ups}, kind: ups, protocol: snmp, port: {port(udp)}, "
             f"profile: ups_rfc1628, rating_kw: {-(-peak_kw // 50) * 50}, redundancy: N, "
             "efficiency: 0.955}"),
        ]
        heat_kw = sum(designs[i] * CAPTURE[designs[i]] for i in pod_racks)
        cdu_kw = -(-heat_kw // ((CDUS_PER_LOOP - 1) * 50)) * 50  # N+1 carries the design heat
        cdus = [f"cdu-{pod + 1}-{c + 1}" for c in range(CDUS_PER_LOOP)]
        out += [f"  - {{id: {c}, kind: cdu, protocol: modbus, port: {port(tcp)}, "
                f"profile: cdu_generic, rated_kw: {cdu_kw:g}}}" for c in cdus]
        loop = f"loop-{pod + 1}"
        loop_lines.append(f"  - {{id: {loop}, cdus: [{', '.join(cdus)}], redundancy: N+1, "
                          "fluid: PG25, ashrae_class: W32}")
        for r in sorted({i // RACKS_PER_ROW for i in pod_racks}):
            sc = f"sc-{r + 1}"
            out.append(f"  - {{id: {sc}, kind: supercap, protocol: opcua, port: {port(tcp)}, "
                       "profile: supercap_opcua, capacitance_f: 20, vmax_v: 400, vmin_v: 280}")
            for i in (i for i in pod_racks if i // RACKS_PER_ROW == r):
                rack, kw = f"R{i + 1:05d}", designs[i]
                breaker_dc, breaker_ac = _breaker_a(kw * 1000 / 336), _breaker_a(
                    kw * 1000 / (3**0.5 * 415 * 0.95))
                out += [
                    (f"  - {{id: pdu-{rack}-a, kind: pdu, protocol: snmp, port: {port(udp)}, "
                     f"profile: pdu_apc_rpdu2, upstream: {rect}, phases: dc, voltage_v: 336, "
                     f"breaker_a: {breaker_dc}}}"),
                    (f"  - {{id: pdu-{rack}-b, kind: pdu, protocol: snmp, port: {port(udp)}, "
                     f"profile: pdu_apc_rpdu2, upstream: {ups}, phases: 3, voltage_v: 415, "
                     f"breaker_a: {breaker_ac}}}"),
                ]
                rack_lines.append(
                    f"  - {{id: {rack}, room: hall{r // ROWS_PER_ROOM + 1}, row: '{_row(r)}', "
                    f"position: {i % RACKS_PER_ROW + 1}, design_kw: {kw}, capture_ratio: {CAPTURE[kw]}, "
                    f"air_kw: {round(kw * (1 - CAPTURE[kw])) + 2}, "
                    f"feed_a: pdu-{rack}-a, feed_b: pdu-{rack}-b, loop: {loop}, supercap: {sc}}}")
    return "\n".join([*out, "loops:", *loop_lines, "racks:", *rack_lines]) + "\n"


def _breaker_a(design_a: float) -> int:
    """The smallest standard breaker whose 80 % continuous rating carries ``design_a``."""
    for rating in (63, 80, 100, 125, 160, 200, 250, 300, 400, 450, 500, 630):
        if 0.8 * rating >= design_a:
            return rating
    return 800


def _rows(first: int, rows: int) -> str:
    """A room's rows, from its first, as a YAML flow list's items."""
    return ", ".join(f"'{_row(r)}'" for r in range(first, min(rows, first + ROWS_PER_ROOM)))


def _row(index: int) -> str:
    """Rows named A..Z, then AA, AB, ... (spreadsheet style)."""
    name, n = "", index + 1
    while n:
        n, rest = divmod(n - 1, 26)
        name = chr(ord("A") + rest) + name
    return name
