"""Rack: power per feed and phase against the breaker, liquid against air heat, every
headroom limit with the binding one marked and the unknown ones named, the loop, pools and
devices it depends on, and its power and headroom over the last day."""

from __future__ import annotations

import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html

from aidc.api import SiteAPI
from aidc.auth import Auth
from aidc.core.store import StoreUnavailable
from dashboards.widgets import (
    GREY,
    LIMIT_WORDS,
    NOTE,
    RED,
    ROW,
    UNKNOWN,
    fmt,
    graph,
    kpi,
    said,
    table,
    time_figure,
    titled_axis,
)
from models.headroom import LIMITS

DAY_S = 86_400.0


def layout(api: SiteAPI, rack_id: str) -> html.Div:
    if rack_id not in api.runtime.topology.rack_by_id:
        return html.Div(f"No rack {rack_id} in this site.", id="not-found")
    return html.Div([
        dcc.Store(id="rack-id", data=rack_id),
        html.Div(id="rack-where", style=NOTE),
        html.Div([kpi("Power (kW)", "rack-power"), kpi("Peak (kW)", "rack-peak"),
                  kpi("Design (kW)", "rack-design"),
                  kpi("Headroom (kW)", "rack-headroom", "rack-binding"),
                  kpi("Liquid heat (kW)", "rack-liquid"), kpi("Air heat (kW)", "rack-air")],
                 style=ROW),
        html.H3("Headroom by limit"),
        graph("rack-limits", 320),
        html.Div(id="rack-missing", style=NOTE),
        html.H3("Feeds against their breakers"),
        table("rack-feeds", [("Feed", "side"), ("PDU", "pdu"), ("Source", "upstream"),
                             ("Power (kW)", "power_kw"), ("Phase currents (A)", "phases"),
                             ("Continuous limit (A)", "continuous_a"),
                             ("Breaker (A)", "breaker_a")],
              numeric=("power_kw", "continuous_a", "breaker_a"),
              style_data_conditional=[{"if": {"filter_query": '{over} = "yes"',
                                              "column_id": "phases"},
                                       "color": RED, "fontWeight": 600}]),
        html.H3("Devices it depends on"),
        table("rack-devices", [("Device", "id"), ("Kind", "kind"), ("State", "state")],
              style_data_conditional=[{"if": {"filter_query": '{state} != "up"'}, "color": RED}]),
        html.H3("Shared pools it draws on"),
        table("rack-pools", [("Pool", "id"), ("Kind", "kind"), ("Load (kW)", "load_kw"),
                             ("Left after the worst failure (kW)", "left_kw"),
                             ("Worst failure", "worst_failure")],
              numeric=("load_kw", "left_kw")),
        html.H3("Power and headroom, last 24 h"),
        graph("rack-history", 260),
    ])


def limits_figure(rack: dict) -> go.Figure:
    """One bar per limit: kW left under it; the binding one red; an unknown one a grey
    hatched bar the length of the design rating, labelled unknown (never a short bar or a
    zero); a limit that does not apply says so."""
    names, values, colours, texts, patterns = [], [], [], [], []
    for limit in LIMITS:
        names.append(LIMIT_WORDS[limit])
        if limit in rack["limits_kw"]:
            kw = rack["limits_kw"][limit]
            binding = limit == rack["limiting"]
            values.append(kw)
            colours.append(RED if binding else "#0969da")
            texts.append(f"{kw:,.1f} kW" + (" · binding" if binding else ""))
            patterns.append("")
        elif limit in rack["unknown"]:
            values.append(rack["design_kw"])
            colours.append(GREY)
            texts.append(UNKNOWN)
            patterns.append("/")
        else:
            values.append(0)
            colours.append(GREY)
            texts.append("does not apply")
            patterns.append("")
    fig = go.Figure(go.Bar(y=names, x=values, orientation="h", text=texts,
                           textposition="auto", marker={"color": colours,
                                                        "pattern": {"shape": patterns}}))
    fig.update_layout(margin={"l": 10, "r": 10, "t": 10, "b": 30}, xaxis=titled_axis("kW left"),
                      yaxis={"autorange": "reversed"})
    return fig


def feed_rows(feeds: list[dict]) -> list[dict]:
    """Each feed's phase currents, ``over`` when one is past its breaker's continuous limit."""
    def amps(values: dict) -> str:
        return " / ".join(UNKNOWN if a is None else f"{a:.1f}" for a in values.values())

    def over(f: dict) -> str:
        return "yes" if any(a is not None and a > f["continuous_a"]
                            for a in f["phase_current_a"].values()) else ""

    return [{**f, "phases": amps(f["phase_current_a"]), "over": over(f)} for f in feeds]


def history_figure(power, headroom) -> go.Figure:
    return time_figure([(name, series[0].points if series else [])
                        for series, name in ((power, "power kW"), (headroom, "headroom kW"))],
                       "kW")


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    @app.callback(
        Output("rack-where", "children"), Output("rack-power", "children"),
        Output("rack-peak", "children"), Output("rack-design", "children"),
        Output("rack-headroom", "children"), Output("rack-binding", "children"),
        Output("rack-liquid", "children"), Output("rack-air", "children"),
        Output("rack-limits", "figure"), Output("rack-missing", "children"),
        Output("rack-feeds", "data"), Output("rack-devices", "data"),
        Output("rack-pools", "data"),
        Input("refresh", "n_intervals"), State("rack-id", "data"),
    )
    def refresh(_n, rack_id):
        r = api.rack_detail(rack_id) if isinstance(rack_id, str) else None
        if r is None:
            return (f"No model result for rack {rack_id} yet.", *[UNKNOWN] * 7, go.Figure(),
                    "", [], [], [])
        where = (f"room {r['room']} · row {r['row']}"
                 + (f" · position {r['position']}" if r["position"] else "")
                 + (f" · loop {r['loop']}" if r["loop"] else ""))
        binding = r["limiting"] + ("" if r["complete"] else " (an upper bound: some limits "
                                   "unknown)")
        missing = (f"Unknown: {', '.join(LIMIT_WORDS[k] for k in r['unknown'])}; missing "
                   f"measurements: {', '.join(r['missing']) or 'none named'}."
                   if r["unknown"] else "")
        return (where, fmt(r["power_kw"]), fmt(r["power_kw_peak"]), fmt(r["design_kw"]),
                fmt(r["headroom_kw"]), f"binding: {binding}", fmt(r["liquid_heat_kw"]),
                fmt(r["air_heat_kw"]), limits_figure(r), missing, feed_rows(r["feeds"]),
                r["devices"], r["pools"])

    @app.callback(Output("rack-history", "figure"), Input("slow-refresh", "n_intervals"),
                  State("rack-id", "data"))
    def history(_n, rack_id):
        where = {"rack": str(rack_id)}
        try:
            return history_figure(api.trend("rack", "power_kw", DAY_S, where, points=288),
                                  api.trend("rack", "headroom_kw", DAY_S, where, points=288))
        except StoreUnavailable as e:
            return said(go.Figure(), f"store unavailable: {e}")
