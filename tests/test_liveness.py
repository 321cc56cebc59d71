"""Liveness: a device whose poll produces nothing goes stale, then down, whatever its protocol
library believes; a library that swallows a cancellation cannot wedge the poll loop; and an
OPC-UA peer that falls silent mid-session leaks no socket across reconnects.

A small live site (one device per protocol, served by the simulators on 127.0.0.1) polled by
the real runtime, each test with its own ports and data directory.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from aidc.core.config import load_site
from aidc.core.metrics import DeviceHealth, Sample
from aidc.runtime import others_first, poll_grid_s, poll_phase, poll_wake_at
from collectors import DeviceUnreachable
from collectors.opcua import OpcuaCollector
from simulators.site import on_free_ports
from tests.conftest import ROOT, LiveSite, Relay, wait_for

SITE = """
site: liveness
defaults: {poll_s: 0.3, timeout_s: 0.5}
model: {tick_s: 0.3}
alerts: {unreachable_intervals: 3}
rooms: [{id: r1}]
devices:
  - {id: rect, kind: rectifier, protocol: modbus, port: 1, profile: hvdc_rectifier,
     rating_kw: 720}
  - {id: pdu, kind: pdu, protocol: snmp, port: 2, profile: pdu_apc_rpdu2, upstream: rect,
     phases: dc, voltage_v: 336, breaker_a: 450}
  - {id: sc, kind: supercap, protocol: opcua, port: 3, profile: supercap_opcua,
     capacitance_f: 20, vmax_v: 400, vmin_v: 280}
racks:
  - {id: R1, room: r1, row: A, design_kw: 100, feed_a: pdu, supercap: sc}
"""
BY_PROTOCOL = {"modbus": "rect", "snmp": "pdu", "opcua": "sc"}


@pytest.fixture
def small_site(tmp_path: Path):
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    live = LiveSite(on_free_ports(load_site(path)), tmp_path / "data")
    live.start()
    wait_for(lambda: all(h.state == "up" for h in live.runtime.health.values()),
             what="every device up")
    yield live
    live.stop()


def good_polls(live: LiveSite) -> dict[str, int]:
    return {h.id: h.polls_total - h.errors_total for h in live.runtime.health.values()}


def kept_reading(live: LiveSite, before: dict[str, int], stuck: str) -> bool:
    """Every other device read well meanwhile (at least twice): the stuck one held none."""
    after = good_polls(live)
    return all(after[d] - before[d] >= 2 for d in after if d != stuck)


def unreachable_alerts(live: LiveSite) -> set[str]:
    return {a.labels["device"] for a in live.runtime.evaluator.active_alerts()
            if a.rule == "device_unreachable"}


@pytest.mark.parametrize("protocol", list(BY_PROTOCOL))
def test_a_poll_that_stopped_is_stale_then_down(small_site: LiveSite, protocol: str) -> None:
    """The device's poll task ends (a crash that nothing reported): no sample arrives. The
    watchdog makes it stale once its poll is overdue, then down, and its alert fires; the
    other devices go on."""
    device = BY_PROTOCOL[protocol]
    rt = small_site.runtime
    before = good_polls(small_site)
    task = next(t for t in small_site.call(_tasks()) if t.get_name() == f"poll-{device}")
    small_site.loop.call_soon_threadsafe(task.cancel)
    seen = set()

    def down() -> bool:
        seen.add(rt.health[device].state)
        return rt.health[device].state == "down"

    wait_for(down, what=f"{device} down")
    assert "stale" in seen  # stale first: overdue, not yet down
    assert "its collector is stuck" in rt.health[device].error
    wait_for(lambda: device in unreachable_alerts(small_site), what="device_unreachable")
    assert kept_reading(small_site, before, device)


async def _tasks() -> set[asyncio.Task]:
    return asyncio.all_tasks()


@pytest.mark.parametrize("protocol", list(BY_PROTOCOL))
def test_a_read_that_swallows_its_cancellation_cannot_wedge_the_poll(
    small_site: LiveSite, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protocol library hangs and ignores the cancellation (as asyncua's teardown can):
    the poll gives up on it after its deadline, the device is down with the reason, and once
    the library answers again a fresh collector reads the device."""
    import collectors.modbus
    import collectors.opcua
    import collectors.snmp

    device = BY_PROTOCOL[protocol]
    cls = {"modbus": collectors.modbus.ModbusCollector, "snmp": collectors.snmp.SnmpCollector,
           "opcua": collectors.opcua.OpcuaCollector}[protocol]
    released = threading.Event()
    real_read = cls.read

    async def wedged_read(self):
        cancelled = False
        while not released.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                cancelled = True  # the library's bug: the cancellation is lost for now
        if cancelled:
            raise asyncio.CancelledError
        return await real_read(self)

    rt = small_site.runtime
    before = good_polls(small_site)
    monkeypatch.setattr(cls, "read", wedged_read)
    try:
        wait_for(lambda: device in unreachable_alerts(small_site), what="device_unreachable")
        # the poll's own reason; on a loaded machine the watchdog may also find a renewed
        # poll overdue ("its collector is stuck") in between: both say down, so wait for it
        wait_for(lambda: rt.health[device].state == "down"
                 and "the collector did not give up" in rt.health[device].error,
                 what="the poll's reason for giving up")
        assert kept_reading(small_site, before, device)
    finally:
        released.set()
        monkeypatch.setattr(cls, "read", real_read)
    wait_for(lambda: rt.health[device].state == "up", what=f"{device} read again")
    wait_for(lambda: device not in unreachable_alerts(small_site), what="the alert resolved")


def _established_to(port: int) -> int:
    """ESTABLISHED TCP connections from this machine to 127.0.0.1:port (/proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


async def _settled_established(port: int) -> int:
    """ESTABLISHED connections to ``port`` once the loop has run the closes it has queued (a
    transport closes its socket on the loop's next pass), waiting up to 5 s for them."""
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (count := _established_to(port)) == 0:
            break
    return count


def test_an_opcua_peer_silent_mid_session_leaks_no_socket_over_50_reconnects(
    tmp_path: Path,
) -> None:
    """A relay in front of a real OPC-UA device: each round opens a session and reads, then
    the relay goes silent (a half-open connection: TCP up, nothing answers) and the collector
    is closed, so its CloseSession times out. asyncua's disconnect_socket() does nothing in
    the state that leaves; the collector closes the socket itself. 50 rounds later the
    process holds as many file descriptors as before and no connection to the relay."""
    from collectors.profiles import load_profile
    from simulators.opcua import OpcuaDeviceServer
    from tests.test_opcua import supercap

    async def scenario() -> tuple[int, int, int, int]:
        server = OpcuaDeviceServer(load_profile("supercap_opcua"), "127.0.0.1", 0, dict)
        relay = Relay()
        await server.start()
        await relay.start(server._port.sockets[0].getsockname()[1])
        c = OpcuaCollector(supercap(relay.port), load_profile("supercap_opcua"), 0.2)
        fds_before = len(os.listdir("/proc/self/fd"))
        rounds = 0
        for _ in range(50):
            relay.silent = False
            for _attempt in range(50):  # a loaded machine may miss the 0.2 s at times
                try:
                    await c.read()
                    break
                except DeviceUnreachable:
                    continue
            relay.silent = True
            await c.close()  # CloseSession unanswered: cancelled after timeout_s / 2
            rounds += 1
        for _ in range(100):  # until the relay has seen the last aborted socket close
            if len(os.listdir("/proc/self/fd")) <= fds_before:
                break
            await asyncio.sleep(0.05)
        fds_after = len(os.listdir("/proc/self/fd"))
        established = await _settled_established(relay.port)
        await relay.stop()
        await server.stop()
        return rounds, fds_before, fds_after, established

    rounds, fds_before, fds_after, established = asyncio.run(scenario())
    assert rounds == 50
    assert established == 0
    assert fds_after <= fds_before


def test_an_opcua_timeout_racing_the_answer_is_a_timeout_never_a_cancellation() -> None:
    """400 reads whose timeouts (0.2 to 4 ms) land anywhere in connect, session and Read,
    often just as an answer arrives. On Python 3.11 asyncua then raises wait_for2's
    CancelledWithResultError, which asyncio.timeout does not turn into TimeoutError: it used
    to escape read() as a cancellation and end the device's poll loop for good (the
    supercaps that stopped sampling). Each read must return or be DeviceUnreachable, and no
    socket may stay open."""
    import random

    from collectors.profiles import load_profile
    from simulators.opcua import OpcuaDeviceServer
    from tests.test_opcua import supercap

    async def scenario() -> tuple[int, int, int, int]:
        profile = load_profile("supercap_opcua")
        server = OpcuaDeviceServer(profile, "127.0.0.1", 0, dict)
        await server.start()
        port = server._port.sockets[0].getsockname()[1]
        draw = random.Random(7)
        answered = unreachable = 0
        for _ in range(400):
            c = OpcuaCollector(supercap(port), profile, draw.uniform(0.0002, 0.004))
            try:
                await c.read()
                answered += 1
            except DeviceUnreachable:
                unreachable += 1
            finally:
                await c.close()
        established = await _settled_established(port)
        await server.stop()
        return answered, unreachable, established, port

    answered, unreachable, established, _ = asyncio.run(scenario())
    assert answered + unreachable == 400  # no CancelledError escaped
    assert unreachable > 0  # the timeouts did land mid-way
    assert established == 0


def test_a_flood_of_protocol_errors_is_counted_not_logged_line_by_line(tmp_path, caplog):
    """What asyncio reports for a protocol library that failed on a device's bytes (pymodbus'
    decode failure came as "Fatal error: protocol.data_received() call failed"): one
    structured warning with its traceback, then only at the 10th and 100th."""
    import logging

    from aidc.runtime import Runtime

    runtime = Runtime(load_site(ROOT / "site_configs" / "demo.yaml"), tmp_path / "data")
    loop = asyncio.new_event_loop()
    context = {"message": "Fatal error: protocol.data_received() call failed.",
               "exception": ValueError("unpack requires a buffer of 7 bytes")}
    with caplog.at_level(logging.WARNING, logger="aidc.runtime"):
        for _ in range(150):
            runtime._loop_error(loop, context)
    lines = [r for r in caplog.records if "event=loop_error" in r.getMessage()]
    assert [r.getMessage().split()[1] for r in lines] == ["count=1", "count=10", "count=100"]
    assert lines[0].exc_info is not None and lines[1].exc_info is None
    loop.close()
    runtime.writer.close()
    runtime.outbox.close()


def test_the_first_tick_comes_once_every_device_was_heard_from(tmp_path: Path) -> None:
    """An operator who restarts `aidc run` sees the model as soon as every device answered
    (or failed) once, not a tick interval later: here 120 s, which the wait never reaches."""
    path = tmp_path / "site.yaml"
    # the first polls' values count only while fresh (2.5 intervals): with 10 s intervals they
    # stay so for 25 s, past any stall of a loaded machine between the first device heard
    # from and the last (the suite once saw a 5 s one: the PDU's power was then stale, and
    # the model rightly called it unknown). The test ends at the first tick, well before any
    # second poll.
    path.write_text(SITE.replace("model: {tick_s: 0.3}", "model: {tick_s: 120}")
                    .replace("defaults: {poll_s: 0.3, timeout_s: 0.5}",
                             "defaults: {poll_s: 10, timeout_s: 5}"))
    live = LiveSite(on_free_ports(load_site(path)), tmp_path / "data")
    live.start(ticks=1, timeout_s=60)
    try:
        runtime = live.runtime
        assert all(h.polls_total >= 1 for h in runtime.health.values())
        assert runtime.status is not None
        # it used what the first polls brought: their values, when every poll answered (CI
        # once stalled the process 6 s at start, and the first polls failed: then unknown)
        if all(h.errors_total == 0 for h in runtime.health.values()):
            assert runtime.status.racks[0].power_kw is not None, (
                runtime.status.missing, runtime.status.updated_at,
                {k: (s.ts, str(s.quality)) for k, s in runtime.latest.items() if k[0] == "pdu"})
    finally:
        live.stop()


def test_a_restarted_runtime_holds_the_peak_it_had_before(tmp_path: Path) -> None:
    """Capacity holds the peak of the last 5 minutes, and a restart is not a reason to
    forget it: the first tick after a restart holds the rack power the last run wrote."""
    import time

    from aidc.core.store import open_store

    path = tmp_path / "site.yaml"
    path.write_text(SITE.replace("model: {tick_s: 0.3}", "model: {tick_s: 120}"))
    site = on_free_ports(load_site(path))
    before = open_store(site.store, tmp_path / "data")  # where the runtime will read it
    before.write([Sample("rack", {"site": "liveness", "rack": "R1"}, "power_kw", 250.0,
                         time.time() - 100)])  # within the window, older than its last minute
    before.close()
    live = LiveSite(site, tmp_path / "data")
    live.start(ticks=1, timeout_s=60)
    try:
        (rack,) = live.runtime.status.racks
        # the peak from before the start, whether or not the first poll got the rack's power
        # (a loaded machine may leave it unknown in the first tick): never below it
        assert rack.power_kw is None or rack.power_kw < 250.0
        assert rack.power_kw_peak == 250.0
    finally:
        live.stop()


def test_a_blocked_event_loop_shows_as_lag(small_site: LiveSite) -> None:
    """A tick or a library call that blocks the loop delays every poll: `/metrics` reports
    it (aidc_event_loop_lag_seconds, the worst of the last minute) instead of hiding it."""
    import time

    from aidc.api import SiteAPI

    runtime = small_site.runtime
    timing = runtime.poll_timing
    late_before, missed_before = sum(timing.counts[-3:]), timing.missed  # over 1 s late
    runtime.call_soon(time.sleep, 1.5)  # runs on the loop: nothing else runs meanwhile
    wait_for(lambda: runtime.loop_lag_s >= 1.0, what="the lag measured")
    # the polls due meanwhile started over a second late (a poll under way when the loop
    # blocked ends late instead, which a loaded machine makes likely: CI run 810), and every
    # device skipped the intervals it missed, whichever it was
    wait_for(lambda: sum(timing.counts[-3:]) > late_before, what="the late polls counted")
    wait_for(lambda: timing.missed >= missed_before + len(runtime.health),
             what="the intervals they skipped counted")
    lines = SiteAPI(runtime).metrics()[0].decode().splitlines()
    line = next(x for x in lines if x.startswith("aidc_event_loop_lag_seconds "))
    assert float(line.split()[1]) >= 1.0
    buckets = [float(x.split()[1]) for x in lines
               if x.startswith("aidc_poll_start_delay_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] - buckets[-4] >= 1  # (over 1 s late)


def test_the_model_evaluates_while_the_loop_goes_on_polling(tmp_path: Path) -> None:
    """At 10,000 racks the model takes some 0.4 s a tick: it runs in a worker thread, so the
    loop (every device's poll) runs meanwhile. Here the evaluation waits for a coroutine on
    the loop; had it run on the loop, that coroutine could not run and the wait would fail."""
    import time

    from aidc.runtime import Runtime

    runtime = Runtime(load_site(ROOT / "site_configs" / "demo.yaml"), tmp_path)
    loop_ran, evaluated_on = threading.Event(), []
    evaluate = runtime.model.evaluate

    def evaluate_once_the_loop_ran(latest, now):
        evaluated_on.append((threading.current_thread(), loop_ran.wait(30)))
        return evaluate(latest, now)

    runtime.model.evaluate = evaluate_once_the_loop_ran

    async def tick_beside_a_poll():
        async def poll() -> None:
            loop_ran.set()

        beside = asyncio.create_task(poll())
        status = await runtime.tick(time.time())
        await beside
        return status

    try:
        status = asyncio.run(tick_beside_a_poll())
        assert evaluated_on == [(evaluated_on[0][0], True)]
        assert evaluated_on[0][0] is not threading.main_thread()
        assert runtime.status is status and len(status.racks) == 8  # the tick completed
    finally:
        runtime.writer.close()
        runtime.outbox.close()


def _start_watched(tmp_path: Path, stop_at: int | None) -> tuple[int, list[int], int]:
    """The site's device count; the poll tasks that existed each time another coroutine ran
    while `Runtime.run` started them (it sets stop once it has seen ``stop_at``, or all); and
    how many polls the runtime made in all."""
    from aidc.core.sitegen import generate
    from aidc.runtime import Runtime

    path = tmp_path / "site.yaml"
    path.write_text(generate(120))  # 264 devices; nothing listens on their ports
    runtime = Runtime(load_site(path), tmp_path / "data")
    devices, made, poll = len(runtime.site.devices), [], runtime._poll

    def counted_poll(device):
        made.append(device.id)
        return poll(device)

    runtime._poll = counted_poll

    async def watch_the_start() -> list[int]:
        stop, started = asyncio.Event(), []

        async def count() -> None:
            while True:
                started.append(sum(t.get_name().startswith("poll-") for t in asyncio.all_tasks()))
                if started[-1] >= (devices if stop_at is None else stop_at):
                    return stop.set()
                await asyncio.sleep(0)

        asyncio.create_task(count())
        await runtime.run(stop)
        return started

    started = asyncio.run(watch_the_start())
    return devices, started, len(made)


def test_polls_start_a_batch_at_a_time_with_the_loop_running_between(tmp_path: Path) -> None:
    """21,752 first polls started at once held the loop for 4 s: the watchdog then saw every
    device as overdue and the first tick came late. Polls start START_BATCH at a time, and
    another coroutine runs between batches."""
    from aidc.runtime import START_BATCH

    devices, started, made = _start_watched(tmp_path, None)
    assert devices > 2 * START_BATCH and made == devices
    started = [n for n in started if n]  # (it also ran while the protocols were imported)
    assert started[0] == START_BATCH  # the coroutine ran once the first batch had started
    assert START_BATCH * 2 in started and started == sorted(started) and started[-1] == devices


def test_a_runtime_stopped_while_starting_starts_no_more_polls(tmp_path: Path) -> None:
    from aidc.runtime import START_BATCH

    devices, started, made = _start_watched(tmp_path, START_BATCH)
    assert [n for n in started if n] == [START_BATCH] and made == START_BATCH < devices


def test_a_runtime_stopped_before_its_first_polls_starts_none(tmp_path: Path) -> None:
    """Ctrl-C while the runtime imports its protocol libraries (before its first polls):
    its first batch of polls started anyway, and was cancelled at once."""
    devices, started, made = _start_watched(tmp_path, 0)
    assert started[0] == 0 and made == 0 < devices


def test_aidc_run_takes_the_hard_open_files_limit_and_says_when_it_is_short(tmp_path) -> None:
    """Under a soft limit of 64 open files, `aidc run` raises it to the hard limit; with a
    hard limit below the site's connections (Modbus, OPC-UA, SNMPv3) it says so in one line,
    instead of devices past the limit reading as down."""
    import subprocess
    import sys

    from aidc.core.sitegen import generate

    path = tmp_path / "site.yaml"
    path.write_text(generate(40))  # 2 meters, a rectifier, 3 CDUs, 2 supercaps: 8 connections
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, int(sys.argv[2])))\n"
        "from aidc.cli import _raise_open_files_limit\n"
        "from aidc.core.config import load_site\n"
        "_raise_open_files_limit(load_site(sys.argv[1]))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )

    def run(hard: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, str(path), str(hard)],
                              capture_output=True, text=True, check=True, cwd=ROOT)

    import resource

    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])  # may not be raised
    enough, short = run(hard), run(100)
    assert enough.stdout.split() == [str(hard)] and "open_files_short" not in enough.stderr
    assert short.stdout.split() == ["100"]
    assert "event=open_files_short connections=8 limit=100" in short.stderr


def test_aidc_outlives_a_client_that_hangs_up_mid_answer(tmp_path) -> None:
    """A browser closing its tab while the console's scripts are on their way: the web
    server's next write finds the connection reset. `aidc demo` (and `aidc run`) must carry
    on; the default action of the SIGPIPE that such a write raises would end the process."""
    import re
    import socket
    import subprocess
    import sys

    import httpx

    from aidc.core.net import free_port
    from simulators.site import free_port_offset

    demo = ROOT / "site_configs" / "demo.yaml"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "aidc.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aidc.cli", "demo", "--site", str(demo), "--data-dir",
             str(tmp_path / "data"), "--web-port", str(port), "--port-offset",
             str(free_port_offset(load_site(demo)))],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def answers() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=5).status_code in (200, 503)
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        wait_for(answers, timeout_s=90, what="aidc demo serving")
        assert proc.poll() is None, (tmp_path / "aidc.log").read_text()[-2000:]
        page = httpx.get(url + "/", timeout=30).text
        script = next(s for s in re.findall(r'src="([^"]+)"', page) if "dash_core_components.v" in s)
        for _ in range(20):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # the answer waits on us
                s.settimeout(30)
                s.connect(("127.0.0.1", port))
                s.sendall(f"GET {script} HTTP/1.1\r\nHost: aidc\r\n\r\n".encode())
                s.recv(100)  # it started; closing with the rest unread resets the connection
        for _ in range(3):  # served whole after the hang-ups: those answers were given up
            assert len(httpx.get(url + script, timeout=30).content) > 100_000
        assert proc.poll() is None, f"aidc ended with {proc.poll()}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_web_port_taken_is_said_in_one_line_and_the_runtime_stops_cleanly(tmp_path: Path):
    """`aidc run` starts its runtime before its web (whose console takes a while to build):
    when the web cannot listen, the polls already started stop and the stores close."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "aidc.cli", "run", "--site",
             str(ROOT / "site_configs" / "demo.yaml"), "--data-dir", str(tmp_path / "data"),
             "--web-port", str(port)], capture_output=True, text=True, timeout=120, cwd=ROOT,
            check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if not line[:4].isdigit()] == [
        f"error: cannot serve on 127.0.0.1:{port}: Address already in use"]  # no traceback
    assert "event=runtime_stopped" in done.stderr and "aidc running" not in done.stdout


def test_ctrl_c_while_a_command_reads_its_site_file_ends_it_quietly(tmp_path: Path) -> None:
    """Ctrl-C before a command handles it itself (while it reads its site file: 1.2 s at
    10,000 racks) printed a Python traceback. It ends the command as SIGINT ends any
    program: nothing said, and killed by SIGINT for the shell that waits on it."""
    import signal

    fifo = tmp_path / "site.yaml"
    os.mkfifo(fifo)
    # SIGINT handled in aidc as from a terminal, even if the suite runs with it ignored (a
    # background job of a script): a handler of ours is the default once aidc is exec'ed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "aidc", "check", str(fifo)], cwd=ROOT,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, previous)
    with open(fifo, "w"):  # opened once aidc opened it to read: it waits on the site file
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (-signal.SIGINT, "", "")


def test_ctrl_c_while_the_web_is_made_does_not_say_running(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    """`aidc run` makes its web (0.6 s) after its runtime started: a Ctrl-C meanwhile stops
    the runtime, and the command then said it was running, and how to stop it."""
    import signal

    from aidc import cli
    from aidc.core.net import free_port
    from aidc.core.sitegen import generate

    path = tmp_path / "site.yaml"
    path.write_text(generate(40))  # nothing listens on its devices' ports
    make_web = cli._web

    def web_after_ctrl_c(runtime, *args):
        os.kill(os.getpid(), signal.SIGINT)  # to `aidc run`'s handler: it is installed
        wait_for(lambda: runtime._stopping, timeout_s=30, what="the runtime stopping")
        return make_web(runtime, *args)

    monkeypatch.setattr(cli, "_web", web_after_ctrl_c)
    code = asyncio.run(cli._serve(load_site(path), tmp_path / "data", "127.0.0.1",
                                  free_port(), simulate=False))
    assert code == 0 and capsys.readouterr().out == "aidc stopped.\n"


def test_a_health_record_is_replaced_whole_never_changed_under_a_reader():
    """The web reads device health from its threads: each change makes a new record (the
    loop puts it in place of the old), so a record once read stays whole as it was."""
    h = DeviceHealth("pdu-1", "pdu", 5.0)
    up = h.ok(100.0, 12.0, 0, 20)
    down = up.fail(105.0, "timeout")
    assert (h.state, h.polls_total, up.state, down.state) == ("unknown", 0, "up", "down")
    assert (up.since, up.failures, up.error, up.polls_total, up.retry_in_s) == (100.0, 0, "", 1, 5.0)
    assert (down.since, down.failures, down.errors_total, down.polls_total) == (105.0, 1, 1, 2)
    assert down.fail(110.0, "timeout").since == 105.0  # still down since the first
    degraded = down.ok(115.0, 9.0, 2, 20)
    assert (degraded.state, degraded.error) == ("degraded", "reachable, 2 of 20 points bad")
    stuck = replace(degraded, due_at=120.0)  # its next poll had to end by 120 s
    assert stuck.watch(125.0, 4.0).state == "down" and stuck.watch(121.0, 4.0).state == "stale"
    assert stuck.watch(119.0, 4.0) is stuck  # not due yet: the same record
    with pytest.raises(FrozenInstanceError):
        up.state = "down"


def test_a_tick_between_its_stages_lets_a_poll_whose_timer_expired_go_first():
    """Between the stages of a tick the polls run: a poll whose sleep ended while a stage
    held the loop goes before the tick's next stage (``sleep(0)`` would put it after)."""
    async def tick_and_poll() -> list[str]:
        order: list[str] = []

        async def poll() -> None:
            await asyncio.sleep(0.001)
            order.append("poll")

        task = asyncio.create_task(poll())
        await asyncio.sleep(0)  # the poll sleeps on its timer
        time.sleep(0.01)  # noqa: ASYNC251  (a stage of the tick holds the loop past it)
        await others_first()
        order.append("the tick's next stage")
        await task
        return order

    assert asyncio.run(tick_and_poll()) == ["poll", "the tick's next stage"]


def test_a_sites_polls_are_spread_over_the_interval_by_a_stable_phase_each():
    """After the first poll, which every device makes at once, each keeps its own place in
    the interval: the same in every run, and a large site's spread evenly (at 2,000 racks
    the burst's cadence queued 4,352 polls on the loop each interval: p99 start <= 250 ms)."""
    ids = [f"pdu-{row}{rack:03d}-{side}" for row in "ABCDEFGHIJ" for rack in range(500)
           for side in "ab"]
    phases = [poll_phase(i) for i in ids]
    assert phases == [poll_phase(i) for i in ids] and all(0 <= p < 1 for p in phases)
    tenths = [0] * 10
    for p in phases:
        tenths[int(p * 10)] += 1
    assert all(0.08 * len(ids) < n < 0.12 * len(ids) for n in tenths), tenths
    other_process = subprocess.run(  # not Python's str hash, which each process seeds anew
        [sys.executable, "-c", "from aidc.runtime import poll_phase; print(repr(poll_phase('cdu-1')))"],
        env={**os.environ, "PYTHONHASHSEED": "12345"}, capture_output=True, text=True, check=True)
    assert float(other_process.stdout) == poll_phase("cdu-1")


def test_a_sites_polls_wake_the_loop_in_batches_of_about_200():
    """The grid's step: about 200 polls due in each (a wake-up of the loop costs CPU of its
    own: 200 SNMP devices each woken alone took twice the CPU a poll), from 0.25 s to a
    quarter of the interval (a poll starts at most that late)."""
    assert poll_grid_s(4352, 5.0) == 0.25  # 5 s * 200 / 4,352 = 0.23: at least 0.25
    assert poll_grid_s(1000, 5.0) == 1.0  # 5 s * 200 / 1,000
    assert poll_grid_s(200, 5.0) == 1.25  # 5 s * 200 / 200 = 5: at most a quarter of 5 s
    assert poll_grid_s(25, 2.0) == 0.5 and poll_grid_s(0, 5.0) == 1.25  # (a core polls none)


@pytest.mark.parametrize("grid_s", [0.25, 1.0, 1.25])
def test_polls_due_within_one_step_of_the_grid_wake_the_loop_once(grid_s: float):
    """Spread polls wake the loop on the grid, not each at its own phase: the polls due
    within one step start at one time, the step's end, never before they are due; a
    schedule kept by adding the interval does not drift on it."""
    start = 4938 * grid_s + 1e-3  # just after a step's start (the loop's clock)
    due = [start + k * grid_s / 8 for k in range(8)]  # all within that step
    wakes = {poll_wake_at(t, grid_s) for t in due}
    assert len(wakes) == 1
    (wake,) = wakes
    assert all(t <= wake < t + grid_s for t in due)
    assert poll_wake_at(wake, grid_s) == wake
    assert poll_wake_at(wake + 1e-6, grid_s) == wake + grid_s
    next_at, late = start, []
    for _ in range(20_000):  # a day of 5 s polls, as the poll loop adds them
        next_at += 5.0
        late.append(poll_wake_at(next_at, grid_s) - next_at)
    assert 0 <= min(late) and max(late) < grid_s


def test_a_mass_outage_logs_a_line_a_device_up_to_a_burst_then_counts(tmp_path: Path, caplog,
                                                                       monkeypatch) -> None:
    """Every device of the demo (25) unreachable at once, as a switch going down does: the
    first STATE_LINES_A_SECOND (here 10) get a line each; the rest one line that counts and
    names the first of them, at the second's end. A device already down logs nothing again."""
    import logging

    from aidc import runtime as module

    monkeypatch.setattr(module, "STATE_LINES_A_SECOND", 10)
    runtime = module.Runtime(load_site(ROOT / "site_configs" / "demo.yaml"), tmp_path)
    devices = runtime.site.devices
    with caplog.at_level(logging.WARNING, logger="aidc.runtime"):
        for d in devices:
            runtime._device_failed(d, 1000.0, "timed out")
        runtime._device_failed(devices[0], 1001.0, "timed out")  # down already: no line
        runtime._log_states_unlogged()
        runtime._log_states_unlogged()  # nothing left to count: no line
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:10] == [f"event=device_unreachable device={d.id} error='timed out'"
                          for d in devices[:10]]
    rest = [d.id for d in devices[10:]]
    counted = (f"event=devices_unreachable count=15 devices={','.join(rest[:5])} and 10 more "
               "(not logged one by one)")
    assert len(rest) == 15 and lines[10:] == [counted]
    assert all(h.state == "down" for h in runtime.health.values())


IMPORTS_SPIED = """
import asyncio, json, sys, threading
from pathlib import Path

importers = {}


class Spy:  # records which thread first imports each protocol library
    def find_spec(self, name, path=None, target=None):
        if name in ("asyncua", "pysnmp", "pymodbus"):
            importers.setdefault(name, threading.current_thread() is threading.main_thread())
        return None


sys.meta_path.insert(0, Spy())
from aidc.core.config import load_site
from aidc.runtime import Runtime

runtime = Runtime(load_site(sys.argv[1]), Path(sys.argv[2]))


async def main():
    stop = asyncio.Event()

    async def until_each_polled():
        while not all(h.polls_total for h in runtime.health.values()):
            await asyncio.sleep(0.05)
        stop.set()

    waiting = asyncio.create_task(until_each_polled())
    await runtime.run(stop)
    await waiting

asyncio.run(main())
print(json.dumps(importers))
"""


def test_protocol_libraries_are_imported_off_the_event_loop(tmp_path: Path) -> None:
    """asyncua took 0.6 s to import, and pysnmp 0.2 s, at the first poll of a device of
    theirs: the event loop (every other poll, the watchdog, the API) waited. The runtime
    imports them in a worker thread before its first polls."""
    import json

    path = tmp_path / "site.yaml"
    path.write_text(SITE)  # nothing listens on ports 1-3: every poll fails, once is enough
    done = subprocess.run([sys.executable, "-c", IMPORTS_SPIED, str(path), str(tmp_path / "data")],
                          check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    on_loop_thread = json.loads(done.stdout.splitlines()[-1])
    assert on_loop_thread == {"asyncua": False, "pysnmp": False, "pymodbus": False}


def test_a_failed_read_leaves_no_reference_cycle_for_the_garbage_collector() -> None:
    """Every failed poll left 37 objects in reference cycles (`bounded`'s frame held the task
    whose exception's traceback held that frame): with every device of a large site down,
    the collector's passes over them held the event loop for hundreds of ms."""
    import gc

    from aidc.runtime import bounded

    async def read() -> None:
        await asyncio.sleep(0)
        raise DeviceUnreachable("no answer")

    async def fail_ten_times() -> int:
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                try:
                    await bounded(read(), 1.0)
                except DeviceUnreachable:
                    pass
            return gc.collect()
        finally:
            gc.enable()

    assert asyncio.run(fail_ten_times()) == 0
