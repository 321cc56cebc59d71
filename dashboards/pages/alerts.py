"""Alerts: what is firing, pending or suppressed (and by what), acknowledging one and
silencing what matches from the page, the silences, what changed over the last day, the
notifications not delivered yet or dead, and the rules as this site has them."""

from __future__ import annotations

from dash import Dash, Input, Output, State, ctx, dcc, html
from pydantic import ValidationError

from aidc.api import AckRequest, SilenceRequest, SiteAPI, one_line
from aidc.auth import Auth
from aidc.runtime import NotAnswering
from dashboards.widgets import NOTE, RED, ROW, table

SILENCE_FOR = {"30 min": 1800, "2 h": 7200, "8 h": 28800, "1 day": 86400}


def layout(api: SiteAPI) -> html.Div:
    return html.Div([
        html.H3("Active alerts"),
        table("alerts-table", [("Severity", "severity"), ("Alert", "rule"), ("State", "state"),
                               ("Since", "starts_at"), ("Acknowledged by", "acked_by"),
                               ("Summary", "summary"), ("Suppressed by", "suppressed_by")],
              row_selectable="single", selected_rows=[], selected_row_ids=[],
              style_data_conditional=[{"if": {"filter_query": '{severity} = "critical"'},
                                       "color": RED}]),
        html.Div(id="no-alerts", style=NOTE),
        operator_actions(),
        html.H3("Silences (aidc silence add | list | expire)"),
        table("silences-table", [("State", "state"), ("Matchers", "matchers"),
                                 ("From", "starts_at"), ("Until", "ends_at"),
                                 ("By", "created_by"), ("Comment", "comment"),
                                 ("Expired by", "expired_by")]),
        html.H3("Changes, last 24 h"),
        table("history-table", [("At", "at"), ("Change", "change"), ("Alert", "rule"),
                                ("Summary", "summary"), ("Since", "starts_at")],
              page_size=25, style_data_conditional=[
                  {"if": {"filter_query": '{change} contains "critical"'}, "color": RED},
                  {"if": {"filter_query": '{change} = "resolved"'}, "color": "#1a7f37"}]),
        html.H3("Notifications"),
        html.Div(id="deliveries-summary", style=NOTE),
        table("deliveries-table", [("Receiver", "webhook"), ("Status", "status"),
                                   ("Queued at", "created_at"), ("Attempts", "attempts"),
                                   ("Next try", "next_attempt_at"), ("Last error", "last_error")],
              page_size=25, style_data_conditional=[
                  {"if": {"filter_query": '{status} = "dead"'}, "color": RED}]),
        html.H3("Rules (alerts.rules in the site file)"),
        table("rules-table", [("Rule", "rule"), ("From", "source"), ("Set", "settings"),
                              ("Meaning", "meaning")], links=("rule",), page_size=50,
              data=rule_rows(api.rules())),
    ])


def rule_rows(rules: list[dict]) -> list[dict]:
    """Each rule linked to its runbook (the site's own, or the console's)."""
    return [{**r, "rule": f"[{r['name']}]({r['runbook']})",
             "source": "aidc" if r["source"] == "aidc" else "this site"} for r in rules]


def operator_actions() -> html.Div:
    """Acknowledge the selected alert, or silence what matches: signed in as an operator, or
    with a name and the site's API token (``web.api_token``), checked as the API checks it."""
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


def operator_action(api: SiteAPI, auth: Auth, action: str | None, name, token,
                    matchers, duration, comment, selected) -> str:
    """What the page says after an operator's action: done, or why not (never a 500)."""
    name, refused = auth.may_write(token, name)
    if refused:
        return f"Refused: {refused}."
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


def history_rows(history: list[dict]) -> list[dict]:
    """A change in words: fired critical, escalated warning -> critical, resolved."""
    def change(h: dict) -> str:
        if h["kind"] in ("escalated", "deescalated"):
            return f"{h['kind']} {h['previous_severity']} -> {h['severity']}"
        return "resolved" if h["kind"] == "resolved" else f"fired {h['severity']}"

    return [{**h, "change": change(h)} for h in history]


def deliveries_summary(deliveries: list[dict]) -> str:
    """What the outbox holds: notifications waiting for their receiver, and dead letters
    (refused for good, or out of attempts), which no retry will deliver."""
    if not deliveries:
        return "Every notification delivered."
    dead = sum(d["status"] == "dead" for d in deliveries)
    return (f"{len(deliveries) - dead} waiting for delivery, "
            f"{dead} dead letter{'' if dead == 1 else 's'}")


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    @app.callback(Output("alerts-table", "data"), Output("no-alerts", "children"),
                  Output("silences-table", "data"), Input("refresh", "n_intervals"))
    def refresh(_n):
        alerts = api.alerts()
        return ([{**a, "id": a["fingerprint"]} for a in alerts],  # selected by id
                "" if alerts else "No active alerts.",
                [{**x, "matchers": " ".join(x["matchers"])} for x in api.silences()])

    @app.callback(Output("history-table", "data"), Output("deliveries-table", "data"),
                  Output("deliveries-summary", "children"), Input("refresh", "n_intervals"))
    def record(_n):
        deliveries = api.notifications()
        return history_rows(api.alert_history(24)), deliveries, deliveries_summary(deliveries)

    @app.callback(Output("action-result", "children"), Input("ack-selected", "n_clicks"),
                  Input("silence-add", "n_clicks"), State("operator-name", "value"),
                  State("operator-token", "value"), State("silence-matchers", "value"),
                  State("silence-for", "value"), State("silence-comment", "value"),
                  State("alerts-table", "selected_row_ids"), prevent_initial_call=True)
    def act(_ack, _silence, name, token, matchers, duration, comment, selected):
        return operator_action(api, auth, ctx.triggered_id, name, token, matchers,
                               duration, comment, selected)
