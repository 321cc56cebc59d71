"""The operators' Dash app: PUE, power, racks with headroom and the binding limit, alerts,
backup, and a capacity tab where planners ask what-if questions.

It reads through aidc.api only (never the store or devices directly) and refreshes live.
Its write actions (acknowledge an alert, silence) need the site's API token, as the API's do.
"""

from __future__ import annotations

import hmac
from functools import partial

import plotly.graph_objects as go
from dash import Dash, Input, Output, State, ctx, dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme
from flask import Flask, jsonify, request
from pydantic import ValidationError

from aidc.api import REACHABLE, AckRequest, SilenceRequest, SiteAPI, one_line
from aidc.runtime import NotAnswering

REFRESH_MS = 2000
CHART_RACKS = 60  # bars in the overview's rack chart
TABLE_ROWS = 50  # rows a page in the rack table, sorted across all pages
SLOW_REFRESH_MS = 30_000  # interval PUE reads the store: no need to do it every 2 s
CARD = {"padding": "12px 18px", "border": "1px solid #d0d7de", "borderRadius": "8px",
        "minWidth": "150px", "background": "#ffffff"}
KW = Format(precision=1, scheme=Scheme.fixed)
PAGE = {"fontFamily": "system-ui, sans-serif", "margin": "0 auto", "maxWidth": "1200px",
        "padding": "16px", "background": "#f6f8fa"}
ROW = {"display": "flex", "gap": "12px", "flexWrap": "wrap"}
CELL = {"fontFamily": "inherit", "padding": "6px", "textAlign": "left"}


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


def _table(table_id: str, columns: list[tuple[str, str]], numeric: tuple[str, ...] = (), **kw):
    return dash_table.DataTable(
        id=table_id,
        columns=[{"name": name, "id": cid, **({"type": "numeric", "format": KW} if cid in numeric else {})}
                 for name, cid in columns],
        style_cell=CELL,
        style_cell_conditional=[{"if": {"column_id": c}, "textAlign": "right"} for c in numeric],
        **kw,
    )


def overview() -> html.Div:
    return html.Div([
        html.Div([
            _kpi("PUE", "pue-value", "pue-note"),
            _kpi("PUE, last hour", "pue-1h", "pue-1h-note"),
            _kpi("IT power (kW)", "it-kw"),
            _kpi("Facility power (kW)", "facility-kw"),
            _kpi("Cooling (kW)", "cooling-kw", "cooling-note"),
            _kpi("Devices up", "devices-up"),
        ], style=ROW),
        html.H3("Racks: power and kW headroom"),
        dcc.Graph(id="rack-chart", config={"displayModeBar": False}, style={"height": "300px"}),
        _table(
            "rack-table",
            [("Rack", "id"), ("Row", "row"), ("Power (kW)", "power_kw"),
             ("Peak (kW)", "power_kw_peak"), ("Design (kW)", "design_kw"),
             ("Headroom (kW)", "headroom_kw"), ("Binding limit", "limiting")],
            numeric=("power_kw", "power_kw_peak", "design_kw", "headroom_kw"),
            sort_action="native", page_size=TABLE_ROWS,
            style_data_conditional=[
                {"if": {"filter_query": "{headroom_kw} < 0"}, "backgroundColor": "#ffebe9"},
                {"if": {"filter_query": "{complete} = false"}, "color": "#8c959f"},
            ],
        ),
        html.H3("Active alerts"),
        _table("alerts-table", [("Severity", "severity"), ("Alert", "rule"), ("State", "state"),
                                ("Since", "starts_at"), ("Acknowledged by", "acked_by"),
                                ("Summary", "summary"), ("Suppressed by", "suppressed_by")],
               row_selectable="single", selected_rows=[], selected_row_ids=[],
               style_data_conditional=[{"if": {"filter_query": '{severity} = "critical"'},
                                        "color": "#cf222e"}]),
        html.Div(id="no-alerts", style={"color": "#57606a", "margin": "6px 0"}),
        operator_actions(),
        html.H3("Silences (aidc silence add | list | expire)"),
        _table("silences-table", [("State", "state"), ("Matchers", "matchers"),
                                  ("From", "starts_at"), ("Until", "ends_at"),
                                  ("By", "created_by"), ("Comment", "comment"),
                                  ("Expired by", "expired_by")]),
        html.H3("Backup chain: supercap, battery, generator"),
        _table("backup-table", [("Supercap", "supercap"), ("Load (kW)", "load_kw"),
                                ("Supercap (s)", "supercap_s"), ("Battery (s)", "battery_s"),
                                ("Needed (s)", "required_s"), ("Bridges", "bridges")],
               numeric=("load_kw", "supercap_s", "battery_s", "required_s")),
    ])


SILENCE_FOR = {"30 min": 1800, "2 h": 7200, "8 h": 28800, "1 day": 86400}


def operator_actions() -> html.Div:
    """Acknowledge the selected alert, or silence what matches: both need the site's API
    token (``web.api_token``), checked like the API's bearer token."""
    field = {"marginRight": "12px"}
    return html.Div([
        html.Label(["Your name ", dcc.Input(id="operator-name", type="text", maxLength=100)],
                   style=field),
        html.Label(["API token ", dcc.Input(id="operator-token", type="password")], style=field),
        html.Button("Acknowledge selected alert", id="ack-selected", style=field),
        html.Label(["Silence ", dcc.Input(id="silence-matchers", type="text", size="32",
                                          placeholder="device=cdu-1 rule=~leak|pump_.*")],
                   style=field),
        html.Label(["for ", dcc.Dropdown(list(SILENCE_FOR), "2 h", id="silence-for",
                                         clearable=False, style={"width": "100px"})],
                   style=field),
        html.Label(["because ", dcc.Input(id="silence-comment", type="text", maxLength=1000)],
                   style=field),
        html.Button("Silence", id="silence-add"),
        html.Div(id="action-result", style={"width": "100%", "margin": "6px 0"}),
    ], style={**ROW, "alignItems": "center", "margin": "8px 0"})


def operator_action(api: SiteAPI, api_token: str | None, action: str | None, name, token,
                    matchers, duration, comment, selected) -> str:
    """What the page says after an operator's action: done, or why not (never a 500)."""
    if not api_token:
        return "Refused: write actions are disabled (set web.api_token in the site file)."
    if not (isinstance(token, str) and hmac.compare_digest(token.encode(), api_token.encode())):
        return "Refused: missing or wrong API token."
    try:
        if action == "ack-selected":
            # by its id (the fingerprint), not its row: a refresh may reorder the table
            if not (isinstance(selected, list) and len(selected) == 1
                    and isinstance(selected[0], str)):
                return "Select one alert in the table first."
            q = AckRequest.model_validate({"by": name})
            acked = api.acknowledge(selected[0], q.by)
            return f"Acknowledged {acked['rule']} by {q.by}."
        q = SilenceRequest.model_validate({
            "matchers": matchers.split() if isinstance(matchers, str) else matchers,
            "duration_s": SILENCE_FOR.get(duration) if isinstance(duration, str) else None,
            "created_by": name, "comment": comment})
        s = api.add_silence(q.matchers, q.duration_s, q.created_by, q.comment)
        return f"Silenced {' '.join(s['matchers'])} until {s['ends_at']} (silence {s['id']})."
    except ValidationError as e:
        return f"Not done: {one_line(e)}"
    except (ValueError, NotAnswering) as e:
        return f"Not done: {e}"
    except KeyError:
        return "Not done: that alert is no longer active."


def capacity(api: SiteAPI) -> html.Div:
    rows = sorted({r.row for r in api.runtime.site.racks})
    field = {"marginRight": "12px"}
    return html.Div([
        html.H3("Shared pools"),
        html.Div("Racks behind one pool share it: their per-rack headroom figures must not be "
                 "added up.", style={"color": "#57606a", "marginBottom": "6px"}),
        _table("pool-table", [("Pool", "id"), ("Kind", "kind"), ("Capacity (kW)", "capacity_kw"),
                              ("Load (kW)", "load_kw"),
                              ("Left after the worst failure (kW)", "left_kw"),
                              ("Worst failure", "worst_failure"),
                              ("Left, nothing more lost (kW)", "left_normal_kw")],
               numeric=("capacity_kw", "load_kw", "left_kw", "left_normal_kw")),
        html.Div("Sources hold their racks after any single other source fails (a dual-corded "
                 "rack then moves its whole load to its surviving feed); loops keep their "
                 "largest CDU in reserve (N+1). Loops are in kW of heat.",
                 style={"color": "#57606a", "margin": "6px 0"}),
        html.H3("What if: place new racks in a row"),
        html.Div([
            html.Label(["Row ", dcc.Dropdown(rows, rows[0], id="whatif-row", clearable=False,
                                             style={"width": "90px"})], style=field),
            html.Label(["Racks ", dcc.Input(id="whatif-racks", type="number", value=4, min=1)],
                       style=field),
            html.Label(["kW each ", dcc.Input(id="whatif-kw", type="number", value=40, min=1)],
                       style=field),
            html.Label(["Capture ratio ", dcc.Input(id="whatif-capture", type="number", value=0.85,
                                                    min=0, max=1, step=0.05)], style=field),
            html.Label(["Feed kW ", dcc.Input(id="whatif-feed", type="number", min=0)], style=field),
            html.Label(["Air kW ", dcc.Input(id="whatif-air", type="number", min=0)], style=field),
            html.Button("Check", id="whatif-run"),
        ], style={**ROW, "alignItems": "center"}),
        html.Div(id="whatif-result", style={"marginTop": "12px", "fontSize": "16px"}),
    ])


def layout(api: SiteAPI) -> html.Div:
    return html.Div([
        html.H2(f"aidc · {api.site_name}", style={"margin": "0 0 4px"}),
        html.Div(id="updated-at", style={"color": "#57606a", "marginBottom": "12px"}),
        dcc.Tabs([dcc.Tab(overview(), label="Overview"),
                  dcc.Tab(capacity(api), label="Capacity")]),
        dcc.Interval(id="refresh", interval=REFRESH_MS),
        dcc.Interval(id="slow-refresh", interval=SLOW_REFRESH_MS),
    ], style=PAGE)


def rack_figure(racks: list[dict]) -> go.Figure:
    """Power and headroom of each rack; past CHART_RACKS, of those with the least headroom,
    unknown first (2,000 bars are neither readable nor quick to draw: the table has them all)."""
    title = ""
    if len(racks) > CHART_RACKS:
        title = f"the {CHART_RACKS} of {len(racks)} racks with the least headroom"
        racks = sorted(racks, key=lambda r: (r["headroom_kw"] is not None, r["headroom_kw"] or 0))
        racks = racks[:CHART_RACKS]
    ids = [r["id"] for r in racks]
    fig = go.Figure([
        go.Bar(name="power kW", x=ids, y=[r["power_kw"] for r in racks], marker_color="#0969da"),
        go.Bar(name="headroom kW", x=ids, y=[max(r["headroom_kw"] or 0, 0) for r in racks],
               marker_color="#8cd9a0", text=[r["limiting"] or "" for r in racks],
               textposition="inside"),
    ])
    fig.update_layout(barmode="stack", margin={"l": 40, "r": 10, "t": 30 if title else 10, "b": 30},
                      legend={"orientation": "h"}, yaxis_title="kW",
                      title={"text": title, "font": {"size": 13}})
    return fig


def rack_rows(racks: list[dict]) -> list[dict]:
    """Table rows; a headroom that is only an upper bound (some limit unknown) says so."""
    return [{**r, "limiting": r["limiting"] + ("" if r["complete"] else " (upper bound)")}
            for r in racks]


def _refuse_malformed_update(app: Dash):
    """Dash's callback endpoint trusts its body (a malformed one raised KeyError or
    IndexError: a 500): one that is not a call of one of this page's callbacks gets a 400
    before Dash reads it. Only the shape is checked; the callbacks check their values."""
    if not request.path.endswith("_dash-update-component") or request.method != "POST":
        return None
    body = request.get_json(silent=True)

    def items_ok(items) -> bool:
        return isinstance(items, list) and all(
            isinstance(i, dict) and isinstance(i.get("id"), str | dict)
            and isinstance(i.get("property"), str) for i in items)

    ok = (isinstance(body, dict) and isinstance(body.get("output"), str)
          and body["output"] in app.callback_map
          and items_ok(body.get("inputs")) and items_ok(body.get("state", []))
          and isinstance(body.get("changedPropIds", []), list))
    if ok:
        spec, outputs = app.callback_map[body["output"]], body.get("outputs")
        many = body["output"].startswith("..")  # "..a.children...b.children.."
        n_outputs = len(body["output"].strip(".").split("...")) if many else 1
        ok = (len(body["inputs"]) == len(spec["inputs"])
              and len(body.get("state", [])) == len(spec.get("state", []))
              and (items_ok(outputs) and len(outputs) == n_outputs if many
                   else items_ok([outputs])))
    return None if ok else (jsonify({"error": "not a call of one of this page's callbacks"}), 400)


def what_if_text(w: dict) -> str:
    """The answer in words: unknown, not checked and fitting limits named as such."""
    verdict = "fits" if w["feasible"] else "does not fit"
    fit = "an unknown number of racks" if w["racks_fit"] is None else f"{w['racks_fit']}"
    text = (f"{w['racks_requested']} racks of {w['rack_kw']:g} kW in row {w['row']} {verdict}: "
            f"{fit} fit; first limit to break: {w['first_to_break']}.")
    if w["unknown"]:
        text += f" Unknown: {', '.join(w['unknown'])}."
    if w["not_checked"]:
        text += f" Not checked: {', '.join(w['not_checked'])} (give the new racks' values)."
    return text


def create_app(api: SiteAPI, server: Flask | bool = True, api_token: str | None = None) -> Dash:
    app = Dash(__name__, server=server, title=f"aidc · {api.site_name}", update_title=None,
               compress=True)  # flask-compress: brotli or gzip, as the browser accepts
    app.layout = layout(api)
    app.server.before_request(partial(_refuse_malformed_update, app))

    @app.callback(
        Output("updated-at", "children"), Output("pue-value", "children"),
        Output("pue-note", "children"), Output("it-kw", "children"),
        Output("facility-kw", "children"), Output("cooling-kw", "children"),
        Output("cooling-note", "children"), Output("devices-up", "children"),
        Output("rack-chart", "figure"), Output("rack-table", "data"),
        Output("alerts-table", "data"), Output("no-alerts", "children"),
        Output("backup-table", "data"), Output("pool-table", "data"),
        Output("silences-table", "data"),
        Input("refresh", "n_intervals"),
    )
    def refresh(_n):
        site, racks, alerts, devices = api.site(), api.racks(), api.alerts(), api.devices()
        up = sum(d["state"] in REACHABLE for d in devices)
        note = (f"instantaneous, ISO/IEC 30134-2 category {site['pue_category']}"
                if site["pue"] is not None
                else f"waiting for {len(site['missing'])} measurement(s)")
        cooling = f"pPUE {_fmt(site['cooling_ppue'], 3)}" if site["cooling_ppue"] else ""
        pools = api.headroom()["pools"]
        return (
            f"updated {site['updated_at'] or 'never'} (UTC)", _fmt(site["pue"], 3), note,
            _fmt(site["it_kw"]), _fmt(site["facility_kw"]), _fmt(site["cooling_kw"]), cooling,
            f"{up} / {len(devices)}", rack_figure(racks), rack_rows(racks),
            [{**a, "id": a["fingerprint"]} for a in alerts],  # selected by id
            "" if alerts else "No active alerts.",
            [{**b, "bridges": "yes" if b["bridges"] else "NO" if b["shortfall_s"] is not None
              else "unknown"} for b in api.backup()],
            pools,
            [{**x, "matchers": " ".join(x["matchers"])} for x in api.silences()],
        )

    @app.callback(Output("pue-1h", "children"), Output("pue-1h-note", "children"),
                  Input("slow-refresh", "n_intervals"))
    def interval_pue(_n):
        p = api.interval_pue("1h")
        if p["pue"] is not None:
            return _fmt(p["pue"], 3), "from energy counters"
        return "–", p["note"] or f"{len(p['missing'])} counter(s) missing"

    @app.callback(Output("whatif-result", "children"), Input("whatif-run", "n_clicks"),
                  State("whatif-row", "value"), State("whatif-racks", "value"),
                  State("whatif-kw", "value"), State("whatif-capture", "value"),
                  State("whatif-feed", "value"), State("whatif-air", "value"),
                  prevent_initial_call=True)
    def what_if(_clicks, row, racks, kw, capture, feed_kw, air_kw):
        try:  # the API's own validation: the page asks exactly what REST would
            w = api.what_if({"row": row, "racks": racks, "kw": kw, "capture": capture,
                             "feed_kw": feed_kw, "air_kw": air_kw})
        except ValueError as e:
            return f"Cannot check: {e}"
        return what_if_text(w)

    @app.callback(Output("action-result", "children"), Input("ack-selected", "n_clicks"),
                  Input("silence-add", "n_clicks"), State("operator-name", "value"),
                  State("operator-token", "value"), State("silence-matchers", "value"),
                  State("silence-for", "value"), State("silence-comment", "value"),
                  State("alerts-table", "selected_row_ids"), prevent_initial_call=True)
    def act(_ack, _silence, name, token, matchers, duration, comment, selected):
        return operator_action(api, api_token, ctx.triggered_id, name, token, matchers,
                               duration, comment, selected)

    return app
