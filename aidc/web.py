"""One HTTP server for the Dash app and the REST API, in a thread beside the asyncio runtime:
waitress, a production WSGI server (pure Python, threads, no C build), not werkzeug's
development server."""

from __future__ import annotations

import logging
import threading

from flask import Flask
from waitress.server import create_server

from aidc.api import SiteAPI
from aidc.auth import Auth
from aidc.http import MAX_BODY_BYTES, register_health_routes, register_routes
from dashboards.app import create_app

log = logging.getLogger("aidc.web")
THREADS = 8  # requests served at once: the console's refreshes, the API, /metrics


class WebServer:
    def __init__(self, api: SiteAPI, host: str = "127.0.0.1", port: int = 8050,
                 api_token: str | None = None, console: bool = True):
        """``console`` False (a collector of a sharded site): ``/healthz`` and ``/metrics``
        alone."""
        self.flask = Flask("aidc")
        self.auth = Auth(api.runtime.site.web, api_token, api.runtime.data_dir)
        if console:
            register_routes(self.flask, api, self.auth)
            self.dash = create_app(api, server=self.flask, auth=self.auth)
        else:
            register_health_routes(self.flask, api)
        # Flask answers an oversized body with a JSON 413 from its Content-Length; waitress
        # bounds a chunked one (which has none) before the app reads it. poll(), not select():
        # with a socket per device the process holds descriptors past 1,024, where select()
        # raises and waitress's thread dies, leaving the port open and nothing answering
        self._server = create_server(self.flask, host=host, port=port, threads=THREADS,
                                     ident="aidc", max_request_body_size=16 * MAX_BODY_BYTES,
                                     asyncore_use_poll=True)
        self.host, self.port = host, self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()
        log.info("event=web_started url=%s", self.url)

    def stop(self) -> None:
        """Close the listening socket and every connection on the server's own thread (its
        trigger runs the closing there: waitress has no public stop), then its workers."""
        def close_all() -> None:
            for channel in list(self._server._map.values()):
                channel.close()

        if self._thread.is_alive():
            self._server.trigger.pull_trigger(close_all)
            self._thread.join(timeout=5)
        else:
            close_all()
        self._server.task_dispatcher.shutdown(timeout=5)
