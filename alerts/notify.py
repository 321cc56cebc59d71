"""Notify: route each transition to its webhooks, render it in each one's format and put it
in the outbox.

Routing is Alertmanager's, kept flat (``alerts.routes`` in the site file): an alert goes to
the receivers of the first route whose matchers hold over its rule, severity and labels, and
of the routes after one with ``continue``. A change of severity and the resolve also go to
every receiver told of the alert before: the pager that had the critical hears it fall back
to warning, and hears it end. A reminder goes to a receiver the alert is routed to once the
route's ``repeat_s`` has passed since that receiver was last told (the evaluator offers
reminders at the shortest repeat of any route).

Signing is not done here but by the outbox at each delivery attempt, so that the signed
timestamp stays fresh however long a receiver was down (see ``alerts.outbox``). Alertmanager
push receivers also get every firing alert again each ``ALERTMANAGER_RESEND_S`` (a state
sync, not a notification: best effort, the next one repairs a lost one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence

import httpx

from aidc.config import Alerts, Webhook
from aidc.matchers import parse_matcher
from aidc.topology import Topology
from alerts.evaluate import Alert, Transition
from alerts.formats import (
    ALERTMANAGER_RESEND_S,
    FORMATS,
    IDEMPOTENCY_HEADER,
    Context,
    alertmanager_push_payload,
    idempotency_key,
    render,
    signature_headers,
)
from alerts.outbox import Outbox, host_of, webhooks_by_name
from alerts.rules import site_rules

log = logging.getLogger(__name__)

WHERE = ("room", "row", "rack", "device", "loop", "supercap")


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
        self._routes = [([parse_matcher(m) for m in r.matchers], r.receivers, r.continue_,
                         r.repeat_s or alerts.repeat_s) for r in alerts.routes]  # fmt: skip
        self._repeat_s = alerts.repeat_s

    def routed(self, alert: Alert) -> dict[str, float]:
        """The webhooks the routes send ``alert`` to as it is now (no routes: all of them),
        each with its repeat: the shortest of the routes that send it there."""
        if not self._routes:
            return {w.name: self._repeat_s for w in self._webhooks}
        labels = alert.labels | {"severity": alert.severity}
        out: dict[str, float] = {}
        for matchers, receivers, go_on, repeat_s in self._routes:
            if all(m.matches(alert.rule, labels) for m in matchers):
                out |= {r: min(repeat_s, out.get(r, repeat_s)) for r in receivers}
                if not go_on:
                    break
        return out

    def receivers(self, t: Transition) -> list[Webhook]:
        """Where ``t`` goes: where the alert is routed now, and, but for a repeat, every
        webhook told of it before. A repeat (a reminder of what it is now) goes only where
        the alert is routed, to each receiver whose route's repeat has passed since it was
        last told."""
        if not self._webhooks:
            return []
        routed, told = self.routed(t.alert), self._told(t.alert)
        if t.kind != "repeat":
            names = routed.keys() | told.keys()
        else:  # a receiver never told is due (without routes: every one, at the one repeat)
            names = {n for n, repeat_s in routed.items()
                     if n not in told or t.at - told[n] >= repeat_s}
        return [w for w in self._webhooks if w.name in names]

    def _told(self, alert: Alert) -> dict[str, float]:
        """The webhooks told of ``alert`` before, and when last; without routes every one is
        routed anyway, at one repeat, and the outbox is not asked (a storm's first tick makes
        thousands of transitions)."""
        return self._outbox.told(alert.fingerprint) if self._routes else {}

    def context(self, t: Transition) -> Context:
        """Where the alert is, the racks and loops it touches, and links to its runbook (the
        site's own, or the console's) and the console (only with ``web.external_url``)."""
        labels = t.alert.labels
        where = dict(self._topology.device_tags.get(labels.get("device", ""), {}))
        where |= {k: labels[k] for k in WHERE if k in labels}
        where.pop("site", None)
        racks, loops = self._topology.affected(labels)
        base = self._external_url
        rule = self.rules.get(t.alert.rule)
        return Context(
            where={k: where[k] for k in WHERE if k in where}, racks=racks, loops=loops,
            runbook_url=rule.runbook(t.alert.rule, base or None) if rule else None,
            url=f"{base}/" if base else None,
        )

    def notify(self, transitions: Sequence[Transition]) -> None:
        """Enqueue every transition for the webhooks it is routed to, in one transaction."""
        site = self._topology.site.site
        with self._outbox.transaction():
            for t in transitions:
                key = idempotency_key(t)
                headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
                context = self.context(t)
                for w in self.receivers(t):
                    body = render(w.format, t, site=site, receiver=w.name,
                                  external_url=self._external_url, context=context)
                    self._outbox.enqueue(w.name, body, headers, key, t.alert.fingerprint,
                                         t.delivery_priority, told_at=t.at)
                if t.kind == "resolved":
                    self._outbox.forget(t.alert.fingerprint)

    async def resend_to_alertmanager(
        self, active: Callable[[], list[Alert]], stop: asyncio.Event,
        every_s: float = ALERTMANAGER_RESEND_S,
    ) -> None:
        """Re-post the firing alerts to every ``alertmanager_push`` receiver until ``stop``."""
        if not any(w.format == "alertmanager_push" for w in self._webhooks):
            return
        async with httpx.AsyncClient(follow_redirects=False) as client:
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
