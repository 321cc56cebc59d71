"""Notify: render each transition for every webhook in its format and put it in the outbox.

Signing is not done here but by the outbox at each delivery attempt, so that the signed
timestamp stays fresh however long a receiver was down (see ``alerts.outbox``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aidc.config import Webhook
from alerts.evaluate import Transition
from alerts.formats import FORMATS, IDEMPOTENCY_HEADER, idempotency_key, render
from alerts.outbox import Outbox, webhooks_by_name


class Notifier:
    """Turns transitions into outbox rows, one per transition and webhook.

    Pass ``notify`` to the ``Evaluator`` so the rows commit with the state change.
    """

    def __init__(
        self, site_name: str, webhooks: Iterable[Webhook], outbox: Outbox, external_url: str = ""
    ):
        self._webhooks = list(webhooks_by_name(webhooks).values())
        for w in self._webhooks:
            if w.format not in FORMATS:
                raise ValueError(f"webhook '{w.name}': unknown format '{w.format}'")
        self._site, self._outbox, self._external_url = site_name, outbox, external_url

    def notify(self, transitions: Sequence[Transition]) -> None:
        """Enqueue every transition for every webhook, in one transaction."""
        with self._outbox.transaction():
            for t in transitions:
                key = idempotency_key(t)
                headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
                for w in self._webhooks:
                    body = render(
                        w.format,
                        t,
                        site=self._site,
                        receiver=w.name,
                        external_url=self._external_url,
                    )
                    self._outbox.enqueue(
                        w.name, body, headers, key, t.alert.fingerprint, t.delivery_priority
                    )
