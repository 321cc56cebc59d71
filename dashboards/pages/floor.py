"""Floor: each room as a grid of its racks in their rows and positions, coloured by a
chosen metric; a rack whose value is unknown is grey and says so; clicking a rack opens
its page. One heatmap per room, so that 2,000 racks draw as fast as 20."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from dash import Dash, Input, Output, dcc, html, no_update
from plotly.subplots import make_subplots

from aidc.api import SiteAPI
from aidc.auth import Auth
from aidc.core.config import Site
from aidc.core.topology import Topology
from alerts.evaluate import severity_rank
from dashboards.widgets import (
    AMBER,
    GREEN,
    GREY,
    NOTE,
    RED,
    UNKNOWN,
    inexact_words,
    titled_axis,
)
from models.headroom import LIMITS

# metric -> (label, unit); the categorical ones colour by category
METRICS = {"headroom_kw": ("Headroom", "kW"), "power_kw": ("Power", "kW"),
           "pct_design": ("Power, % of design", "%"), "liquid_kw": ("Liquid heat", "kW"),
           "limiting": ("Binding limit", ""), "alert": ("Alert state", "")}
CATEGORIES = {
    "limiting": dict(zip([*LIMITS, "none"], ["#0969da", "#8250df", "#bf3989", "#cf222e",
                                             "#1a7f37", "#0a3069", "#bf8700", "#953800",
                                             "#6e7781"])),
    "alert": {"critical": RED, "warning": AMBER, "pending": "#d4a72c", "suppressed": "#afb8c1",
              "none": GREEN},
}
SCALES = {"headroom_kw": "RdYlGn", "power_kw": "Blues", "pct_design": "YlOrRd",
          "liquid_kw": "Blues"}
CELL_LABELS_UP_TO = 400  # rack ids written in the cells of a room this small; hover beyond


@dataclass(frozen=True)
class RoomPlan:
    id: str
    title: str
    rows: list[str]
    slots: int
    cells: list[tuple[str, int, int]]  # (rack, row index, slot index), both from 0


def floor_plan(site: Site) -> list[RoomPlan]:
    """Where each rack stands: its row (in the room's order, or sorted) and its position (or
    its order among its row's racks in the file, after the positioned ones)."""
    plans = []
    for room in site.rooms:
        racks = [r for r in site.racks if r.room == room.id]
        rows = room.rows or sorted({r.row for r in racks})
        row_index = {row: i for i, row in enumerate(rows)}
        taken = {(r.row, r.position) for r in racks if r.position}
        next_free: dict[str, int] = {}
        cells = []
        for r in racks:
            slot = r.position
            if slot is None:
                slot = next_free.get(r.row, 1)
                while (r.row, slot) in taken:
                    slot += 1
                taken.add((r.row, slot))
                next_free[r.row] = slot + 1
            cells.append((r.id, row_index[r.row], slot - 1))
        slots = max((c[2] for c in cells), default=0) + 1
        plans.append(RoomPlan(room.id, room.name or room.id, rows, slots, cells))
    return plans


def rack_alert_state(alerts: list[dict], graph: Topology) -> dict[str, str]:
    """The worst alert touching each rack (its own, or of a device or loop it depends on):
    critical, warning, pending, or suppressed when every one is."""
    worst: dict[str, tuple[int, str]] = {}
    for a in alerts:
        racks, _ = graph.affected(a["labels"])
        if a["state"] == "firing":
            rank, state = 3 + severity_rank(a["severity"]), a["severity"]
        else:
            rank, state = (2, "pending") if a["state"] == "pending" else (1, "suppressed")
        for r in racks:
            if rank > worst.get(r, (0, ""))[0]:
                worst[r] = (rank, state)
    return {r: state for r, (_, state) in worst.items()}


def rack_values(racks: list[dict], capture: dict[str, float], alert_state: dict[str, str],
                metric: str) -> dict[str, float | str | None]:
    """Each rack's value of ``metric``; None when unknown."""
    def value(r: dict):
        kw = r["power_kw"]
        if metric == "pct_design":
            return None if kw is None else 100 * kw / r["design_kw"]
        if metric == "liquid_kw":
            return None if kw is None else kw * capture[r["id"]]
        if metric == "limiting":
            return None if r["limiting"] == UNKNOWN else r["limiting"]
        if metric == "alert":
            return alert_state.get(r["id"], "none")
        if metric == "headroom_kw" and not r["complete"]:  # an upper bound: known only
            return r[metric] if r[metric] is not None and r[metric] < 0 else None  # if over
        return r[metric]

    return {r["id"]: value(r) for r in racks}


def floor_layout(plans: list[RoomPlan]) -> dict:
    """The rooms' grids one above the other, made once: plotly's figure objects took 70 ms
    a refresh at 2,000 racks, most of the floor callback's time."""
    fig = make_subplots(rows=len(plans), cols=1, subplot_titles=[p.title for p in plans],
                        vertical_spacing=0.08 / max(len(plans), 1),
                        row_heights=[len(p.rows) + 1 for p in plans])
    for k, plan in enumerate(plans, start=1):
        fig.update_yaxes(autorange="reversed", type="category", row=k, col=1)
        fig.update_xaxes(titled_axis("position"), dtick=1 if plan.slots <= 40 else None,
                         row=k, col=1)
    fig.update_layout(margin={"l": 40, "r": 10, "t": 30, "b": 30}, plot_bgcolor="#ffffff",
                      legend={"orientation": "h"},
                      height=sum(40 + 28 * len(p.rows) for p in plans) + 80)
    return fig.to_plotly_json()["layout"]


def floor_figure(plans: list[RoomPlan], racks: list[dict], values: dict, metric: str,
                 layout: dict | None = None) -> dict:
    """The figure as plotly's JSON (what dcc.Graph takes), on ``layout`` (floor_layout's)."""
    label, unit = METRICS[metric]
    categories = CATEGORIES.get(metric)
    by_id = {r["id"]: r for r in racks}
    known = [v for v in values.values() if v is not None]
    if categories is None:
        zmin = min(0.0, *known) if known else 0.0
        zmax = max(known, default=1.0) if metric != "pct_design" else max(100.0, *known)
        scale = SCALES[metric]
    else:
        codes = {c: i for i, c in enumerate(categories)}
        zmin, zmax = -0.5, len(categories) - 0.5
        scale = [[i / len(categories) + d / len(categories), colour]
                 for i, colour in enumerate(categories.values()) for d in (0, 1)]
    data = []
    for k, plan in enumerate(plans, start=1):
        shape = (len(plan.rows), plan.slots)
        z, grey = np.full(shape, np.nan), np.full(shape, np.nan)
        ids = np.full(shape, None, dtype=object)
        hover = np.full(shape, None, dtype=object)  # each cell's, in the trace that draws it
        hover_grey = np.full(shape, None, dtype=object)
        for rack, i, j in plan.cells:
            v, r = values.get(rack), by_id.get(rack)
            ids[i, j] = rack
            if v is None:
                grey[i, j] = 0
                hover_grey[i, j] = _hover(rack, r, label, unit, v)
            else:
                z[i, j] = codes[v] if categories else v
                hover[i, j] = _hover(rack, r, label, unit, v)
        show_ids = len(plan.cells) <= CELL_LABELS_UP_TO
        common = {"type": "heatmap", "x": list(range(1, plan.slots + 1)), "y": plan.rows,
                  "xaxis": f"x{k}" if k > 1 else "x", "yaxis": f"y{k}" if k > 1 else "y",
                  "customdata": ids.tolist(), "hoverinfo": "text", "hoverongaps": False,
                  "xgap": 2, "ygap": 2}
        if show_ids:
            common |= {"text": ids.tolist(), "texttemplate": "%{text}"}
        data.append(common | {"z": z, "zmin": zmin, "zmax": zmax, "colorscale": scale,
                              "hovertext": hover.tolist(),
                              "showscale": categories is None and k == 1,
                              "colorbar": {"title": {"text": unit or label}}})
        data.append(common | {"z": grey, "colorscale": [[0, GREY], [1, GREY]],
                              "showscale": False, "hovertext": hover_grey.tolist(),
                              "name": UNKNOWN})
    if categories:  # the categories as a legend of coloured squares
        data += [{"type": "scatter", "x": [None], "y": [None], "mode": "markers", "name": name,
                  "marker": {"color": colour, "symbol": "square", "size": 12}}
                 for name, colour in categories.items()]
    layout = layout or floor_layout(plans)
    return {"data": data, "layout": layout | {"showlegend": bool(categories)}}


def _hover(rack: str, r: dict | None, label: str, unit: str, value) -> str:
    if r is None:
        return rack
    shown = (f"{UNKNOWN}" if value is None else value if isinstance(value, str)
             else f"{value:,.1f} {unit}")
    kw = "unknown" if r["power_kw"] is None else f"{r['power_kw']:,.1f} kW"
    h = r["headroom_kw"]
    if h is None or not r["complete"]:
        room = inexact_words(r)
    elif math.isfinite(h):
        room = f"{h:,.1f} kW ({r['limiting']})"
    else:
        room = "no limit applies"
    return (f"<b>{rack}</b> row {r['row']}<br>{label}: {shown}<br>power {kw} of "
            f"{r['design_kw']:g} kW design<br>headroom {room}")


def layout(api: SiteAPI) -> html.Div:
    return html.Div([
        html.Label(["Colour racks by ",
                    dcc.Dropdown({k: label for k, (label, _) in METRICS.items()}, "headroom_kw",
                                 id="floor-metric", clearable=False,
                                 style={"width": "220px", "display": "inline-block",
                                        "verticalAlign": "middle"})]),
        html.Div("Grey: unknown (a measurement is missing; hover names the rack). "
                 "Click a rack to open its page.", style=NOTE),
        dcc.Graph(id="floor-map", config={"displayModeBar": False}),
    ])


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    site, graph = api.runtime.site, api.runtime.topology
    plans = floor_plan(site)
    plan_layout = floor_layout(plans)
    capture = {r.id: r.capture_ratio for r in site.racks}

    @app.callback(Output("floor-map", "figure"), Input("refresh", "n_intervals"),
                  Input("floor-metric", "value"))
    def refresh(_n, metric):
        if not isinstance(metric, str) or metric not in METRICS:
            return no_update
        racks = api.racks()
        alert_state = rack_alert_state(api.alerts(), graph) if metric == "alert" else {}
        return floor_figure(plans, racks, rack_values(racks, capture, alert_state, metric),
                            metric, plan_layout)

    @app.callback(Output("url", "pathname", allow_duplicate=True),
                  Input("floor-map", "clickData"), prevent_initial_call=True)
    def open_rack(click):
        try:
            rack = click["points"][0]["customdata"]
        except (TypeError, KeyError, IndexError):
            return no_update
        return f"/rack/{rack}" if isinstance(rack, str) and rack in capture else no_update
