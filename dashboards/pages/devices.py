"""Devices: every device's polling state, its last good poll, the error and the wait before
the next try (which grows while it stays down)."""

from __future__ import annotations

from dash import Dash, Input, Output, html

from aidc.api import SiteAPI
from dashboards.widgets import AMBER, GREY, NOTE, RED, table

STATE_COLOURS = {"down": RED, "stale": RED, "degraded": AMBER, "unknown": GREY}


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
                                      for state, colour in STATE_COLOURS.items()]),
    ])


def device_rows(devices: list[dict]) -> list[dict]:
    """Not-up devices first, then by id."""
    rows = [{**d, "points_bad_of": f"{d['points_bad']} / {d['points']}"} for d in devices]
    return sorted(rows, key=lambda d: (d["state"] == "up", d["id"]))


def register(app: Dash, api: SiteAPI, api_token: str | None) -> None:
    @app.callback(Output("devices-table", "data"), Output("devices-summary", "children"),
                  Input("refresh", "n_intervals"))
    def refresh(_n):
        devices = api.devices()
        counts: dict[str, int] = {}
        for d in devices:
            counts[d["state"]] = counts.get(d["state"], 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return device_rows(devices), f"{len(devices)} devices: {summary}"
