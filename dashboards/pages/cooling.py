"""Cooling: each liquid loop and its CDUs: supply and return against the loop's ASHRAE
class limit, flow against the CDU's maximum, dP, pumps running against those required, heat
carried against capacity with the loop's redundancy kept, and leaks."""

from __future__ import annotations

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from aidc.api import SiteAPI
from aidc.auth import Auth
from dashboards.widgets import GREY, NOTE, RED, UNKNOWN, fmt, table, titled_axis

# the supply the loop's ASHRAE class is checked on (loops.class_checked_on)
CLASS_ON = {"facility_supply": "facility_supply_temp_c", "technology_supply": "supply_temp_c",
            None: "supply_temp_c"}
COLUMNS = [("CDU", "id"), ("State", "state"), ("Supply (°C)", "supply_temp_c"),
           ("Return (°C)", "return_temp_c"), ("Facility supply (°C)", "facility_supply_temp_c"),
           ("Flow (L/min)", "flow"), ("dP (kPa)", "dp"), ("Pumps running", "pumps"),
           ("Heat (kW)", "heat"), ("Leak", "leak")]


def layout(api: SiteAPI) -> html.Div:
    return html.Div([
        html.Div("A supply above the loop's class limit, a flow under the CDU's minimum, a dP "
                 "over its maximum, fewer pumps than required or a leak is shown red.",
                 style=NOTE),
        html.Div(id="cooling-loops"),
    ])


def loop_summary(loop: dict) -> str:
    p = loop["pool"] or {}
    return (f"{loop['id']}: {loop['fluid']}, class {loop['ashrae_class']} (supply limit "
            f"{fmt(p.get('supply_limit_c'))} °C on the "
            f"{(p.get('supply_compared') or 'supply').replace('_', ' ')}), "
            f"{loop['redundancy']}; heat {fmt(p.get('load_kw'))} kW of "
            f"{fmt(p.get('capacity_kw'))} kW with its redundancy kept, "
            f"{fmt(p.get('left_kw'))} kW left")


def cdu_rows(loop: dict) -> list[dict]:
    """Each CDU's readings against its envelope, in words a table can hold; ``alarm`` lists
    the columns out of it."""
    def of(value, limit, unit="") -> str:
        return fmt(value) + ("" if limit is None else f" of {limit:g}{unit}")

    pool = loop["pool"] or {}
    limit, compared = pool.get("supply_limit_c"), CLASS_ON[pool.get("supply_compared")]
    rows = []
    for c in loop["cdus"]:
        alarm = []
        if None not in (c[compared], limit) and c[compared] > limit:
            alarm.append(compared)
        if None not in (c["flow_lpm"], c["min_flow_lpm"]) and c["flow_lpm"] < c["min_flow_lpm"]:
            alarm.append("flow")
        if None not in (c["dp_kpa"], c["max_dp_kpa"]) and c["dp_kpa"] > c["max_dp_kpa"]:
            alarm.append("dp")
        if c["pumps_running"] is not None and c["pumps_running"] < c["pumps_required"]:
            alarm.append("pumps")
        if c["leak"]:
            alarm.append("leak")
        rows.append({
            "id": c["id"], "state": c["state"], "supply_temp_c": fmt(c["supply_temp_c"]),
            "return_temp_c": fmt(c["return_temp_c"]),
            "facility_supply_temp_c": fmt(c["facility_supply_temp_c"]),
            "flow": of(c["flow_lpm"], c["max_flow_lpm"]), "dp": of(c["dp_kpa"], c["max_dp_kpa"]),
            "pumps": (f"{UNKNOWN if c['pumps_running'] is None else int(c['pumps_running'])} "
                      f"of {c['pumps']} ({c['pumps_required']} required)"),
            "heat": f"{fmt(c['heat_kw'])} of {fmt(c['capacity_kw'])} usable",
            "leak": UNKNOWN if c["leak"] is None else "LEAK" if c["leak"] else "dry",
            "alarm": " ".join(alarm),
        })
    return rows


TEMPERATURES = (("facility supply °C", "facility_supply_temp_c", "#54aeff"),
                ("supply °C", "supply_temp_c", "#0969da"), ("return °C", "return_temp_c", "#bf3989"))


def temperature_figure(loop: dict) -> go.Figure:
    """Each CDU's temperatures against the loop's class limit; one not read is a grey
    hatched bar labelled unknown (as high as the tallest read, or the limit), not a gap."""
    cdus, pool = loop["cdus"], loop["pool"] or {}
    ids = [c["id"] for c in cdus]
    limit = pool.get("supply_limit_c")
    read = [c[key] for c in cdus for _, key, _ in TEMPERATURES if c[key] is not None]
    unknown_c = max(read, default=limit or 1.0)

    def bar(name: str, key: str, colour: str) -> go.Bar:
        values = [c[key] for c in cdus]
        return go.Bar(name=name, x=ids, y=[unknown_c if v is None else v for v in values],
                      text=[UNKNOWN if v is None else "" for v in values], textposition="inside",
                      customdata=[UNKNOWN if v is None else f"{v:.1f} °C" for v in values],
                      hovertemplate=f"%{{x}} {name.removesuffix(' °C')}: %{{customdata}}<extra></extra>",
                      marker={"color": [GREY if v is None else colour for v in values],
                              "pattern": {"shape": ["/" if v is None else "" for v in values]}})

    fig = go.Figure([bar(*t) for t in TEMPERATURES])
    if limit is not None:
        on = (pool.get("supply_compared") or "supply").replace("_", " ")
        fig.add_hline(y=limit, line_color=RED, line_dash="dot",
                      annotation_text=f"class {loop['ashrae_class']} limit on {on}: {limit:g} °C")
    fig.update_layout(barmode="group", margin={"l": 40, "r": 10, "t": 10, "b": 30},
                      yaxis=titled_axis("°C"), legend={"orientation": "h"}, height=240)
    return fig


def loop_block(loop: dict) -> html.Div:
    red = [{"if": {"filter_query": f'{{alarm}} contains "{col}"', "column_id": col},
            "color": RED, "fontWeight": 600}
           for col in ("facility_supply_temp_c", "supply_temp_c", "flow", "dp", "pumps", "leak")]
    return html.Div([
        html.H3(loop_summary(loop), className="loop-summary"),
        table(f"cdus-{loop['id']}", COLUMNS, style_data_conditional=red,
              data=cdu_rows(loop)),
        dcc.Graph(figure=temperature_figure(loop), config={"displayModeBar": False}),
    ])


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    @app.callback(Output("cooling-loops", "children"), Input("refresh", "n_intervals"))
    def refresh(_n):
        loops = api.cooling()
        return [loop_block(lp) for lp in loops] or html.Div("No liquid loops in this site.")
