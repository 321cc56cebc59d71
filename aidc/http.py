"""REST endpoints, mounted on the Dash app's Flask server (documented in the README).

Reads are open; write actions (acknowledging an alert, silences) need ``Authorization:
Bearer <web.api_token>``. Bad input gets a 400 with one line saying what was expected. The
OpenAPI document (``aidc.openapi``) is served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import wraps
from html import escape

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, MapAdapter, Rule

from aidc.api import AckRequest, SilenceRequest, SiteAPI, one_line
from aidc.auth import Auth
from aidc.core.derive import NotInSite
from aidc.openapi import openapi
from aidc.runtime import NotAnswering
from alerts.evaluate import HISTORY_DAYS
from alerts.rules import Rule as AlertRule

MAX_BODY_BYTES = 64 * 1024  # every request body aidc takes is a few hundred bytes


def runbooks_html(site: str, rules: Mapping[str, AlertRule]) -> str:
    """One section per rule, its id the rule's name (``/runbooks#<rule>``): what it means,
    how this site has it set, and the first steps."""
    sections = "".join(
        f'<section id="{escape(name)}"><h2>{escape(name)}</h2><p>{escape(rule.meaning)}</p>'
        f"<p>{escape(rule.settings_text())}</p>"
        + "<ol>" + "".join(f"<li>{escape(step)}</li>" for step in rule.steps) + "</ol>"
        + (f'<p><a href="{escape(rule.runbook_url)}">This site\'s runbook</a></p>'
           if rule.runbook_url else "") + "</section>"
        for name, rule in rules.items()
    )
    return (f"<!doctype html><html><head><meta charset=utf-8><title>aidc runbooks · "
            f"{escape(site)}</title></head><body><h1>Runbooks</h1>{sections}</body></html>")


def finite(obj):
    """JSON has no NaN or Infinity: such numbers become null (the API says elsewhere why)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


class FiniteJSONProvider(DefaultJSONProvider):
    """JSON out without NaN or Infinity, and JSON in refused (a 400) when it holds them or
    nests deeper than Python's parser goes."""

    def dumps(self, obj, **kwargs) -> str:
        return super().dumps(finite(obj), **kwargs)

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, parse_constant=_refuse_constant, **kwargs)
        except RecursionError:
            raise ValueError("the JSON body nests too deep") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def error(status: int, message: str):
    return jsonify({"error": message}), status


def short(text: str, most: int = 200) -> str:
    """An error message never repeats what a client sent at length."""
    return text if len(text) <= most else text[:most] + "..."


def parse(model: type[BaseModel], data) -> BaseModel:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as e:
        raise ValueError(one_line(e)) from None


def write_guard(auth: Auth):
    """Decorator for write actions: ``Authorization: Bearer <api_token>``, or a session of an
    operator or admin (who is then the author, whatever the body says); 401 without, 403 for
    a viewer or when writes are disabled."""

    def writes(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            who, refused = auth.may_write(token if scheme == "Bearer" else None)
            if refused:
                writes_off = not (auth.api_token or auth.enabled)
                return error(403 if writes_off or auth.user() else 401, refused)
            g.author = who  # None for the token: the name the body gives
            return view(*args, **kwargs)

        return guarded

    return writes


def author(given: str) -> str:
    """Who did it: the signed-in user, or the name a script gave with the bearer token."""
    return g.get("author") or given


def api_routes(app: Flask) -> MapAdapter:
    """The app's /api/ routes alone (without the Dash page's catch-all), to match against."""
    rules = [Rule(r.rule, methods=r.methods, endpoint=r.endpoint)
             for r in app.url_map.iter_rules() if r.rule.startswith("/api/")]
    return Map(rules).bind("localhost")


def register_health_routes(app: Flask, api: SiteAPI) -> None:
    """``/healthz`` and ``/metrics``: open to probes and scrapers, as Auth's OPEN_PATHS say;
    all that a collector of a sharded site serves."""
    @app.get("/healthz")
    def healthz():
        ok, body = api.health()
        return jsonify(body), 200 if ok else 503

    @app.get("/metrics")
    def metrics():
        body, content_type = api.metrics(request.headers.get("Accept", ""))
        return Response(body, content_type=content_type)


def register_routes(app: Flask, api: SiteAPI, auth: Auth) -> None:
    app.json = FiniteJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # refused from Content-Length, unread
    auth.install(app)
    writes = write_guard(auth)

    @app.errorhandler(ValueError)
    def bad_input(e: ValueError):
        return error(400, short(str(e)))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e: RequestEntityTooLarge):
        return error(413, f"the request body is over {MAX_BODY_BYTES // 1024} KiB")

    @app.errorhandler(NotInSite)
    def not_in_site(e: NotInSite):
        return error(404, short(str(e)))

    @app.errorhandler(NotAnswering)
    def not_answering(e: NotAnswering):
        return error(503, str(e))

    @app.before_request
    def api_paths_answer_json():
        """An /api/ path that no API route takes gets a JSON 404 or 405, never the Dash page
        (whose catch-all route would otherwise answer it)."""
        rule = request.url_rule
        if not request.path.startswith("/api/") or (rule and rule.rule.startswith("/api/")):
            return None
        try:
            api_routes(app).match(request.path, method=request.method)
        except MethodNotAllowed as e:
            allowed = ", ".join(sorted(e.valid_methods or ()))
            response, status = error(405, f"{request.method} is not allowed here: {allowed}")
            response.headers["Allow"] = allowed
            return response, status
        except NotFound:
            pass
        return error(404, short(f"no API endpoint {request.path}"))

    @app.get("/api/v1/openapi.json")
    def openapi_document():
        return jsonify(openapi())

    register_health_routes(app, api)

    @app.get("/api/v1/site")
    def site():
        return jsonify(api.site())

    @app.get("/api/v1/pue")
    def pue():
        return jsonify(api.interval_pue(request.args.get("window", "1h")))

    @app.get("/api/v1/racks")
    def racks():
        return jsonify(api.racks())

    @app.get("/api/v1/racks/<rack_id>")
    def rack(rack_id: str):
        found = api.rack_detail(rack_id)
        return jsonify(found) if found else error(404, short(f"no rack '{rack_id}'"))

    @app.get("/api/v1/racks/<rack_id>/headroom")
    def rack_headroom(rack_id: str):
        found = api.rack_headroom(rack_id)
        return jsonify(found) if found else error(404, short(f"no rack '{rack_id}'"))

    @app.get("/api/v1/headroom")
    def headroom():
        min_kw = request.args.get("min_kw")
        try:
            min_kw = None if min_kw is None else float(min_kw)
        except ValueError:
            raise ValueError(f"min_kw: expected a number of kW, got '{min_kw}'") from None
        return jsonify(api.headroom(request.args.get("row") or None, min_kw))

    @app.post("/api/v1/whatif")
    def whatif():
        return jsonify(api.what_if(request.get_json(silent=True)))

    @app.get("/api/v1/backup")
    def backup():
        return jsonify(api.backup())

    @app.get("/api/v1/devices")
    def devices():
        return jsonify(api.devices())

    @app.get("/api/v1/devices/<device_id>/readings")
    def device_readings(device_id: str):
        found = api.device_readings(device_id)
        return jsonify(found) if found is not None else error(404, short(f"no device '{device_id}'"))

    @app.get("/api/v1/devices/<device_id>/probe")
    def device_probe(device_id: str):
        found = api.probe(device_id)
        return jsonify(found) if found is not None else error(404, short(f"no device '{device_id}'"))

    @app.get("/api/v1/alerts")
    def alerts():
        return jsonify(api.alerts())

    @app.get("/api/v1/alerts/history")
    def alert_history():
        hours = request.args.get("hours", "24")
        try:
            hours = float(hours)
        except ValueError:
            raise ValueError(f"hours: expected a number of hours, got '{short(hours, 40)}'") from None
        if not 0 < hours <= 24 * HISTORY_DAYS:
            raise ValueError(f"hours: expected more than 0 and at most {24 * HISTORY_DAYS}")
        return jsonify(api.alert_history(hours))

    @app.get("/api/v1/rules")
    def rules():
        return jsonify(api.rules())

    @app.get("/api/v1/notifications")
    def notifications():
        return jsonify(api.notifications())

    @app.get("/api/v1/silences")
    def silences():
        return jsonify(api.silences())

    @app.post("/api/v1/silences")
    @writes
    def add_silence():
        q = parse(SilenceRequest, request.get_json(silent=True))
        body = api.add_silence(q.matchers, q.duration_s, author(q.created_by), q.comment,
                               q.starts_at and q.starts_at.timestamp())
        return jsonify(body), 201

    @app.delete("/api/v1/silences/<silence_id>")
    @writes
    def expire_silence(silence_id: str):
        q = parse(AckRequest, request.get_json(silent=True))
        try:
            return jsonify(api.expire_silence(silence_id, author(q.by)))
        except KeyError:
            return error(404, short(f"no pending or active silence '{silence_id}'"))

    @app.get("/runbooks")
    def runbooks():
        """What each rule means, how this site has it set, and the first steps:
        notifications link here."""
        return Response(runbooks_html(api.site_name, api.runtime.notifier.rules),
                        mimetype="text/html")

    @app.post("/api/v1/alerts/<fingerprint>/ack")
    @writes
    def acknowledge(fingerprint: str):
        q = parse(AckRequest, request.get_json(silent=True))
        try:
            return jsonify(api.acknowledge(fingerprint, author(q.by)))
        except KeyError:
            return error(404, short(f"no active alert '{fingerprint}'"))
