"""The query surface every user-facing part reads through: Dash, REST and the CLI.

It reads the runtime's latest status (an immutable snapshot swapped in each model tick)
and the store's history; it never talks to devices.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from aidc.core.derive import (
    PHASE_CURRENT,
    RACK_FIELDS,
    SITE_FIELDS,
    Pool,
    RackStatus,
    SiteStatus,
    WhatIf,
    num,
    what_if,
)
from aidc.core.matchers import MATCHER, a_matcher, parse_matcher
from aidc.core.metrics import DeviceHealth, Quality
from alerts.evaluate import Alert, read_history, severity_rank
from alerts.rules import rule_pack
from alerts.silences import Silence
from models import pue as pue_model

if TYPE_CHECKING:  # the CLI's readers use the JSON helpers without the collectors' libraries
    from aidc.core.store import Aggregate, Series
    from aidc.runtime import Runtime

PUE_WINDOWS_S = {"1h": 3600.0, "24h": 86400.0, "30d": 30 * 86400.0}
# a kWh counter is read at the end of each of these (its maximum there, which the store's
# 1-minute and 1-hour rollups hold): every 5 s sample of 4,000 PDUs over an hour took 4 s
COUNTER_READ_EVERY_S = {"1h": 60.0, "24h": 3600.0, "30d": 3600.0}
# every open overview asks for the 24 h PUE each 30 s (0.3-0.5 s of reading at 2,000 racks):
# one read serves every page and script asking within this
INTERVAL_PUE_REUSE_S = 30.0
REACHABLE = ("up", "degraded")  # device states whose last poll reached the device
POOL_FIELDS = {"id", "kind", "capacity_kw", "load_kw", "left_kw", "left_normal_kw",
               "worst_failure", "racks"}  # every pool has them, null when unknown
ON_BATTERY = frozenset({"ups_on_battery", "rectifier_on_battery"})
REDUNDANCY_LOST = frozenset({"rectifier_redundancy_lost", "pump_redundancy_lost",
                             "feed_redundancy_lost"})
CDU_READINGS = ("supply_temp_c", "return_temp_c", "facility_supply_temp_c", "flow_lpm", "dp_kpa",
                "pumps_running", "leak")
BACKUP_SHOWN = ("load_kw", "supercap_s", "battery_s", "required_s", "bridges", "shortfall_s")
STALE_AFTER_TICKS = 3  # a model result older than 3 ticks: the page shows data stale
MIN_STEPS_COUNTED = 100  # IT energy must span 100 counter steps: rounding then stays under 1 %


def counter_step_kwh(device) -> float:
    """The smallest step of a device's energy_kwh counter, from its profile's scale."""
    from collectors.profiles import load_profile

    points = [p for p in load_profile(device.profile).points if p.metric == "energy_kwh"]
    return abs(points[0].scale) if points else 0.0


class WhatIfQuestion(BaseModel):
    """A planner's what-if, as the REST API and the Dash page take it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    row: str = Field(min_length=1, max_length=100)
    racks: int = Field(ge=1, le=10_000)
    kw: float = Field(gt=0, le=10_000)
    capture: float = Field(0.85, ge=0, le=1)
    feed_kw: float | None = Field(None, gt=0, le=10_000)
    air_kw: float | None = Field(None, ge=0, le=10_000)


def iso_text(value: Any) -> Any:
    """One time format in the API, in as out: ISO 8601 text, never unix seconds."""
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004 (pydantic reports ValueError, not TypeError)
            "expected an ISO 8601 time with its zone, like 2030-01-01T00:00:00Z")
    return value


def before_2100(t: datetime) -> datetime:
    if not datetime(1970, 1, 1, tzinfo=UTC) <= t < datetime(2100, 1, 1, tzinfo=UTC):
        raise ValueError("expected a time from 1970 to 2099")
    return t


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=100)


class SilenceRequest(BaseModel):
    """``matchers`` like ``device=cdu-1`` or ``rule=~leak|pump_.*``; ``duration_s`` from now
    (or from ``starts_at``, ISO 8601 with its zone, as every time of the API)."""

    model_config = ConfigDict(extra="forbid")
    matchers: list[Annotated[str, Field(max_length=500, json_schema_extra={
        "pattern": MATCHER.pattern}), AfterValidator(a_matcher)]] = Field(
        min_length=1, max_length=20)
    duration_s: float = Field(gt=0, le=90 * 24 * 3600)
    starts_at: Annotated[AwareDatetime, BeforeValidator(iso_text),
                         AfterValidator(before_2100)] | None = None
    created_by: str = Field(min_length=1, max_length=100)
    comment: str = Field(min_length=1, max_length=1000)


def one_line(error: ValidationError) -> str:
    """The first problem of a validation error: ``field: what was expected``."""
    err = error.errors()[0]
    where = ".".join(str(k) for k in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def by_limit_json(values: dict[str, float | None], key: str) -> dict[str, Any]:
    """Limits as JSON can carry them: finite values, and the names of the ``unknown`` ones
    (data missing) and of the ``not_applicable`` ones (+inf: no bound by configuration),
    which JSON numbers cannot express. What-if adds ``not_checked``."""
    return {
        key: {k: v for k, v in values.items() if v is not None and math.isfinite(v)},
        "unknown": [k for k, v in values.items() if v is None],
        "not_applicable": [k for k, v in values.items() if v is not None and not math.isfinite(v)],
    }


def rack_json(rack: RackStatus) -> dict[str, Any]:
    # a shallow copy: asdict's deep copy took 0.3 ms a rack
    return rack._asdict() | by_limit_json(rack.limits_kw, "limits_kw")


def pool_json(pool: Pool, with_racks: bool = True) -> dict[str, Any]:
    """A pool without the fields that do not apply to its kind, and no +inf; without the ids
    of its racks unless ``with_racks``."""
    out = {k: v for k, v in vars(pool).items()  # shallow
           if (v is not None or k in POOL_FIELDS) and (with_racks or k != "racks")}
    if pool.kind == "loop":
        out["supply_limit_c"] = pool.supply_limit_c if math.isfinite(pool.supply_limit_c) else None
    else:
        out.pop("supply_limit_c")
    return out


def reading_json(series: str, value: float | None, quality: Quality) -> dict[str, Any]:
    """One series as read: ``value`` only when good, ``read_value`` whatever its quality."""
    return {"series": series, "value": num(value) if quality is Quality.GOOD else None,
            "read_value": num(value), "quality": str(quality)}


def what_if_json(w: WhatIf) -> dict[str, Any]:
    return asdict(w) | by_limit_json(w.racks_fit_by_limit, "racks_fit_by_limit")


def strict_json(value: Any) -> str:
    """JSON that any parser reads: NaN or Infinity is a bug here, never printed. On one line:
    indenting takes the standard library's pure-Python encoder, 2 s for 10,000 racks."""
    return json.dumps(value, allow_nan=False)


log = logging.getLogger("aidc.api")


def silence_json(s: Silence, now: float) -> dict[str, Any]:
    return {
        "id": s.id, "matchers": [f"{m.name}{m.op}{m.value}" for m in s.matchers],
        "state": s.state(now), "starts_at": iso(s.starts_at), "ends_at": iso(s.ends_at),
        "created_by": s.created_by, "comment": s.comment, "created_at": iso(s.created_at),
        "expired_by": s.expired_by,
    }  # fmt: skip


def trend_every_s(window_s: float, points: int) -> float:
    """The windows a trend of about ``points`` means over ``window_s`` is computed in: past a
    minute, whole minutes (which the store reads from its rollups)."""
    every_s = max(window_s / points, 1.0)
    return every_s if every_s <= 60 else math.ceil(every_s / 60) * 60


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


ALERT_FIELDS = tuple(f.name for f in fields(Alert))
ALERT_TIMES = ("active_since", "starts_at", "last_notified_at", "acked_at", "ends_at")
DEVICE_TIMES = ("since", "last_ok", "due_at")
DEVICE_FIELDS = tuple(f.name for f in fields(DeviceHealth))


def with_iso_times(fields: dict[str, Any], times: tuple[str, ...]) -> dict[str, Any]:
    """One time format in the API: ISO 8601 UTC (unix seconds inside)."""
    return fields | {k: iso(fields[k]) for k in times}


def device_json(h: DeviceHealth) -> dict[str, Any]:
    # its fields are flat: asdict's deep copy took 0.1 ms a device, 0.4 s for a large site
    return with_iso_times({k: getattr(h, k) for k in DEVICE_FIELDS}, DEVICE_TIMES)


def alert_json(a: Alert) -> dict[str, Any]:
    """An alert, ``starts_at`` the time it fired (or began pending) and ``state``
    ``suppressed`` while a cause inhibits it."""
    # flat but for its labels: asdict's deep copy took 46 us an alert, 0.46 s a storm's 10,000
    out = with_iso_times({k: getattr(a, k) for k in ALERT_FIELDS} | {"labels": dict(a.labels)},
                         ALERT_TIMES)
    out["starts_at"] = iso(a.starts_at or a.active_since)
    out["state"] = "suppressed" if a.suppressed_by else str(a.state)
    return out


def site_state(status: SiteStatus | None, alerts: list[Alert], now: float,
               tick_s: float) -> dict[str, Any]:
    """The site in one word and one line: ``stale`` (no model result for 3 ticks: nothing
    below is known now), ``on_battery`` (with the shortest runtime left, or unknown),
    ``degraded`` (redundancy lost, by an alert or a pool that would not hold its worst
    failure) or ``normal``; suppressed alerts count, silenced or not: the state is a fact."""
    age_s = None if status is None else max(now - status.updated_at, 0.0)
    out = {"state": "normal", "state_detail": "", "data_age_s": num(age_s)}
    active = [a for a in alerts if str(a.state) == "firing"]
    if age_s is None or age_s > STALE_AFTER_TICKS * tick_s:
        ago = "no model result yet" if age_s is None else f"last model result {age_s:.0f} s ago"
        return out | {"state": "stale", "state_detail": ago}
    if on_battery := sorted({a.labels.get("device", "?") for a in active if a.rule in ON_BATTERY}):
        left = [b.battery_s for b in status.backup if b.battery_s is not None]
        runtime = f"{min(left) / 60:.1f} min of battery left" if left else "battery runtime unknown"
        return out | {"state": "on_battery", "state_detail": f"{', '.join(on_battery)}: {runtime}"}
    lost = sorted({f"{a.rule} at {a.labels.get('device') or a.labels.get('rack', '?')}"
                   for a in active if a.rule in REDUNDANCY_LOST})
    lost += [f"{p.id} would not hold {p.worst_failure} failing" for p in status.pools
             if p.left_kw is not None and p.left_kw < 0 and p.worst_failure]
    if lost:
        return out | {"state": "degraded", "state_detail": "; ".join(lost)}
    return out


def alert_counts(alerts: list[Alert]) -> dict[str, Any]:
    """What the status bar says of the alerts: firing critical and warning ones (the
    suppressed counted apart: their cause is), and the worst in words: the most severe, and
    of those the first to fire (in a storm, most likely the cause)."""
    firing = [a for a in alerts if a.state == "firing" and not a.suppressed_by]
    critical = sum(a.severity == "critical" for a in firing)
    worst = min(firing, key=lambda a: (-severity_rank(a.severity), a.starts_at or a.active_since),
                default=None)
    return {"critical": critical, "warning": len(firing) - critical,
            "suppressed": sum(a.suppressed_by is not None for a in alerts),
            "worst": f"{worst.severity}: {worst.summary}" if worst else None}


class SiteAPI:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._pue_answers: dict[str, tuple[float, dict[str, Any]]] = {}  # window: (when, body)
        self._pue_locks = {window: threading.Lock() for window in PUE_WINDOWS_S}

    def _reader(self) -> Callable[[str, str], float | None]:
        """value(device, series key): its latest good value now, None when unknown (never
        read, bad, or stale: a dark device's last reading is not shown as current)."""
        latest = self.runtime.fresh_latest(time.time())

        def value(device: str, key: str) -> float | None:
            sample = latest.get((device, key))
            return num(sample.value) if sample is not None and sample.good else None

        return value

    @property
    def site_name(self) -> str:
        return self.runtime.site.site

    def site(self) -> dict[str, Any]:
        s, alerts = self.runtime.view.status, self.runtime.view.alerts  # of one tick
        return {
            "site": self.site_name,
            "pue": s.pue if s else None,
            "pue_category": s.pue_category if s else self.runtime.model.pue_category,
            "pue_target": self.runtime.site.model.pue_target,
            "it_kw": s.it_kw if s else None,
            "facility_kw": s.facility_kw if s else None,
            "cooling_kw": s.cooling_kw if s else None,
            "cooling_ppue": s.cooling_ppue if s else None,
            "power_ppue": s.power_ppue if s else None,
            "conversion_loss_kw": s.conversion_loss_kw if s else None,
            "measured_share": s.measured_share if s else None,
            "unaccounted": s.unaccounted if s else [],
            "pue_at_least": s.pue_at_least if s else None,
            "note": s.note if s else "no model result yet",
            "updated_at": iso(s.updated_at) if s else None,
            "missing": s.missing if s else [],
            "alerts": alert_counts(alerts),
        } | site_state(s, alerts, time.time(), self.runtime.site.model.tick_s)

    def racks(self) -> list[dict[str, Any]]:
        s = self.runtime.status
        return [rack_json(r) for r in s.racks] if s else []

    def rack_headroom(self, rack_id: str) -> dict[str, Any] | None:
        """One rack, every limit with its value, and the shared pools it draws on."""
        s = self.runtime.status
        rack = next((r for r in s.racks if r.id == rack_id), None) if s else None
        if rack is None:
            return None
        return rack_json(rack) | {"pools": [pool_json(p) for p in s.pools if rack_id in p.racks]}

    def rack_detail(self, rack_id: str) -> dict[str, Any] | None:
        """A rack's headroom with what the rack page shows beside it: each feed's power and
        phase currents against its breaker, liquid and air heat, and the devices it depends
        on with their state; ``missing`` names the measurements of those devices that the
        model lacked (why a limit is unknown)."""
        out = self.rack_headroom(rack_id)
        if out is None:
            return None
        graph, health, value = self.runtime.topology, self.runtime.health, self._reader()
        rack = graph.rack_by_id[rack_id]

        feeds = []
        for side, pdu_id in (("A", rack.feed_a), ("B", rack.feed_b)):
            if pdu_id is None:
                continue
            pdu = graph.device_by_id[pdu_id]
            phases = ((1,) if pdu.phases in (1, "dc") else (1, 2, 3))
            feeds.append({
                "side": side, "pdu": pdu_id, "upstream": pdu.upstream,
                "power_kw": value(pdu_id, "power_kw"),
                "breaker_a": pdu.breaker_a,
                "continuous_a": pdu.breaker_a * pdu.continuous_derating,
                "phase_current_a": {str(n): value(pdu_id, PHASE_CURRENT[n - 1]) for n in phases},
            })
        power_kw = out["power_kw"]
        liquid_kw = None if power_kw is None else power_kw * rack.capture_ratio
        depends = [f["pdu"] for f in feeds] + sorted({f["upstream"] for f in feeds})
        depends += graph.cdus_of_loop.get(rack.loop or "", [])
        depends += [d for d in (rack.supercap, rack.manifold and rack.manifold.meter) if d]
        s = self.runtime.status
        return out | {
            "position": rack.position, "loop": rack.loop, "feeds": feeds,
            "liquid_heat_kw": num(liquid_kw),
            "air_heat_kw": None if liquid_kw is None else num(power_kw - liquid_kw),
            "devices": [{"id": d, "kind": health[d].kind, "state": health[d].state}
                        for d in depends],
            "missing": [m for m in (s.missing if s else []) if m.split(".")[0] in depends],
        }

    def cooling(self) -> list[dict[str, Any]]:
        """Each loop (its pool: capacity with its redundancy kept, heat, supply against its
        ASHRAE class) with its CDUs: what they read now against their envelope, and the heat
        each carries against what it can."""
        s, graph, value = self.runtime.status, self.runtime.topology, self._reader()
        by_cdu = {c.id: c for c in s.cdus} if s else {}
        pools = {p.id: pool_json(p) for p in s.pools if p.kind == "loop"} if s else {}

        out = []
        for lp in self.runtime.site.loops:
            cdus = []
            for cdu_id in lp.cdus:
                c, model = graph.device_by_id[cdu_id], by_cdu.get(cdu_id)
                cdus.append({
                    "id": cdu_id, "state": self.runtime.health[cdu_id].state,
                    **{k: value(cdu_id, k) for k in CDU_READINGS},
                    "max_flow_lpm": c.max_flow_lpm, "min_flow_lpm": c.min_flow_lpm,
                    "max_dp_kpa": c.max_dp_kpa, "pumps": c.pumps,
                    "pumps_required": c.pumps_required, "rated_kw": c.rated_kw,
                    "capacity_kw": model.capacity_kw if model else None,
                    "heat_kw": model.heat_kw if model else None,
                })
            out.append({"id": lp.id, "redundancy": lp.redundancy, "fluid": lp.fluid,
                        "ashrae_class": lp.ashrae_class, "pool": pools.get(lp.id),
                        "cdus": cdus})
        return out

    def power(self, row: str | None = None) -> dict[str, Any]:
        """The power chain as it runs now: each rectifier and UPS (input, output, loss,
        modules, battery), the kW it sends to each row through its PDUs (unknown when one of
        them is), and each supercap's state of charge beside its ride-through. With ``row``,
        that row's PDUs one by one instead (``pdus``: each one's source, rack and kW)."""
        site, graph, value = self.runtime.site, self.runtime.topology, self._reader()
        s = self.runtime.status
        pools = {p.id: p for p in s.pools} if s else {}

        sources = []
        for d in site.devices_of("rectifier") + site.devices_of("ups"):
            out_kw, in_kw = value(d.id, "output_power_kw"), value(d.id, "input_power_kw")
            on_battery = (value(d.id, "on_battery") if d.kind == "ups" else
                          None if (a := value(d.id, "battery_current_a")) is None else a > 0)
            pool = pools.get(d.id)
            sources.append({
                "id": d.id, "kind": d.kind, "state": self.runtime.health[d.id].state,
                "rating_kw": d.rating_kw, "redundancy": d.redundancy,
                "output_kw": out_kw, "input_kw": in_kw,
                "loss_kw": None if None in (out_kw, in_kw) else num(in_kw - out_kw),
                "modules": d.modules, "modules_ok": value(d.id, "modules_ok"),
                "module_kw": d.module_kw, "capacity_kw": pool.capacity_kw if pool else None,
                "on_battery": None if on_battery is None else bool(on_battery),
                "runtime_min": value(d.id, "runtime_min"),
            })
        flows: dict[tuple[str, str], float | None] = {}
        pdus = []
        for pdu in site.devices_of("pdu"):
            rack = graph.rack_of_pdu.get(pdu.id)
            if rack is None:
                continue
            key, kw = (pdu.upstream, rack.row), value(pdu.id, "power_kw")
            if rack.row == row:
                pdus.append({"id": pdu.id, "source": pdu.upstream, "rack": rack.id,
                             "kw": num(kw)})
                continue
            so_far = flows.get(key, 0.0)
            flows[key] = None if kw is None or so_far is None else so_far + kw
        backup = {b.supercap: b for b in s.backup} if s else {}

        def chain(supercap: str) -> dict[str, Any]:
            b = backup.get(supercap)
            return {k: getattr(b, k) if b else None for k in BACKUP_SHOWN}

        return {
            "sources": sources,
            "flows": [{"source": src, "row": to_row, "kw": num(kw)}
                      for (src, to_row), kw in sorted(flows.items())],
            "pdus": pdus,
            "supercaps": [{"id": sc.id, "soc_pct": value(sc.id, "soc_pct"),
                           "state": self.runtime.health[sc.id].state} | chain(sc.id)
                          for sc in site.devices_of("supercap")],
            "generator_start_s": site.model.generator_start_s + site.model.transfer_s,
        }

    def pools(self) -> list[dict[str, Any]]:
        """Every shared pool, for the console: without the ids of the racks behind each, which
        are every rack of the site three times over, for no column of a page."""
        s = self.runtime.status
        return [pool_json(p, with_racks=False) for p in s.pools] if s else []

    def headroom(self, row: str | None = None, min_kw: float | None = None,
                 with_racks: bool = True) -> dict[str, Any]:
        """Racks (of a row) with at least ``min_kw`` of headroom, and every shared pool (with
        the ids of its racks unless not ``with_racks``): the per-rack figures of a shared pool
        must not be added up."""
        s = self.runtime.status
        racks = [
            r for r in (s.racks if s else [])
            if (row is None or r.row == row)
            and (min_kw is None or (r.headroom_kw is not None and r.headroom_kw >= min_kw))
        ]
        return {"racks": [rack_json(r) for r in racks],
                "pools": [pool_json(p, with_racks) for p in s.pools] if s else [],  # same tick
                "updated_at": iso(s.updated_at) if s else None}

    def what_if(self, question: Any) -> dict[str, Any]:
        """A what-if, as a mapping of ``WhatIfQuestion``'s fields (a request body, the Dash
        form); ValueError with one line when it is not a question the model can answer."""
        try:
            q = WhatIfQuestion.model_validate({} if question is None else question)
        except ValidationError as e:
            raise ValueError(one_line(e)) from None
        s = self.runtime.status
        if s is None:
            raise ValueError("no model result yet: wait for the first model tick")
        w = what_if(self.runtime.model, s, q.row, q.racks, q.kw, q.capture, q.feed_kw, q.air_kw)
        return what_if_json(w)

    def interval_pue(self, window: str) -> dict[str, Any]:
        """PUE over a window from energy (ISO/IEC 30134-2), as _interval_pue reads it; an
        answer less than INTERVAL_PUE_REUSE_S old is given again (``to`` says when it was
        read), and callers at once wait for one read."""
        if window not in PUE_WINDOWS_S:
            raise ValueError(f"window: expected one of {', '.join(PUE_WINDOWS_S)}")
        with self._pue_locks[window]:
            read_at, body = self._pue_answers.get(window, (-math.inf, {}))
            if time.monotonic() - read_at >= INTERVAL_PUE_REUSE_S:
                body = self._interval_pue(window)
                self._pue_answers[window] = (time.monotonic(), body)
            return body

    def _interval_pue(self, window: str) -> dict[str, Any]:
        """PUE over a window from energy (ISO/IEC 30134-2): the growth of the facility meter's
        and every IT PDU's kWh counter (resets handled), read from the store.

        Each counter is read at the end of every COUNTER_READ_EVERY_S period from the one
        before the window (its maximum in the period: its last reading, or the last before a
        reset, after which it counts from zero). A counter first read inside the window (a
        store or a device newer than the window) starts from its first period's minimum: a
        reset in that period would be counted whole."""
        site, store = self.runtime.site, self.runtime.store
        end, every_s = time.time(), COUNTER_READ_EVERY_S[window]
        start = (end - PUE_WINDOWS_S[window]) // every_s * every_s
        model = self.runtime.model
        missing: list[str] = []

        def energy_kwh(measurement: str, devices: list[str | None]) -> float:
            def read(since: float, aggregate: Aggregate) -> dict[str | None, list[tuple]]:
                return {s.tags.get("device"): s.points for s in store.history(
                    measurement, "energy_kwh", since, end, every_s=every_s, aggregate=aggregate)}

            devices = [d for d in devices if d]
            ends = read(start - every_s, "max")
            new = {d for d in devices if not ends.get(d) or ends[d][0][0] >= start}
            firsts = read(start, "min") if new else {}

            def readings_of(d: str) -> list[float]:
                head = firsts.get(d, [])[:1] if d in new else []
                return [v for _, v in head + ends.get(d, [])]

            readings = [readings_of(d) for d in devices]
            padded = np.full((len(devices), max(map(len, readings), default=0) + 1), np.nan)
            for row, got in zip(padded, readings):  # NaN past its readings: skipped
                row[:len(got)] = got
            kwh = np.atleast_1d(pue_model.energy_kwh_from_counter(padded))
            missing.extend(f"{d}.energy_kwh" for d, e in zip(devices, kwh) if math.isnan(e))
            return float(kwh.sum())

        it_devices = [f for f in (*model.feed_a, *model.feed_b) if f]
        it_kwh = energy_kwh("pdu", it_devices)
        facility_kwh = energy_kwh("meter", model.facility_meters)
        cooling_kwh = energy_kwh("meter", model.cooling_meters) if model.cooling_meters else math.nan
        # each counter is read to one step of its register: until the energy counted dwarfs
        # those steps, the ratio says more about rounding than about the site
        by_id = {d.id: d for d in site.devices}
        it_resolution_kwh = sum(counter_step_kwh(by_id[d]) for d in it_devices)
        settled = it_kwh >= MIN_STEPS_COUNTED * it_resolution_kwh
        note = None if settled or math.isnan(it_kwh) else (
            f"not enough energy counted yet: {it_kwh:.2f} kWh of IT energy against counters "
            f"that step by {it_resolution_kwh:g} kWh in all")
        return {
            "site": site.site, "window": window, "from": iso(start), "to": iso(end),
            "pue": num(pue_model.interval_pue(facility_kwh, it_kwh)) if settled else None,
            "note": note,
            "pue_category": pue_model.pue_category("pdu_output"),  # the PDUs' kWh counters
            "it_kwh": num(it_kwh), "facility_kwh": num(facility_kwh),
            "cooling_ppue": num(pue_model.partial_pue(it_kwh, cooling_kwh)),
            "missing": missing,
        }

    def trend(self, measurement: str, field: str, window_s: float,
              where: dict[str, str] | None = None, points: int = 300,
              end: float | None = None) -> list[Series]:
        """``field`` over ``window_s`` up to ``end`` (now), downsampled by the store to about
        ``points`` means per series (never the raw points read into Python); windows over a
        minute are whole minutes, which the store reads from its rollups."""
        end = time.time() if end is None else end
        return self.runtime.store.history(measurement, field, end - window_s, end, where,
                                          every_s=trend_every_s(window_s, points))

    def trend_subject(self, kind: str, subject: str) -> tuple[str, dict[str, str], list[str]]:
        """Where a trend of the site, a rack or a device is stored: its measurement, the tags
        that select it, and the fields it has (KeyError if the site has no such subject)."""
        graph = self.runtime.topology
        if kind == "site":
            return "site", {}, list(SITE_FIELDS)
        if kind == "rack":
            if subject not in graph.rack_by_id:
                raise KeyError(subject)
            return "rack", {"rack": subject}, list(RACK_FIELDS)
        from collectors.profiles import load_profile

        device = graph.device_by_id[subject]
        fields = sorted({p.metric for p in load_profile(device.profile).points})
        return device.kind, {"device": subject}, fields

    def backup(self) -> list[dict[str, Any]]:
        s = self.runtime.status
        return [asdict(b) for b in s.backup] if s else []

    def acknowledge(self, fingerprint: str, by: str) -> dict[str, Any]:
        """Acknowledge an active alert (runs on the runtime's loop, which owns the state)."""
        return alert_json(self.runtime.call_soon(self.runtime.acknowledge, fingerprint, by))

    def silences(self) -> list[dict[str, Any]]:
        now = time.time()  # as of the last tick (or change): read on the runtime's thread
        return [silence_json(s, now) for s in self.runtime.silences.listed]

    def add_silence(self, matchers: list[str], duration_s: float, created_by: str, comment: str,
                    starts_at: float | None = None) -> dict[str, Any]:
        """A new silence from ``starts_at`` (default now) for ``duration_s`` (ValueError with
        one line on a bad matcher or time)."""
        now = time.time()
        parsed = [parse_matcher(m) for m in matchers]
        start = now if starts_at is None else starts_at
        s = self.runtime.call_soon(self.runtime.silences.add, parsed, start, start + duration_s,
                                   created_by, comment, now)  # fmt: skip
        log.info("event=silence_added id=%s by=%s matchers=%s ends_at=%s", s.id, created_by,
                 ",".join(matchers), iso(s.ends_at))  # fmt: skip
        return silence_json(s, now)

    def expire_silence(self, silence_id: str, by: str) -> dict[str, Any]:
        """End a silence now; KeyError if unknown or already expired."""
        now = time.time()
        s = self.runtime.call_soon(self.runtime.silences.expire, silence_id, by, now)
        log.info("event=silence_expired id=%s by=%s", silence_id, by)
        return silence_json(s, now)

    def devices(self) -> list[dict[str, Any]]:
        return [device_json(h) for h in self.runtime.health.values()]

    def devices_up(self) -> tuple[int, int]:
        """Devices whose last poll reached them, of all."""
        health = self.runtime.health.values()
        return sum(h.state in REACHABLE for h in health), len(health)

    def device_readings(self, device_id: str) -> list[dict[str, Any]] | None:
        """Every series of one device as last read: ``value`` when good, ``read_value``
        whatever its quality (a sentinel, an out-of-range reading), the quality (stale when
        not refreshed for 2.5 polls) and when it was read; None for an unknown device."""
        if device_id not in self.runtime.health:
            return None
        latest = self.runtime.fresh_latest(time.time())
        return [reading_json(key, s.value, s.quality) | {"read_at": iso(s.ts)}
                for key in sorted(self.runtime.series_of.get(device_id, ()))
                if (s := latest.get((device_id, key))) is not None]

    def probe(self, device_id: str) -> dict[str, Any] | None:
        """One device read now, as `aidc probe` reads it: each series with what came off
        the wire (``raw``), its value when good and its quality; or the error. None for an
        unknown device; NotAnswering when the runtime is not running."""
        from aidc.runtime import read_deadline_s

        device = self.runtime.topology.device_by_id.get(device_id)
        if device is None:
            return None
        p = self.runtime.call_soon(self.runtime.probe, device_id, timeout_s=read_deadline_s(
            device, self.runtime.site.timeout_s(device)) * 2 + 1)  # a probe of it may be under way
        return {"device": p.device, "read_at": iso(p.at), "elapsed_ms": round(p.elapsed_ms, 1),
                "error": p.error, "readings": [
                    reading_json(r.key, r.value, r.quality)
                    | {"raw": None if r.raw is None else str(r.raw)} for r in p.readings]}

    def alert_history(self, hours: float = 24, limit: int = 500) -> list[dict[str, Any]]:
        """What changed over the last ``hours``, newest first: fired, escalated,
        de-escalated, resolved (repeats left out)."""
        since = time.time() - hours * 3600
        return [with_iso_times(h, ("at", "starts_at"))
                for h in read_history(self.runtime.alerts_db, since, limit)]

    def notifications(self, limit: int = 200) -> list[dict[str, Any]]:
        """Notifications not delivered yet and dead letters, oldest first."""
        from alerts.outbox import read_deliveries  # httpx: not for the CLI's readers

        return [with_iso_times(d, ("created_at", "next_attempt_at"))
                for d in read_deliveries(self.runtime.alerts_db, limit)]

    def alerts(self) -> list[dict[str, Any]]:
        return [alert_json(a) for a in self.runtime.view.alerts]

    def rules(self) -> list[dict[str, Any]]:
        """The site's rules as they run: aidc's pack with the site's changes, and its own."""
        pack = rule_pack()
        return [rule.model_dump(mode="json") | {
            "name": name, "source": "aidc" if name in pack else "site",
            "settings": rule.settings_text(), "runbook": rule.runbook(name, "")} for name, rule in self.runtime.notifier.rules.items()]

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Serving while the model ticks (503 "stalled" when it stops). "degraded" when a
        series the model and its rules need has never once read good since start (after a
        grace of three poll intervals): those rules can neither fire nor clear. Device
        outages are reported, not unhealthy. A collector of a sharded site (no model) is
        healthy while it runs."""
        rt, now = self.runtime, time.time()
        up, total = self.devices_up()
        state = ({"status": "ok", "shard": "{}/{}".format(*rt.shard)} if rt.role == "collect"
                 else self._ticking(now))
        if rt.role == "core":  # the samples it models come from the store
            read_at, failed_at, error = rt.store_read
            state |= {"store_read_at": iso(read_at), "store_read_failed_at": iso(failed_at),
                      "store_read_error": error}
        return state["status"] != "stalled", {"role": rt.role} | state | {
            "devices_up": up,
            "devices_total": total,
            "store_up": rt.writer.store_up,
            "store_error": rt.writer.store_error or None,
            "spooled_samples": rt.writer.spooled_samples(),
            "store_behind_s": round(rt.store_behind_s(now), 1),
            "dropped_samples": rt.writer.dropped_samples,
            "rejected_samples": rt.writer.rejected_samples,
        }

    def _ticking(self, now: float) -> dict[str, Any]:
        rt = self.runtime
        tick_age = now - rt.status.updated_at if rt.status else now - rt.started_at
        ok = tick_age < 3 * rt.site.model.tick_s + 5
        grace_s = 3 * max(rt.site.poll_s(d) + rt.site.timeout_s(d) for d in rt.site.devices)
        never = [m for m in (rt.status.missing if rt.status else [])
                 if tuple(m.split(".", 1)) not in rt.ever_good] if now - rt.started_at > grace_s else []
        return {"status": "stalled" if not ok else "degraded" if never else "ok",
                "inputs_never_read": never[:20], "last_tick_age_s": round(tick_age, 2)}

    def metrics(self, accept: str = "") -> tuple[bytes, str]:
        """aidc's own health for Prometheus, and its content type."""
        from aidc.prometheus import exposition

        return exposition(self.runtime, accept)
