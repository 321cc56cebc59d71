"""Shared fixtures: real servers on 127.0.0.1, never mocks of our own boundaries.

A required server or browser that is missing FAILS the test (never skips): `make test`
installs them (tests/system-deps.sh).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from aidc.core.net import free_port

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.reliability"]  # the `reliability` fixture and table


def wait_for(predicate, timeout_s: float = 30, what: str = "the condition"):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after the
    timeout naming ``what``. For state that a live site reaches asynchronously."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def while_the_other_waits(prompt, stuck):
    """Run both awaitables together; return ``prompt``'s outcome (its result or the exception
    it raised) once it ends, failing if ``stuck`` ended first. ``stuck`` is then cancelled.

    "A slow device never delays another" as an order of events, not a stopwatch: give the
    stuck one a timeout far beyond the prompt one's work, and the test cannot race."""
    import asyncio

    prompt_task, stuck_task = asyncio.ensure_future(prompt), asyncio.ensure_future(stuck)
    try:
        await asyncio.wait({prompt_task, stuck_task}, return_when=asyncio.FIRST_COMPLETED)
        assert not stuck_task.done(), f"the stuck one ended first: {stuck_task!r}"
        await asyncio.wait({prompt_task})
    finally:
        stuck_task.cancel()
        await asyncio.wait({stuck_task})
    return prompt_task.exception() or prompt_task.result()


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} not found: install the Debian package '{package}' (make system-deps)")
    return path


# ---------------------------------------------------------------- browser (dash[testing])


def pytest_setup_options():
    from selenium.webdriver.chrome.options import Options

    require("chromium", "chromium")
    require("chromedriver", "chromium-driver")
    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"):
        options.add_argument(arg)
    return options


# ---------------------------------------------------------------- InfluxDB (Debian influxdb 1.x)

INFLUXD_CONF = """
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"""


class Influxd:
    def __init__(self, tmp: Path):
        self.binary = require("influxd", "influxdb")
        self.dir, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = tmp / "influxdb.conf"
        conf.write_text(INFLUXD_CONF.format(dir=tmp, rpc_port=free_port(), http_port=self.port))
        self.conf = conf
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.dir / "influxd.log", "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen([self.binary, "-config", str(self.conf)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/ping", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"influxd did not answer /ping: {(self.dir / 'influxd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def influxd(tmp_path_factory):
    server = Influxd(tmp_path_factory.mktemp("influxd"))
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------- webhook receiver


class Receiver:
    """A real HTTP receiver on 127.0.0.1 that records every webhook it gets."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body,
                     "json": json.loads(body) if body else None, "at": time.time()}
                )
                self.send_response(received.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict]:
        return [r["json"] for r in self.requests]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# ---------------------------------------------------------------- a live simulated site


class LiveSite:
    """Simulators + runtime of the demo site on free ports, on an event loop in a thread."""

    def __init__(self, site, data_dir: Path, receiver: Receiver | None = None):
        import asyncio

        from simulators.site import SimulatedSite

        self.site, self.data_dir, self.receiver = site, data_dir, receiver
        self.loop = asyncio.new_event_loop()
        self.simulated = SimulatedSite(site)
        self.runtime = None  # made in the loop's thread: it owns SQLite handles
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self):
        import asyncio

        from aidc.runtime import Runtime

        asyncio.set_event_loop(self.loop)

        async def main():
            self.runtime = Runtime(self.site, self.data_dir)
            await self.simulated.start()
            self._ready.set()
            try:
                await self.runtime.run(self._stop)
            finally:
                await self.simulated.stop()

        try:
            self.loop.run_until_complete(main())
        finally:  # as asyncio.run ends: nothing of this site's runs on, nor do its threads
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def start(self, ticks: int = 2, timeout_s: float = 60):
        """Start, and wait for ``ticks`` model ticks."""
        self._thread.start()
        deadline = time.time() + timeout_s
        while not (self.runtime and self.runtime.ticks >= ticks and self.runtime.status):
            if time.time() > deadline or not self._thread.is_alive():
                pytest.fail(f"the simulated site did not tick {ticks} times in {timeout_s} s")
            time.sleep(0.1)

    def settled(self) -> None:
        """Wait until every device answers and every rack's headroom is complete, and what
        the polls read until then is in the store: a loaded machine may leave a sample stale
        for a moment, or a flush behind (a console page then read a counter as missing, CI
        run 856), and a test reading numbers must not read that moment."""
        def complete() -> bool:
            rt = self.runtime
            return (all(h.state == "up" for h in rt.health.values()) and rt.status is not None
                    and all(r.complete for r in rt.status.racks))

        wait_for(complete, what="every device up and every rack's headroom complete")
        read_by = time.time()
        wait_for(lambda: time.time() - self.runtime.store_behind_s(time.time()) > read_by,
                 what="the store holding every sample read until the site settled")

    def call(self, coro, timeout_s: float = 10):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)
        if self.receiver is not None:
            self.receiver.close()


class Relay:
    """A TCP relay on an asyncio loop that forwards both ways; while ``silent`` it swallows
    everything, as a peer that lost power behind a switch does (the connection stays up,
    nothing answers); with ``delay_s``, it holds each chunk from the client that long, as a
    slow peer does (a request takes that much longer)."""

    def __init__(self) -> None:
        self.silent = False
        self.delay_s = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task] = set()

    async def start(self, target_port: int) -> None:
        self._target = target_port
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._links:
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, slow=True),
                                 self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._links.discard(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    slow: bool = False) -> None:
        while data := await source.read(65536):
            if slow and self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not self.silent:
                sink.write(data)
                await sink.drain()
        sink.close()  # EOF on one side ends the other


API_TOKEN = "test-token-0123456789"


def start_live_site(data_dir: Path, **web) -> LiveSite:
    """The demo site live on free ports; ``web`` adds to its web section (users, say)."""
    from pydantic import SecretStr

    from aidc.core.config import Alerts, Defaults, Model, Web, Webhook, load_site
    from simulators.site import on_free_ports

    receiver = Receiver()  # what on-call would get
    site = on_free_ports(load_site(ROOT / "site_configs" / "demo.yaml")).model_copy(
        update={
            "defaults": Defaults(poll_s=0.5, timeout_s=2.0),  # patient: a loaded machine
            "model": Model(tick_s=0.5),
            "web": Web(api_token=SecretStr(API_TOKEN), **web),
            "alerts": Alerts(webhooks=[Webhook(name="oncall", url=receiver.url)]),
        }
    )
    live = LiveSite(site, data_dir, receiver)
    live.start()
    live.settled()
    return live


@pytest.fixture
def live_site(tmp_path):
    live = start_live_site(tmp_path / "data")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def shared_live_site(tmp_path_factory):
    """One live site for a whole module: tests must leave it as they found it."""
    live = start_live_site(tmp_path_factory.mktemp("live") / "data")
    yield live
    live.stop()
