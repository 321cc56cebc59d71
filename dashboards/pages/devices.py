"""Devices: every device's polling state, its last good poll, the error and the wait before
the next try (which grows while it stays down); a device clicked shows each of its series as
last read, with its quality, and "Probe now" reads it once more on a connection of its own,
as `aidc probe` does, showing what came off the wire (also as JSON from the API)."""

from __future__ import annotations

from dash import Dash, Input, Output, State, dcc, html, no_update

from aidc.api import SiteAPI
from aidc.auth import Auth
from aidc.runtime import NotAnswering
from dashboards.widgets import AMBER, GREY, NOTE, RED, table

STATE_COLOURS = {"down": RED, "stale": RED, "degraded": AMBER, "unknown": GREY}
NOT_GOOD = [{"if": {"filter_query": '{quality} != "good"'}, "color": RED}]


def layout(api: SiteAPI) -> html.Div:
    return html.Div([
        html.Div(id="devices-summary", style=NOTE),
        table("devices-table",
              [("Device", "id"), ("Kind", "kind"), ("State", "state"), ("Since", "since"),
               ("Last good poll", "last_ok"), ("Failures in a row", "failures"),
               ("Points bad", "points_bad_of"), ("Poll (ms)", "last_poll_ms"),
               ("Next try in (s)", "retry_in_s"), ("Error", "error")],
              numeric=("last_poll_ms", "retry_in_s"), sort_action="native",
              filter_action="native", page_size=100,
              style_data_conditional=[{"if": {"filter_query": f'{{state}} = "{state}"'},
                                       "color": colour}
                                      for state, colour in STATE_COLOURS.items()]
              + [{"if": {"column_id": "id"}, "color": "#0969da", "cursor": "pointer"}]),
        dcc.Store(id="device-shown"),
        html.H3(id="readings-title"),
        table("readings-table", [("Series", "series"), ("Value", "value"),
                                 ("Quality", "quality"), ("Read at", "read_at")],
              style_data_conditional=NOT_GOOD),
        html.Div([html.Button("Probe now", id="device-probe", disabled=True),
                  html.A("as JSON", id="device-probe-json", target="_blank",
                         style={"marginLeft": "12px"}),
                  html.Span(id="probe-result", style={"marginLeft": "12px"})],
                 style={"margin": "12px 0"}),
        table("probe-table", [("Series", "series"), ("Raw", "raw"), ("Value", "value"),
                              ("Quality", "quality")], style_data_conditional=NOT_GOOD),
    ])


def probe_said(probe: dict | None) -> tuple[str, list[dict]]:
    """The probe in a line (when, how long, or why it failed) and its rows."""
    if probe is None:
        return "No such device.", []
    said = f"Probe at {probe['read_at']}: "
    if probe["error"]:
        return said + f"failed after {probe['elapsed_ms']:.0f} ms: {probe['error']}", []
    return (said + f"{len(probe['readings'])} series in {probe['elapsed_ms']:.0f} ms",
            reading_rows(probe["readings"]))


def reading_rows(readings: list[dict]) -> list[dict]:
    """A value when good; otherwise what was read, said as such (never a bare number)."""
    def shown(r: dict) -> str:
        if r["value"] is not None:
            return f"{r['value']:g}"
        return "unknown" if r["read_value"] is None else f"unknown (read {r['read_value']:g})"

    return [{**r, "value": shown(r)} for r in readings]


def device_rows(devices: list[dict]) -> list[dict]:
    """Not-up devices first, then by id."""
    rows = [{**d, "points_bad_of": f"{d['points_bad']} / {d['points']}"} for d in devices]
    return sorted(rows, key=lambda d: (d["state"] == "up", d["id"]))


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    @app.callback(Output("devices-table", "data"), Output("devices-summary", "children"),
                  Input("refresh", "n_intervals"))
    def refresh(_n):
        devices = api.devices()
        counts: dict[str, int] = {}
        for d in devices:
            counts[d["state"]] = counts.get(d["state"], 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return device_rows(devices), f"{len(devices)} devices: {summary}"

    @app.callback(Output("device-shown", "data"), Input("devices-table", "active_cell"),
                  prevent_initial_call=True)
    def choose(cell):
        device = cell.get("row_id") if isinstance(cell, dict) else None
        return device if isinstance(device, str) else no_update

    @app.callback(Output("readings-title", "children"), Output("readings-table", "data"),
                  Input("device-shown", "data"), Input("refresh", "n_intervals"))
    def readings(device, _n):
        found = api.device_readings(device) if isinstance(device, str) else None
        if found is None:
            return "Click a device to see what it last read.", []
        return f"Series of {device}", reading_rows(found)

    @app.callback(Output("device-probe", "disabled"), Output("device-probe-json", "href"),
                  Output("probe-result", "children", allow_duplicate=True),
                  Output("probe-table", "data", allow_duplicate=True),
                  Input("device-shown", "data"), prevent_initial_call=True)
    def chosen(device):
        return False, f"/api/v1/devices/{device}/probe", "", []

    @app.callback(Output("probe-result", "children"), Output("probe-table", "data"),
                  Input("device-probe", "n_clicks"), State("device-shown", "data"),
                  prevent_initial_call=True, running=[(Output("device-probe", "disabled"),
                                                       True, False)])
    def probe(_n, device):
        if not isinstance(device, str):
            return no_update, no_update
        try:
            return probe_said(api.probe(device))
        except NotAnswering as e:
            return f"Not probed: {e}", []
