"""What every page of the console is built from: cards, tables, numbers that say when they
are unknown, and the colours of severity."""

from __future__ import annotations

import plotly.graph_objects as go
from dash import dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme

CARD = {"padding": "12px 18px", "border": "1px solid #d0d7de", "borderRadius": "8px",
        "minWidth": "150px", "background": "#ffffff"}
UNKNOWN = "unknown"
UNKNOWN_STYLE = {"color": "#8c959f", "fontStyle": "italic"}
KW = Format(precision=1, scheme=Scheme.fixed, nully=UNKNOWN)  # a number, or the word
ROW = {"display": "flex", "gap": "12px", "flexWrap": "wrap"}
CELL = {"fontFamily": "inherit", "padding": "6px", "textAlign": "left"}
NOTE = {"color": "#57606a", "margin": "6px 0"}
# a rack's headroom limits (models.headroom.LIMITS) in the operator's words
LIMIT_WORDS = {"design": "rack design rating", "feed": "feeds (A/B kept)",
               "phase": "phase currents", "upstream": "upstream source, failover kept",
               "liquid_rack": "rack manifold flow", "loop": "CDU loop, N+1 kept",
               "air": "air allowance", "supply_class": "supply temperature class"}
# severity and site state, as the status bar and the floor colour them
RED, AMBER, GREEN, GREY = "#cf222e", "#bf8700", "#1a7f37", "#8c959f"


def kpi(label: str, value_id: str, note_id: str | None = None) -> html.Div:
    children = [
        html.Div(label, style={"fontSize": "13px", "color": "#57606a"}),
        html.Div("…", id=value_id, style={"fontSize": "30px", "fontWeight": 600}),
    ]
    if note_id:
        children.append(html.Div(id=note_id, style={"fontSize": "12px", "color": "#57606a"}))
    return html.Div(children, style=CARD)


def fmt(value: float | None, digits: int = 1) -> str:
    """A number, or the word unknown: never a dash a reader could take for zero."""
    return UNKNOWN if value is None else f"{value:,.{digits}f}"


def table(table_id: str, columns: list[tuple[str, str]], numeric: tuple[str, ...] = (),
          links: tuple[str, ...] = (), **kw) -> dash_table.DataTable:
    """A table; ``links`` are columns of markdown links (to a rack's page, say). A numeric
    cell without a value says unknown, greyed, never blank."""
    def column(name: str, cid: str) -> dict:
        if cid in numeric:
            return {"name": name, "id": cid, "type": "numeric", "format": KW}
        if cid in links:
            return {"name": name, "id": cid, "presentation": "markdown"}
        return {"name": name, "id": cid}

    return dash_table.DataTable(
        id=table_id, columns=[column(name, cid) for name, cid in columns],
        style_cell=CELL, markdown_options={"link_target": "_self"},
        style_cell_conditional=[{"if": {"column_id": c}, "textAlign": "right"} for c in numeric],
        style_data_conditional=[{"if": {"filter_query": f"{{{c}}} is nil", "column_id": c},
                                 **UNKNOWN_STYLE} for c in numeric]
        + kw.pop("style_data_conditional", []),
        **kw,
    )


def bridges(chain: dict) -> str:
    """Whether a backup chain bridges to the generator: no only when the shortfall is known."""
    if chain["bridges"]:
        return "yes"
    return UNKNOWN if chain["shortfall_s"] is None else "no"


def unknown_words(rack: dict) -> str:
    """What a rack's headroom (API rack JSON) cannot be known without: its power, or the
    limits not read."""
    if rack["power_kw"] is None:
        return "its power"
    return ", ".join(LIMIT_WORDS[k] for k in rack["unknown"]) or "no limit read"


def inexact_words(rack: dict) -> str:
    """A headroom that is unknown or only an upper bound (a limit not read), in words."""
    h, missing = rack["headroom_kw"], f"unknown: {unknown_words(rack)}"
    if h is None:
        return missing
    if h < 0:
        return f"over by at least {-h:,.1f} kW ({rack['limiting']}); {missing}"
    return f"at most {h:,.1f} kW; {missing}"


def rack_link(rack_id: str) -> str:
    return f"[{rack_id}](/rack/{rack_id})"


def graph(graph_id: str, height_px: int = 300) -> dcc.Graph:
    return dcc.Graph(id=graph_id, config={"displayModeBar": False},
                     style={"height": f"{height_px}px"})


def titled_axis(title: str) -> dict:
    """An axis with a title and its tick labels always shown. plotly.py's template gives the
    title a standoff, which plotly.js measures from the labels' bounding box; a redraw that
    found every label past the div hid them all (its default, 'hide past div'), so the box
    stayed at +/-Infinity, the title went to x=Infinity and Chromium logged an error. A label
    past the div is clipped by the SVG anyway."""
    return {"title": title, "ticklabeloverflow": "allow"}


def time_figure(lines: list[tuple[str, list[tuple[float, float]]]], y_title: str) -> go.Figure:
    """Lines over time from the store's (unix s, value) points, one per (name, points)."""
    fig = go.Figure([go.Scatter(x=[t * 1000 for t, _ in points], y=[v for _, v in points],
                                mode="lines", name=name) for name, points in lines])
    fig.update_layout(margin={"l": 50, "r": 10, "t": 10, "b": 30}, xaxis_type="date",
                      yaxis=titled_axis(y_title), legend={"orientation": "h"})
    return fig


def said(fig: go.Figure, message: str) -> go.Figure:
    """A chart that says why it has nothing to draw (no data, the store down)."""
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig
