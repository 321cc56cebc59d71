"""The operators' Dash app: PUE, power, racks with headroom and the binding limit, alerts.

It reads through aidc.api only (never the store or devices directly) and refreshes live.
"""

from __future__ import annotations

import plotly.graph_objects as go
from dash import Dash, Input, Output, dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme
from flask import Flask

from aidc.api import SiteAPI

REFRESH_MS = 2000
CARD = {
    "padding": "12px 18px",
    "border": "1px solid #d0d7de",
    "borderRadius": "8px",
    "minWidth": "150px",
    "background": "#ffffff",
}
KW = Format(precision=1, scheme=Scheme.fixed)
PAGE = {"fontFamily": "system-ui, sans-serif", "margin": "0 auto", "maxWidth": "1200px",
        "padding": "16px", "background": "#f6f8fa"}


def _kpi(label: str, value_id: str, note_id: str | None = None) -> html.Div:
    children = [
        html.Div(label, style={"fontSize": "13px", "color": "#57606a"}),
        html.Div("–", id=value_id, style={"fontSize": "30px", "fontWeight": 600}),
    ]
    if note_id:
        children.append(html.Div(id=note_id, style={"fontSize": "12px", "color": "#57606a"}))
    return html.Div(children, style=CARD)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def layout(api: SiteAPI) -> html.Div:
    return html.Div(
        [
            html.H2(f"aidc · {api.site_name}", style={"margin": "0 0 4px"}),
            html.Div(id="updated-at", style={"color": "#57606a", "marginBottom": "12px"}),
            html.Div(
                [
                    _kpi("PUE", "pue-value", "pue-note"),
                    _kpi("IT power (kW)", "it-kw"),
                    _kpi("Facility power (kW)", "facility-kw"),
                    _kpi("Cooling (kW)", "cooling-kw"),
                    _kpi("Devices up", "devices-up"),
                ],
                style={"display": "flex", "gap": "12px", "flexWrap": "wrap"},
            ),
            html.H3("Racks: power and kW headroom"),
            dcc.Graph(id="rack-chart", config={"displayModeBar": False}, style={"height": "300px"}),
            dash_table.DataTable(
                id="rack-table",
                columns=[
                    {"name": "Rack", "id": "id"},
                    {"name": "Row", "id": "row"},
                    {"name": "Power (kW)", "id": "power_kw", "type": "numeric", "format": KW},
                    {"name": "Design (kW)", "id": "design_kw", "type": "numeric", "format": KW},
                    {"name": "Headroom (kW)", "id": "headroom_kw", "type": "numeric", "format": KW},
                    {"name": "Binding limit", "id": "limiting"},
                ],
                sort_action="native",
                style_cell={"fontFamily": "inherit", "padding": "6px"},
                style_cell_conditional=[
                    {"if": {"column_id": c}, "textAlign": "left"} for c in ("id", "row", "limiting")
                ],
                style_data_conditional=[
                    {"if": {"filter_query": "{headroom_kw} < 0"}, "backgroundColor": "#ffebe9"},
                    {"if": {"filter_query": "{headroom_kw} is blank"}, "color": "#8c959f"},
                ],
            ),
            html.H3("Active alerts"),
            dash_table.DataTable(
                id="alerts-table",
                columns=[
                    {"name": "Severity", "id": "severity"},
                    {"name": "Alert", "id": "rule"},
                    {"name": "State", "id": "state"},
                    {"name": "Since", "id": "starts_at"},
                    {"name": "Summary", "id": "summary"},
                ],
                style_cell={"fontFamily": "inherit", "padding": "6px", "textAlign": "left"},
                style_data_conditional=[
                    {"if": {"filter_query": '{severity} = "critical"'}, "color": "#cf222e"},
                ],
            ),
            html.Div(id="no-alerts", style={"color": "#57606a", "margin": "6px 0"}),
            dcc.Interval(id="refresh", interval=REFRESH_MS),
        ],
        style=PAGE,
    )


def rack_figure(racks: list[dict]) -> go.Figure:
    ids = [r["id"] for r in racks]
    fig = go.Figure(
        [
            go.Bar(name="power kW", x=ids, y=[r["power_kw"] for r in racks], marker_color="#0969da"),
            go.Bar(
                name="headroom kW",
                x=ids,
                y=[max(r["headroom_kw"] or 0, 0) for r in racks],
                marker_color="#8cd9a0",
                text=[r["limiting"] or "" for r in racks],
                textposition="inside",
            ),
        ]
    )
    fig.update_layout(barmode="stack", margin={"l": 40, "r": 10, "t": 10, "b": 30},
                      legend={"orientation": "h"}, yaxis_title="kW")
    return fig


def create_app(api: SiteAPI, server: Flask | bool = True) -> Dash:
    app = Dash(__name__, server=server, title=f"aidc · {api.site_name}", update_title=None)
    app.layout = layout(api)

    @app.callback(
        Output("updated-at", "children"),
        Output("pue-value", "children"),
        Output("pue-note", "children"),
        Output("it-kw", "children"),
        Output("facility-kw", "children"),
        Output("cooling-kw", "children"),
        Output("devices-up", "children"),
        Output("rack-chart", "figure"),
        Output("rack-table", "data"),
        Output("alerts-table", "data"),
        Output("no-alerts", "children"),
        Input("refresh", "n_intervals"),
    )
    def refresh(_n):
        site, racks, alerts, devices = api.site(), api.racks(), api.alerts(), api.devices()
        up = sum(d["state"] == "up" for d in devices)
        note = (
            f"instantaneous, ISO/IEC 30134-2 category {site['pue_category']}"
            if site["pue"] is not None
            else f"waiting for {len(site['missing'])} measurement(s)"
        )
        return (
            f"updated {site['updated_at'] or 'never'} (UTC)",
            _fmt(site["pue"], 3),
            note,
            _fmt(site["it_kw"]),
            _fmt(site["facility_kw"]),
            _fmt(site["cooling_kw"]),
            f"{up} / {len(devices)}",
            rack_figure(racks),
            racks,
            alerts,
            "" if alerts else "No active alerts.",
        )

    return app
