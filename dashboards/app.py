"""The operators' console: a Dash app of one page per question (overview, floor, rack,
cooling, power, trends, alerts, capacity, devices), each at its own URL, under a status bar
that says at a glance whether the site is normal, on battery, degraded or showing stale data.

It reads through aidc.api only (never the store or devices directly) and refreshes live.
Its write actions (acknowledge an alert, silence) need an operator's session or the site's
API token, as the API's do (aidc.auth).
"""

from __future__ import annotations

from functools import partial

from dash import Dash, Input, Output, dcc, html
from flask import Flask, jsonify, request, session

from aidc.api import SiteAPI
from aidc.auth import Auth
from aidc.core.config import Web
from dashboards.pages import (
    alerts,
    capacity,
    cooling,
    devices,
    floor,
    overview,
    power,
    rack,
    trends,
)
from dashboards.widgets import AMBER, GREEN, GREY, RED

REFRESH_MS = 2000
SLOW_REFRESH_MS = 30_000  # trends from the store: no need to read them every 2 s
ASSET_CACHE_S = 365 * 86_400
SESSION_CHECK_MS = 10_000  # a page whose session ended goes to /login within this
# the page's refreshes would only fail with 401 once its session ends (12 h, or signed out
# elsewhere): a wall screen would freeze on old numbers, so the page asks and leaves
TO_LOGIN_WHEN_SIGNED_OUT = """
async function(n) {
    const r = await fetch('/_session', {credentials: 'same-origin', cache: 'no-store'});
    if (r.status === 401) {
        window.location.assign('/login?next=' + encodeURIComponent(window.location.pathname));
    }
    return window.dash_clientside.no_update;
}"""
PAGE = {"fontFamily": "system-ui, sans-serif", "margin": "0 auto", "maxWidth": "1280px",
        "padding": "0 16px 16px", "background": "#f6f8fa"}
# (path, title in the menu, module); a rack's page is /rack/<id>, reached from the others
PAGES = [("/", "Overview", overview), ("/floor", "Floor", floor), ("/cooling", "Cooling", cooling),
         ("/power", "Power", power), ("/trends", "Trends", trends), ("/alerts", "Alerts", alerts),
         ("/capacity", "Capacity", capacity), ("/devices", "Devices", devices)]
STATE_WORDS = {"normal": ("Normal", GREEN), "on_battery": ("On battery", RED),
               "degraded": ("Degraded redundancy", AMBER), "stale": ("Data stale", GREY)}
BAR = {"display": "flex", "gap": "16px", "alignItems": "center", "flexWrap": "wrap",
       "padding": "8px 12px", "background": "#ffffff", "position": "sticky", "top": "0",
       "zIndex": 10}
CAPTION = {"color": "#ffffff", "fontWeight": 600, "padding": "2px 10px", "borderRadius": "4px"}


def status_bar(site: dict) -> tuple[list, str]:
    """The bar's content and its colour: red with a critical alert firing or the site on
    battery, amber with a warning or redundancy lost, grey when the data is stale (nothing
    is known now), green otherwise."""
    alerts_now, state = site["alerts"], site["state"]
    critical, warning, suppressed, worst = (
        alerts_now[k] for k in ("critical", "warning", "suppressed", "worst"))
    colour = (GREY if state == "stale" else RED if critical or state == "on_battery"
              else AMBER if warning or state == "degraded" else GREEN)
    age = site["data_age_s"]
    words, state_colour = STATE_WORDS[state]
    children = [
        html.Span(words, id="site-state", style={**CAPTION, "background": state_colour}),
        html.Span(f"{critical} critical · {warning} warning"
                  + (f" · {suppressed} suppressed" if suppressed else ""), id="alert-counts"),
        html.Span(worst or "no alert firing", id="worst-alert", style={"fontWeight": 600 if worst else 400}),
        html.Span(site["state_detail"], id="state-detail"),
        html.Span("no data yet" if age is None else f"data {age:.0f} s old", id="data-age",
                  style={"marginLeft": "auto", "color": "#57606a"}),
    ]
    return children, colour


def layout() -> html.Div:
    menu = [dcc.Link(title, href=path, style={"marginRight": "16px"}) for path, title, _ in PAGES]
    return html.Div([
        dcc.Location(id="url"),
        html.Div(id="status-bar", style={**BAR, "borderBottom": f"4px solid {GREY}"}),
        html.Div([html.H2(id="page-title", style={"margin": "8px 24px 8px 0"}),
                  html.Nav(menu), html.Div(id="who", style={"marginLeft": "auto"})],
                 style={"display": "flex", "alignItems": "baseline"}),
        html.Div(id="page"),
        dcc.Interval(id="refresh", interval=REFRESH_MS),
        dcc.Interval(id="slow-refresh", interval=SLOW_REFRESH_MS),
    ], style=PAGE)


def _refuse_malformed_update(app: Dash):
    """Dash's callback endpoint trusts its body (a malformed one raised KeyError or
    IndexError: a 500): one that is not a call of one of this app's callbacks gets a 400
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


def create_app(api: SiteAPI, server: Flask | bool = True, api_token: str | None = None,
               auth: Auth | None = None) -> Dash:
    """The console; ``auth`` (the web server's: sign-in and roles) or, standalone, writes by
    ``api_token`` only."""
    auth = auth or Auth(Web(), api_token)
    # the pages' components come and go with the URL: their callbacks are checked when
    # called, not against the first layout
    app = Dash(__name__, server=server, title=f"aidc · {api.site_name}", update_title=None,
               compress=True,  # flask-compress: brotli or gzip, as the browser accepts
               suppress_callback_exceptions=True)
    # dashboards/assets (a plotly.js of the trace types drawn here) is fingerprinted by Dash
    # (?m=<mtime>), so a browser may keep it a year, as Dash's own bundles are kept
    app.server.config["SEND_FILE_MAX_AGE_DEFAULT"] = ASSET_CACHE_S
    app.layout = layout()
    app.server.before_request(partial(_refuse_malformed_update, app))

    @app.callback(Output("page", "children"), Output("page-title", "children"),
                  Input("url", "pathname"))
    def route(path):
        path = path if isinstance(path, str) and path else "/"
        if path.startswith("/rack/"):
            rack_id = path.removeprefix("/rack/")
            return rack.layout(api, rack_id), f"Rack {rack_id}"
        for page_path, title, page in PAGES:
            if path == page_path:
                return page.layout(api), title if page_path != "/" else api.site_name
        return html.Div(f"No page at {path}.", id="not-found"), "Not found"

    @app.callback(Output("status-bar", "children"), Output("status-bar", "style"),
                  Input("refresh", "n_intervals"))
    def refresh_status(_n):
        children, colour = status_bar(api.site())
        return children, {**BAR, "borderBottom": f"4px solid {colour}"}

    if auth.enabled:
        app.layout.children.append(dcc.Interval(id="session-check", interval=SESSION_CHECK_MS))
        app.clientside_callback(TO_LOGIN_WHEN_SIGNED_OUT, Output("session-check", "disabled"),
                                Input("session-check", "n_intervals"), prevent_initial_call=True)
    for _, _, page in PAGES:
        page.register(app, api, auth)
    rack.register(app, api, auth)

    @app.callback(Output("who", "children"), Input("url", "pathname"))
    def who(_path):
        if not auth.enabled:
            return []
        if (u := auth.user()) is None:
            return html.A("Sign in", href="/login", id="sign-in")
        # a form to /logout: the browser leaves the page, so no refresh of it runs unsigned
        return [html.Span(f"{u[0]} ({u[1]})", id="signed-in-as"),
                html.Form([dcc.Input(type="hidden", name="csrf", value=session.get("csrf", "")),
                           html.Button("Sign out", id="sign-out", type="submit")],
                          action="/logout", method="POST",
                          style={"display": "inline", "marginLeft": "8px"})]

    return app
