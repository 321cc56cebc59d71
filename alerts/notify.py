"""Notify: route each transition to its webhooks, render it in each one's format and put it
in the outbox.

Routing is Alertmanager's, kept flat (``alerts.routes`` in the site file): an alert goes to
the receivers of the first route whose matchers hold over its rule, severity and labels, and
of the routes after one with ``continue``. A change of severity and the resolve also go to
every receiver told of the alert before: the pager that had the critical hears it fall back
to warning, and hears it end. A reminder goes to a receiver the alert is routed to once the
route's ``repeat_s`` has passed since that receiver was last told (the evaluator offers
reminders at the shortest repeat of any route). A route with ``group_by`` holds its alerts'
changes in groups, told one notification per group (see ``alerts.groups``).

Signing is not done here but by the outbox at each delivery attempt, so that the signed
timestamp stays fresh however long a receiver was down (see ``alerts.outbox``). Alertmanager
push receivers also get every firing alert again each ``ALERTMANAGER_RESEND_S`` (a state
sync, not a notification: best effort, the next one repairs a lost one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from aidc.core.config import Alerts, Webhook
from aidc.core.matchers import parse_matcher
from aidc.core.topology import Topology
from alerts import groups
from alerts.evaluate import Alert, Transition
from alerts.formats import (
    ALERTMANAGER_RESEND_S,
    FORMATS,
    IDEMPOTENCY_HEADER,
    PARTS,
    Context,
    alertmanager_push_payload,
    idempotency_key,
    render,
    render_group,
    signature_headers,
)
from alerts.groups import Grouping
from alerts.outbox import IDLE_S, Outbox, host_of, http_client, wait_any, webhooks_by_name
from alerts.rules import CRITICAL, site_rules

log = logging.getLogger(__name__)

WHERE = ("room", "row", "rack", "device", "loop", "supercap")
# the console's page for an alert of a device of these kinds with no rack (see console_path)
PAGE_OF_KIND = {"cdu": "cooling", "rectifier": "power", "ups": "power", "supercap": "power"}


def console_path(where: dict[str, str], kind: str | None) -> str:
    """The console page that shows an alert: its rack's; else the page of its device's kind
    (a CDU's loop, a source's chain), the device list for another device; else the alerts."""
    if "rack" in where:
        return f"/rack/{quote(where['rack'], safe='')}"
    if "loop" in where:
        return "/cooling"
    if kind in PAGE_OF_KIND:
        return f"/{PAGE_OF_KIND[kind]}"
    return "/devices" if "device" in where else "/alerts"


@dataclass(frozen=True, slots=True)
class Routed:
    """How a route sends an alert to one receiver."""

    repeat_s: float
    grouping: Grouping | None = None


class Notifier:
    """Turns transitions into outbox rows, one per transition and webhook it is routed to.

    Pass ``notify`` to the ``Evaluator`` so the rows commit with the state change.
    """

    def __init__(self, topology: Topology, alerts: Alerts, outbox: Outbox,
                 external_url: str | None = None):
        self._webhooks = list(webhooks_by_name(alerts.webhooks).values())
        for w in self._webhooks:
            if w.format not in FORMATS:
                raise ValueError(f"webhook '{w.name}': unknown format '{w.format}'")
        self._topology, self._outbox = topology, outbox
        self.rules = site_rules(topology.site)  # refuses a rule the pack does not have
        self._external_url = (external_url or "").rstrip("/")
        self._routes = [
            ([parse_matcher(m) for m in r.matchers], r.receivers, r.continue_,
             r.repeat_s or alerts.repeat_s,
             Grouping(tuple(r.group_by), r.group_wait_s, r.group_interval_s)
             if r.group_by is not None else None)
            for r in alerts.routes]  # fmt: skip
        self._repeat_s = alerts.repeat_s
        with outbox.transaction() as db:
            groups.create(db)
            # alerts are looked up in groups where routes group or groups are left from before
            # (a storm's first tick makes thousands of transitions)
            self._grouping = any(r[4] for r in self._routes) or groups.held_alerts(db) > 0
        self._held: asyncio.Event | None = None  # set when a group is due sooner

    def routed(self, alert: Alert) -> dict[str, Routed]:
        """The webhooks the routes send ``alert`` to as it is now (no routes: all of them),
        each with its repeat (the shortest of the routes that send it there) and grouping
        (the first's)."""
        if not self._routes:
            return {w.name: Routed(self._repeat_s) for w in self._webhooks}
        labels = alert.labels | {"severity": alert.severity}
        out: dict[str, Routed] = {}
        for matchers, receivers, go_on, repeat_s, grouping in self._routes:
            if all(m.matches(alert.rule, labels) for m in matchers):
                for r in receivers:
                    before = out.get(r, Routed(repeat_s, grouping))
                    out[r] = Routed(min(repeat_s, before.repeat_s), before.grouping)
                if not go_on:
                    break
        return out

    def receivers(self, t: Transition) -> list[tuple[Webhook, Routed | None]]:
        """Where ``t`` goes, each with how its route sends it there (None: told before, no
        longer routed there): where the alert is routed now, and, but for a repeat, every
        webhook told of it before. A repeat (a reminder of what it is now) goes only where
        the alert is routed, to each receiver whose route's repeat has passed since it was
        last told."""
        if not self._webhooks:
            return []
        routed, told = self.routed(t.alert), self._told(t.alert)
        if t.kind != "repeat":
            names = routed.keys() | told.keys()
        else:  # a receiver never told is due (without routes: every one, at the one repeat)
            names = {n for n, r in routed.items()
                     if n not in told or t.at - told[n] >= r.repeat_s}
        return [(w, routed.get(w.name)) for w in self._webhooks if w.name in names]

    def _told(self, alert: Alert) -> dict[str, float]:
        """The webhooks told of ``alert`` before, and when last; without routes every one is
        routed anyway, at one repeat, and the outbox is not asked (a storm's first tick makes
        thousands of transitions)."""
        return self._outbox.told(alert.fingerprint) if self._routes else {}

    def context(self, t: Transition) -> Context:
        """Where the alert is, the racks and loops it touches, what it means and what to do
        first (its rule's description and first step), and links to its runbook (the site's
        own, or the console's) and the console page that shows it (only with
        ``web.external_url``)."""
        a = t.alert
        labels = a.labels
        where = dict(self._topology.device_tags.get(labels.get("device", ""), {}))
        where |= {k: labels[k] for k in WHERE if k in labels}
        where.pop("site", None)
        racks, loops = self._topology.affected(labels)
        base = self._external_url
        rule = self.rules.get(a.rule)
        device = self._topology.device_by_id.get(labels.get("device", ""))
        return Context(
            where={k: where[k] for k in WHERE if k in where}, racks=racks, loops=loops,
            runbook_url=rule.runbook(a.rule, base or None) if rule else None,
            url=base + console_path(where, device.kind if device else labels.get("kind"))
            if base else None,
            description=rule.description_of(labels, a.value, a.threshold, a.severity)
            if rule else None,
            next_step=rule.steps[0] if rule and rule.steps else None,
        )

    def notify(self, transitions: Sequence[Transition]) -> None:
        """Enqueue every transition for the webhooks it is routed to, or hold it in its
        group there, in one transaction."""
        site = self._topology.site.site
        with self._outbox.transaction() as db:
            for t in transitions:
                key = idempotency_key(t)
                headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
                context = self.context(t)
                for w, routed in self.receivers(t):
                    if self._grouping and self._hold(db, w, t, context, routed):
                        continue
                    body = render(w.format, t, site=site, receiver=w.name,
                                  external_url=self._external_url, context=context)
                    self._outbox.enqueue(w.name, body, headers, key, t.alert.fingerprint,
                                         t.delivery_priority, told_at=t.at)
                if t.kind == "resolved":
                    self._outbox.forget(t.alert.fingerprint)

    def _hold(self, db: sqlite3.Connection, w: Webhook, t: Transition, context: Context,
              routed: Routed | None) -> bool:
        """Hold ``t`` in the alert's group at ``w``: the one it is in, or the one its route
        groups it in if it is new there. False if the alert is told to ``w`` on its own."""
        a = t.alert
        key = groups.group_of(db, w.name, a.fingerprint)
        if key is None:
            grouping = routed.grouping if routed is not None else None
            if grouping is None or t.kind == "resolved":
                return False
            key = groups.join(db, w.name, grouping, grouping.labels(a.rule, a.severity,
                                                                     a.labels), t.at)
        page = t.kind in ("firing", "escalated") and a.severity == CRITICAL
        wait_s = routed.grouping.wait_s if routed is not None and routed.grouping else 0.0
        groups.hold(db, w.name, key, a.fingerprint, a.labels, t.kind != "resolved",
                    t.delivery_priority, PARTS[w.format](t, self._topology.site.site, context),
                    t.at, critical_wait_s=wait_s if page else None)
        self._outbox.mark_told(a.fingerprint, w.name, t.at)
        if self._held is not None:
            self._held.set()
        return True

    def tell_groups(self, now: float) -> int:
        """Enqueue the notification of every group due at ``now``; how many."""
        with self._outbox.transaction() as db:
            due = groups.due(db, now)
            by_name = {w.name: w for w in self._webhooks}
            for g in due:
                fmt = by_name[g.webhook].format if g.webhook in by_name else "generic"
                body = render_group(fmt, g.parts, site=self._topology.site.site,
                                    receiver=g.webhook, group_labels=g.labels,
                                    external_url=self._external_url)
                key = f"{g.id}-{round(now * 1000)}"
                headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
                self._outbox.enqueue(g.webhook, body, headers, key, g.id, g.priority)
                groups.told(db, g, now)
        return len(due)

    def groups_held(self) -> int:
        """Groups holding changes not told yet."""
        return groups.held(self._outbox.reader)

    async def tell_groups_forever(self, stop: asyncio.Event, idle_s: float = IDLE_S) -> None:
        """Tell each group when it is due, until ``stop``."""
        held = self._held = asyncio.Event()
        try:
            while not stop.is_set():
                held.clear()
                due_at = groups.next_due(self._outbox.reader)
                if due_at is not None and due_at <= time.time():
                    try:
                        self.tell_groups(time.time())
                    except Exception:  # a bug here must not end the telling of groups
                        log.exception("event=alert_group_error")
                    due_at = groups.next_due(self._outbox.reader)
                wait_s = idle_s if due_at is None else min(idle_s, due_at - time.time())
                await wait_any([stop, held], max(0.0, wait_s))
        finally:
            self._held = None

    async def resend_to_alertmanager(
        self, active: Callable[[], list[Alert]], stop: asyncio.Event,
        every_s: float = ALERTMANAGER_RESEND_S,
    ) -> None:
        """Re-post the firing alerts to every ``alertmanager_push`` receiver until ``stop``."""
        if not any(w.format == "alertmanager_push" for w in self._webhooks):
            return
        async with await http_client() as client:
            while not stop.is_set():
                await self.resend_once(client, active(), time.time())
                try:
                    await asyncio.wait_for(stop.wait(), every_s)
                except TimeoutError:
                    pass

    async def resend_once(self, client: httpx.AsyncClient, alerts: list[Alert], now: float) -> int:
        """Post to each ``alertmanager_push`` receiver the notified, unsuppressed firing
        ``alerts`` it is routed or was told; the receivers that took them."""
        firing = [a for a in alerts if a.state == "firing" and a.suppressed_by is None
                  and a.last_notified_at is not None]  # fmt: skip
        hooks = [w for w in self._webhooks if w.format == "alertmanager_push"]
        if not firing or not hooks:
            return 0
        sent_to = {a.fingerprint: self.routed(a).keys() | self._told(a).keys() for a in firing}
        took = 0
        for w in hooks:
            transitions = [Transition("repeat", a, now) for a in firing
                           if w.name in sent_to[a.fingerprint]]  # fmt: skip
            if not transitions:
                continue
            body = json.dumps(alertmanager_push_payload(
                [(t, self.context(t)) for t in transitions], self._topology.site.site, now,
            ), separators=(",", ":")).encode()  # fmt: skip
            headers = {"Content-Type": "application/json"}
            if w.secret is not None:
                headers |= signature_headers(w.secret.get_secret_value().encode(), body, int(now))
            try:
                response = await client.post(w.url, content=body, headers=headers,
                                             timeout=w.timeout_s)
                response.raise_for_status()
                took += 1
            except httpx.HTTPError as e:
                log.warning("event=alertmanager_resend_failed webhook=%s host=%s error=%s",
                            w.name, host_of(w.url), type(e).__name__)
        return took
