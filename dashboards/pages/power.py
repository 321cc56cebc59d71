"""Power: the chain from the utility through the rectifiers and UPS (their losses shown) to
the rows their PDUs feed (a chosen row's PDUs and racks one by one), modules OK against
those the load needs, and the backup chain: supercap charge and ride-through, battery
runtime against the generator's start."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from aidc.api import SiteAPI
from aidc.auth import Auth
from dashboards.widgets import NOTE, RED, UNKNOWN, bridges, fmt, graph, table

LOSS = "conversion loss"


def layout(api: SiteAPI) -> html.Div:
    return html.Div([
        html.H3("From the utility to the rows (kW)"),
        html.Label(["Through the PDUs to the racks of row ",
                    dcc.Dropdown(sorted({r.row for r in api.runtime.site.racks}), None,
                                 id="power-row", placeholder="none",
                                 style={"width": "140px", "display": "inline-block",
                                        "verticalAlign": "middle"})]),
        graph("power-sankey", 380),
        html.Div(id="power-unknown", style=NOTE),
        html.H3("Rectifiers and UPS"),
        table("sources-table", [("Source", "id"), ("Kind", "kind"), ("State", "state"),
                                ("Output (kW)", "output_kw"), ("Input (kW)", "input_kw"),
                                ("Loss (kW)", "loss_kw"), ("Rating (kW)", "rating_kw"),
                                ("Modules OK", "modules"), ("On battery", "battery")],
              numeric=("output_kw", "input_kw", "loss_kw", "rating_kw"),
              style_data_conditional=[{"if": {"filter_query": '{alarm} = "yes"'},
                                       "color": RED}]),
        html.H3("Backup chain"),
        table("supercaps-table", [("Supercap", "id"), ("State of charge (%)", "soc"),
                                  ("Load (kW)", "load_kw"), ("Supercap ride-through (s)", "supercap_s"),
                                  ("Battery (s)", "battery_s"),
                                  ("Generator on load after (s)", "required_s"),
                                  ("Bridges to the generator", "bridges")],
              numeric=("load_kw", "supercap_s", "battery_s", "required_s")),
    ])


def sankey(power: dict) -> tuple[go.Figure, list[str]]:
    """The chain as a Sankey, to the rows, and through one row's PDUs to its racks when the
    chain has them (``power["pdus"]``); and the links left out because a value is unknown
    (named, never drawn as zero)."""
    sources = [s["id"] for s in power["sources"]]
    rows = sorted({f"row {f['row']}" for f in power["flows"]})
    pdus = [p["id"] for p in power["pdus"]]
    racks = list(dict.fromkeys(f"rack {p['rack']}" for p in power["pdus"]))
    nodes = ["utility", *sources, LOSS, *rows, *pdus, *racks]
    colours = ["#57606a", *["#0969da"] * len(sources), RED, *["#1a7f37"] * len(rows),
               *["#8250df"] * len(pdus), *["#1a7f37"] * len(racks)]
    at = {name: i for i, name in enumerate(nodes)}
    links, unknown = [], []
    for s in power["sources"]:
        input_kw = s["input_kw"]
        if input_kw is None:
            unknown.append(f"{s['id']} input")
        else:
            links.append((at["utility"], at[s["id"]], input_kw))
        if s["loss_kw"] is not None:
            links.append((at[s["id"]], at[LOSS], max(s["loss_kw"], 0.0)))
    for f in power["flows"]:
        if f["kw"] is None:
            unknown.append(f"{f['source']} to row {f['row']}")
        else:
            links.append((at[f["source"]], at[f"row {f['row']}"], f["kw"]))
    for p in power["pdus"]:
        if p["kw"] is None:
            unknown.append(f"{p['id']} to rack {p['rack']}")
        else:
            links += [(at[p["source"]], at[p["id"]], p["kw"]),
                      (at[p["id"]], at[f"rack {p['rack']}"], p["kw"])]
    source, target, kw = zip(*links) if links else ((), (), ())
    fig = go.Figure(go.Sankey(
        node={"label": nodes, "pad": 18, "color": colours},
        link={"source": source, "target": target, "value": kw,
              "hovertemplate": "%{source.label} to %{target.label}: %{value:,.1f} kW<extra></extra>"},
        valueformat=",.1f", valuesuffix=" kW"))
    fig.update_layout(margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig, unknown


def source_rows(sources: list[dict]) -> list[dict]:
    def modules(s: dict) -> str:
        if s["modules"] is None:
            return "not modular"
        ok = UNKNOWN if s["modules_ok"] is None else f"{s['modules_ok']:g}"
        need = ("" if s["output_kw"] is None or not s["module_kw"]
                else f", {math.ceil(s['output_kw'] / s['module_kw'])} carry the load")
        return f"{ok} of {s['modules']} ({s['redundancy']}{need})"

    def battery(s: dict) -> str:
        if s["on_battery"] is None:
            return UNKNOWN
        left = f", {fmt(s['runtime_min'])} min left" if s["runtime_min"] is not None else ""
        return ("YES" + left) if s["on_battery"] else "no"

    return [{**s, "modules": modules(s), "battery": battery(s),
             "alarm": "yes" if s["on_battery"] or s["state"] != "up" else "no"} for s in sources]


def supercap_rows(supercaps: list[dict]) -> list[dict]:
    return [{**c, "soc": fmt(c["soc_pct"]), "bridges": bridges(c)} for c in supercaps]


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    @app.callback(Output("power-sankey", "figure"), Output("power-unknown", "children"),
                  Output("sources-table", "data"), Output("supercaps-table", "data"),
                  Input("refresh", "n_intervals"), Input("power-row", "value"))
    def refresh(_n, row):
        power = api.power(row if isinstance(row, str) else None)
        fig, unknown = sankey(power)
        note = f"Not drawn, unknown now: {', '.join(unknown)}." if unknown else ""
        return fig, note, source_rows(power["sources"]), supercap_rows(power["supercaps"])
