"""Overview: PUE now and over 24 h with its category; IT, facility, cooling and conversion
loss; whether every source and loop keeps its redundancy; the backup chain; the racks with
the least headroom."""

from __future__ import annotations

import plotly.graph_objects as go
from dash import Dash, Input, Output, html

from aidc.api import SiteAPI
from aidc.auth import Auth
from aidc.core.store import StoreUnavailable
from dashboards.widgets import (
    GREY,
    ROW,
    UNKNOWN,
    UNKNOWN_STYLE,
    bridges,
    fmt,
    graph,
    inexact_words,
    kpi,
    rack_link,
    said,
    table,
    time_figure,
    titled_axis,
)

CHART_RACKS = 20  # bars in the least-headroom chart: the floor and the capacity table have all
TABLE_ROWS = 10  # a page of each table: every row is in it, 150 loops and sources at 2,000 racks
DAY_S = 86_400.0


def layout(api: SiteAPI) -> html.Div:
    return html.Div([
        html.Div([
            kpi("PUE", "pue-value", "pue-note"),
            kpi("PUE, last 24 h", "pue-24h-value", "pue-24h-note"),
            kpi("IT power (kW)", "it-kw"),
            kpi("Facility power (kW)", "facility-kw"),
            kpi("Cooling (kW)", "cooling-kw", "cooling-note"),
            kpi("Conversion loss (kW)", "loss-kw"),
            kpi("Devices up", "devices-up"),
        ], style=ROW),
        html.H3("PUE, last 24 h"),
        graph("pue-24h", 220),
        html.H3("Redundancy of every source and loop"),
        table("redundancy-table", [("Source or loop", "id"), ("Kind", "kind"),
                                   ("Load (kW)", "load_kw"), ("Capacity (kW)", "capacity_kw"),
                                   ("Modules OK", "modules_ok"),
                                   ("Left after the worst failure (kW)", "left_kw"),
                                   ("Worst failure", "worst_failure"), ("Holds it", "holds")],
              numeric=("load_kw", "capacity_kw", "left_kw"), page_size=TABLE_ROWS,
              style_data_conditional=[{"if": {"filter_query": '{holds} = "no"'},
                                       "backgroundColor": "#ffebe9"},
                                      {"if": {"filter_query": f'{{holds}} = "{UNKNOWN}"'},
                                       **UNKNOWN_STYLE}]),
        html.H3("Backup chain: supercap, battery, generator"),
        table("backup-table", [("Supercap", "supercap"), ("Load (kW)", "load_kw"),
                               ("Supercap (s)", "supercap_s"), ("Battery (s)", "battery_s"),
                               ("Needed (s)", "required_s"), ("Bridges", "bridges")],
              numeric=("load_kw", "supercap_s", "battery_s", "required_s"),
              page_size=TABLE_ROWS),
        html.H3("Racks with the least headroom"),
        graph("rack-chart", 300),
        table("least-headroom", [("Rack", "link"), ("Power (kW)", "power_kw"),
                                 ("Headroom (kW)", "headroom_kw"), ("Binding limit", "limiting")],
              numeric=("power_kw", "headroom_kw"), links=("link",)),
    ])


def least_headroom(racks: list[dict], n: int) -> list[dict]:
    """The ``n`` racks nearest their limit (over it first), those whose headroom is unknown
    before them: an unknown is shown, never ranked as a number."""
    return sorted(racks, key=lambda r: (r["headroom_kw"] is not None, r["headroom_kw"] or 0))[:n]


def rack_figure(racks: list[dict]) -> go.Figure:
    """Power and headroom of each rack; past CHART_RACKS, of those with the least headroom
    (2,000 bars are neither readable nor quick to draw). A power or headroom not known
    exactly (a headroom with a limit not read is only an upper bound) is a grey hatched bar
    up to the rack's design rating, saying what is missing: never a blank, never the bound
    drawn as if it were the headroom."""
    title = ""
    if len(racks) > CHART_RACKS:
        title = f"the {CHART_RACKS} of {len(racks)} racks with the least headroom"
        racks = least_headroom(racks, CHART_RACKS)
    ids = [r["id"] for r in racks]
    exact = {r["id"] for r in racks if r["headroom_kw"] is not None and r["complete"]
             and r["power_kw"] is not None}
    unknown = [r for r in racks if r["id"] not in exact]
    fig = go.Figure([
        go.Bar(name="power kW", x=ids, y=[r["power_kw"] for r in racks], marker_color="#0969da"),
        go.Bar(name="headroom kW", x=ids,
               y=[max(r["headroom_kw"], 0) if r["id"] in exact else None for r in racks],
               marker_color="#8cd9a0", textposition="inside",
               text=[r["limiting"] if r["id"] in exact else "" for r in racks]),
        go.Bar(name="headroom unknown", x=[r["id"] for r in unknown],
               y=[max(r["design_kw"] - (r["power_kw"] or 0), 0) for r in unknown],
               text=[inexact_words(r) for r in unknown], textposition="inside",
               hovertemplate="%{x}: %{text}<extra></extra>",  # its height is no figure
               marker={"color": GREY, "pattern": {"shape": "/"}}),
    ])
    fig.update_layout(barmode="stack", margin={"l": 40, "r": 10, "t": 30 if title else 10, "b": 30},
                      legend={"orientation": "h"}, yaxis=titled_axis("kW"),
                      title={"text": title, "font": {"size": 13}})
    return fig


WORST_FIRST = {"no": 0, UNKNOWN: 1, "yes": 2}  # a large site's tables open on what needs doing


def redundancy_rows(pools: list[dict]) -> list[dict]:
    """Each pool, and whether it holds its worst single failure (unknown when not known):
    those that do not first, then the unknown, each in the site's order."""
    def holds(p: dict) -> str:
        return UNKNOWN if p["left_kw"] is None else "yes" if p["left_kw"] >= 0 else "no"

    rows = [{**p, "holds": holds(p),
             "modules_ok": "" if p.get("modules_ok") is None else f"{p['modules_ok']:g}"}
            for p in pools]
    return sorted(rows, key=lambda r: WORST_FIRST[r["holds"]])


def backup_rows(chains: list[dict]) -> list[dict]:
    """Each backup chain and whether it bridges to the generator, those that do not first."""
    rows = [{**b, "bridges": bridges(b)} for b in chains]
    return sorted(rows, key=lambda r: WORST_FIRST[r["bridges"]])


def pue_figure(series, target: float) -> go.Figure:
    points = series[0].points if series else []
    fig = time_figure([("PUE", points)], "PUE")
    fig.add_hline(y=target, line_dash="dot", annotation_text=f"target {target:g}")
    return fig if points else said(fig, "no PUE stored in the last 24 h")


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    @app.callback(
        Output("pue-value", "children"), Output("pue-note", "children"),
        Output("it-kw", "children"), Output("facility-kw", "children"),
        Output("cooling-kw", "children"), Output("cooling-note", "children"),
        Output("loss-kw", "children"), Output("devices-up", "children"),
        Output("redundancy-table", "data"), Output("backup-table", "data"),
        Output("rack-chart", "figure"), Output("least-headroom", "data"),
        Input("refresh", "n_intervals"),
    )
    def refresh(_n):
        site, racks, (up, total) = api.site(), api.racks(), api.devices_up()
        note = (f"instantaneous, ISO/IEC 30134-2 category {site['pue_category']}"
                if site["pue"] is not None
                else f"missing: {', '.join(site['missing'][:3]) or site['note']}")
        cooling = f"pPUE {fmt(site['cooling_ppue'], 3)}" if site["cooling_ppue"] else ""
        least = [{**r, "link": rack_link(r["id"])} for r in least_headroom(racks, TABLE_ROWS)]
        return (
            fmt(site["pue"], 3), note, fmt(site["it_kw"]), fmt(site["facility_kw"]),
            fmt(site["cooling_kw"]), cooling, fmt(site["conversion_loss_kw"]),
            f"{up} / {total}", redundancy_rows(api.pools()),
            backup_rows(api.backup()),
            rack_figure(racks), least,
        )

    @app.callback(Output("pue-24h", "figure"), Input("slow-refresh", "n_intervals"))
    def pue_day(_n):
        try:
            series = api.trend("site", "pue", DAY_S, points=288)
        except StoreUnavailable as e:
            return said(go.Figure(), f"store unavailable: {e}")
        return pue_figure(series, api.runtime.site.model.pue_target)

    @app.callback(Output("pue-24h-value", "children"), Output("pue-24h-note", "children"),
                  Input("slow-refresh", "n_intervals"))
    def interval_pue(_n):
        """The PUE ISO/IEC 30134-2 defines: energy over a period (here the last 24 h)."""
        try:
            p = api.interval_pue("24h")
        except StoreUnavailable as e:
            return UNKNOWN, f"store unavailable: {e}"
        if p["pue"] is not None:
            return fmt(p["pue"], 3), (f"from energy counters, ISO/IEC 30134-2 category "
                                      f"{p['pue_category']}")
        return UNKNOWN, p["note"] or f"missing: {', '.join(p['missing'][:3])}"
