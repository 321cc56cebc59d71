"""Alert pipeline: state machine, formats, signature, durable outbox against a real receiver.

The receiver is a real HTTP server on 127.0.0.1 that records every request and answers the
statuses a test scripts; "down" means its port is closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from aidc.core.config import Alerts, ConfigError, Route, Webhook, load_site
from aidc.core.net import free_port
from aidc.core.topology import Topology
from alerts.evaluate import (
    HISTORY_DAYS,
    Alert,
    Condition,
    ConditionColumn,
    Evaluator,
    Transition,
    fingerprint,
    read_history,
)
from alerts.formats import alertmanager_payload, generic_payload, signature_headers
from alerts.notify import Notifier
from alerts.outbox import Outbox, RetryPolicy, parse_retry_after, read_deliveries
from alerts.rules import DEAD_LETTER_ALERT_S, rule_pack
from dashboards.pages.alerts import deliveries_summary
from tests.conftest import ROOT, require, wait_for

FAST = RetryPolicy(base_s=0.01, cap_s=0.05)
DEMO = Topology(load_site(ROOT / "site_configs" / "demo.yaml"))
SECRET = "s3cret-hmac-key"
LEAK = Condition("leak", {"device": "cdu-1", "rack": "r01"}, True, 1.0, "leak at cdu-1", "critical")


# ---------------------------------------------------------------- receiver


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on a fixed 127.0.0.1 port; closed until ``start()``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Request] = []
        self.answers: list[tuple[int, dict[str, str]]] = []  # answered first, then 200
        self.delay_s = 0.0
        self.hold: Callable[[Request], object] = lambda request: None  # blocks before answering
        self.arrivals: list[Request] = []  # as they arrive, before any hold
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def arrived(self, rule: str) -> bool:
        with self._lock:
            return any(r.json.get("rule") == rule for r in self.arrivals)

    def got(self, rule: str) -> bool:
        """Answered a request for ``rule``."""
        with self._lock:
            return any(r.json.get("rule") == rule for r in self.requests)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.arrivals.append(Request(self.path, headers, body))
                receiver.hold(receiver.arrivals[-1])
                time.sleep(receiver.delay_s)
                with receiver._lock:
                    receiver.requests.append(Request(self.path, headers, body))
                    status, extra = receiver.answers.pop(0) if receiver.answers else (200, {})
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        serve = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        serve.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def open_outbox(tmp_path):
    """Opens Outboxes on one SQLite file (as successive or concurrent processes would)."""
    opened: list[Outbox] = []

    def open_(webhooks: Iterable[Webhook] = (), **kw) -> Outbox:
        opened.append(Outbox(tmp_path / "alerts.sqlite", webhooks, retry=FAST, **kw))
        return opened[-1]

    yield open_
    for outbox in opened:
        outbox.close()


class Alertmanager:
    """Debian's prometheus-alertmanager on a free 127.0.0.1 port, clustering off."""

    CONFIG = 'route: {receiver: "null", group_wait: 0s}\nreceivers: [{name: "null"}]\n'

    def __init__(self, tmp) -> None:
        binary = require("prometheus-alertmanager", "prometheus-alertmanager")
        self.url = f"http://127.0.0.1:{free_port()}"
        (tmp / "am.yml").write_text(self.CONFIG)
        self.log = tmp / "am.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={tmp / 'am.yml'}", f"--storage.path={tmp / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}",
                 "--cluster.listen-address="],
                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"alertmanager did not get ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self) -> list[dict]:
        """What Alertmanager holds now (active, silenced or inhibited; not resolved)."""
        return httpx.get(f"{self.url}/api/v2/alerts", timeout=5).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def alertmanager(tmp_path):
    am = Alertmanager(tmp_path)
    yield am
    am.stop()


# ---------------------------------------------------------------- helpers


def webhook(receiver: Receiver, secret: str | None = SECRET, **kw) -> Webhook:
    return Webhook(
        name=kw.pop("name", "oncall"),
        url=kw.pop("url", receiver.url()),
        secret=SecretStr(secret) if secret else None,
        timeout_s=kw.pop("timeout_s", 5.0),  # patient: a loaded machine answers late
        **kw,
    )


OpenOutbox = Callable[..., Outbox]


@dataclass
class Pipeline:
    outbox: Outbox
    evaluator: Evaluator


def pipeline(
    open_outbox: OpenOutbox, webhooks: list[Webhook], repeat_s: float = 3600, **kw
) -> Pipeline:
    outbox = open_outbox(webhooks, **kw)
    notifier = Notifier(DEMO, Alerts(webhooks=webhooks), outbox)
    return Pipeline(outbox, Evaluator(outbox, repeat_s=repeat_s, notify=notifier.notify))


def deliver_until(outbox: Outbox, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Run the delivery worker until ``done()`` holds (or fail after ``timeout_s``)."""

    async def run() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(outbox.deliver_forever(stop, idle_s=0.02))
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await worker

    asyncio.run(run())
    assert done(), "delivery did not finish in time"


async def while_(condition: Callable[[], bool], patience_s: float = 60.0) -> None:
    """Wait, letting the event loop run, while ``condition()`` holds (fail after patience)."""
    deadline = time.monotonic() + patience_s
    while condition():
        assert time.monotonic() < deadline, "the state waited for never came"
        await asyncio.sleep(0.01)


def kinds(transitions: list[Transition]) -> list[str]:
    return [t.kind for t in transitions]


# ---------------------------------------------------------------- state machine


def test_pending_fires_after_for_s_then_resolves(open_outbox):
    ev = Evaluator(open_outbox())
    cond = replace(LEAK, for_s=30)
    assert ev.step(1000, [cond]) == []
    assert [(a.state, a.active_since) for a in ev.active_alerts()] == [("pending", 1000)]
    assert ev.step(1029, [cond]) == []
    fired = ev.step(1030, [cond])
    assert kinds(fired) == ["firing"]
    assert (fired[0].alert.starts_at, fired[0].alert.ends_at) == (1030, None)
    assert ev.step(1100, [cond]) == []
    resolved = ev.step(1200, [replace(cond, active=False)])
    assert kinds(resolved) == ["resolved"]
    assert (resolved[0].alert.starts_at, resolved[0].alert.ends_at) == (1030, 1200)
    assert ev.active_alerts() == []


def test_pending_that_clears_never_notifies(open_outbox):
    ev = Evaluator(open_outbox())
    cond = replace(LEAK, for_s=60)
    assert ev.step(0, [cond]) == []
    assert ev.step(30, [replace(cond, active=False)]) == []
    assert ev.active_alerts() == []
    assert ev.step(40, [cond]) == []  # the for_s clock starts again
    assert ev.step(99, [cond]) == []
    assert kinds(ev.step(100, [cond])) == ["firing"]


def test_absent_condition_counts_as_cleared(open_outbox):
    ev = Evaluator(open_outbox())
    assert kinds(ev.step(0, [LEAK])) == ["firing"]
    assert kinds(ev.step(5, [])) == ["resolved"]


def test_fingerprint_is_stable_across_label_order():
    a = Condition("leak", {"rack": "r01", "device": "cdu-1"}, True)
    b = Condition("leak", {"device": "cdu-1", "rack": "r01"}, False)
    assert a.fingerprint == b.fingerprint == fingerprint("leak", {"device": "cdu-1", "rack": "r01"})
    assert len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0
    identity = json.dumps(["leak", [["device", "cdu-1"], ["rack", "r01"]]], separators=(",", ":"))
    assert a.fingerprint == hashlib.sha256(identity.encode()).hexdigest()[:16]
    assert fingerprint("leak", {"rack": "r02", "device": "cdu-1"}) != a.fingerprint
    assert fingerprint("flow_low", {"rack": "r01", "device": "cdu-1"}) != a.fingerprint


def test_repeat_until_acknowledged_and_resolved_still_sent(open_outbox):
    ev = Evaluator(open_outbox(), repeat_s=100)
    assert kinds(ev.step(0, [LEAK])) == ["firing"]
    assert ev.step(99, [LEAK]) == []
    assert kinds(ev.step(100, [LEAK])) == ["repeat"]
    assert ev.step(150, [LEAK]) == []
    acked = ev.acknowledge(LEAK.fingerprint, "alice", at=160)
    assert (acked.acked_by, acked.acked_at) == ("alice", 160)
    assert ev.step(500, [LEAK]) == []
    assert Evaluator(open_outbox(), repeat_s=100).active_alerts()[0].acknowledged
    assert kinds(ev.step(600, [replace(LEAK, active=False)])) == ["resolved"]
    with pytest.raises(KeyError):
        ev.acknowledge(LEAK.fingerprint, "alice")


def test_severity_changes_notify_both_ways_and_escalation_clears_the_ack(open_outbox):
    ev = Evaluator(open_outbox(), repeat_s=3600)
    modules = {"source": "rect-1"}
    one = Condition("rectifier_module_lost", modules, True, 1.0, "1 module lost", "warning")
    two = replace(one, value=2.0, summary="2 modules lost", severity="critical")
    assert kinds(ev.step(0, [one])) == ["firing"]
    ev.acknowledge(one.fingerprint, "ops")
    assert ev.step(10, [one]) == []  # same severity, acknowledged: quiet
    [up] = ev.step(20, [two])
    assert (up.kind, up.previous_severity, up.alert.severity, up.at) == (
        "escalated", "warning", "critical", 20,
    )  # fmt: skip
    assert not up.alert.acknowledged  # a critical is not the warning someone took
    assert ev.step(30, [two]) == []
    [down] = ev.step(40, [one])
    assert (down.kind, down.previous_severity, down.alert.severity) == (
        "deescalated", "critical", "warning",
    )  # fmt: skip
    assert kinds(ev.step(50, [])) == ["resolved"]


def test_the_history_keeps_each_change_of_state_for_30_days_not_the_repeats(tmp_path):
    path = tmp_path / "alerts.sqlite"
    ev = Evaluator(Outbox(path), repeat_s=100)
    one = Condition("rectifier_module_lost", {"device": "rect-1"}, True, 1.0, "1 lost", "warning")
    two = replace(one, value=2.0, summary="2 lost", severity="critical")
    ev.step(0, [one])
    ev.step(100, [one])  # a repeat: notified, but nothing changed
    ev.step(150, [two])
    ev.step(200, [])
    changes = read_history(path, since=0, limit=10)
    assert [(h["at"], h["kind"], h["previous_severity"], h["severity"]) for h in changes] == [
        (200, "resolved", None, "critical"), (150, "escalated", "warning", "critical"),
        (0, "firing", None, "warning")]  # newest first
    assert changes[0]["labels"] == {"device": "rect-1"} and changes[1]["summary"] == "2 lost"
    assert [h["at"] for h in read_history(path, since=100, limit=10)] == [200, 150]
    assert len(read_history(path, since=0, limit=1)) == 1
    ev.step(150 + HISTORY_DAYS * 86_400 - 1, [one])  # the first change ages out
    assert [h["at"] for h in read_history(path, since=0, limit=10)][-1] == 150
    ev.step(300 + HISTORY_DAYS * 86_400, [one])
    assert [h["kind"] for h in read_history(path, since=0, limit=10)] == ["firing"]


def test_a_pending_alert_changes_severity_silently(open_outbox):
    ev = Evaluator(open_outbox())
    warn = Condition("flow_low", {"loop": "L1"}, True, 80.0, "low", "warning", for_s=30)
    assert ev.step(0, [warn]) == []
    assert ev.step(10, [replace(warn, severity="critical")]) == []
    [fired] = ev.step(30, [replace(warn, severity="critical")])
    assert (fired.kind, fired.alert.severity, fired.previous_severity) == (
        "firing", "critical", None,
    )  # fmt: skip


def test_a_suppressed_alert_pages_only_once_its_cause_is_gone(open_outbox):
    ev = Evaluator(open_outbox())
    rack = Condition("rack_over_headroom", {"rack": "A01"}, True, -5.0, "over", "critical")
    hidden = replace(rack, suppressed_by="pump_redundancy_lost{device=cdu-2}")
    assert ev.step(0, [hidden]) == []
    [alert] = ev.active_alerts()
    assert (alert.state, alert.suppressed_by) == ("firing", "pump_redundancy_lost{device=cdu-2}")
    assert ev.step(10, []) == []  # fired and cleared while suppressed: nobody was paged
    assert ev.step(20, [hidden]) == []
    [late] = ev.step(30, [rack])  # the cause is gone and the rack is still over
    assert (late.kind, late.at, late.alert.starts_at) == ("firing", 30, 20)
    assert ev.step(40, [hidden]) == []  # suppressed again: no repeat, no resolved
    assert kinds(ev.step(50, [])) == ["resolved"]  # it was paged, so its end is too


def column_steps(seed: int, subjects: int = 6, steps: int = 400):
    """A column rule's evaluations at random: subjects judged (all, or some), active,
    suppressed, values; some steps incomplete; an acknowledgement now and then."""
    rnd = random.Random(seed)
    labels = [{"rack": f"r{i:02d}"} for i in range(subjects)]
    fps = [fingerprint("rack_over_headroom", x) for x in labels]
    now, out = 1000.0, []
    for _ in range(steps):
        now += rnd.choice([1, 5, 10, 40, 120])
        judged = np.arange(subjects) if rnd.random() < 0.8 else np.array(
            sorted(rnd.sample(range(subjects), rnd.randint(0, subjects))), np.intp)
        sticky = rnd.random() < 0.85  # most steps change little, as a tick does
        prev = out[-1][1] if out and sticky else None
        active = np.array([rnd.random() < 0.6 for _ in judged], bool)
        by = np.array([rnd.choice([None, None, "leak{device=cdu-1}", "silence s1"])
                       for _ in judged], object)
        if prev is not None and len(prev.subjects) == len(judged):
            active, by = prev.active.copy(), prev.suppressed_by.copy()
            flip = rnd.randrange(len(judged)) if len(judged) else None
            if flip is not None and rnd.random() < 0.3:
                active[flip] = not active[flip]
        value = np.array([rnd.choice([np.nan, -3.5, -12.25]) for _ in judged])
        col = ConditionColumn("rack_over_headroom", labels, fps, judged, active, value,
                              lambda i: f"rack r{i:02d} is over", "critical", 30.0, "kW", 0,
                              by)  # fmt: skip
        ack = rnd.choice(fps) if rnd.random() < 0.05 else None
        out.append((now, col, rnd.random() < 0.1, ack))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_column_steps_as_its_conditions_one_by_one(open_outbox, monkeypatch, seed):
    """A rule over every rack is judged as one column, its steady alerts (active, held back
    by the same cause, no timer due) left as they are: the same transitions and alerts as
    its conditions taken one by one, through pending, firing, repeats, suppression,
    acknowledgements, incomplete evaluations and subjects left out."""
    from alerts import evaluate

    one_by_one = Evaluator(open_outbox(), repeat_s=100)
    columns = Evaluator(open_outbox(), repeat_s=100)
    taken: list[int] = []  # conditions each step took one by one: one_by_one's, columns'
    merge = evaluate._merge
    monkeypatch.setattr(evaluate, "_merge", lambda cs: taken.append(len(cs)) or merge(cs))
    heard = set()
    for now, col, incomplete, ack in column_steps(seed):
        if ack is not None and one_by_one.is_active(ack):
            assert one_by_one.acknowledge(ack, "ops", now) == columns.acknowledge(ack, "ops", now)
        expected = one_by_one.step(now, col.conditions(), hold_absent=incomplete)
        got = columns.step(now, [], hold_absent=incomplete, columns=[col])
        assert [(t.kind, t.alert) for t in got] == [(t.kind, t.alert) for t in expected]
        assert columns.active_alerts() == one_by_one.active_alerts()
        heard |= {t.kind for t in got}
    assert heard == {"firing", "repeat", "resolved"}
    assert sum(taken[1::2]) < sum(taken[::2]) / 2  # the steady ones were left as they were


def test_inhibition_follows_the_power_and_cooling_graph():
    from alerts.inhibit import inhibit

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    # every demo rack has an A feed on rect-a, a B feed on ups-b, and loop-1: make one differ
    site.racks[0] = site.racks[0].model_copy(update={"feed_b": None, "loop": None})
    pdus = {d.id: d.upstream for d in site.devices_of("pdu")}
    behind_ups_b = {r.id for r in site.racks if "ups-b" in (pdus[r.feed_a], pdus.get(r.feed_b))}
    on_loop_1 = {r.id for r in site.racks if r.loop == "loop-1"}
    assert site.racks[0].id not in behind_ups_b | on_loop_1 and behind_ups_b and on_loop_1

    def cond(rule: str, **labels: str) -> Condition:
        return Condition(rule, labels, True, None, "", "critical")

    cdu = site.loops[0].cdus[0]
    causes = [cond("ups_on_battery", device="ups-b"), cond("device_unreachable", device=cdu),
              cond("leak", device=cdu)]  # fmt: skip
    symptoms = [cond("feed_redundancy_lost", rack=r.id) for r in site.racks] + [
        cond("rack_over_headroom", rack=r.id) for r in site.racks]
    limiting = {r.id: "loop" if i % 2 else "feed" for i, r in enumerate(site.racks)}
    binding = list(limiting.values())  # each rack's binding limit, in the site's order
    out = {(c.rule, c.labels.get("rack") or c.labels["device"]): c.suppressed_by
           for c in inhibit(Topology(site), causes + symptoms, binding)}  # fmt: skip
    assert out[("ups_on_battery", "ups-b")] is None  # a cause stays a page
    assert out[("leak", cdu)] == f"device_unreachable{{device={cdu}}}"  # its device is dark
    for r in site.racks:
        feed = out[("feed_redundancy_lost", r.id)]
        assert (feed == "ups_on_battery{device=ups-b}") == (r.id in behind_ups_b)
        over = out[("rack_over_headroom", r.id)]  # the loop explains only a loop limit
        assert (over is not None) == (r.id in on_loop_1 and limiting[r.id] == "loop")
    inactive = [replace(c, active=False) for c in causes]
    assert all(c.suppressed_by is None for c in inhibit(Topology(site), inactive + symptoms, binding))

    # a rule over every rack as one column (as the runtime judges them): the same causes
    for rule, subjects in (("feed_redundancy_lost", slice(None)),
                           ("rack_over_headroom", slice(1, None, 2))):
        labels = [{"rack": r.id} for r in site.racks]
        judged = np.arange(len(labels))[subjects]
        col = ConditionColumn(rule, labels, [fingerprint(rule, x) for x in labels], judged,
                              np.ones(len(judged), bool), np.zeros(len(judged)), str)
        assert inhibit(Topology(site), causes, binding, [col]) and col.suppressed_by is not None
        assert col.suppressed_by.tolist() == [out[(rule, labels[i]["rack"])] for i in judged]
        assert any(col.suppressed_by)


def test_a_dark_modbus_gateway_is_one_page_for_all_its_units():
    """Units behind one gateway that all stop answering are one cause: the gateway pages,
    with the racks its units measure; their own alerts are its suppressed symptoms. One
    unit still answering means the gateway is up: then the dark unit pages itself."""
    from aidc.core.metrics import DeviceHealth
    from alerts.inhibit import inhibit
    from alerts.rules import builtin_conditions

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    units = ["cdu-1", "cdu-2", "mf-a01"]  # on one gateway, unit ids 1..3
    for n, unit in enumerate(units, 1):
        i = next(i for i, d in enumerate(site.devices) if d.id == unit)
        site.devices[i] = site.devices[i].model_copy(update={
            "port": 15023, "modbus": site.devices[i].modbus.model_copy(update={"unit_id": n})})
    graph = Topology(site)
    assert graph.devices_behind_gateway == {"127.0.0.1:15023": units}

    was_down = fingerprint("gateway_unreachable", {"site": site.site, "gateway": "127.0.0.1:15023"})

    def alerts(dark: list[str], failing: tuple[str, ...] = (), back_s: float | None = None
               ) -> dict[tuple[str, str], str | None]:
        """The active alerts and what suppresses them, ``dark`` units unreachable (3 polls
        missed), ``failing`` ones with one missed; with ``back_s``, the gateway was down and
        the other units answer again since that long."""
        now = 1000.0
        health = [DeviceHealth(d.id, d.kind, 5.0, failures=3 if d.id in dark else
                               1 if d.id in failing else 0,
                               since=None if back_s is None else now - back_s)
                  for d in site.devices]
        conditions, complete = builtin_conditions(site, health, None, {},
                                                  is_active=lambda fp: back_s is not None
                                                  and fp == was_down,
                                                  now=now, topology=graph)
        assert complete
        return {(c.rule, c.labels.get("device") or c.labels["gateway"]): c.suppressed_by
                for c in inhibit(graph, conditions, []) if c.active}

    cause = "gateway_unreachable{gateway=127.0.0.1:15023}"
    gateway = {("gateway_unreachable", "127.0.0.1:15023"): None}
    assert alerts(units) == gateway | {("device_unreachable", u): cause for u in units}
    assert alerts(units[:2]) == {("device_unreachable", u): None for u in units[:2]}
    # the first unit to count as unreachable: the others missed their last poll, no more
    assert alerts(units[:1], failing=tuple(units[1:])) == gateway | {
        ("device_unreachable", units[0]): cause}
    # back: one unit answers; the others, not yet polled again, stay its symptoms for two
    # poll intervals, then page as their own
    assert alerts(units[1:], back_s=4.0) == gateway | {("device_unreachable", u): cause
                                                         for u in units[1:]}
    assert alerts(units[1:], back_s=11.0) == {("device_unreachable", u): None for u in units[1:]}
    racks, loops = graph.affected({"gateway": "127.0.0.1:15023"})
    assert loops == ["loop-1"] and set(racks) == {r.id for r in site.racks if r.loop == "loop-1"}


def test_silence_matchers_states_and_refusals(open_outbox):
    from aidc.core.matchers import Matcher, parse_matcher
    from alerts.silences import Silences

    silences = Silences(open_outbox())
    cdu1 = silences.add(
        [parse_matcher("device=cdu-1"), parse_matcher("rule=~leak|pump_.*")], 100, 200, "alice",
        "pump swap", now=50)  # fmt: skip
    assert [cdu1.state(t) for t in (50, 100, 199.9, 200)] == [
        "pending", "active", "active", "expired"]  # fmt: skip
    leak = replace(LEAK, labels={"device": "cdu-1"})
    other = replace(LEAK, labels={"device": "cdu-2"})
    flow = Condition("flow_low", {"device": "cdu-1"}, True)
    at_150 = silences.apply([leak, other, flow], now=150)
    assert [c.suppressed_by for c in at_150] == [f"silence {cdu1.id}", None, None]
    assert all(c.suppressed_by is None for c in silences.apply([leak], now=99))
    inhibited = replace(leak, suppressed_by="device_unreachable{device=cdu-1}")
    assert silences.apply([inhibited], now=150)[0].suppressed_by == inhibited.suppressed_by
    col = ConditionColumn("leak", [leak.labels, other.labels, inhibited.labels], ["a", "b", "c"],
                          np.arange(3), np.ones(3, bool), np.ones(3), str,
                          suppressed_by=np.array([None, None, inhibited.suppressed_by]))
    silences.apply([], now=150, columns=[col])  # a column's subjects, as one by one
    assert col.suppressed_by.tolist() == [f"silence {cdu1.id}", None, inhibited.suppressed_by]
    assert Matcher("row", "B", "!=").matches("x", {"row": "A"})
    assert not Matcher("row", "A|B", "!~").matches("x", {"row": "A"})

    gone = silences.expire(cdu1.id, "bob", now=160)
    assert (gone.ends_at, gone.expired_by, gone.state(160)) == (160, "bob", "expired")
    with pytest.raises(KeyError):
        silences.expire(cdu1.id, "bob", now=170)
    assert silences.apply([leak], now=170)[0].suppressed_by is None
    assert [s.id for s in Silences(open_outbox()).all(now=170)] == [cdu1.id]  # kept, reopened

    for text, error in [("device", "is not a matcher"), ("rule=~(", "bad regex")]:
        with pytest.raises(ValueError, match=error):
            parse_matcher(text)
    with pytest.raises(ValueError, match="every alert"):
        silences.add([parse_matcher("device!=nothing")], 0, 10, "eve", "all", now=0)
    with pytest.raises(ValueError, match="end after"):
        silences.add([parse_matcher("device=cdu-1")], 0, 10, "eve", "past", now=20)


def test_routes_send_an_alert_where_it_matches_and_its_changes_to_whoever_heard_of_it(
        open_outbox):
    """Alertmanager's routing, flat: the first route that matches takes the alert, and those
    after a ``continue``; a change of severity and the resolve also reach every receiver
    told of it before; a reminder goes only where the alert is routed now."""
    hooks = [Webhook(name=n, url=f"http://127.0.0.1:9/{n}") for n in ("pager", "pumps", "chat")]
    routes = [Route.model_validate({"matchers": ["severity=critical"], "receivers": ["pager"],
                                    "continue": True}),
              Route(matchers=["rule=~pump_.*", "device!=cdu-9"], receivers=["pumps"]),
              Route(receivers=["chat"])]
    outbox = open_outbox(hooks)
    notifier = Notifier(DEMO, Alerts(repeat_s=100, webhooks=hooks, routes=routes), outbox)
    ev = Evaluator(outbox, repeat_s=100, notify=notifier.notify)
    one = Condition("rectifier_module_lost", {"source": "rect-1"}, True, 1.0, "1 lost", "warning")
    two = replace(one, value=2.0, summary="2 lost", severity="critical")
    pump = Condition("pump_redundancy_lost", {"device": "cdu-1"}, True, 2.0, "1 of 3", "warning")
    queued: set[int] = set()

    def sent(now: float, conditions: list[Condition]) -> set[tuple[str, str, str]]:
        """(rule, kind, webhook) of each notification this step queued."""
        ev.step(now, conditions)
        rows = [r for r in outbox.pending() if r.id not in queued]
        queued.update(r.id for r in rows)
        return {(json.loads(r.body)["rule"], json.loads(r.body)["kind"], r.webhook) for r in rows}

    assert sent(0, [one, LEAK, pump]) == {
        ("rectifier_module_lost", "firing", "chat"),  # a warning: the catch-all
        ("leak", "firing", "pager"), ("leak", "firing", "chat"),  # critical, and on
        ("pump_redundancy_lost", "firing", "pumps"),  # matched: the catch-all is not tried
    }
    ev.acknowledge(LEAK.fingerprint, "ops")
    ev.acknowledge(pump.fingerprint, "ops")
    assert sent(10, [two, LEAK, pump]) == {("rectifier_module_lost", "escalated", "pager"),
                                           ("rectifier_module_lost", "escalated", "chat")}
    assert outbox.told(one.fingerprint) == {"pager": 10, "chat": 10}  # when each was told
    assert sent(20, [one, LEAK, pump]) == {  # the pager hears that its critical is a warning
        ("rectifier_module_lost", "deescalated", "pager"),
        ("rectifier_module_lost", "deescalated", "chat")}
    assert sent(120, [one, LEAK, pump]) == {("rectifier_module_lost", "repeat", "chat")}
    assert sent(130, [LEAK]) == {  # and hears it end, as the pumps' team hears theirs
        ("rectifier_module_lost", "resolved", "pager"), ("rectifier_module_lost", "resolved", "chat"),
        ("pump_redundancy_lost", "resolved", "pumps")}
    assert outbox.told(one.fingerprint) == outbox.told(pump.fingerprint) == {}
    assert outbox.told(LEAK.fingerprint).keys() == {"pager", "chat"}


def test_each_route_reminds_its_receivers_at_its_own_repeat(open_outbox):
    """Alertmanager's repeat_interval, per route: the pager is reminded of a critical every
    10 minutes, the chat every hour (``alerts.repeat_s``), each counted from when that
    receiver was last told; an acknowledged alert reminds no one."""
    hooks = [Webhook(name=n, url=f"http://127.0.0.1:9/{n}") for n in ("pager", "chat")]
    alerts = Alerts.model_validate({"repeat_s": 3600, "webhooks": hooks, "routes": [
        {"matchers": ["severity=critical"], "receivers": ["pager"], "continue": True,
         "repeat_s": 600},
        {"receivers": ["chat"]}]})
    assert alerts.shortest_repeat_s == 600
    outbox = open_outbox(hooks)
    notifier = Notifier(DEMO, alerts, outbox)
    ev = Evaluator(outbox, repeat_s=alerts.shortest_repeat_s, notify=notifier.notify)
    queued: set[int] = set()

    def sent(now: float) -> set[tuple[str, str]]:
        ev.step(now, [LEAK])
        rows = [r for r in outbox.pending() if r.id not in queued]
        queued.update(r.id for r in rows)
        return {(json.loads(r.body)["kind"], r.webhook) for r in rows}

    assert sent(1000) == {("firing", "pager"), ("firing", "chat")}
    assert sent(1599) == set()
    assert sent(1600) == {("repeat", "pager")}  # the chat's hour has not passed
    assert sent(2205) == {("repeat", "pager")}
    assert sent(4599) == {("repeat", "pager")}  # 3,599 s since the chat heard: not yet
    assert sent(5200) == {("repeat", "pager"), ("repeat", "chat")}
    assert outbox.told(LEAK.fingerprint) == {"pager": 5200, "chat": 5200}
    ev.acknowledge(LEAK.fingerprint, "ops")
    assert sent(9000) == set()


def test_a_grouped_route_tells_each_group_once_per_interval_and_holds_it_through_a_restart(
        open_outbox):
    """Alertmanager's grouping, step by hand: a route grouping the racks' alerts by room
    sends nothing for 30 s (group_wait), then one notification per room to each receiver;
    a resolve and a new rack come in the next one, 300 s after the first (group_interval),
    even across a restart; an escalation to critical 30 s (group_wait) after the last one,
    not 300; a reminder of what still fires, a repeat later. An alert on an ungrouped route
    goes out at once."""
    import jsonschema
    import referencing

    schemas = {name: json.loads((ROOT / "alerts" / "schema" / name).read_text())
               for name in ("generic-v3.json", "generic-group-v3.json")}
    registry = referencing.Registry().with_resources(
        (s["$id"], referencing.Resource.from_contents(s)) for s in schemas.values())
    group_schema = jsonschema.Draft202012Validator(schemas["generic-group-v3.json"],
                                                   registry=registry)
    hooks = [Webhook(name="chat", url="http://127.0.0.1:9/chat"),
             Webhook(name="am", url="http://127.0.0.1:9/am", format="alertmanager"),
             Webhook(name="phone", url="json://127.0.0.1:9/phone", format="apprise")]
    alerts = Alerts.model_validate({"repeat_s": 3600, "webhooks": hooks, "routes": [
        {"matchers": ["rule=rack_over_headroom"], "receivers": ["chat", "am", "phone"],
         "group_by": ["rule", "room"], "group_wait_s": 30, "group_interval_s": 300},
        {"receivers": ["chat"]}]})

    def rack(name: str, room: str, severity: str = "warning", active: bool = True) -> Condition:
        return Condition("rack_over_headroom", {"rack": name, "room": room}, active, 2.0,
                         f"{name} over", severity, unit="kW", threshold=0.0)

    outbox = open_outbox(hooks)
    notifier = Notifier(DEMO, alerts, outbox)
    ev = Evaluator(outbox, repeat_s=3600, notify=notifier.notify)
    queued: set[int] = set()

    def new_rows() -> dict[tuple[str, str], dict]:
        """(webhook, room) -> body of each notification queued since the last call."""
        rows = [r for r in outbox.pending() if r.id not in queued]
        queued.update(r.id for r in rows)
        out = {}
        for r in rows:
            body = json.loads(r.body)
            room = (body.get("group_labels") or body.get("groupLabels") or {}).get("room", "-")
            out[(r.webhook, room)] = body | {"_row": r}
        return out

    def racks(body: dict) -> list[tuple[str, str, str]]:
        """(rack, status, severity) of each alert, as the generic or Alertmanager body says."""
        return [(a["labels"]["rack"], a["status"], a.get("severity") or a["labels"]["severity"])
                for a in body["alerts"]]

    a1, a2, b1 = rack("A01", "hall-1"), rack("A02", "hall-1"), rack("B01", "hall-2")
    ev.step(1000, [a1, a2, b1, LEAK])
    assert [(k, b["rule"]) for k, b in new_rows().items()] == [(("chat", "-"), "leak")]
    assert notifier.tell_groups(1029.9) == 0 and new_rows() == {}
    assert notifier.tell_groups(1030) == 6
    first = {k: b for k, b in new_rows().items() if k[0] != "phone"}
    assert first.keys() == {("chat", "hall-1"), ("chat", "hall-2"), ("am", "hall-1"),
                            ("am", "hall-2")}
    chat = first[("chat", "hall-1")]
    group_schema.validate({k: v for k, v in chat.items() if k != "_row"})
    assert (chat["kind"], chat["status"], chat["firing"], chat["resolved"]) == (
        "group", "firing", 2, 0)
    assert chat["group_labels"] == {"rule": "rack_over_headroom", "room": "hall-1"}
    assert racks(chat) == [("A01", "firing", "warning"), ("A02", "firing", "warning")]
    am = first[("am", "hall-1")]
    assert am["groupLabels"] == {"alertname": "rack_over_headroom", "room": "hall-1"}
    assert am["groupKey"] == '{}:{alertname="rack_over_headroom",room="hall-1"}'
    assert racks(am) == racks(chat) and am["status"] == "firing"
    assert racks(first[("chat", "hall-2")]) == [("B01", "firing", "warning")]

    # a resolve and a new rack, gathered until 300 s after the first notice
    ev.step(1100, [rack("A01", "hall-1", active=False), a2, rack("A03", "hall-1"), b1, LEAK])
    assert new_rows() == {}
    assert notifier.tell_groups(1329) == 0
    outbox.close()  # a restart: what the groups hold is in the file
    outbox = open_outbox(hooks)
    notifier = Notifier(DEMO, alerts, outbox)
    ev = Evaluator(outbox, repeat_s=3600, notify=notifier.notify)
    assert notifier.tell_groups(1330) == 3
    second = new_rows()
    assert second.keys() == {("chat", "hall-1"), ("am", "hall-1"), ("phone", "-")}
    phone = second[("phone", "-")]
    assert (phone["title"], phone["type"]) == (
        "[FIRING:2, RESOLVED:1] rule=rack_over_headroom room=hall-1 at demo", "warning")
    chat = second[("chat", "hall-1")]
    group_schema.validate({k: v for k, v in chat.items() if k != "_row"})
    assert racks(chat) == [("A02", "firing", "warning"), ("A03", "firing", "warning"),
                           ("A01", "resolved", "warning")]  # what fires first
    assert [a["kind"] for a in chat["alerts"]] == ["firing", "firing", "resolved"]
    assert (chat["firing"], chat["resolved"]) == (2, 1)
    assert racks(second[("am", "hall-1")]) == racks(chat)
    assert chat["_row"].priority == 1  # its most urgent change: a warning firing
    assert chat["_row"].alert == first[("chat", "hall-1")]["_row"].alert  # in order, one queue
    assert chat["_row"].idempotency_key != first[("chat", "hall-1")]["_row"].idempotency_key
    assert outbox.told(a1.fingerprint) == {}  # resolved: no receiver waits for it

    # an escalation to critical goes out 30 s after the last notice (group_wait), not 300
    ev.step(1340, [rack("A02", "hall-1", "critical"), rack("A03", "hall-1"), b1, LEAK])
    assert new_rows() == {}
    assert notifier.tell_groups(1359) == 0 and notifier.tell_groups(1360) == 3
    third = new_rows()
    phone = third[("phone", "-")]
    assert (phone["title"], phone["type"]) == (
        "[FIRING:2] rule=rack_over_headroom room=hall-1 at demo", "failure")
    assert phone["body"].startswith("[FIRING critical] rack_over_headroom at demo\n"
                                    "escalated from warning to critical: A02 over\n")
    chat = third[("chat", "hall-1")]
    group_schema.validate({k: v for k, v in chat.items() if k != "_row"})
    assert racks(chat) == [("A02", "firing", "critical"), ("A03", "firing", "warning")]
    assert [a["kind"] for a in chat["alerts"]] == ["escalated", "firing"]  # the critical first
    assert chat["_row"].priority == 0  # a critical change: sent before any warning

    # the room's last racks resolve: one resolved notice, 300 s after the last, and the
    # group ends
    ev.step(1400, [b1, LEAK])
    assert notifier.tell_groups(1659) == 0 and notifier.tell_groups(1660) == 3
    chat = new_rows()[("chat", "hall-1")]
    assert (chat["status"], racks(chat)) == (
        "resolved", [("A02", "resolved", "critical"), ("A03", "resolved", "warning")])
    assert notifier.tell_groups(99_999) == 0

    # an hour after it fired, hall-2's rack is due a reminder: its group is told again
    ev.step(4599, [b1, LEAK])
    assert new_rows() == {}
    ev.step(4600, [b1, LEAK])
    assert {k: b.get("kind") for k, b in new_rows().items()} == {("chat", "-"): "repeat"}
    assert notifier.tell_groups(4600) == 3
    reminder = new_rows()
    assert racks(reminder[("chat", "hall-2")]) == [("B01", "firing", "warning")]
    assert reminder[("chat", "hall-2")]["alerts"][0]["kind"] == "repeat"
    assert outbox.told(b1.fingerprint) == {"chat": 4600, "am": 4600, "phone": 4600}


def test_grouping_that_cannot_work_is_refused_with_its_line(tmp_path):
    site = (ROOT / "site_configs" / "demo.yaml").read_text()
    cases = {
        "[{receivers: [am], group_by: [rule]}]": "alerts.routes[0].group_by: webhook 'am' "
        "pushes each alert to Alertmanager, which groups them itself: group there instead",
        "[{receivers: [pd], group_by: [rule]}]": "alerts.routes[0].group_by: webhook 'pd' "
        "pushes each alert to PagerDuty, which groups them itself: group there instead",
        "[{receivers: [am], group_by: [rule-name]}]": "alerts.routes[0].group_by[0]: String "
        "should match pattern",
        "[{receivers: [am], group_wait_s: -1}]": "alerts.routes[0].group_wait_s: Input should "
        "be greater than or equal to 0",
    }
    for routes, error in cases.items():
        path = tmp_path / "site.yaml"
        text = site.replace("  webhooks: []\n", "  webhooks:\n    - {name: am, url: "
                            "'http://127.0.0.1:9/api/v2/alerts', format: alertmanager_push}\n"
                            "    - {name: pd, url: 'http://127.0.0.1:9/v2/enqueue', format: "
                            "pagerduty, routing_key: k}\n"
                            f"  routes: {routes}\n")
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_site(path)
        line = 1 + text.splitlines().index(f"  routes: {routes}")
        assert f"{path}:{line}: {error}" in str(e.value)


def test_routes_that_would_lose_an_alert_are_refused_with_their_line(tmp_path):
    site = (ROOT / "site_configs" / "demo.yaml").read_text()
    cases = {
        '[{matchers: ["severity=critical"], receivers: [pager]}]':
            "alerts.routes[0].matchers: the last route must have no matchers",
        '[{receivers: [pager, chat]}]': "alerts.routes[0].receivers[1]: no webhook is named 'chat'",
        '[{matchers: ["severity=critical"], receivers: [pager], continue: true}, {receivers: [pager]}]':
            "",
        '[{receivers: [pager]}, {matchers: ["rule=~(leak"], receivers: [pager]}]':
            "alerts.routes[1].matchers[0]: matcher rule=~: bad regex",
        '[{receivers: [pager, spare], repeat_s: 0}]':
            "alerts.routes[0].repeat_s: Input should be greater than 0",
    }
    for routes, error in cases.items():
        path = tmp_path / "site.yaml"
        text = site.replace("  webhooks: []\n", "  webhooks:\n"
                            "    - {name: pager, url: 'http://127.0.0.1:9/p'}\n"
                            "    - {name: spare, url: 'http://127.0.0.1:9/s'}\n"
                            f"  routes: {routes}\n")
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_site(path)
        line = 1 + text.splitlines().index(f"  routes: {routes}" if error else
                                           "    - {name: spare, url: 'http://127.0.0.1:9/s'}")
        expected = error or "alerts.webhooks[1].name: webhook 'spare' is on no route"
        assert f"{path}:{line}: {expected}" in str(e.value)


def test_state_change_and_outbox_rows_commit_together(open_outbox, receiver):
    """A failure while enqueuing leaves no trace: the next evaluation notifies again."""
    outbox = open_outbox([webhook(receiver)])
    notifier = Notifier(DEMO, Alerts(webhooks=[webhook(receiver)]), outbox)

    def crash(transitions) -> None:
        notifier.notify(transitions)
        raise RuntimeError("process died here")

    ev = Evaluator(outbox, notify=crash)
    with pytest.raises(RuntimeError):
        ev.step(0, [LEAK])
    assert outbox.backlog() == 0 and ev.active_alerts() == []
    assert Evaluator(open_outbox()).active_alerts() == []
    ev = Evaluator(outbox, notify=notifier.notify)
    assert kinds(ev.step(1, [LEAK])) == ["firing"]
    assert outbox.backlog() == 1


# ---------------------------------------------------------------- formats and signature


def test_generic_payload_tells_what_where_how_bad_and_what_next(open_outbox):
    import jsonschema

    schema = json.loads((ROOT / "alerts" / "schema" / "generic-v3.json").read_text())
    notifier = Notifier(DEMO, Alerts(), open_outbox(), external_url="https://aidc.example/ops/")
    ev = Evaluator(open_outbox())
    pump = Condition("pump_redundancy_lost", {"site": "demo", "device": "cdu-2", "kind": "cdu"},
                     True, 1.0, "cdu-2 runs 1 of 2 pumps: no spare pump left", "warning",
                     unit="pumps", threshold=2.0)  # fmt: skip
    on_loop_1 = [r.id for r in DEMO.site.racks if r.loop == "loop-1"]
    [fired] = ev.step(1_700_000_000, [pump])
    body = generic_payload(fired, "demo", notifier.context(fired))
    pack = rule_pack()["pump_redundancy_lost"]
    assert body == {
        "version": "3",
        "status": "firing",
        "kind": "firing",
        "previous_severity": None,
        "fingerprint": pump.fingerprint,
        "rule": "pump_redundancy_lost",
        "severity": "warning",
        "summary": "cdu-2 runs 1 of 2 pumps: no spare pump left",
        "labels": {"site": "demo", "device": "cdu-2", "kind": "cdu"},
        "value": 1.0,
        "unit": "pumps",
        "threshold": 2.0,
        "where": {"site": "demo", "device": "cdu-2"},
        "affected": {"racks": on_loop_1, "loops": ["loop-1"]},
        "description": pack.meaning,  # what it means, and what to do first
        "next_step": "Check the pump's drive and breaker at the CDU; plan the swap.",
        "runbook_url": "https://aidc.example/ops/runbooks#pump_redundancy_lost",
        "url": "https://aidc.example/ops/cooling",  # the page that shows cdu-2
        "starts_at": "2023-11-14T22:13:20.000Z",
        "ends_at": None,
        "duration_s": None,
        "site": "demo",
    }
    jsonschema.validate(body, schema)
    [up] = ev.step(1_700_000_100, [replace(pump, severity="critical", value=0.0)])
    body = generic_payload(up, "demo", notifier.context(up))
    assert body["summary"] == (
        "escalated from warning to critical: cdu-2 runs 1 of 2 pumps: no spare pump left")
    jsonschema.validate(body, schema)
    [resolved] = ev.step(1_700_000_192.25, [replace(pump, active=False, value=2.0)])
    body = generic_payload(resolved, "demo", notifier.context(resolved))
    assert body["summary"] == (
        "resolved after 3 min 12 s: cdu-2 runs 1 of 2 pumps: no spare pump left")
    assert (body["status"], body["value"], body["duration_s"], body["ends_at"]) == (
        "resolved", 2.0, 192.25, "2023-11-14T22:16:32.250Z")  # the value it cleared at
    jsonschema.validate(body, schema)
    # a site's own words for a rule of the pack, filled with the alert's values and unit
    worded = DEMO.site.model_copy(update={"alerts": Alerts(rules={"pump_redundancy_lost": {
        "description": "{device} runs {value:g} of its {threshold:g} {unit}: {severity}"}})})
    context = Notifier(Topology(worded), Alerts(), open_outbox()).context(up)
    assert context.description == "cdu-2 runs 0 of its 2 pumps: critical"
    assert context.next_step == pack.steps[0]
    with pytest.raises(jsonschema.ValidationError):  # the schema holds the payload to account
        jsonschema.validate({**body, "ends_at": None}, schema)
    bare = Notifier(DEMO, Alerts(), open_outbox()).context(resolved)  # no external_url: no links
    assert (bare.runbook_url, bare.url) == (None, None)


def test_a_pdu_alert_says_which_rack_room_and_row(open_outbox):
    rack = DEMO.site.racks[0]
    labels = {"site": "demo", "device": rack.feed_a, "kind": "pdu"}
    alert = Alert(fingerprint("device_unreachable", labels), "device_unreachable", labels,
                  "critical", "dark", 3.0, "firing", 0.0)  # fmt: skip
    context = Notifier(DEMO, Alerts(), open_outbox()).context(Transition("firing", alert, 0.0))
    assert context.where == {"room": rack.room, "row": rack.row, "rack": rack.id,
                             "device": rack.feed_a}  # fmt: skip
    assert (context.racks, context.loops) == ([rack.id], [rack.loop])


def test_each_notification_links_to_the_console_page_that_shows_its_alert(open_outbox):
    notifier = Notifier(DEMO, Alerts(), open_outbox(), external_url="https://aidc.example/ops/")

    def url(rule: str, **labels: str) -> str:
        alert = Alert(fingerprint(rule, labels), rule, labels, "critical", "s", 1.0, "firing", 0.0)
        return notifier.context(Transition("firing", alert, 0.0)).url

    base = "https://aidc.example/ops"
    assert url("device_unreachable", device="pdu-a03-b", kind="pdu") == f"{base}/rack/A03"
    assert url("rack_over_headroom", rack="B 02/x") == f"{base}/rack/B%2002%2Fx"
    assert url("leak", device="cdu-1", kind="cdu") == f"{base}/cooling"
    assert url("rectifier_modules_lost", device="rect-a", kind="rectifier") == f"{base}/power"
    assert url("device_unreachable", device="meter-main", kind="meter") == f"{base}/devices"
    assert url("pue_high") == f"{base}/alerts"


def test_signature_known_vector():
    mac = hmac.new(b"whsec-test", b'1700000000.{"status":"firing"}', hashlib.sha256).hexdigest()
    assert mac == "0b68c02352e42a5d9b0380a3d362785a58e35dfe10798ea980da8b06a3c7d7f6"
    assert signature_headers(b"whsec-test", b'{"status":"firing"}', 1_700_000_000) == {
        "X-Aidc-Timestamp": "1700000000",
        "X-Aidc-Signature": f"sha256={mac}",
    }


def test_delivered_signature_verifies_with_the_key_only(open_outbox, receiver):
    p = pipeline(open_outbox, [webhook(receiver.start())])
    p.evaluator.step(time.time(), [LEAK])
    deliver_until(p.outbox, lambda: len(receiver.requests) == 1)
    req = receiver.requests[0]
    ts = req.headers["x-aidc-timestamp"]
    signed = ts.encode() + b"." + req.body

    def expected(key: bytes) -> str:
        return "sha256=" + hmac.new(key, signed, hashlib.sha256).hexdigest()

    assert req.headers["x-aidc-signature"] == expected(SECRET.encode())
    assert req.headers["x-aidc-signature"] != expected(b"wrong-key")
    assert abs(int(ts) - time.time()) < 5  # signed when sent, inside a replay window
    assert req.headers["content-type"] == "application/json"
    assert req.json["fingerprint"] == LEAK.fingerprint


def test_unsigned_without_secret(open_outbox, receiver):
    p = pipeline(open_outbox, [webhook(receiver.start(), secret=None)])
    p.evaluator.step(time.time(), [LEAK])
    deliver_until(p.outbox, lambda: len(receiver.requests) == 1)
    assert "x-aidc-signature" not in receiver.requests[0].headers


def test_alertmanager_v4_payload_has_the_fields_receivers_parse(open_outbox, receiver):
    am = Webhook(name="am", url=receiver.url("/am"), format="alertmanager", timeout_s=5.0)
    p = pipeline(open_outbox, [am])
    p.evaluator.step(1_700_000_000, [LEAK])
    p.evaluator.step(1_700_000_300, [])
    receiver.start()
    deliver_until(p.outbox, lambda: len(receiver.requests) == 2)
    firing, resolved = (r.json for r in receiver.requests)
    assert set(firing) >= {
        "version", "groupKey", "status", "receiver", "groupLabels", "commonLabels",
        "commonAnnotations", "externalURL", "alerts",
    }  # fmt: skip
    assert (firing["version"], firing["status"], firing["receiver"]) == ("4", "firing", "am")
    labels = {"alertname": "leak", "severity": "critical", "site": "demo", "device": "cdu-1",
              "rack": "r01"}  # fmt: skip
    assert firing["commonLabels"] == firing["groupLabels"] == labels
    assert firing["groupKey"] == (
        '{}:{alertname="leak",device="cdu-1",rack="r01",severity="critical",site="demo"}'
    )
    [alert] = firing["alerts"]
    racks = ["r01", *(r.id for r in DEMO.site.racks if r.loop == "loop-1")]  # label, cdu-1's
    assert alert == {
        "status": "firing",
        "labels": labels,
        "annotations": {"summary": "leak at cdu-1", "value": "1",
                        "affected_racks": ", ".join(racks), "affected_loops": "loop-1",
                        "description": rule_pack()["leak"].meaning,
                        "next_step": rule_pack()["leak"].steps[0]},
        "startsAt": "2023-11-14T22:13:20.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": LEAK.fingerprint,
    }
    assert resolved["status"] == resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "2023-11-14T22:18:20.000Z"
    assert resolved["groupKey"] == firing["groupKey"]


def test_alertmanager_push_reaches_a_real_alertmanager_and_stays_alive(open_outbox, alertmanager,
                                                                        caplog):
    hook = Webhook(name="am", url=f"{alertmanager.url}/api/v2/alerts", format="alertmanager_push",
                   timeout_s=5.0)  # fmt: skip
    # routed only warnings, on a port where nothing listens: it is never tried
    warnings = Webhook(name="am-warnings", url=f"http://127.0.0.1:{free_port()}/api/v2/alerts",
                       format="alertmanager_push")
    routes = [Route(matchers=["severity=warning"], receivers=[warnings.name]),
              Route(receivers=[hook.name])]
    outbox = open_outbox([hook, warnings])
    notifier = Notifier(DEMO, Alerts(webhooks=[hook, warnings], routes=routes), outbox,
                        external_url="https://aidc.example")
    ev = Evaluator(outbox, notify=notifier.notify)
    now = time.time()
    ev.step(now, [LEAK])
    deliver_until(outbox, lambda: outbox.backlog() == 0)
    assert outbox.dead_letters() == []
    [got] = wait_for(lambda: [a for a in alertmanager.alerts() if a["status"]["state"] == "active"],
                     what="the alert active in Alertmanager")
    assert got["labels"] == {"alertname": "leak", "severity": "critical", "site": "demo",
                             "device": "cdu-1", "rack": "r01"}  # fmt: skip
    assert got["annotations"]["summary"] == "leak at cdu-1"
    assert got["annotations"]["runbook_url"] == "https://aidc.example/runbooks#leak"
    assert got["generatorURL"] == "https://aidc.example/rack/r01"  # the page that shows it
    ends = datetime.fromisoformat(got["endsAt"]).timestamp()
    assert ends == pytest.approx(now + 240, abs=1)  # held 4 resends, unless sent again

    async def resend(at: float) -> int:
        async with httpx.AsyncClient() as client:
            return await notifier.resend_once(client, ev.active_alerts(), at)

    assert asyncio.run(resend(now + 100)) == 1  # the periodic resend keeps it alive
    [again] = alertmanager.alerts()
    assert datetime.fromisoformat(again["endsAt"]).timestamp() == pytest.approx(now + 340, abs=1)

    ev.step(time.time(), [])  # it clears: the resolved notice ends it in Alertmanager
    deliver_until(outbox, lambda: outbox.backlog() == 0)
    wait_for(lambda: alertmanager.alerts() == [], what="Alertmanager to resolve it")
    assert asyncio.run(resend(time.time())) == 0  # nothing firing: nothing re-posted
    assert "am-warnings" not in caplog.text


def test_alertmanager_group_shares_common_labels(open_outbox):
    ev = Evaluator(open_outbox())
    other = Condition("leak", {"device": "cdu-2", "rack": "r01"}, True, None, "leak", "critical")
    grouped = alertmanager_payload(ev.step(0, [LEAK, other]), site="demo", receiver="am")
    assert grouped["commonLabels"] == {
        "alertname": "leak", "severity": "critical", "site": "demo", "rack": "r01"
    }  # fmt: skip
    assert grouped["commonAnnotations"] == {}
    assert [a["annotations"] for a in grouped["alerts"]][1] == {"summary": "leak"}  # null value


# ---------------------------------------------------------------- outbox delivery


def count_delivery(reliability, row: str, keys: list[str], *receivers: Receiver) -> None:
    got = [r.headers["idempotency-key"] for rc in receivers for r in rc.requests]
    reliability.count(f"notifications: {row}", "notices", len(keys),
                      lost=len(set(keys) - set(got)), duplicated=len(got) - len(set(got)))


def test_receiver_down_then_up_gets_each_notification_once_in_order(open_outbox, receiver,
                                                                    reliability):
    p = pipeline(open_outbox, [webhook(receiver)])
    flow = Condition("flow_low", {"loop": "L1"}, True, 80.0, "low flow", "warning")
    now = time.time()
    p.evaluator.step(now, [LEAK])
    p.evaluator.step(now + 1, [LEAK, flow])
    p.evaluator.step(now + 2, [flow])
    keys = [r.idempotency_key for r in p.outbox.pending()]
    for _ in range(3):  # port closed: connection refused, three times
        asyncio.run(p.outbox.deliver_due())
        time.sleep(FAST.cap_s + 0.01)
    # the two alerts' heads were tried at once; then the failed receiver is probed with the
    # most urgent alone, and the resolved waits behind its firing
    assert [r.attempts for r in p.outbox.pending()] == [3, 1, 0]
    assert p.outbox.backlog() == 3 and p.outbox.oldest_age_s() > 0
    receiver.start()
    deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    time.sleep(0.1)  # nothing more arrives
    count_delivery(reliability, "receiver refusing connections, then back", keys, receiver)
    got = [(r.json["rule"], r.json["status"]) for r in receiver.requests]
    assert sorted(got) == [("flow_low", "firing"), ("leak", "firing"), ("leak", "resolved")]
    assert got.index(("leak", "firing")) < got.index(("leak", "resolved"))  # each alert in order
    assert sorted(r.headers["idempotency-key"] for r in receiver.requests) == sorted(keys)
    assert p.outbox.oldest_age_s() == 0.0 and p.outbox.dead_letters() == []


def test_500_then_200_is_retried_with_the_same_key(open_outbox, receiver):
    receiver.answers = [(500, {}), (503, {})]
    p = pipeline(open_outbox, [webhook(receiver.start())])
    p.evaluator.step(time.time(), [LEAK])
    deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    assert len(receiver.requests) == 3
    assert len({r.headers["idempotency-key"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1


def test_429_retry_after_is_honoured(open_outbox, receiver):
    receiver.answers = [(429, {"Retry-After": "30"})]
    p = pipeline(open_outbox, [webhook(receiver.start())])
    p.evaluator.step(time.time(), [LEAK])
    before = time.time()
    assert asyncio.run(p.outbox.deliver_due()) == 0
    [row] = p.outbox.pending()
    assert (row.attempts, row.last_error) == (1, "http_429")
    assert row.next_attempt_at >= before + 30
    assert asyncio.run(p.outbox.deliver_due(now=before + 31)) == 1


def test_parse_retry_after():
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after(None, 0) is None


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy, rng = RetryPolicy(base_s=1, cap_s=300), random.Random(7)
    for attempts, ceiling in [(1, 1), (2, 2), (5, 16), (9, 256), (10, 300), (5000, 300)]:
        delays = [policy.delay_s(attempts, rng, None) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling / 2  # spread over the whole range, not a fixed value
    assert policy.delay_s(1, rng, retry_after_s=60) == 60
    assert policy.delay_s(1, rng, retry_after_s=10**6) == 3600


def test_400_is_dead_lettered_once_and_the_queue_moves_on(open_outbox, receiver, tmp_path):
    receiver.answers = [(400, {})]
    p = pipeline(open_outbox, [webhook(receiver.start())])
    now = time.time()
    p.evaluator.step(now, [LEAK])
    p.evaluator.step(now + 1, [])
    deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    time.sleep(0.1)
    assert [r.json["status"] for r in receiver.requests] == ["firing", "resolved"]
    [dead] = p.outbox.dead_letters()
    assert (dead.attempts, dead.last_error, json.loads(dead.body)["status"]) == (
        1, "http_400", "firing",
    )  # fmt: skip
    # as the console reads it, on a connection of its own
    [shown] = read_deliveries(tmp_path / "alerts.sqlite", 10)
    assert {k: shown[k] for k in ("webhook", "alert", "status", "attempts", "last_error")} == {
        "webhook": "oncall", "alert": LEAK.fingerprint, "status": "dead", "attempts": 1,
        "last_error": "http_400"}
    assert deliveries_summary([shown]) == "0 waiting for delivery, 1 dead letter"
    assert deliveries_summary([shown, shown | {"status": "pending"}, shown]) == (
        "1 waiting for delivery, 2 dead letters")


def test_restart_sends_no_duplicate_and_delivers_the_backlog(open_outbox, receiver, reliability):
    hooks = [webhook(receiver)]
    first = pipeline(open_outbox, hooks)
    now = time.time()
    pue = Condition("pue_high", {}, True, for_s=600)
    first.evaluator.step(now, [LEAK])  # firing queued, receiver down
    first.evaluator.step(now, [pue])  # leak resolved, pue_high pending
    first.evaluator.step(now + 1, [LEAK, pue])
    first.outbox.close()  # the process dies: leak firing again, pue_high pending

    second = pipeline(open_outbox, hooks)
    assert [(a.rule, a.state) for a in second.evaluator.active_alerts()] == [
        ("pue_high", "pending"), ("leak", "firing"),
    ]  # fmt: skip
    assert second.evaluator.step(now + 2, [LEAK, pue]) == []
    assert kinds(second.evaluator.step(now + 3, [])) == ["resolved"]  # cleared while down
    keys = [r.idempotency_key for r in second.outbox.pending()]
    receiver.start()
    deliver_until(second.outbox, lambda: second.outbox.backlog() == 0)
    time.sleep(0.1)
    count_delivery(reliability, "aidc restarted with a backlog", keys, receiver)
    got = [r.json["status"] for r in receiver.requests]
    assert got == ["firing", "resolved", "firing", "resolved"]
    assert len({r.headers["idempotency-key"] for r in receiver.requests}) == 4


def test_two_workers_never_send_the_same_row_twice(open_outbox, receiver):
    receiver.delay_s = 0.2
    hooks = [webhook(receiver.start())]
    p = pipeline(open_outbox, hooks)
    now = time.time()
    p.evaluator.step(now, [LEAK])
    p.evaluator.step(now + 1, [])
    other_process = open_outbox(hooks)

    async def race() -> list[int]:
        workers = [p.outbox.deliver_due(), other_process.deliver_due(), p.outbox.deliver_due()]
        return await asyncio.gather(*workers)

    assert sum(asyncio.run(race())) == 2
    assert [r.json["status"] for r in receiver.requests] == ["firing", "resolved"]


def test_webhooks_are_independent_queues(open_outbox, receiver):
    down = Receiver()  # never started
    hooks = [webhook(receiver.start()), webhook(down, name="backup", url=down.url())]
    p = pipeline(open_outbox, hooks)
    p.evaluator.step(time.time(), [LEAK])
    deliver_until(p.outbox, lambda: len(receiver.requests) == 1)
    assert [r.webhook for r in p.outbox.pending()] == ["backup"]


def test_a_critical_firing_overtakes_a_backlog_of_resolved_and_warnings(open_outbox, receiver):
    p = pipeline(open_outbox, [webhook(receiver)], max_in_flight=1)  # the order, unraced
    now = time.time()
    warnings = [Condition("flow_low", {"loop": f"L{i}"}, True, 80.0, "low", "warning")
                for i in range(5)]  # fmt: skip
    p.evaluator.step(now, warnings)
    p.evaluator.step(now + 1, warnings[:1])  # four resolved, queued behind their firing
    p.evaluator.step(now + 2, [*warnings[:1], LEAK])  # the critical arrives last
    receiver.start()
    deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    got = [(r.json["rule"], r.json["labels"].get("loop"), r.json["status"])
           for r in receiver.requests]  # fmt: skip
    assert got[0] == ("leak", None, "firing")
    assert len(got) == 10
    for i in range(1, 5):  # each alert still in order: firing before its resolved
        assert got.index(("flow_low", f"L{i}", "firing")) < got.index(
            ("flow_low", f"L{i}", "resolved"))
    firing_warnings = [i for i, g in enumerate(got) if g[2] == "firing"]
    assert firing_warnings == list(range(6))  # every firing before any resolved


def test_one_slow_row_holds_back_neither_a_critical_nor_another_receiver(open_outbox, receiver,
                                                                        reliability):
    slow, fast = Receiver(), receiver.start()
    slow_hook = webhook(slow, name="slow", url=slow.url(), timeout_s=120)  # held, not timed out
    hooks = [slow_hook, webhook(fast, name="fast", url=fast.url())]
    p = pipeline(open_outbox, hooks)
    warn = Condition("flow_low", {"loop": "L1"}, True, 80.0, "low", "warning")
    release = threading.Event()
    slow.hold = lambda request: request.json["rule"] == "flow_low" and release.wait(60)
    slow.start()

    async def run() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(p.outbox.deliver_forever(stop, idle_s=0.02))
        p.evaluator.step(time.time(), [warn])
        # held in flight by the slow receiver, it delays nothing at the other one
        await while_(lambda: not (slow.arrived("flow_low") and fast.got("flow_low")))
        p.evaluator.step(time.time(), [warn, LEAK])
        await while_(lambda: not (fast.got("leak") and slow.got("leak")))
        assert not slow.got("flow_low")  # the critical went past the slow row
        release.set()
        await while_(lambda: p.outbox.backlog() > 0)
        stop.set()
        await worker

    try:
        asyncio.run(run())
    finally:
        release.set()
        slow.stop()
    assert [r.json["rule"] for r in slow.requests] == ["leak", "flow_low"]
    for rc in (slow, fast):  # two notifications each: the warning and the critical
        got = [r.headers["idempotency-key"] for r in rc.requests]
        reliability.count("notifications: one receiver slow (a row held in flight)", "notices",
                          2, lost=2 - len(set(got)), duplicated=len(got) - len(set(got)))


def test_an_outbox_file_from_before_priorities_is_upgraded_in_place(tmp_path, receiver):
    import sqlite3

    path = tmp_path / "alerts.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT, webhook TEXT NOT NULL,
            idempotency_key TEXT NOT NULL, body BLOB NOT NULL, headers TEXT NOT NULL,
            created_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
            lease_owner TEXT, lease_until REAL, last_error TEXT,
            UNIQUE (webhook, idempotency_key));
        INSERT INTO outbox (webhook, idempotency_key, body, headers, created_at, next_attempt_at)
            VALUES ('oncall', 'k1', CAST('{"n":1}' AS BLOB), '{}', 0, 0),
                   ('oncall', 'k2', CAST('{"n":2}' AS BLOB), '{}', 0, 0);
    """)
    old.commit()
    old.close()
    outbox = Outbox(path, [webhook(receiver.start())], retry=FAST)
    try:
        assert [(r.alert, r.priority) for r in outbox.pending()] == [("", 0), ("", 0)]
        deliver_until(outbox, lambda: outbox.backlog() == 0)
    finally:
        outbox.close()
    assert [r.json["n"] for r in receiver.requests] == [1, 2]  # one queue, in order, as before


def test_rows_of_a_removed_webhook_become_dead_letters(open_outbox, receiver):
    pipeline(open_outbox, [webhook(receiver)]).evaluator.step(time.time(), [LEAK])
    outbox = open_outbox([])
    assert asyncio.run(outbox.deliver_due()) == 0
    assert [d.last_error for d in outbox.dead_letters()] == ["webhook_not_configured"]


def test_duplicate_webhook_names_are_refused(open_outbox, receiver):
    with pytest.raises(ValueError, match="used twice"):
        open_outbox([webhook(receiver), webhook(receiver)])


def test_logs_name_the_host_and_never_a_secret(open_outbox, receiver, caplog):
    caplog.set_level(logging.DEBUG, logger="alerts")
    token = "tok-in-query-8c1f"
    hook = webhook(receiver, url=receiver.url(f"/hook?token={token}"))
    p = pipeline(open_outbox, [hook])
    p.evaluator.step(time.time(), [LEAK])
    asyncio.run(p.outbox.deliver_due())  # refused: retry logged
    receiver.answers = [(403, {})]
    receiver.start()
    deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    assert receiver.requests[0].path.endswith(token)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("alerts")]
    assert any("event=alert_delivery_retry" in m and "host=127.0.0.1" in m for m in lines)
    assert any("event=alert_dead_letter" in m and "error=http_403" in m for m in lines)
    assert not [m for m in lines if token in m or SECRET in m or "/hook" in m]


def test_store_rules_say_when_samples_wait_and_when_they_are_lost():
    from aidc.core.config import load_site
    from alerts.rules import SAMPLES_LOST_HOLD_S, StoreState, builtin_conditions
    from tests.conftest import ROOT

    site = load_site(ROOT / "site_configs" / "demo.yaml")

    def store_conditions(store: StoreState, now: float = 1000.0) -> dict[str, Condition]:
        conditions, complete = builtin_conditions(site, [], None, {}, store=store, now=now)
        assert complete
        return {c.rule: c for c in conditions
                if c.rule in ("store_unavailable", "samples_not_stored")}

    ok = store_conditions(StoreState())
    assert not ok["store_unavailable"].active and not ok["samples_not_stored"].active
    # down, 100 of 1000 samples spooled: a warning that says what waits
    down = store_conditions(StoreState(False, "InfluxDB answered /write with 404", 100, 1000))
    assert down["store_unavailable"].active and down["store_unavailable"].severity == "warning"
    assert "404" in down["store_unavailable"].summary and "10 %" in down["store_unavailable"].summary
    # past 80 % of the bound: critical, losses are close
    assert store_conditions(StoreState(False, "down", 900, 1000))["store_unavailable"].severity \
        == "critical"
    # a batch refused 10 s ago: samples_not_stored fires; it resolves once the hold is over
    lost = StoreState(rejected=5, last_loss_at=990.0)
    assert store_conditions(lost)["samples_not_stored"].active
    assert "5 refused by the store" in store_conditions(lost)["samples_not_stored"].summary
    later = store_conditions(lost, now=990.0 + SAMPLES_LOST_HOLD_S + 1)
    assert not later["samples_not_stored"].active


def test_store_behind_fires_by_level_clears_with_hysteresis_and_is_held_while_down():
    """The pack's levels, by hand: warning past 60 s behind, critical past 300; an alert
    holds its level until 5 % back inside it (57 s, 285 s). While the store is unavailable,
    the lag (its samples age in the spool) is that outage's symptom, suppressed by it."""
    from alerts.inhibit import inhibit
    from alerts.rules import StoreState, builtin_conditions

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    fp = fingerprint("store_behind", {"site": site.site})

    def behind(seconds: float, up: bool = True, active: bool = False) -> list[Condition]:
        conditions, complete = builtin_conditions(
            site, [], None, {}, is_active=lambda f: active and f == fp,
            store=StoreState(up, "" if up else "down", behind_s=seconds), now=1000.0)
        assert complete
        return conditions

    def level(seconds: float, active: bool = False) -> str | None:
        (c,) = [c for c in behind(seconds, active=active) if c.rule == "store_behind"]
        return c.severity if c.active else None

    assert [level(s) for s in (0, 60, 61, 300, 301)] == [
        None, None, "warning", "warning", "critical"]
    assert [level(s, active=True) for s in (57.5, 56.9, 286, 284)] == [
        "warning", None, "critical", "warning"]
    (late,) = [c for c in behind(75) if c.rule == "store_behind"]
    assert (late.value, late.threshold, late.unit) == (75, 60, "s")
    assert "75 s behind" in late.summary
    down = {c.rule: c for c in inhibit(Topology(site), behind(400, up=False), [])}
    assert down["store_unavailable"].active and down["store_unavailable"].suppressed_by is None
    assert down["store_behind"].active and down["store_behind"].severity == "critical"
    assert down["store_behind"].suppressed_by == "store_unavailable"
    up = {c.rule: c for c in inhibit(Topology(site), behind(400), [])}
    assert up["store_behind"].suppressed_by is None  # the store is up: the lag is the page


def test_battery_rules_count_runtime_left_and_a_late_generator(open_outbox):
    from aidc.core.metrics import Quality, Sample
    from alerts.rules import builtin_conditions

    site = DEMO.site
    ev = Evaluator(open_outbox())

    def step(at: float, on_battery: float, runtime_min: float, esr_quality=Quality.GOOD):
        latest = {("ups-b", "on_battery"): Sample("ups", {}, "on_battery", on_battery, at),
                  ("ups-b", "runtime_min"): Sample("ups", {}, "runtime_min", runtime_min, at),
                  ("sc-a", "esr_mohm"): Sample("supercap", {}, "esr_mohm", 9.0, at, esr_quality)}
        conditions, _ = builtin_conditions(site, [], None, latest, now=at, dead_letters=0)
        wanted = ("battery_runtime_low", "generator_not_taking_load", "metric_bad_quality")
        return [(t.kind, t.alert.rule, t.alert.severity) for t in ev.step(at, conditions)
                if t.alert.rule in wanted]  # fmt: skip

    late_s = site.model.generator_start_s + site.model.transfer_s + 30
    assert step(0, 0, 8) == []  # on utility: 8 minutes of battery is no news
    assert step(1, 1, 8) == [("firing", "battery_runtime_low", "warning")]  # 480 s < 600 s
    assert step(1 + late_s - 1, 1, 7) == []
    assert step(1 + late_s, 1, 6) == [("firing", "generator_not_taking_load", "critical")]
    assert step(100, 1, 4.9) == [("escalated", "battery_runtime_low", "critical")]  # < 300 s
    assert step(110, 0, 4.9) == [("resolved", "battery_runtime_low", "critical"),
                                 ("resolved", "generator_not_taking_load", "critical")]
    assert step(120, 0, 5, Quality.OUT_OF_RANGE) == []  # pending its 5 minutes
    assert step(420, 0, 5, Quality.OUT_OF_RANGE) == [("firing", "metric_bad_quality", "warning")]
    assert step(430, 0, 5) == [("resolved", "metric_bad_quality", "warning")]


def test_coolant_envelope_and_supercap_wear_with_hysteresis(open_outbox):
    """cdu-1: min_flow_lpm 100, max_dp_kpa 100 (for 30 s, clearing 5 % inside); sc-a: 20 F
    and 4 mOhm rated (end of life below 16 F or above 8 mOhm)."""
    from aidc.core.metrics import Sample
    from alerts.rules import builtin_conditions

    ev = Evaluator(open_outbox())

    def step(at: float, flow: float, dp: float, farads: float = 20.0, esr: float = 4.0):
        values = {("cdu-1", "flow_lpm"): flow, ("cdu-1", "dp_kpa"): dp,
                  ("sc-a", "capacitance_f"): farads, ("sc-a", "esr_mohm"): esr}
        latest = {(d, m): Sample(DEMO.device_by_id[d].kind, DEMO.device_tags[d], m, v, at)
                  for (d, m), v in values.items()}
        conditions, _ = builtin_conditions(DEMO.site, [], None, latest,
                                           lambda fp: fp in {a.fingerprint for a in
                                                             ev.active_alerts()}, now=at)
        wanted = ("coolant_flow_low", "coolant_dp_high", "supercap_end_of_life")
        return [(t.kind, t.alert.rule) for t in ev.step(at, conditions)
                if t.alert.rule in wanted]  # fmt: skip

    assert step(0, 150, 40) == []
    assert step(1, 99, 101) == []  # both pending their 30 s
    assert step(31, 99, 101) == [("firing", "coolant_flow_low"), ("firing", "coolant_dp_high")]
    assert step(40, 104, 96) == []  # inside the limits, not 5 % inside: held
    assert step(50, 106, 94) == [("resolved", "coolant_flow_low"),
                                 ("resolved", "coolant_dp_high")]
    assert step(60, 150, 40, farads=16.5, esr=7.9) == []  # worn, not yet at end of life
    assert step(70, 150, 40, farads=16.5, esr=8.1) == [("firing", "supercap_end_of_life")]
    [alert] = [a for a in ev.active_alerts() if a.rule == "supercap_end_of_life"]
    assert alert.summary == "sc-a at end of life: ESR 8.1 mOhm, 2.0 x its rated 4"
    # what it says is the quantity that tripped it: the ESR, not the capacitance in farads
    assert (alert.value, alert.threshold, alert.unit) == (8.1, 8.0, "mOhm")
    assert step(80, 150, 40, farads=15.9) == []  # still: now by its capacitance
    assert step(90, 150, 40) == [("resolved", "supercap_end_of_life")]  # module replaced


def test_pagerduty_gets_an_incident_per_alert_that_escalates_and_resolves_with_it(
        open_outbox, receiver, tmp_path):
    """PagerDuty's Events API v2 at a local receiver: the alert's fingerprint is the
    incident's dedup_key, so the escalation updates it and the resolution resolves it; the
    routing key goes out with each event and is never kept in the outbox file; a signature,
    if the hook has a secret, signs what is sent, the key with it."""
    hook = webhook(receiver.start(), name="pd", format="pagerduty",
                   routing_key=SecretStr("R0UTING-key-123"))
    p = pipeline(open_outbox, [hook])
    p.evaluator.step(1000, [replace(LEAK, severity="warning")])
    p.evaluator.step(1010, [LEAK])  # critical now
    p.evaluator.step(1125, [])
    assert all(b"R0UTING" not in row.body for row in p.outbox.pending())
    deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    events = [r.json for r in receiver.requests]
    assert [(e["event_action"], e["dedup_key"], e["payload"]["severity"]) for e in events] == [
        ("trigger", LEAK.fingerprint, "warning"), ("trigger", LEAK.fingerprint, "critical"),
        ("resolve", LEAK.fingerprint, "critical")]
    assert {e["routing_key"] for e in events} == {"R0UTING-key-123"}
    for r in receiver.requests:
        at = int(r.headers["x-aidc-timestamp"])
        assert r.headers["x-aidc-signature"] == signature_headers(
            SECRET.encode(), r.body, at)["X-Aidc-Signature"]
    first = events[0]["payload"]
    assert (first["summary"], first["source"], first["group"], first["class"]) == (
        "leak at cdu-1", "cdu-1", "r01", "leak")
    assert events[1]["payload"]["summary"] == "escalated from warning to critical: leak at cdu-1"
    assert not any(b"R0UTING" in f.read_bytes() for f in tmp_path.glob("alerts.sqlite*"))
    with pytest.raises(ValueError, match="routing_key: format pagerduty needs"):
        Webhook(name="pd", url="https://events.pagerduty.com/v2/enqueue", format="pagerduty")


def test_chat_and_paging_go_through_apprise_and_the_outbox(open_outbox, receiver, caplog):
    """apprise's json:// and form:// targets against local receivers: the message says what,
    where and what next; a receiver down is retried, then each message arrives once."""
    from urllib.parse import parse_qs

    form = Receiver()
    hooks = [webhook(receiver, secret=None, name="chat", format="apprise",
                     url=f"json://127.0.0.1:{receiver.port}/hook"),
             webhook(form, secret=None, name="pager", format="apprise",
                     url=f"form://127.0.0.1:{form.port}/page")]
    p = pipeline(open_outbox, hooks)
    p.evaluator.step(1000, [LEAK])
    p.evaluator.step(1125, [])
    asyncio.run(p.outbox.deliver_due())  # both down: not sent, kept for a retry
    # each receiver's head (the firing) tried; its resolved waits behind it
    assert sorted(str(r.last_error) for r in p.outbox.pending()) == [
        "None", "None", "apprise_not_sent", "apprise_not_sent"]
    receiver.start(), form.start()
    caplog.set_level(logging.INFO, logger="alerts.outbox")
    try:
        deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    finally:
        form.stop()
    # logged as delivered (apprise says "sent", not an HTTP status: it once broke the line)
    assert sum("status=sent" in r.getMessage() for r in caplog.records
               if "event=alert_delivered" in r.msg) == 4
    chat = [r.json for r in receiver.requests]
    assert [(m["title"], m["type"]) for m in chat] == [
        ("[FIRING critical] leak at demo", "failure"), ("[RESOLVED critical] leak at demo",
                                                         "success")]  # fmt: skip
    affected = "affected: loop-1, r01, A01, A02, A03, A04, B01, B02, B03, B04"
    assert chat[0]["message"].splitlines() == [
        "leak at cdu-1", "site=demo rack=r01 device=cdu-1", "value 1", affected,
        "first: Go to the CDU; isolate it if the leak is confirmed (the loop runs on the others)."]
    assert chat[1]["message"].startswith("resolved after 2 min 5 s: leak at cdu-1")
    paged = [parse_qs(r.body.decode()) for r in form.requests]
    assert [(m["title"], m["type"]) for m in paged] == [
        (["[FIRING critical] leak at demo"], ["failure"]),
        (["[RESOLVED critical] leak at demo"], ["success"])]  # fmt: skip


def test_an_apprise_url_must_name_a_service_it_knows():
    with pytest.raises(ValueError, match=r"apprise knows no service at nosuch://"):
        Webhook(name="x", url="nosuch://token-abc/def", format="apprise")
    with pytest.raises(ValueError, match="format generic posts over http"):
        Webhook(name="x", url="slack://T000/B000/XXX")
    assert Webhook(name="x", url="slack://T000/B000/XXXXXXXX", format="apprise")


def test_dead_letters_raise_a_warning():
    from alerts.rules import builtin_conditions

    def dead(n: int) -> Condition:
        conditions, _ = builtin_conditions(DEMO.site, [], None, {}, dead_letters=n)
        return next(c for c in conditions if c.rule == "notifications_dead_lettered")

    assert not dead(0).active
    assert dead(2).active and dead(2).value == 2 and "2 notification(s)" in dead(2).summary


def test_the_dead_letter_alert_counts_the_last_hours_only(open_outbox, receiver):
    """A dead letter stays for inspection, so the alert counts those of the last hour: it
    resolves an hour after the last one (it latched forever on the first)."""
    receiver.answers = [(400, {})]
    p = pipeline(open_outbox, [webhook(receiver.start())])
    p.evaluator.step(time.time(), [LEAK])
    deliver_until(p.outbox, lambda: p.outbox.backlog() == 0)
    now = time.time()
    assert p.outbox.dead_letter_counts(since=now - DEAD_LETTER_ALERT_S) == (1, 1)
    # counted from an hour before a time past its death: the alert would have resolved; the
    # letter is kept for inspection
    assert p.outbox.dead_letter_counts(since=now + 1) == (1, 0)


def test_a_rule_that_fails_resolves_nothing(open_outbox, monkeypatch, caplog):
    """A bug in one rule group (here: model_rules raising) is logged; the other groups still
    fire, and the alerts the failed group raised keep their state instead of resolving."""
    import alerts.rules
    from aidc.core.config import load_site
    from aidc.core.metrics import Sample
    from alerts.rules import builtin_conditions
    from tests.conftest import ROOT

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    ev = Evaluator(open_outbox())
    firing = Condition("pue_above_target", {"site": "demo"}, True, 1.4, "PUE 1.4", "warning")
    ev.step(0.0, [firing])
    assert [a.rule for a in ev.active_alerts()] == ["pue_above_target"]

    def broken(i):
        raise TypeError("a bug")

    monkeypatch.setattr(alerts.rules, "model_rules", broken)
    wet = Sample("cdu", DEMO.device_tags["cdu-1"], "leak", 1.0, 0.0)
    conditions, complete = builtin_conditions(site, [], None, {("cdu-1", "leak"): wet})
    assert not complete and "event=rule_error rules=broken" in caplog.text
    assert {c.rule for c in conditions} >= {"leak", "store_unavailable"}  # the others ran
    ev.step(10.0, conditions, hold_absent=not complete)
    assert sorted(a.rule for a in ev.active_alerts()) == ["leak", "pue_above_target"]  # held
    ev.step(20.0, conditions)  # a complete evaluation without it: now it resolves
    assert [a.rule for a in ev.active_alerts()] == ["leak"]


def test_an_outbox_from_before_per_route_repeats_opens_with_its_receivers_due(tmp_path):
    """A file whose ``told`` table has no time: it gains one on open, each receiver told
    long ago (due its next reminder), and later notices record when."""
    import sqlite3

    path = tmp_path / "alerts.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE told (alert TEXT NOT NULL, webhook TEXT NOT NULL,"
                   " PRIMARY KEY (alert, webhook)) WITHOUT ROWID")
        db.execute("INSERT INTO told VALUES ('fp', 'pager')")
    db.close()
    outbox = Outbox(path, [Webhook(name="pager", url="http://127.0.0.1:9/p")])
    try:
        assert outbox.told("fp") == {"pager": 0}
        outbox.enqueue("pager", b"{}", {}, "key-1", "fp", told_at=1234.5)
        assert outbox.told("fp") == {"pager": 1234.5}
    finally:
        outbox.close()


def test_a_site_sets_the_rule_pack_its_own_way(open_outbox):
    """The rules' levels, for, severity, labels and runbook are data (alerts/rules.yaml): a
    site raises the battery levels, turns the leak rule off, delays the UPS alert and labels
    it for its power team's route, makes dead letters critical, and names its own runbook."""
    from aidc.core.metrics import Sample
    from alerts.rules import builtin_conditions

    power, chat = (Webhook(name=n, url=f"http://127.0.0.1:9/{n}") for n in ("power", "chat"))
    alerts = Alerts.model_validate({
        "webhooks": [power, chat],
        "routes": [{"matchers": ["team=power"], "receivers": ["power"]}, {"receivers": ["chat"]}],
        "rules": {"battery_runtime_low": {"warning": 900, "critical": 420},
                  "leak": {"enabled": False},
                  "ups_on_battery": {"for_s": 20, "labels": {"team": "power"}},
                  "notifications_dead_lettered": {"severity": "critical"},
                  "rectifier_on_battery": {"runbook_url": "https://wiki.example/rectifiers"}}})
    site = DEMO.site.model_copy(update={"alerts": alerts})

    def conditions(s, runtime_min: float) -> dict[tuple[str, str | None], Condition]:
        latest = {(d, m): Sample(k, DEMO.device_tags[d], m, v, 0.0) for d, k, m, v in (
            ("ups-b", "ups", "on_battery", 1.0), ("ups-b", "ups", "runtime_min", runtime_min),
            ("cdu-1", "cdu", "leak", 1.0), ("rect-a", "rectifier", "battery_current_a", 50.0))}
        out, complete = builtin_conditions(s, [], None, latest, dead_letters=1)
        assert complete
        return {(c.rule, c.labels.get("device")): c for c in out}

    low = ("battery_runtime_low", "ups-b")
    # 12 minutes left (720 s): the pack's 600 s says nothing yet; this site's 900 s warns
    assert not conditions(DEMO.site, 12)[low].active
    assert (conditions(site, 12)[low].severity, conditions(site, 12)[low].threshold) == \
        ("warning", 900)
    # 6 minutes (360 s): a warning by the pack (over 300 s), critical here (under 420 s)
    assert conditions(DEMO.site, 6)[low].severity == "warning"
    assert (conditions(site, 6)[low].severity, conditions(site, 6)[low].threshold) == \
        ("critical", 420)
    assert conditions(DEMO.site, 6)[("leak", "cdu-1")].active
    assert ("leak", "cdu-1") not in conditions(site, 6)
    dead = ("notifications_dead_lettered", None)
    assert (conditions(DEMO.site, 6)[dead].severity, conditions(site, 6)[dead].severity) == \
        ("warning", "critical")

    # the UPS alert waits its 20 s, then goes to the power team by its added label
    notifier = Notifier(Topology(site), alerts, open_outbox([power, chat]),
                        external_url="https://aidc.example")
    ev = Evaluator(open_outbox())
    ups = conditions(site, 12)[("ups_on_battery", "ups-b")]
    assert ups.labels["team"] == "power" and "team" not in \
        conditions(DEMO.site, 12)[("ups_on_battery", "ups-b")].labels
    assert ev.step(0, [ups]) == [] and ev.step(19, [ups]) == []
    [fired] = ev.step(20, [ups])
    assert fired.kind == "firing" and notifier.routed(fired.alert).keys() == {"power"}
    assert notifier.context(fired).runbook_url == "https://aidc.example/runbooks#ups_on_battery"
    [rect] = ev.step(21, [ups, conditions(site, 12)[("rectifier_on_battery", "rect-a")]])
    assert notifier.context(rect).runbook_url == "https://wiki.example/rectifiers"


def test_a_sites_own_rule_judged_as_a_column_finds_what_a_scan_finds(monkeypatch):
    """The runtime's way, the series a rule watches kept in the tick's arrays and compared
    as one, gives the conditions a scan of every latest sample gives, by hand: past the
    first level; while the rule alerts, also within its clear, and unknown (bad, stale) to
    hold their state; never a series below."""
    from aidc.core.metrics import FreshLatest, LatestTable, Quality, Sample, SeriesKeys
    from alerts import rules
    from alerts.rules import builtin_conditions

    alerts = Alerts.model_validate({"rules": {"phase_hot": {
        "kind": "pdu", "metric": "current_a", "fires": "above", "warning": 25, "critical": 30,
        "clear": 2}}})
    site = DEMO.site.model_copy(update={"alerts": alerts})
    now, poll_s = 1000.0, {d.id: 2.0 for d in site.devices}
    read = [(10.0, now, Quality.GOOD), (24.0, now, Quality.GOOD), (26.0, now, Quality.GOOD),
            (31.0, now, Quality.GOOD), (None, now, Quality.BAD), (26.0, now - 60, Quality.GOOD)]
    latest, table = {}, LatestTable(frozenset(), poll_s)
    for n, (value, ts, quality) in enumerate(read):
        pdu, phase = ("pdu-a01-b", "pdu-a02-b")[n // 3], str(n % 3 + 1)
        key = (pdu, f"current_a{{phase={phase}}}")
        latest[key] = Sample("pdu", DEMO.device_tags[pdu] | {"phase": phase}, "current_a",
                             value, ts, quality)
        table.keys_read.add(key[1])
        table.put(key, latest[key])

    alerts = {rules.fingerprint("phase_hot", {"site": "demo"} | rules.series_labels(s))
              for s in latest.values()}  # one of every series read (while the rule alerts)

    def judged(column: bool, alerting: bool) -> list[tuple]:
        inputs = table.at(now, latest) if column else FreshLatest(latest, poll_s, now)
        with monkeypatch.context() as m:
            if column:  # the arrays only: no sample looked up a series watched
                m.setattr(rules, "_watched", lambda i, name, rule: [] if name != "phase_hot"
                          else pytest.fail("phase_hot's series looked up one by one"))
            conditions, complete = builtin_conditions(
                site, [], None, inputs, lambda fp: alerting and fp in alerts, now=now,
                alerting_rules={"phase_hot"} if alerting else set(),
                watched={"phase_hot": SeriesKeys(latest)} if column else None)
        assert complete
        return sorted((c.labels["device"], c.labels["phase"], c.active, c.severity, c.value)
                      for c in conditions if c.rule == "phase_hot")

    quiet = [("pdu-a01-b", "3", True, "warning", 26.0), ("pdu-a02-b", "1", True, "critical", 31.0)]
    assert judged(column=True, alerting=False) == judged(column=False, alerting=False) == quiet
    holding = sorted([*quiet, ("pdu-a01-b", "2", True, "warning", 24.0),  # within clear
                      ("pdu-a02-b", "2", True, None, None),  # bad: held, at its severity
                      ("pdu-a02-b", "3", True, None, None)])  # stale: held
    assert judged(column=True, alerting=True) == judged(column=False, alerting=True) == holding


def test_a_site_adds_its_own_rules_over_device_metrics(open_outbox):
    """A rule of the site's own: every series of a metric on the devices its matchers take,
    with warning and critical levels, hysteresis and a summary of the site's words; a PDU's
    phases each alert on their own."""
    import numpy as np

    from aidc.core.metrics import Sample, SampleColumns
    from alerts.rules import builtin_conditions

    alerts = Alerts.model_validate({"rules": {
        "cdu_supply_hot": {"kind": "cdu", "metric": "supply_temp_c", "fires": "above",
                           "warning": 40, "critical": 45, "clear": 1, "unit": "°C",
                           "matchers": ["device=cdu-1"],
                           "summary": "{device} supply {value:.1f} {unit} ({severity})"},
        "pdu_phase_current_high": {"kind": "pdu", "metric": "current_a", "fires": "above",
                                   "warning": 25, "labels": {"team": "power"}},
        "rack_headroom_low": {"kind": "rack", "metric": "headroom_kw", "fires": "below",
                              "warning": 5, "critical": 0, "unit": "kW"}}})
    site = DEMO.site.model_copy(update={"alerts": alerts})
    ev = Evaluator(open_outbox())
    tags = DEMO.device_tags

    def step(at: float, supply_c: float, phase_a: tuple[float, float, float] = (10, 10, 10),
             headroom_kw: dict[str, float] | None = None):
        latest = {(cdu, "supply_temp_c"): Sample("cdu", tags[cdu], "supply_temp_c", supply_c, at)
                  for cdu in ("cdu-1", "cdu-2")}
        latest |= {("pdu-a01-b", f"current_a{{phase={p}}}"): Sample(
            "pdu", tags["pdu-a01-b"] | {"phase": str(p)}, "current_a", a, at)
            for p, a in enumerate(phase_a, 1)}
        active = {a.fingerprint for a in ev.active_alerts()}
        racks = list(headroom_kw or {})  # as the runtime passes them: the tick's array
        derived = [SampleColumns(
            "rack", [{"site": "demo", "room": "hall-1", "row": r[0], "rack": r} for r in racks],
            ("power_kw", "headroom_kw"), np.array([[np.nan, headroom_kw[r]] for r in racks]).reshape(-1, 2), at)]
        conditions, complete = builtin_conditions(site, [], None, latest, active.__contains__,
                                                  now=at, derived=derived)
        assert complete
        return [(t.kind, t.alert.rule, t.alert.severity, t.alert.summary)
                for t in ev.step(at, conditions) if t.alert.rule in alerts.rules]

    assert step(0, 39.0) == []
    assert step(1, 41.0) == [("firing", "cdu_supply_hot", "warning",
                              "cdu-1 supply 41.0 °C (warning)")]
    assert step(2, 46.0)[0][:3] == ("escalated", "cdu_supply_hot", "critical")
    assert step(3, 44.5) == []  # still critical: it clears 1 °C inside 45
    assert step(4, 43.9)[0][:3] == ("deescalated", "cdu_supply_hot", "warning")
    assert step(5, 39.5) == []  # still warning until below 39
    assert step(6, 38.9)[0][:3] == ("resolved", "cdu_supply_hot", "warning")  # cdu-2 never

    [(kind, rule, severity, summary)] = step(7, 30.0, (10, 26.5, 10))
    assert (kind, rule, severity) == ("firing", "pdu_phase_current_high", "warning")
    assert summary == "pdu-a01-b current_a{phase=2} 26.5, above the warning level 25"
    [alert] = [a for a in ev.active_alerts() if a.rule == "pdu_phase_current_high"]
    assert alert.labels | {"phase": "2", "team": "power"} == alert.labels
    assert alert.labels["rack"] == tags["pdu-a01-b"]["rack"]

    # the model's series too: a rack's headroom, from the tick's derived samples
    racks = step(8, 30.0, (10, 26.5, 10), {"A01": 3.0, "A02": 10.0, "B01": -1.5})
    assert sorted(racks) == [
        ("firing", "rack_headroom_low", "critical",
         "B01 headroom_kw -1.5 kW, below the critical level 0 kW"),
        ("firing", "rack_headroom_low", "warning",
         "A01 headroom_kw 3 kW, below the warning level 5 kW")]


def test_a_rule_over_a_metric_judges_each_device_against_its_own_setting(monkeypatch):
    """A level may name a number of each device's entry in the site file (the pack's
    coolant_flow_low: a CDU's min_flow_lpm; a site's own rule: a PDU's breaker_a): each
    device is judged against its own, and one without it not at all; the runtime's column
    finds what a scan of every sample finds."""
    from aidc.core.metrics import FreshLatest, LatestTable, Quality, Sample, SeriesKeys
    from alerts import rules
    from alerts.rules import builtin_conditions

    own = {"cdu-1": {"min_flow_lpm": None}, "cdu-2": {"min_flow_lpm": 300.0},
           "pdu-a02-a": {"breaker_a": 300.0}}
    alerts = Alerts.model_validate({"rules": {"phase_over_breaker": {
        "kind": "pdu", "metric": "current_a", "fires": "above", "critical": "breaker_a",
        "unit": "A", "summary": "{device} phase over its {critical:g} A breaker"}}})
    site = DEMO.site.model_copy(update={"alerts": alerts, "devices": [
        d.model_copy(update=own.get(d.id, {})) for d in DEMO.site.devices]})
    topology = Topology(site)
    now, poll_s = 1000.0, {d.id: 2.0 for d in site.devices}
    read = {("cdu-1", "flow_lpm", None): None,  # bad, and no minimum of its own: not judged
            ("cdu-2", "flow_lpm", None): 150.0,  # below its 300
            ("pdu-a01-a", "current_a", "1"): 320.0,  # within its 450 A
            ("pdu-a02-a", "current_a", "1"): 320.0,  # over its 300 A
            ("pdu-a02-a", "current_a", "2"): 290.0}
    latest, table = {}, LatestTable(frozenset(), poll_s)
    watched: dict[str, list] = {"coolant_flow_low": [], "phase_over_breaker": []}
    for (device, metric, phase), value in read.items():
        labels = {"phase": phase} if phase else {}
        key = (device, metric + (f"{{phase={phase}}}" if phase else ""))
        latest[key] = Sample(topology.device_by_id[device].kind,
                             topology.device_tags[device] | labels, metric, value, now,
                             Quality.GOOD if value is not None else Quality.BAD)
        table.keys_read.add(key[1])
        table.put(key, latest[key])
        watched["coolant_flow_low" if metric == "flow_lpm" else "phase_over_breaker"].append(key)

    def judged(column: bool, alerting: bool = False) -> list[tuple]:
        inputs = table.at(now, latest) if column else FreshLatest(latest, poll_s, now)
        with monkeypatch.context() as m:
            if column:  # the arrays only: no sample looked up a series watched
                m.setattr(rules, "_watched", lambda i, name, rule: [] if name not in watched
                          else pytest.fail(f"{name}'s series looked up one by one"))
            conditions, complete = builtin_conditions(
                site, [], None, inputs, now=now, alerting_rules=set(watched) if alerting
                else (), topology=topology,
                watched={n: SeriesKeys(k) for n, k in watched.items()} if column else None)
        assert complete
        return sorted((c.rule, c.labels["device"], c.severity, c.value, c.threshold, c.summary)
                      for c in conditions if c.rule in watched)

    # (while the rules alert, an unknown value is judged, to hold its alert: not cdu-1's)
    assert judged(column=True, alerting=True) == judged(column=False, alerting=True) == \
        judged(column=True) == judged(column=False) == [
        ("coolant_flow_low", "cdu-2", "critical", 150.0, 300.0,
         "cdu-2: flow_lpm 150 below its minimum 300"),
        ("phase_over_breaker", "pdu-a02-a", "critical", 320.0, 300.0,
         "pdu-a02-a phase over its 300 A breaker")]


def test_an_alert_of_a_device_dark_since_start_holds_until_it_answers(open_outbox):
    """A leak alert the last run left, its CDU not read once since start: the leak is
    unknown, so the alert neither resolves nor changes, its severity neither (nor a
    rectifier's, whose modules are unknown); the first dry reading resolves it."""
    from aidc.core.metrics import Sample
    from alerts.rules import builtin_conditions

    ev = Evaluator(open_outbox())
    wet = Sample("cdu", DEMO.device_tags["cdu-1"], "leak", 1.0, 0.0)
    short = Sample("rectifier", DEMO.device_tags["rect-a"], "modules_ok", 10.0, 0.0)

    def step(at: float, latest: dict) -> list[tuple]:
        conditions, complete = builtin_conditions(
            DEMO.site, [], None, latest, lambda fp: fp in {a.fingerprint for a in
                                                           ev.active_alerts()},
            now=at, alerting_rules={a.rule for a in ev.active_alerts()})
        assert complete
        return sorted((t.kind, t.alert.rule) for t in ev.step(at, conditions))

    assert step(0, {("cdu-1", "leak"): wet, ("rect-a", "modules_ok"): short}) == [
        ("firing", "leak"), ("firing", "rectifier_redundancy_lost")]  # 3 of 13 lost, N+1
    assert step(10, {}) == []  # restarted, both dark since: held, still critical
    assert sorted((a.rule, a.labels["device"], a.state, a.severity)
                  for a in ev.active_alerts()) == [
        ("leak", "cdu-1", "firing", "critical"),
        ("rectifier_redundancy_lost", "rect-a", "firing", "critical")]
    assert step(20, {("cdu-1", "leak"): wet._replace(value=0.0, ts=20.0)}) == [
        ("resolved", "leak")]  # (the rectifier still unknown: held)


def test_the_rules_whose_crossing_ticks_the_model_at_once():
    """Which crossings the runtime ticks the model for at once (paging_tests; the tick
    itself: test_end_to_end's leak a poll after it starts): the critical level of a rule
    over a device's metric with no for_s, the pack's leak and sources on battery and a
    site's own such rule; not a rule that waits, whose critical level is each device's own
    number, or that is off."""
    from alerts.rules import paging_tests, rule_pack, site_rules

    pack = paging_tests(rule_pack())
    assert {(k, m) for k, metrics in pack.items() for m in metrics} == {
        ("cdu", "leak"), ("ups", "on_battery"), ("rectifier", "battery_current_a")}
    assert pack["cdu"]["leak"](1.0) != pack["cdu"]["leak"](0.0)
    assert pack["rectifier"]["battery_current_a"](-2.0) == pack["rectifier"][
        "battery_current_a"](0.0)  # charging is no news
    alerts = Alerts.model_validate({"rules": {
        "leak": {"enabled": False},
        "inlet_hot": {"kind": "cdu", "metric": "supply_temp_c", "fires": "above",
                      "warning": 40, "critical": 45},
        "inlet_warm": {"kind": "cdu", "metric": "supply_temp_c", "fires": "above",
                       "critical": 42, "for_s": 60}}})
    site = paging_tests(site_rules(DEMO.site.model_copy(update={"alerts": alerts})))
    assert set(site["cdu"]) == {"supply_temp_c"}  # the leak rule is off; inlet_warm waits
    crossed = site["cdu"]["supply_temp_c"]
    assert crossed(44.0) == crossed(41.0) and crossed(44.0) != crossed(46.0)
