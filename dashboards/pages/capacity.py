"""Capacity: the shared pools, a what-if for new racks, and every rack's headroom, filtered
by room, row, kW and binding limit, with a CSV export for the planner's sheet.

The rack table is filtered, sorted and paged here, not in the browser: at 10,000 racks the
browser is sent 50 rows a refresh, not every rack; the CSV holds every rack the filters keep."""

from __future__ import annotations

import csv
import io
import math
from operator import itemgetter

from dash import Dash, Input, Output, State, dcc, html, no_update

from aidc.api import SiteAPI
from aidc.auth import Auth
from dashboards.widgets import GREY, NOTE, ROW, table
from models.headroom import LIMITS

TABLE_ROWS = 50  # rows a page in the rack table, sorted across all pages
FILTERS = (Input("filter-room", "value"), Input("filter-row", "value"),
           Input("filter-min-kw", "value"), Input("filter-limit", "value"))
CSV_COLUMNS = ("id", "room", "row", "power_kw", "power_kw_peak", "design_kw", "headroom_kw",
               "limiting")
TABLE_FIELDS = (*CSV_COLUMNS, "complete")  # what the table shows and greys by, nothing more
FIELD = {"marginRight": "12px"}


def layout(api: SiteAPI) -> html.Div:
    site = api.runtime.site
    rows = sorted({r.row for r in site.racks})
    return html.Div([
        html.H3("Shared pools"),
        html.Div("Racks behind one pool share it: their per-rack headroom figures must not be "
                 "added up.", style=NOTE),
        table("pool-table", [("Pool", "id"), ("Kind", "kind"), ("Capacity (kW)", "capacity_kw"),
                             ("Load (kW)", "load_kw"),
                             ("Left after the worst failure (kW)", "left_kw"),
                             ("Worst failure", "worst_failure"),
                             ("Left, nothing more lost (kW)", "left_normal_kw")],
              numeric=("capacity_kw", "load_kw", "left_kw", "left_normal_kw")),
        html.Div("Sources hold their racks after any single other source fails (a dual-corded "
                 "rack then moves its whole load to its surviving feed); loops keep their "
                 "largest CDU in reserve (N+1). Loops are in kW of heat.", style=NOTE),
        html.H3("What if: place new racks in a row"),
        html.Div([
            html.Label(["Row ", dcc.Dropdown(rows, rows[0], id="whatif-row", clearable=False,
                                             style={"width": "90px"})], style=FIELD),
            html.Label(["Racks ", dcc.Input(id="whatif-racks", type="number", value=4, min=1)],
                       style=FIELD),
            html.Label(["kW each ", dcc.Input(id="whatif-kw", type="number", value=40, min=1)],
                       style=FIELD),
            html.Label(["Capture ratio ", dcc.Input(id="whatif-capture", type="number", value=0.85,
                                                    min=0, max=1, step=0.05)], style=FIELD),
            html.Label(["Feed kW ", dcc.Input(id="whatif-feed", type="number", min=0)], style=FIELD),
            html.Label(["Air kW ", dcc.Input(id="whatif-air", type="number", min=0)], style=FIELD),
            html.Button("Check", id="whatif-run"),
        ], style={**ROW, "alignItems": "center"}),
        html.Div(id="whatif-result", style={"marginTop": "12px", "fontSize": "16px"}),
        html.H3("Headroom of every rack"),
        html.Div([
            html.Label(["Room ", dcc.Dropdown([r.id for r in site.rooms], id="filter-room",
                                              style={"width": "140px"})], style=FIELD),
            html.Label(["Row ", dcc.Dropdown(rows, id="filter-row", style={"width": "90px"})],
                       style=FIELD),
            html.Label(["At least (kW) ", dcc.Input(id="filter-min-kw", type="number")],
                       style=FIELD),
            html.Label(["Binding limit ", dcc.Dropdown([*LIMITS, "unknown"], id="filter-limit",
                                                       style={"width": "140px"})], style=FIELD),
            html.Button("Download CSV", id="rack-csv-button"), dcc.Download(id="rack-csv"),
            html.Span(id="rack-count", style={**NOTE, "marginLeft": "12px"}),
        ], style={**ROW, "alignItems": "center", "marginBottom": "8px"}),
        table(
            "rack-table",
            [("Rack", "id"), ("Room", "room"), ("Row", "row"), ("Power (kW)", "power_kw"),
             ("Peak (kW)", "power_kw_peak"), ("Design (kW)", "design_kw"),
             ("Headroom (kW)", "headroom_kw"), ("Binding limit", "limiting")],
            numeric=("power_kw", "power_kw_peak", "design_kw", "headroom_kw"),
            sort_action="custom", sort_mode="multi", sort_by=[], page_action="custom",
            page_current=0, page_size=TABLE_ROWS, page_count=1,
            style_data_conditional=[
                {"if": {"filter_query": "{headroom_kw} < 0"}, "backgroundColor": "#ffebe9"},
                {"if": {"filter_query": "{complete} = false"}, "color": GREY},
                {"if": {"column_id": "id"}, "color": "#0969da", "cursor": "pointer"},
            ],
        ),
        html.Div("Click a rack to open its page.", style=NOTE),
    ])


def rack_rows(racks: list[dict], room=None, row=None, min_kw=None, limit=None) -> list[dict]:
    """The table's rows, filtered; a headroom that is only an upper bound (some limit
    unknown) says so."""
    return [{**r, "limiting": r["limiting"] + ("" if r["complete"] else " (upper bound)")}
            for r in racks
            if (room is None or r["room"] == room) and (row is None or r["row"] == row)
            and (limit is None or r["limiting"] == limit)
            and (min_kw is None or (r["headroom_kw"] is not None and r["headroom_kw"] >= min_kw))]


def sorted_rows(rows: list[dict], sort_by) -> list[dict]:
    """Sorted as the table's headers ask (Dash's ``sort_by``, first column first), by the
    table's columns only (anything else a request holds is left out); an unknown value goes
    last whichever the direction."""
    asked = sort_by if isinstance(sort_by, list) else []
    for by in reversed(asked):
        if not (isinstance(by, dict) and by.get("column_id") in CSV_COLUMNS
                and by.get("direction") in ("asc", "desc")):
            continue
        column, descending = by["column_id"], by["direction"] == "desc"
        known = [r for r in rows if r.get(column) is not None]
        rows = (sorted(known, key=itemgetter(column), reverse=descending)
                + [r for r in rows if r.get(column) is None])
    return rows


def csv_text(rows: list[dict]) -> str:
    """The table's columns, an unknown value an empty cell (never 0)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


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


def register(app: Dash, api: SiteAPI, auth: Auth) -> None:
    def kept(room, row, min_kw, limit, sort_by) -> tuple[dict, list[dict]]:
        h = api.headroom(with_racks=False)  # the pools' rack ids are for no column
        min_kw = min_kw if isinstance(min_kw, int | float) else None
        return h, sorted_rows(rack_rows(h["racks"], room, row, min_kw, limit), sort_by)

    @app.callback(Output("pool-table", "data"), Output("rack-table", "data"),
                  Output("rack-table", "page_count"), Output("rack-table", "page_current"),
                  Output("rack-count", "children"), Input("refresh", "n_intervals"),
                  *FILTERS, Input("rack-table", "page_current"), Input("rack-table", "sort_by"))
    def refresh(_n, room, row, min_kw, limit, page, sort_by):
        h, rows = kept(room, row, min_kw, limit, sort_by)
        pages = max(1, math.ceil(len(rows) / TABLE_ROWS))
        page = min(page, pages - 1) if isinstance(page, int) and page >= 0 else 0
        first = page * TABLE_ROWS
        shown = [{k: r[k] for k in TABLE_FIELDS} for r in rows[first:first + TABLE_ROWS]]
        return (h["pools"], shown, pages, page,
                f"{len(rows)} of {len(h['racks'])} racks")

    @app.callback(Output("rack-csv", "data"), Input("rack-csv-button", "n_clicks"),
                  *(State(i.component_id, i.component_property) for i in FILTERS),
                  State("rack-table", "sort_by"), prevent_initial_call=True)
    def export(_n, room, row, min_kw, limit, sort_by):
        return dcc.send_string(csv_text(kept(room, row, min_kw, limit, sort_by)[1]),
                               f"{api.runtime.site.site}-headroom.csv", type="text/csv")

    @app.callback(Output("url", "pathname", allow_duplicate=True),
                  Input("rack-table", "active_cell"), prevent_initial_call=True)
    def open_rack(cell):
        if not (isinstance(cell, dict) and cell.get("column_id") == "id"
                and isinstance(cell.get("row_id"), str)):
            return no_update
        return f"/rack/{cell['row_id']}"

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
