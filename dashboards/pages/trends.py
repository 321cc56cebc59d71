"""Trends: any metric of the site, a rack or a device over the last hour, day, week, month or
a range of days, downsampled by the store (InfluxDB GROUP BY time, SQLite's windows) to a few
hundred points a series: never the raw points read into the web process."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html, no_update

from aidc.api import SiteAPI, trend_every_s
from aidc.auth import Auth
from aidc.core.store import StoreUnavailable
from dashboards.widgets import NOTE, ROW, graph, said, time_figure

RANGES_S = {"1 h": 3600.0, "24 h": 86_400.0, "7 d": 7 * 86_400.0, "30 d": 30 * 86_400.0}
CUSTOM = "custom"
POINTS = 300  # a series' points as the store returns them, whatever the range
MATCHES = 50  # ids offered as the operator types
KINDS = {"site": "the site", "rack": "a rack", "device": "a device"}


def layout(api: SiteAPI) -> html.Div:
    field = {"marginRight": "12px"}
    return html.Div([
        html.Div([
            html.Label(["Of ", dcc.Dropdown(KINDS, "site", id="trend-kind", clearable=False,
                                            style={"width": "120px"})], style=field),
            html.Label(["which ", dcc.Dropdown(id="trend-subject", clearable=False,
                                               style={"width": "200px"})], style=field),
            html.Label(["metric ", dcc.Dropdown(id="trend-metric", clearable=False,
                                                style={"width": "260px"})], style=field),
        ], style={**ROW, "alignItems": "center"}),
        html.Div([
            dcc.RadioItems([*RANGES_S, CUSTOM], "24 h", id="trend-range", inline=True,
                           inputStyle={"marginLeft": "12px"}),
            dcc.DatePickerRange(id="trend-days", display_format="YYYY-MM-DD",
                                end_date=date.today().isoformat(),
                                start_date=(date.today() - timedelta(days=2)).isoformat()),
        ], style={**ROW, "alignItems": "center", "margin": "8px 0"}),
        html.Div(id="trend-note", style=NOTE),
        graph("trend-chart", 420),
    ])


def window(range_name: str, start_day, end_day, now: float) -> tuple[float, float]:
    """(window_s, end): the last 1 h ... 30 d, or whole days from start_day to end_day."""
    if range_name in RANGES_S:
        return RANGES_S[range_name], now
    start = datetime.fromisoformat(str(start_day)[:10]).replace(tzinfo=UTC)
    end = datetime.fromisoformat(str(end_day)[:10]).replace(tzinfo=UTC) + timedelta(days=1)
    if end <= start:
        raise ValueError("the range ends before it starts")
    return (end - start).total_seconds(), min(end.timestamp(), now)


def trend_figure(series, metric: str) -> go.Figure:
    """One line a series, named by the tags that tell them apart (a PDU's phases, say)."""
    return time_figure([(",".join(f"{k}={v}" for k, v in s.tags.items()
                                  if k not in ("site", "room", "row")) or metric, s.points)
                        for s in series], metric)


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    site, graph_ = api.runtime.site, api.runtime.topology

    @app.callback(Output("trend-subject", "options"), Output("trend-subject", "value"),
                  Input("trend-kind", "value"), Input("trend-subject", "search_value"),
                  State("trend-subject", "value"))
    def subjects(kind, typed, current):
        """The ids of that kind, the first MATCHES that contain what was typed (a site of
        20,000 devices is not sent whole to the browser)."""
        if kind == "site":
            return [site.site], site.site
        ids = graph_.rack_by_id if kind == "rack" else graph_.device_by_id
        typed = typed if isinstance(typed, str) else ""
        found = [i for i in ids if typed.lower() in i.lower()][:MATCHES]
        keep = current if isinstance(current, str) and current in ids else None
        if keep and keep not in found:
            found.insert(0, keep)
        return found, keep or (found[0] if found else None)

    @app.callback(Output("trend-metric", "options"), Output("trend-metric", "value"),
                  Input("trend-kind", "value"), Input("trend-subject", "value"),
                  State("trend-metric", "value"))
    def metrics(kind, subject, current):
        try:
            _, _, fields = api.trend_subject(str(kind), str(subject))
        except KeyError:
            return [], None
        default = next((f for f in ("pue", "power_kw", "supply_temp_c") if f in fields),
                       fields[0] if fields else None)
        return fields, current if current in fields else default

    @app.callback(Output("trend-chart", "figure"), Output("trend-note", "children"),
                  Input("trend-kind", "value"), Input("trend-subject", "value"),
                  Input("trend-metric", "value"), Input("trend-range", "value"),
                  Input("trend-days", "start_date"), Input("trend-days", "end_date"),
                  Input("slow-refresh", "n_intervals"))
    def chart(kind, subject, metric, range_name, start_day, end_day, _n):
        try:
            measurement, where, fields = api.trend_subject(str(kind), str(subject))
            if metric not in fields:
                return no_update, ""
            window_s, end = window(str(range_name), start_day, end_day, time.time())
            series = api.trend(measurement, metric, window_s, where, POINTS, end)
        except (KeyError, ValueError) as e:
            return said(go.Figure(), f"cannot draw: {e}"), ""
        except StoreUnavailable as e:
            return said(go.Figure(), f"store unavailable: {e}"), ""
        every_s = trend_every_s(window_s, POINTS)
        note = (f"{metric} of {subject}: {sum(len(s.points) for s in series)} points in "
                f"{len(series)} series, means over {every_s:,.0f} s windows computed by the store")
        fig = trend_figure(series, metric)
        return (fig if series else said(fig, f"no {metric} stored for {subject} in this range"),
                note)
