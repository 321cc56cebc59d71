"""Notify: render each transition for every webhook in its format and put it in the outbox.

Signing is not done here but by the outbox at each delivery attempt, so that the signed
timestamp stays fresh however long a receiver was down (see ``alerts.outbox``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aidc.config import Webhook
from aidc.topology import Topology
from alerts.evaluate import Transition
from alerts.formats import FORMATS, IDEMPOTENCY_HEADER, Context, idempotency_key, render
from alerts.outbox import Outbox, webhooks_by_name

WHERE = ("room", "row", "rack", "device", "loop", "supercap")


class Notifier:
    """Turns transitions into outbox rows, one per transition and webhook.

    Pass ``notify`` to the ``Evaluator`` so the rows commit with the state change.
    """

    def __init__(
        self, topology: Topology, webhooks: Iterable[Webhook], outbox: Outbox,
        external_url: str | None = None,
    ):
        self._webhooks = list(webhooks_by_name(webhooks).values())
        for w in self._webhooks:
            if w.format not in FORMATS:
                raise ValueError(f"webhook '{w.name}': unknown format '{w.format}'")
        self._topology, self._outbox = topology, outbox
        self._external_url = (external_url or "").rstrip("/")

    def context(self, t: Transition) -> Context:
        """Where the alert is, the racks and loops it touches, and links to its runbook and
        the console (only with ``web.external_url``)."""
        labels = t.alert.labels
        where = dict(self._topology.device_tags.get(labels.get("device", ""), {}))
        where |= {k: labels[k] for k in WHERE if k in labels}
        where.pop("site", None)
        racks, loops = self._topology.affected(labels)
        base = self._external_url
        return Context(
            where={k: where[k] for k in WHERE if k in where}, racks=racks, loops=loops,
            runbook_url=f"{base}/runbooks#{t.alert.rule}" if base else None,
            url=f"{base}/" if base else None,
        )

    def notify(self, transitions: Sequence[Transition]) -> None:
        """Enqueue every transition for every webhook, in one transaction."""
        site = self._topology.site.site
        with self._outbox.transaction():
            for t in transitions:
                key = idempotency_key(t)
                headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
                context = self.context(t)
                for w in self._webhooks:
                    body = render(w.format, t, site=site, receiver=w.name,
                                  external_url=self._external_url, context=context)
                    self._outbox.enqueue(
                        w.name, body, headers, key, t.alert.fingerprint, t.delivery_priority
                    )
