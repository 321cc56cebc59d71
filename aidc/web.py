"""One HTTP server for the Dash app and the REST API, in a thread beside the asyncio runtime."""

from __future__ import annotations

import logging
import threading

from flask import Flask
from werkzeug.serving import make_server

from aidc.api import SiteAPI
from aidc.http import register_routes
from dashboards.app import create_app

log = logging.getLogger("aidc.web")


class WebServer:
    def __init__(self, api: SiteAPI, host: str = "127.0.0.1", port: int = 8050,
                 api_token: str | None = None):
        self.flask = Flask("aidc")
        register_routes(self.flask, api, api_token)
        self.dash = create_app(api, server=self.flask)
        self._server = make_server(host, port, self.flask, threaded=True)
        self.host, self.port = host, self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()
        log.info("event=web_started url=%s", self.url)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
