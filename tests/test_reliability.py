"""Nothing lost through the worst an operator sees, on the whole process: `aidc demo` (its
simulators, collectors, model, alerts) writing to a real influxd and paging a real HTTP
receiver. The store and the receiver go down, faults page on-call meanwhile, aidc is
killed with SIGKILL, then everything comes back. Counted against what aidc had made durable
at the kill (its spool and outbox files, read after it died):

- every sample in the spool reaches InfluxDB;
- every notification in the outbox reaches the receiver, once per idempotency key.

A kill -9 can lose what the writer held in memory, at most ``store.flush_s`` of samples:
that bound is a design choice (SQLite commits per flush, not per poll), so it is not counted
as lost here.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from aidc.core.config import Store as StoreConfig
from aidc.core.config import load_site
from aidc.core.net import free_port
from aidc.core.store.influx import InfluxStore
from alerts.formats import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_headers
from simulators.site import free_port_offset
from tests.conftest import ROOT, Influxd, wait_for
from tests.test_alerts import Receiver

HOOK_SECRET = "hook-secret-for-the-reliability-run"


class Aidc:
    """`aidc demo` as a user runs it, in its own process."""

    def __init__(self, site: Path, data_dir: Path, offset: int, pager: Receiver):
        self.data_dir, self.web_port = data_dir, free_port()
        self.args = [sys.executable, "-m", "aidc.cli", "demo", "--site", str(site),
                     "--data-dir", str(data_dir), "--web-port", str(self.web_port),
                     "--port-offset", str(offset),
                     "--webhook", pager.url(),
                     "--webhook-secret", "env:AIDC_RELIABILITY_HOOK_SECRET"]
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / "aidc.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, env={**os.environ,
                                                        "AIDC_RELIABILITY_HOOK_SECRET": HOOK_SECRET})
        wait_for(lambda: self.all_up() or self.proc.poll() is not None, timeout_s=90,
                 what="aidc demo up")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def all_up(self) -> bool:
        h = self.health()
        return bool(h) and h["devices_up"] == h["devices_total"]

    def health(self) -> dict:
        try:
            return httpx.get(self.url + "/healthz", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def backlog(self) -> float | None:
        try:
            text = httpx.get(self.url + "/metrics", timeout=5).text
        except httpx.HTTPError:
            return None
        return next(float(line.split()[1]) for line in text.splitlines()
                    if line.startswith("aidc_notifier_backlog "))

    def firing(self, rule: str, device: str) -> bool:
        alerts = httpx.get(self.url + "/api/v1/alerts", timeout=10).json()
        return any(a["rule"] == rule and a["labels"].get("device") == device
                   and a["state"] == "firing" for a in alerts)

    def fault(self, fault: str, device: str, on: bool) -> None:
        token = (self.data_dir / "api-token").read_text().strip()
        r = httpx.post(self.url + "/api/v1/sim/faults", timeout=10,
                       json={"fault": fault, "device": device, "on": on},
                       headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def durable_at_kill(data_dir: Path) -> tuple[set, set]:
    """What aidc had committed when it died: spooled samples with a value, and the
    idempotency keys of the notifications waiting in its outbox."""
    with sqlite3.connect(data_dir / "spool.sqlite") as db:
        samples = {(m, tuple(sorted(tags.items())), field, round(ts * 1000))
                   for (payload,) in db.execute("SELECT payload FROM spool")
                   for m, tags, field, value, ts, _ in json.loads(payload) if value is not None}
    with sqlite3.connect(data_dir / "alerts.sqlite") as db:
        keys = {k for (k,) in db.execute(
            "SELECT idempotency_key FROM outbox WHERE webhook = 'demo' AND status = 'pending'")}
    return samples, keys


def in_store(store: InfluxStore, samples: set) -> set:
    out = set()
    start = min(ts for *_, ts in samples) / 1000 - 1
    end = max(ts for *_, ts in samples) / 1000 + 1
    for measurement, field in {(m, f) for m, _, f, _ in samples}:
        for s in store.history(measurement, field, start, end):
            out |= {(measurement, tuple(sorted(s.tags.items())), field, round(t * 1000))
                    for t, _ in s.points}
    return out & samples


def test_store_down_receiver_down_and_kill_9_lose_nothing(tmp_path, reliability):
    (tmp_path / "influxd").mkdir()
    influxd = Influxd(tmp_path / "influxd")
    text = (ROOT / "site_configs" / "demo.yaml").read_text()
    text = text.replace("store:\n  backend: embedded\n  path: aidc.sqlite\n",
                        f"store:\n  backend: influxdb\n  url: {influxd.url}\n  database: aidc\n"
                        "  flush_s: 1\n")
    assert "backend: influxdb" in text
    site = tmp_path / "site.yaml"
    site.write_text(text)
    pager, data_dir = Receiver(), tmp_path / "data"  # on-call: a fixed port, down at will
    aidc = Aidc(site, data_dir, free_port_offset(load_site(site)), pager)
    influxd.start()
    pager.start()
    aidc.start()
    try:
        wait_for(lambda: aidc.health().get("store_up"), what="the store written")
        # the store and the receiver go down; faults page on-call meanwhile
        influxd.stop()
        pager.stop()
        modules = "rectifier_redundancy_lost"
        faults = [("leak", "cdu-1", "leak", True), ("module_loss", "rect-a", modules, True),
                  ("leak", "cdu-1", "leak", False), ("leak", "cdu-2", "leak", True),
                  ("leak", "cdu-2", "leak", False), ("module_loss", "rect-a", modules, False)]
        for fault, device, rule, on in faults:  # each one a firing or a resolved notice
            aidc.fault(fault, device, on)
            wait_for(lambda a=(rule, device, on): aidc.firing(*a[:2]) == a[2],
                     what=f"{rule} at {device}: {on}")
        wait_for(lambda: (aidc.backlog() or 0) >= len(faults), what="the notices queued")
        wait_for(lambda: aidc.health().get("spooled_samples", 0) > 2000, timeout_s=120,
                 what="samples spooled through the outage")
        aidc.kill()
        spooled, queued = durable_at_kill(data_dir)
        assert spooled and queued
        # everything comes back: on-call's receiver last, so that nothing is delivered
        # before the backlog is read, which aidc counts from its outbox file at start
        influxd.start()
        aidc.start()
        assert aidc.backlog() >= len(queued)
        pager.start()
        wait_for(lambda: aidc.health().get("spooled_samples") == 0 and aidc.backlog() == 0,
                 timeout_s=120, what="spool replayed and outbox delivered")
        store = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url, database="aidc"))
        lost_samples = len(spooled - in_store(store, spooled))
        accepted = [r.headers["idempotency-key"] for r in pager.requests]
        lost_notes = len(queued - set(accepted))
        duplicated = len(accepted) - len(set(accepted))
        reliability.count("samples: store down, aidc kill -9, both back", "samples",
                          len(spooled), lost=lost_samples)
        reliability.count("notifications: receiver down, aidc kill -9, both back",
                          "notices", len(queued), lost=lost_notes, duplicated=duplicated)
        assert (lost_samples, lost_notes, duplicated) == (0, 0, 0)
        # `aidc demo --webhook-secret` signs every notice, the replayed ones too
        unsigned = [r for r in pager.requests if r.headers.get(SIGNATURE_HEADER.lower()) !=
                    signature_headers(HOOK_SECRET.encode(), r.body,
                                      int(r.headers[TIMESTAMP_HEADER.lower()]))[SIGNATURE_HEADER]]
        assert pager.requests and unsigned == []
        log = aidc.log.read_text()
        assert "Traceback" not in log, log[log.index("Traceback"):][:2000]
        secrets = [(data_dir / "api-token").read_text().strip(), HOOK_SECRET]
        places = {"log": log} | {
            path: httpx.get(aidc.url + path, timeout=10).text
            for path in ("/healthz", "/metrics", "/api/v1/site", "/api/v1/devices",
                         "/api/v1/alerts", "/api/v1/silences", "/api/v1/openapi.json", "/")
        } | {f.name: f.read_bytes().decode("latin-1") for f in data_dir.iterdir()
             if f.is_file() and f.name != "api-token"}
        found = [(secret[:4], where) for secret in secrets for where, text in places.items()
                 if secret in text]
        reliability.count("secrets: in the log, API answers and data files", "places",
                          len(places) * len(secrets), found=len(found))
        assert found == []
    finally:
        aidc.stop()
        pager.stop()
        influxd.stop()
