"""Webhook formats: the generic signed JSON (schema version 1) and Alertmanager webhook v4.

Generic body::

    {"version": "1", "status": "firing"|"resolved",
     "kind": "firing"|"escalated"|"deescalated"|"repeat"|"resolved",
     "previous_severity": null | "...", "fingerprint": "...", "rule": "...",
     "severity": "...", "labels": {...}, "summary": "...", "value": 1.0 | null,
     "starts_at": "2025-01-01T00:00:00.000Z", "ends_at": null | "...", "site": "..."}

Signature (Stripe-like): ``X-Aidc-Timestamp: <unix s>`` and
``X-Aidc-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``. A receiver
recomputes the HMAC over the raw body and rejects stale timestamps (replay protection).
Every request also carries ``Idempotency-Key``: the same value on every retry of one
notification, so the receiver can drop a duplicate delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from alerts.evaluate import Transition

SCHEMA_VERSION = "1"
SIGNATURE_HEADER = "X-Aidc-Signature"
TIMESTAMP_HEADER = "X-Aidc-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def idempotency_key(t: Transition) -> str:
    """Stable per notification: fingerprint, what happened and when (ms)."""
    return f"{t.alert.fingerprint}-{t.kind}-{round(t.at * 1000)}"


def signature_headers(secret: bytes, body: bytes, timestamp: int) -> dict[str, str]:
    """``X-Aidc-Timestamp`` and ``X-Aidc-Signature`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: f"sha256={mac}"}


def generic_payload(t: Transition, site: str) -> dict[str, Any]:
    """The generic JSON document (schema version 1) for one transition."""
    a = t.alert
    return {
        "version": SCHEMA_VERSION,
        "status": t.status,
        "kind": t.kind,
        "previous_severity": t.previous_severity,
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "severity": a.severity,
        "labels": dict(a.labels),
        "summary": a.summary,
        "value": _finite(a.value),
        "starts_at": iso_utc(_starts_at(t)),
        "ends_at": iso_utc(a.ends_at) if a.ends_at is not None else None,
        "site": site,
    }


def alertmanager_payload(
    transitions: Sequence[Transition],
    *,
    site: str,
    receiver: str,
    external_url: str = "",
    group_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An Alertmanager webhook (version 4) message grouping ``transitions``.

    ``group_labels`` defaults to the labels all alerts share, as ``group_by`` would give.
    """
    alerts = [_am_alert(t, site, external_url) for t in transitions]
    common_labels = _common(a["labels"] for a in alerts)
    groups = dict(common_labels if group_labels is None else group_labels)
    return {
        "version": "4",
        "groupKey": _group_key(groups),
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": groups,
        "commonLabels": common_labels,
        "commonAnnotations": _common(a["annotations"] for a in alerts),
        "externalURL": external_url,
        "alerts": alerts,
    }


Renderer = Callable[[Transition, str, str, str], dict[str, Any]]
FORMATS: Mapping[str, Renderer] = {
    "generic": lambda t, site, receiver, url: generic_payload(t, site),
    "alertmanager": lambda t, site, receiver, url: alertmanager_payload(
        [t], site=site, receiver=receiver, external_url=url
    ),
}


def render(fmt: str, t: Transition, *, site: str, receiver: str, external_url: str = "") -> bytes:
    """The request body of ``t`` in webhook format ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown webhook format '{fmt}', expected one of {sorted(FORMATS)}")
    payload = FORMATS[fmt](t, site, receiver, external_url)
    return json.dumps(payload, separators=(",", ":")).encode()


def _am_alert(t: Transition, site: str, external_url: str) -> dict[str, Any]:
    a = t.alert
    annotations = {"summary": a.summary}
    if _finite(a.value) is not None:
        annotations["value"] = f"{a.value:g}"
    if t.previous_severity is not None:
        annotations["previous_severity"] = t.previous_severity
    return {
        "status": t.status,
        "labels": {"site": site, **a.labels, "alertname": a.rule, "severity": a.severity},
        "annotations": annotations,
        "startsAt": iso_utc(_starts_at(t)),
        "endsAt": iso_utc(a.ends_at) if a.ends_at is not None else _GO_ZERO_TIME,
        "generatorURL": external_url,
        "fingerprint": a.fingerprint,
    }


def _group_key(group_labels: Mapping[str, str]) -> str:
    """Alertmanager's key of a group under the root route: ``{}:{name="value",...}``."""
    pairs = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(group_labels.items()))
    return "{}:{" + pairs + "}"


def _starts_at(t: Transition) -> float:
    return t.alert.starts_at if t.alert.starts_at is not None else t.alert.active_since


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is sent as null."""
    return value if value is not None and math.isfinite(value) else None


def _common(dicts: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Key/value pairs present and equal in every mapping."""
    it = iter(dicts)
    common = dict(next(it, {}))
    for d in it:
        common = {k: v for k, v in common.items() if d.get(k) == v}
    return common
