"""A site split across processes on a real influxd, started as an operator starts it: two
`aidc run --role collect --shard i/2` and one `aidc run --role core`, beside one plain
`aidc run` of the same devices into another database. The simulated devices hold still (the
simulator's clock is stopped), so the two answers must agree exactly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from aidc.core.config import load_site
from aidc.core.net import free_port
from aidc.core.topology import shard_of
from simulators.physics import SitePhysics
from simulators.site import SimulatedSite, on_free_ports
from tests.conftest import Relay, wait_for

DEMO = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"


class StillFarm:
    """The demo's devices on free ports, their values those of one instant, served from an
    event loop in a thread."""

    def __init__(self):
        self.site = on_free_ports(load_site(DEMO))
        at = time.time()
        self.simulated = SimulatedSite(self.site, SitePhysics(self.site, clock=lambda: at))
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                                        daemon=True)

    async def _run(self):
        await self.simulated.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.simulated.stop()

    def __enter__(self):
        self._thread.start()
        assert self._started.wait(30), "the simulators did not start"
        return self

    def __exit__(self, *_):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)


class Aidc:
    """One `aidc run` process with its own data dir and port; its log kept for a failure."""

    def __init__(self, tmp: Path, name: str, site_file: Path, *role: str):
        self.name, self.port, self.log = name, free_port(), tmp / f"{name}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aidc.cli", "run", "--site", str(site_file),
                 "--data-dir", str(tmp / name), "--web-port", str(self.port), *role],
                stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str):
        assert self.proc.poll() is None, f"{self.name} ended: {self.log.read_text()[-3000:]}"
        try:
            r = httpx.get(self.url + path, timeout=5)
        except httpx.HTTPError:
            return None  # not serving yet
        return r.json() if r.status_code == 200 else None

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


def site_file(tmp: Path, farm: StillFarm, influxd, database: str, url: str | None = None,
              name: str | None = None) -> Path:
    """The farm's site, polled every second, storing into ``database`` of the test's influxd
    (at ``url``, when a relay stands before it)."""
    data = farm.site.model_dump(mode="json", exclude_defaults=True) | {
        "defaults": {"poll_s": 1.0, "timeout_s": 2.0},
        "model": {"tick_s": 0.5},
        "store": {"backend": "influxdb", "url": url or influxd.url, "database": database,
                  "flush_s": 0.3},
        "alerts": {"unreachable_intervals": 3},
    }
    path = tmp / f"{name or database}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def settled(aidc: Aidc) -> dict | None:
    """Headroom once every device is up and every rack's headroom complete."""
    devices, headroom = aidc.get("/api/v1/devices"), aidc.get("/api/v1/headroom")
    if devices and headroom and headroom["racks"] and all(d["state"] == "up" for d in devices) \
            and all(r["complete"] for r in headroom["racks"]):
        return headroom
    return None


def test_two_collectors_and_a_core_answer_as_one_process_and_a_killed_one_shows_down(
        tmp_path, influxd):
    tag = uuid.uuid4().hex[:8]
    with StillFarm() as farm:
        shards = {d.id: shard_of(d, 2) for d in farm.site.devices}
        assert set(shards.values()) == {1, 2}  # both collectors have devices to poll
        sharded = site_file(tmp_path, farm, influxd, f"sharded_{tag}")
        running = [
            single := Aidc(tmp_path, "single", site_file(tmp_path, farm, influxd, f"single_{tag}")),
            core := Aidc(tmp_path, "core", sharded, "--role", "core"),
            first := Aidc(tmp_path, "collect-1", sharded, "--role", "collect", "--shard", "1/2"),
            Aidc(tmp_path, "collect-2", sharded, "--role", "collect", "--shard", "2/2"),
        ]
        try:
            health = wait_for(lambda: first.get("/healthz"), what="collector 1's /healthz")
            assert (health["role"], health["shard"], health["devices_total"]) == (
                "collect", "1/2", sum(s == 1 for s in shards.values()))
            assert first.get("/api/v1/site") is None  # a collector serves its health alone

            def agree():
                one, split = settled(single), settled(core)
                return one and split and (one, split)

            one, split = wait_for(agree, timeout_s=60, what="both settled")
            for answer in (one, split):
                answer.pop("updated_at")
            assert split == one
            assert len(one["racks"]) == len(farm.site.racks)
            pue = wait_for(lambda: (p := core.get("/api/v1/site")["pue"]) is not None and p == \
                           single.get("/api/v1/site")["pue"] and p, what="the same PUE")
            assert 1 < pue < 2

            running[3].stop(signal.SIGKILL)  # collector 2, as a crash leaves it

            def shard_2_down():
                devices = core.get("/api/v1/devices") or []
                state = {d["id"]: d for d in devices}
                return state and all(
                    (state[i]["state"] == "down") == (s == 2) for i, s in shards.items()) and state

            state = wait_for(shard_2_down, timeout_s=30, what="collector 2's devices down")
            down = next(d for i, d in state.items() if shards[i] == 2)
            assert "no sample in the store" in down["error"], down
            alerts = wait_for(lambda: [a for a in core.get("/api/v1/alerts") or []
                                       if a["rule"] == "device_unreachable"],
                              what="the core's unreachable alerts")
            assert {a["labels"]["device"] for a in alerts} <= {i for i, s in shards.items() if s == 2}
        finally:
            for aidc in running:
                aidc.stop()


def test_a_core_that_cannot_read_the_store_judges_no_device_down(tmp_path, influxd):
    """The store unreachable from the core alone: the devices' silence is the store's, not
    theirs. The core pages for the store, keeps every device as last heard, and reads on
    once the store answers again."""
    tag = uuid.uuid4().hex[:8]
    relay = Relay()
    with StillFarm() as farm:
        asyncio.run_coroutine_threadsafe(relay.start(int(influxd.url.rsplit(":", 1)[1])),
                                         farm.loop).result(10)
        database = f"outage_{tag}"
        through_relay = site_file(tmp_path, farm, influxd, database,
                                  url=f"http://127.0.0.1:{relay.port}", name="core")
        direct = site_file(tmp_path, farm, influxd, database)
        running = [core := Aidc(tmp_path, "core", through_relay, "--role", "core"),
                   *(Aidc(tmp_path, f"collect-{i}", direct, "--role", "collect", "--shard",
                          f"{i}/2") for i in (1, 2))]
        try:
            wait_for(lambda: settled(core), timeout_s=60, what="the core settled")
            relay.silent = True
            down_after_s = 3 * 1.0 + 2.0 + 2 * 0.3  # unreachable_intervals polls, the store's delay

            def failed_to_read_past_the_grace():
                health = core.get("/healthz")  # first: the devices as judged after it
                devices = core.get("/api/v1/devices")
                if not (devices and health and health["store_read_failed_at"]):
                    return None
                newest = max(seconds(d["last_ok"]) for d in devices)
                failed = seconds(health["store_read_failed_at"])
                return failed > newest + down_after_s + 1 and (devices, health)

            devices, health = wait_for(failed_to_read_past_the_grace, timeout_s=60,
                                       what="a failed read of the store past a device's grace")
            assert "unreachable" in health["store_read_error"] or "timed out" in \
                health["store_read_error"], health
            assert {d["state"] for d in devices} == {"up"}, [d for d in devices if d["state"] != "up"]
            alerts = wait_for(lambda: [a["rule"] for a in core.get("/api/v1/alerts") or []
                                       if a["state"] == "firing"], what="the store's alert")
            assert "store_unavailable" in alerts and "device_unreachable" not in alerts, alerts
            relay.silent = False
            read_again = time.time()
            wait_for(lambda: (devices := core.get("/api/v1/devices")) and all(
                seconds(d["last_ok"]) > read_again and d["state"] == "up" for d in devices),
                timeout_s=60,
                what="the core reading every device again")
        finally:
            for aidc in running:
                aidc.stop()
            asyncio.run_coroutine_threadsafe(relay.stop(), farm.loop).result(10)


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def aidc_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aidc.cli", "run", *args], check=False,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, error", [
    (["--role", "core"], "must be InfluxDB (store: backend: influxdb)"),
    (["--role", "collect", "--shard", "1/2"], "must be InfluxDB"),
    (["--shard", "1/2"], "give it with --role collect"),
    (["--role", "collect", "--shard", "3/2"], "'3/2' is not i/n with 1 <= i <= n"),
    (["--role", "collect", "--shard", "0/2"], "is not i/n"),
])
def test_a_role_the_site_cannot_take_is_refused_in_one_line(args, error):
    run = aidc_run("--site", str(DEMO), *args)  # the demo keeps the embedded store
    assert run.returncode == 2 and error in run.stderr.strip().splitlines()[-1], run.stderr


def test_shards_split_a_large_site_evenly_and_keep_a_gateways_units_together():
    endpoints = [SimpleNamespace(host="127.0.0.1", port=20_000 + i) for i in range(4000)]
    counts = Counter(shard_of(d, 4) for d in endpoints)
    assert sorted(counts) == [1, 2, 3, 4] and all(900 < n < 1100 for n in counts.values())
    units = [SimpleNamespace(host="10.0.0.7", port=502, unit=u) for u in range(1, 9)]
    assert len({shard_of(d, 4) for d in units}) == 1  # one gateway, one shard
    # the same shard in every process: another interpreter, its str hashes salted otherwise
    mine = [shard_of(d, 7) for d in endpoints[:50]]
    code = ("from types import SimpleNamespace as D; from aidc.core.topology import shard_of; "
            "print([shard_of(D(host='127.0.0.1', port=20_000 + i), 7) for i in range(50)])")
    theirs = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert theirs.stdout.strip() == str(mine)
