"""Webhook formats: the generic signed JSON (schema version 3) and Alertmanager webhook v4.

Generic body (JSON Schema: ``alerts/schema/generic-v3.json``)::

    {"version": "3", "status": "firing"|"resolved",
     "kind": "firing"|"escalated"|"deescalated"|"repeat"|"resolved",
     "previous_severity": null | "...", "fingerprint": "...", "rule": "...",
     "severity": "...", "summary": "...", "labels": {...},
     "value": 1.0 | null, "unit": "kW", "threshold": 0.0 | null,
     "where": {"site": "...", "room": "...", "row": "...", "rack": "...", "device": "..."},
     "affected": {"racks": [...], "loops": [...]},
     "description": null | "...", "next_step": null | "...",
     "runbook_url": null | "...", "url": null | "...",
     "starts_at": "2025-01-01T00:00:00.000Z", "ends_at": null | "...",
     "duration_s": null | 12.5, "site": "..."}

Version 2 added kind, previous_severity, unit, threshold, where, affected, runbook_url, url
and duration_s to version 1; a resolved notice's summary says how long it lasted, and its
value is the one it cleared at (null when unknown). Version 3 added description (what the
alert means: its rule's description, filled with its values, or its meaning) and next_step
(its rule's first step).

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alerts.evaluate import Transition

SCHEMA_VERSION = "3"
SIGNATURE_HEADER = "X-Aidc-Signature"
TIMESTAMP_HEADER = "X-Aidc-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert
ALERTMANAGER_RESEND_S = 60.0  # firing alerts re-posted to Alertmanager this often
ALERTMANAGER_HOLD_S = 4 * ALERTMANAGER_RESEND_S  # as Prometheus: 4 resends missed, it ends


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


@dataclass(frozen=True)
class Context:
    """What a notification says beyond the alert itself: where it is, what it touches, and
    links (from ``web.external_url``; none without it)."""

    where: Mapping[str, str] = field(default_factory=dict)
    racks: Sequence[str] = ()
    loops: Sequence[str] = ()
    runbook_url: str | None = None
    url: str | None = None
    description: str | None = None  # what the alert means (its rule's description)
    next_step: str | None = None  # what on-call does first (its rule's first step)


def generic_payload(t: Transition, site: str, context: Context = Context()) -> dict[str, Any]:
    """The generic JSON document (schema version 2) for one transition."""
    a = t.alert
    return {
        "version": SCHEMA_VERSION,
        "status": t.status,
        "kind": t.kind,
        "previous_severity": t.previous_severity,
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "severity": a.severity,
        "summary": summary(t),
        "labels": dict(a.labels),
        "value": _finite(a.value),
        "unit": a.unit,
        "threshold": _finite(a.threshold),
        "where": {"site": site, **context.where},
        "affected": {"racks": list(context.racks), "loops": list(context.loops)},
        "description": context.description,
        "next_step": context.next_step,
        "runbook_url": context.runbook_url,
        "url": context.url,
        "starts_at": iso_utc(_starts_at(t)),
        "ends_at": iso_utc(a.ends_at) if a.ends_at is not None else None,
        "duration_s": _duration_s(t),
        "site": site,
    }


def summary(t: Transition) -> str:
    """The alert's summary; a resolved one says how long it lasted, a severity change from
    what."""
    a = t.alert
    if t.kind == "resolved":
        return f"resolved after {_human(_duration_s(t) or 0)}: {a.summary}"
    if t.previous_severity is not None:
        return f"{t.kind} from {t.previous_severity} to {a.severity}: {a.summary}"
    return a.summary


def alertmanager_payload(
    transitions: Sequence[Transition],
    *,
    site: str,
    receiver: str,
    external_url: str = "",
    group_labels: Mapping[str, str] | None = None,
    contexts: Sequence[Context] | None = None,
) -> dict[str, Any]:
    """An Alertmanager webhook (version 4) message grouping ``transitions``.

    ``group_labels`` defaults to the labels all alerts share, as ``group_by`` would give.
    """
    contexts = contexts or [Context()] * len(transitions)
    alerts = [_am_alert(t, site, c) for t, c in zip(transitions, contexts, strict=True)]
    return _am_message(alerts, receiver, external_url, group_labels)


def _am_message(alerts: Sequence[Mapping[str, Any]], receiver: str, external_url: str,
                group_labels: Mapping[str, str] | None) -> dict[str, Any]:
    common_labels = _common(a["labels"] for a in alerts)
    groups = dict(common_labels if group_labels is None else group_labels)
    return {
        "version": "4",
        "groupKey": group_key(groups),
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": groups,
        "commonLabels": common_labels,
        "commonAnnotations": _common(a["annotations"] for a in alerts),
        "externalURL": external_url,
        "alerts": list(alerts),
    }


def alertmanager_push_payload(
    alerts: Sequence[tuple[Transition, Context]], site: str, now: float
) -> list[dict[str, Any]]:
    """Postable alerts for Alertmanager's ``POST /api/v2/alerts`` (API v2).

    Like Prometheus, a firing alert says it ends ``ALERTMANAGER_HOLD_S`` from now unless
    sent again: aidc re-posts its firing alerts every ``ALERTMANAGER_RESEND_S``
    (``alerts.notify.resend_to_alertmanager``), so one that aidc stops reporting (aidc
    down) resolves in Alertmanager on its own instead of firing forever.
    """
    out = []
    for t, context in alerts:
        a = _am_alert(t, site, context)
        out.append({
            "labels": a["labels"],
            "annotations": a["annotations"],
            "startsAt": a["startsAt"],
            "endsAt": a["endsAt"] if t.kind == "resolved" else iso_utc(now + ALERTMANAGER_HOLD_S),
            "generatorURL": a["generatorURL"],
        })
    return out


def chat_message(t: Transition, site: str, context: Context) -> dict[str, str]:
    """A chat or paging message (apprise): a title, a plain-text body that says what, where,
    how bad, what is affected and where to look, and apprise's notification type."""
    a = t.alert
    where = " ".join(f"{k}={v}" for k, v in {"site": site, **context.where}.items())
    lines = [summary(t), where]
    if _finite(a.value) is not None:
        lines.append(f"value {a.value:g} {a.unit}".rstrip()
                     + ("" if _finite(a.threshold) is None else f", threshold {a.threshold:g}"))
    if context.racks or context.loops:
        lines.append("affected: " + ", ".join([*context.loops, *context.racks]))
    if context.next_step and t.kind != "resolved":
        lines.append(f"first: {context.next_step}")
    lines += [f"{name}: {url}" for name, url in (("runbook", context.runbook_url),
                                                   ("console", context.url)) if url]
    kind = "success" if t.kind == "resolved" else "failure" if a.severity == "critical" \
        else "warning"
    return {"title": f"[{t.status.upper()} {a.severity}] {a.rule} at {site}",
            "body": "\n".join(lines), "type": kind}


def pagerduty_event(t: Transition, site: str, context: Context = Context()) -> dict[str, Any]:
    """A PagerDuty Events API v2 event, without its routing key (the outbox adds it as it
    sends, so that the key is not kept in the outbox): the alert's fingerprint is the
    incident's dedup_key, so its escalation updates the incident and its resolution
    resolves it."""
    a = t.alert
    where = {"site": site, **context.where}
    links = [{"href": url, "text": text} for url, text in ((context.url, "aidc console"),
                                                             (context.runbook_url, "runbook")) if url]
    return {
        "event_action": "resolve" if t.kind == "resolved" else "trigger",
        "dedup_key": a.fingerprint,
        "payload": {
            "summary": summary(t)[:1024],  # PagerDuty's limit
            "source": where.get("device") or where.get("rack") or site,
            "severity": a.severity if a.severity in ("critical", "warning", "info") else "error",
            "timestamp": iso_utc(_starts_at(t)),
            "component": where.get("device"),
            "group": where.get("rack") or where.get("loop"),
            "class": a.rule,
            "custom_details": {"kind": t.kind, "previous_severity": t.previous_severity,
                               "value": _finite(a.value), "unit": a.unit,
                               "threshold": _finite(a.threshold), "where": where,
                               "affected_racks": list(context.racks),
                               "affected_loops": list(context.loops), "labels": dict(a.labels),
                               "description": context.description,
                               "next_step": context.next_step},
        },
        "links": links,
        "client": "aidc",
    }


Renderer = Callable[[Transition, str, str, str, Context], Any]
FORMATS: Mapping[str, Renderer] = {
    "generic": lambda t, site, receiver, url, context: generic_payload(t, site, context),
    "alertmanager": lambda t, site, receiver, url, context: alertmanager_payload(
        [t], site=site, receiver=receiver, external_url=url, contexts=[context]
    ),
    "apprise": lambda t, site, receiver, url, context: chat_message(t, site, context),
    "pagerduty": lambda t, site, receiver, url, context: pagerduty_event(t, site, context),
    "alertmanager_push": lambda t, site, receiver, url, context: alertmanager_push_payload(
        [(t, context)], site, t.at
    ),
}


def render(fmt: str, t: Transition, *, site: str, receiver: str, external_url: str = "",
           context: Context = Context()) -> bytes:
    """The request body of ``t`` in webhook format ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown webhook format '{fmt}', expected one of {sorted(FORMATS)}")
    payload = FORMATS[fmt](t, site, receiver, external_url, context)
    return _json(payload)


def generic_group(parts: Sequence[Mapping[str, Any]], site: str,
                  group_labels: Mapping[str, str]) -> dict[str, Any]:
    """The generic JSON document (schema version 2, ``kind: group``) of a group's alerts:
    each one's own document, firing ones first."""
    firing = sum(p["status"] == "firing" for p in parts)
    return {"version": SCHEMA_VERSION, "kind": "group",
            "status": "firing" if firing else "resolved",
            "group_key": group_key(group_labels), "group_labels": dict(group_labels),
            "firing": firing, "resolved": len(parts) - firing, "site": site,
            "alerts": list(parts)}  # fmt: skip


def chat_group(parts: Sequence[Mapping[str, str]], site: str,
               group_labels: Mapping[str, str]) -> dict[str, str]:
    """One chat message for a group: how many fire and resolved, then each alert's."""
    firing = sum(p["type"] != "success" for p in parts)
    resolved = len(parts) - firing
    what = " ".join(f"{k}={v}" for k, v in group_labels.items()) or "alerts"
    counts = ", ".join([f"FIRING:{firing}"] * bool(firing) + [f"RESOLVED:{resolved}"] * bool(resolved))
    kinds = {p["type"] for p in parts}
    kind = "failure" if "failure" in kinds else "warning" if "warning" in kinds else "success"
    return {"title": f"[{counts}] {what} at {site}",
            "body": "\n\n".join(f"{p['title']}\n{p['body']}" for p in parts), "type": kind}


def render_group(fmt: str, parts: Sequence[Mapping[str, Any]], *, site: str, receiver: str,
                 group_labels: Mapping[str, str], external_url: str = "") -> bytes:
    """The request body telling a group's ``parts`` (each from ``PARTS[fmt]``)."""
    if fmt == "generic":
        return _json(generic_group(parts, site, group_labels))
    if fmt == "alertmanager":
        labels = {("alertname" if k == "rule" else k): v for k, v in group_labels.items()}
        return _json(_am_message(parts, receiver, external_url, labels))
    if fmt == "apprise":
        return _json(chat_group(parts, site, group_labels))
    raise ValueError(f"webhook format '{fmt}' is not grouped")


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _am_alert(t: Transition, site: str, context: Context) -> dict[str, Any]:
    a = t.alert
    annotations = {"summary": summary(t)}
    if _finite(a.value) is not None:
        annotations["value"] = f"{a.value:g} {a.unit}".rstrip()
    if _finite(a.threshold) is not None:
        annotations["threshold"] = f"{a.threshold:g} {a.unit}".rstrip()
    if t.previous_severity is not None:
        annotations["previous_severity"] = t.previous_severity
    if context.racks:
        annotations["affected_racks"] = ", ".join(context.racks)
    if context.loops:
        annotations["affected_loops"] = ", ".join(context.loops)
    if context.description:
        annotations["description"] = context.description
    if context.next_step:
        annotations["next_step"] = context.next_step
    if context.runbook_url:
        annotations["runbook_url"] = context.runbook_url
    return {
        "status": t.status,
        "labels": {"site": site, **a.labels, "alertname": a.rule, "severity": a.severity},
        "annotations": annotations,
        "startsAt": iso_utc(_starts_at(t)),
        "endsAt": iso_utc(a.ends_at) if a.ends_at is not None else _GO_ZERO_TIME,
        "generatorURL": context.url or "",
        "fingerprint": a.fingerprint,
    }


def group_key(group_labels: Mapping[str, str]) -> str:
    """Alertmanager's key of a group under the root route: ``{}:{name="value",...}``."""
    pairs = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(group_labels.items()))
    return "{}:{" + pairs + "}"


def _starts_at(t: Transition) -> float:
    return t.alert.starts_at if t.alert.starts_at is not None else t.alert.active_since


def _duration_s(t: Transition) -> float | None:
    """How long a resolved alert fired (s); None while it fires."""
    if t.alert.ends_at is None:
        return None
    return round(t.alert.ends_at - _starts_at(t), 3)


def _human(seconds: float) -> str:
    """``2 h 5 min``, ``3 min 12 s``, ``40 s``."""
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s % 60} s" if m else f"{s} s"


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


# A group (``alerts.groups``) is told as one message: each alert in it as the format shows
# one (its part), gathered as the format gathers several. Alertmanager push receivers are
# never grouped: Alertmanager groups what it is pushed itself.
PARTS: Mapping[str, Callable[[Transition, str, Context], dict[str, Any]]] = {
    "generic": generic_payload,
    "alertmanager": _am_alert,
    "apprise": chat_message,
}
