"""Grouping, as Alertmanager's aggregation groups: a route with ``group_by`` tells each of its
receivers the alerts that share those labels as one notification, not one per alert.

- A group's first notification goes out ``group_wait_s`` after its first alert, so that what
  one cause raises at once (a room's racks over their limits) arrives as one message.
- Its changes after that (an alert added, resolved, escalated, or due a reminder) are
  gathered and sent together, at most once per ``group_interval_s``; but a critical one (an
  alert firing or escalated at critical) goes out ``group_wait_s`` after the last
  notification at most, as a new group's would: a page never waits out a warning's
  interval. (Alertmanager has no such exception; there a severity in ``group_by`` moves an
  escalated alert to a new group, told after its ``group_wait``. Here an alert stays in its
  group, so the exception gives the same promptness.)
- Each notification holds every alert of the group still firing and those resolved since
  the last one. An alert stays in its group until it resolves; a group with none left ends.

What a group holds lives in the outbox's SQLite file and is written in the evaluator's
transaction, with the state change that made it: a restart loses nothing held. Each alert
is kept as its receiver's format shows it (``alerts.formats.PARTS``), so the notification
is put together from the rows alone.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alerts.formats import group_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_group (
    webhook TEXT NOT NULL,
    group_key TEXT NOT NULL,
    labels TEXT NOT NULL,  -- the group's labels (JSON)
    interval_s REAL NOT NULL,
    sent_at REAL,  -- its last notification; NULL before the first
    due_at REAL,  -- when its next one goes out; NULL while nothing changed
    PRIMARY KEY (webhook, group_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_member (
    webhook TEXT NOT NULL,
    alert TEXT NOT NULL,  -- fingerprint
    group_key TEXT NOT NULL,
    firing INTEGER NOT NULL,  -- 0: resolved, told in the group's next notification
    priority INTEGER NOT NULL,  -- of its last change (see Transition.delivery_priority)
    changed INTEGER NOT NULL,  -- since the group's last notification
    subject TEXT NOT NULL,  -- its labels, sorted (JSON): alerts of a priority go in this order
    part TEXT NOT NULL,  -- the alert as the webhook's format shows it (JSON)
    PRIMARY KEY (webhook, alert)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_member_group ON group_member (webhook, group_key);
CREATE INDEX IF NOT EXISTS alert_group_due ON alert_group (due_at);
"""


@dataclass(frozen=True, slots=True)
class Grouping:
    """A route's grouping (``alerts.routes[].group_by``...)."""

    group_by: tuple[str, ...]
    wait_s: float
    interval_s: float

    def labels(self, rule: str, severity: str, labels: Mapping[str, str]) -> dict[str, str]:
        """The group an alert joins: its values of ``group_by`` (those it has)."""
        own = {**labels, "rule": rule, "severity": severity}
        return {k: own[k] for k in self.group_by if k in own}


@dataclass(frozen=True, slots=True)
class Due:
    """A group whose notification is due: its alerts' parts, firing ones first."""

    webhook: str
    key: str
    labels: dict[str, str]
    parts: list[dict[str, Any]]
    priority: int  # the most urgent change since the last notification
    firing: list[str]  # fingerprints of the alerts still firing

    @property
    def id(self) -> str:
        """Stable name of the group, for the outbox: its notifications go out in order."""
        return "group-" + hashlib.sha256(f"{self.webhook}\0{self.key}".encode()).hexdigest()[:16]


def create(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)


def group_of(db: sqlite3.Connection, webhook: str, alert: str) -> str | None:
    """The group ``alert`` is in at ``webhook``, if any."""
    row = db.execute("SELECT group_key FROM group_member WHERE webhook = ? AND alert = ?",
                     (webhook, alert)).fetchone()
    return None if row is None else row[0]


def join(db: sqlite3.Connection, webhook: str, grouping: Grouping,
         labels: Mapping[str, str], now: float) -> str:
    """The key of the group of ``webhook`` with ``labels``, made if new (told
    ``group_wait_s`` from ``now``)."""
    key = group_key(labels)
    db.execute("INSERT OR IGNORE INTO alert_group (webhook, group_key, labels, interval_s,"
               " due_at) VALUES (?, ?, ?, ?, ?)", (webhook, key, json.dumps(dict(labels)),
                                                  grouping.interval_s, now + grouping.wait_s))
    return key


def hold(db: sqlite3.Connection, webhook: str, key: str, alert: str,
         subject: Mapping[str, str], firing: bool, priority: int, part: dict[str, Any],
         now: float, critical_wait_s: float | None = None) -> None:
    """Put a change of ``alert`` in group ``key`` of ``webhook``: told when its first
    notification is due, else once ``group_interval_s`` has passed since it was last told;
    a critical change (``critical_wait_s`` given) once that long has passed, if sooner."""
    db.execute("UPDATE alert_group SET due_at = COALESCE(due_at, MAX(:now, sent_at + interval_s))"
               " WHERE webhook = :webhook AND group_key = :key",
               {"now": now, "webhook": webhook, "key": key})
    if critical_wait_s is not None:  # before its first notification, the group's wait holds
        db.execute("UPDATE alert_group SET due_at = MIN(due_at, MAX(:now, sent_at + :wait))"
                   " WHERE webhook = :webhook AND group_key = :key AND sent_at IS NOT NULL",
                   {"now": now, "wait": critical_wait_s, "webhook": webhook, "key": key})
    db.execute(
        "INSERT OR REPLACE INTO group_member VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
        (webhook, alert, key, int(firing), priority, json.dumps(sorted(subject.items())),
         json.dumps(part, separators=(",", ":"))),
    )  # fmt: skip


def due(db: sqlite3.Connection, now: float) -> list[Due]:
    """The groups whose notification is due at ``now``."""
    out = []
    for webhook, key, labels in db.execute(
        "SELECT webhook, group_key, labels FROM alert_group WHERE due_at <= ?"
        " ORDER BY due_at", (now,)).fetchall():  # fmt: skip
        members = db.execute(
            "SELECT alert, firing, priority, changed, part FROM group_member"
            " WHERE webhook = ? AND group_key = ? ORDER BY firing DESC, priority, subject",
            (webhook, key)).fetchall()  # fmt: skip
        changed = [m[2] for m in members if m[3]]
        out.append(Due(webhook, key, json.loads(labels), [json.loads(m[4]) for m in members],
                       min(changed, default=0), [m[0] for m in members if m[1]]))
    return out


def told(db: sqlite3.Connection, group: Due, now: float) -> None:
    """``group`` was told at ``now``: its resolved alerts leave it, it ends if none is left."""
    db.execute("DELETE FROM group_member WHERE webhook = ? AND group_key = ? AND firing = 0",
               (group.webhook, group.key))
    db.execute("UPDATE group_member SET changed = 0 WHERE webhook = ? AND group_key = ?",
               (group.webhook, group.key))
    if group.firing:
        db.execute("UPDATE alert_group SET sent_at = ?, due_at = NULL"
                   " WHERE webhook = ? AND group_key = ?", (now, group.webhook, group.key))
    else:
        db.execute("DELETE FROM alert_group WHERE webhook = ? AND group_key = ?",
                   (group.webhook, group.key))


def next_due(db: sqlite3.Connection) -> float | None:
    return db.execute("SELECT MIN(due_at) FROM alert_group").fetchone()[0]


def held_alerts(db: sqlite3.Connection) -> int:
    """Alerts in groups."""
    return db.execute("SELECT COUNT(*) FROM group_member").fetchone()[0]


def held(db: sqlite3.Connection) -> int:
    """Groups with a notification not sent yet."""
    return db.execute("SELECT COUNT(*) FROM alert_group WHERE due_at IS NOT NULL").fetchone()[0]
