"""A Grafana dashboard for a site's InfluxDB store (`aidc export grafana`), so that a site that
runs Grafana keeps its own screens on aidc's data.

The queries are InfluxQL on aidc's schema: one measurement per device kind (`pdu`, `cdu`,
`rectifier`, `ups`, `supercap`, `meter`) and for the model's results (`site`, `room`,
`rack`), tags `site`, `room`, `row`, `rack` and `device`, one field per canonical metric with
its unit in its name. A value read bad is stored as `<metric>_quality`, never as a number, so
panels show gaps where aidc knows nothing. Import with the InfluxDB data source chosen at
import (`${DS_AIDC}`); `$room` and `$row` narrow the rack panels.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aidc.core.config import Site

DATASOURCE = {"type": "influxdb", "uid": "${DS_AIDC}"}
WIDTH = 24  # Grafana's grid

# Grafana unit ids for aidc's metric suffixes
UNITS = {"_kw": "kwatt", "_c": "celsius", "_kpa": "pressurekpa", "_v": "volt", "_min": "m",
         "_pct": "percent"}  # Grafana has no L/min: flow panels say it in their title


def unit_of(metric: str) -> str:
    return next((u for suffix, u in UNITS.items() if metric.endswith(suffix)), "none")


def _query(select: str, measurement: str, where: str = "", group: str = "") -> str:
    condition = " AND ".join(filter(None, ["$timeFilter", where]))
    return (f'SELECT {select} FROM "{measurement}" WHERE {condition} '
            f"GROUP BY time($__interval){group} fill(null)")


RACKS_SHOWN = '"room" =~ /^$room$/ AND "row" =~ /^$row$/'

# (title, measurement, field, per device/rack/nothing, how it is reduced in a time bucket)
TRENDS = [
    ("PUE", "site", "pue", None, "mean"),
    ("IT power", "site", "it_kw", None, "mean"),
    ("Facility power", "site", "facility_kw", None, "mean"),
    ("Cooling power", "site", "cooling_kw", None, "mean"),
    ("Conversion loss", "site", "conversion_loss_kw", None, "mean"),
    ("Rack power", "rack", "power_kw", "rack", "mean"),
    ("Rack headroom", "rack", "headroom_kw", "rack", "min"),
    ("CDU supply temperature", "cdu", "supply_temp_c", "device", "max"),
    ("CDU return temperature", "cdu", "return_temp_c", "device", "max"),
    ("CDU flow (L/min)", "cdu", "flow_lpm", "device", "min"),
    ("Rectifier output", "rectifier", "output_power_kw", "device", "mean"),
    ("UPS output", "ups", "output_power_kw", "device", "mean"),
    ("UPS battery runtime left", "ups", "runtime_min", "device", "min"),
    ("Supercap voltage", "supercap", "voltage_v", "device", "min"),
]
STATS = [("PUE now", "pue"), ("IT kW", "it_kw"), ("Facility kW", "facility_kw"),
         ("Cooling kW", "cooling_kw")]


def dashboard(site: Site) -> dict[str, Any]:
    """The dashboard JSON, in Grafana's import format (``__inputs`` names the data source)."""
    panels: list[dict[str, Any]] = []
    x = y = row_h = 0

    def add(panel: dict[str, Any], width: int, height: int) -> None:
        """Left to right, a new row when the grid's width is used."""
        nonlocal x, y, row_h
        if x + width > WIDTH:
            x, y, row_h = 0, y + row_h, 0
        panels.append(panel | {"id": len(panels) + 1, "datasource": DATASOURCE,
                               "gridPos": {"x": x, "y": y, "w": width, "h": height}})
        x, row_h = x + width, max(row_h, height)

    for title, field in STATS:
        add({"type": "stat", "title": title,
             "targets": [_target(f'SELECT last("{field}") FROM "site" WHERE $timeFilter')],
             "fieldConfig": {"defaults": {"unit": unit_of(field), "decimals": 2}}}, 6, 4)
    for title, measurement, field, per, reduce in TRENDS:
        where = RACKS_SHOWN if measurement == "rack" else ""
        group = f', "{per}"' if per else ""
        add({"type": "timeseries", "title": title,
             "targets": [_target(_query(f'{reduce}("{field}")', measurement, where, group),
                                 alias=f"$tag_{per}" if per else title)],
             "fieldConfig": {"defaults": {"unit": unit_of(field)}}}, 12, 8)
    add({"type": "bargauge", "title": "Least rack headroom (kW, now)",
         "targets": [_target(f'SELECT last("headroom_kw") FROM "rack" WHERE $timeFilter AND '
                             f'{RACKS_SHOWN} GROUP BY "rack"', alias="$tag_rack")],
         "options": {"orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}},
         "fieldConfig": {"defaults": {"unit": "kwatt"}}}, 24, 10)
    return {
        "__inputs": [{"name": "DS_AIDC", "label": "aidc InfluxDB", "type": "datasource",
                      "pluginId": "influxdb", "pluginName": "InfluxDB"}],
        "uid": "aidc-" + hashlib.sha256(site.site.encode()).hexdigest()[:12],
        "title": f"aidc: {site.site}",
        "tags": ["aidc", "dcim"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": f"{max(5, round(site.model.tick_s))}s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            _variable("room", 'SHOW TAG VALUES FROM "rack" WITH KEY = "room"'),
            _variable("row", 'SHOW TAG VALUES FROM "rack" WITH KEY = "row" WHERE "room" =~ /^$room$/'),
        ]},
        "panels": panels,
    }


def _target(query: str, alias: str = "") -> dict[str, Any]:
    return {"refId": "A", "datasource": DATASOURCE, "rawQuery": True, "query": query,
            "resultFormat": "time_series", "alias": alias}


def _variable(name: str, query: str) -> dict[str, Any]:
    return {"name": name, "type": "query", "datasource": DATASOURCE, "query": query,
            "refresh": 1, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}}
