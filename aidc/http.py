"""REST endpoints, mounted on the Dash app's Flask server (documented in the README)."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from aidc.api import SiteAPI


def register_routes(app: Flask, api: SiteAPI) -> None:
    @app.get("/healthz")
    def healthz():
        ok, body = api.health()
        return jsonify(body), 200 if ok else 503

    @app.get("/metrics")
    def metrics():
        return Response(api.metrics_text(), mimetype="text/plain; version=0.0.4")

    @app.get("/api/v1/site")
    def site():
        return jsonify(api.site())

    @app.get("/api/v1/racks")
    def racks():
        return jsonify(api.racks())

    @app.get("/api/v1/devices")
    def devices():
        return jsonify(api.devices())

    @app.get("/api/v1/alerts")
    def alerts():
        return jsonify(api.alerts())
