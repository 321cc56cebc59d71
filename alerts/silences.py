"""Silences: matchers over an alert's rule and labels, for a time, with who and why.

Alertmanager's second stage. A silenced condition still counts, as a suppressed one does
(``suppressed_by`` is ``silence <id>``): the alert stays visible, its notifications are held,
and its ``firing`` goes out if it still holds when the silence ends. Silences live in the
alert state's SQLite file, so they survive a restart; expiring one keeps it, with who expired
it, as the audit trail.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from aidc.core.matchers import Matcher, checked
from alerts.evaluate import Condition, ConditionColumn

if TYPE_CHECKING:
    from alerts.outbox import Outbox

_SCHEMA = """
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at REAL NOT NULL,
    expired_by TEXT
)
"""
_COLUMNS = ("id", "matchers", "starts_at", "ends_at", "created_by", "comment", "created_at",
            "expired_by")  # fmt: skip
KEEP_EXPIRED_S = 7 * 24 * 3600  # expired silences stay listed this long


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    created_at: float
    expired_by: str | None = None

    def state(self, now: float) -> Literal["pending", "active", "expired"]:
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "pending"

    def silences(self, rule: str, labels: Mapping[str, str], now: float) -> bool:
        return self.state(now) == "active" and all(m.matches(rule, labels) for m in self.matchers)


class Silences:
    """The silences table, in the outbox's SQLite file (use from the thread that owns it)."""

    def __init__(self, store: Outbox):
        self._store = store
        with store.transaction() as db:
            db.execute(_SCHEMA)
        self.listed: list[Silence] = []  # as of the last read: other threads read this
        self.all(time.time())

    def add(self, matchers: Iterable[Matcher], starts_at: float, ends_at: float,
            created_by: str, comment: str, now: float) -> Silence:
        matchers = tuple(checked(m) for m in matchers)
        if not matchers:
            raise ValueError("a silence needs at least one matcher")
        if all(m.op in ("=~", "!~", "!=") and m.matches("", {}) for m in matchers):
            raise ValueError("these matchers also match an empty label set: they would "
                             "silence every alert; add an equality matcher")
        if ends_at <= max(starts_at, now):
            raise ValueError("a silence must end after it starts and in the future")
        s = Silence(uuid.uuid4().hex[:12], matchers, starts_at, ends_at, created_by, comment,
                    now)  # fmt: skip
        with self._store.transaction() as db:
            db.execute(f"INSERT INTO silences ({', '.join(_COLUMNS)}) VALUES "
                       f"({', '.join('?' for _ in _COLUMNS)})", _row(s))  # fmt: skip
        self.all(now)
        return s

    def expire(self, silence_id: str, by: str, now: float) -> Silence:
        """End a silence now (KeyError if unknown or already expired)."""
        s = self.get(silence_id)
        if s is None or s.state(now) == "expired":
            raise KeyError(silence_id)
        s = replace(s, ends_at=now, expired_by=by)
        with self._store.transaction() as db:
            db.execute("UPDATE silences SET ends_at = ?, expired_by = ? WHERE id = ?",
                       (now, by, silence_id))
        self.all(now)
        return s

    def get(self, silence_id: str) -> Silence | None:
        with self._store.transaction() as db:
            row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM silences WHERE id = ?",
                             (silence_id,)).fetchone()
        return _silence(row) if row else None

    def all(self, now: float) -> list[Silence]:
        """Pending, active and recently expired silences, newest first."""
        with self._store.transaction() as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM silences WHERE ends_at > ?"
                " ORDER BY created_at DESC", (now - KEEP_EXPIRED_S,)).fetchall()  # fmt: skip
        self.listed = [_silence(r) for r in rows]
        return self.listed

    def apply(self, conditions: Iterable[Condition], now: float,
              columns: Iterable[ConditionColumn] = ()) -> list[Condition]:
        """``conditions`` with the silenced ones suppressed (an inhibition cause stays), and
        so each of ``columns``' subjects. Reads ``listed``, which every add and expire
        refresh: no file read on the tick's path."""
        active = [s for s in self.listed if s.state(now) == "active"]
        if not active:
            return list(conditions)

        def hit(rule: str, labels: Mapping[str, str]) -> str | None:
            s = next((s for s in active if s.silences(rule, labels, now)), None)
            return None if s is None else f"silence {s.id}"

        for col in columns:
            by = (col.suppressed_by if col.suppressed_by is not None
                  else np.full(len(col.subjects), None, object))
            for k, i in enumerate(col.subjects.tolist()):
                by[k] = by[k] or hit(col.rule, col.labels[i])
            col.suppressed_by = by
        return [c if c.suppressed_by or (silenced := hit(c.rule, c.labels)) is None
                else replace(c, suppressed_by=silenced) for c in conditions]


def _row(s: Silence) -> tuple:
    matchers = json.dumps([[m.name, m.op, m.value] for m in s.matchers])
    return (s.id, matchers, s.starts_at, s.ends_at, s.created_by, s.comment, s.created_at,
            s.expired_by)  # fmt: skip


def _silence(row: tuple) -> Silence:
    fields = dict(zip(_COLUMNS, row, strict=True))
    fields["matchers"] = tuple(Matcher(n, v, op) for n, op, v in json.loads(fields["matchers"]))
    return Silence(**fields)
