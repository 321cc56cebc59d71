"""Evaluation: conditions in, alert state changes out (inactive -> pending -> firing -> resolved).

An alert is identified by its fingerprint (rule name + labels). A condition that holds starts a
*pending* alert; once it has held for the rule's ``for_s`` the alert is *firing* and one
``firing`` transition is emitted. While it fires, a change of severity is an ``escalated`` or
``deescalated`` transition (an escalation also clears an acknowledgement: a critical is not
the warning someone took), and a ``repeat`` transition is emitted every ``repeat_s`` since the
last notification unless someone acknowledged it (the runtime gives the shortest repeat of any
route; the notifier sends each reminder only where its route's repeat is due). When the condition
clears, a firing alert emits ``resolved`` (acknowledged or not); a pending one is dropped
silently.

A *suppressed* condition (its cause is firing, see ``alerts.inhibit``) keeps its alert's
state, visible with ``suppressed_by``, but notifies nothing: if it fires while suppressed,
its ``firing`` goes out once the cause clears and it still holds, and its ``resolved`` only
if its ``firing`` went out.

State lives in the ``alert_state`` table of the outbox's SQLite file and is written in the same
transaction as the outbox rows of its transitions, so a restart neither re-sends ``firing`` for
an alert already notified nor forgets one that cleared while the process was down.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from aidc.core.config import REPEAT_S

if TYPE_CHECKING:
    from alerts.outbox import Outbox

AlertState = Literal["pending", "firing"]
TransitionKind = Literal["firing", "escalated", "deescalated", "repeat", "resolved"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}  # unknown severities rank as warning

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    labels TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    value REAL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'firing')),
    active_since REAL NOT NULL,
    starts_at REAL,
    last_notified_at REAL,
    acked_by TEXT,
    acked_at REAL
)
"""
_HISTORY = """
CREATE TABLE IF NOT EXISTS alert_history (  -- what on-call heard, kept HISTORY_DAYS
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    rule TEXT NOT NULL,
    labels TEXT NOT NULL,
    severity TEXT NOT NULL,
    previous_severity TEXT,
    summary TEXT NOT NULL,
    value REAL,
    unit TEXT NOT NULL,
    starts_at REAL
)"""
HISTORY_DAYS = 30
_ADDED_COLUMNS = {  # since the first release: an older file gains them on open
    "suppressed_by": "TEXT", "unit": "TEXT NOT NULL DEFAULT ''", "threshold": "REAL",
}
_COLUMNS = (
    "fingerprint", "rule", "labels", "severity", "summary", "value", "state",
    "active_since", "starts_at", "last_notified_at", "acked_by", "acked_at", *_ADDED_COLUMNS,
)  # fmt: skip


def fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    """First 16 hex chars of sha256 over the rule name and the labels sorted by name."""
    return _fingerprint(rule, tuple(labels.items()))


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps makes one a call


@lru_cache(maxsize=1 << 18)  # the same subjects come back every tick
def _fingerprint(rule: str, labels: tuple[tuple[str, str], ...]) -> str:
    identity = _COMPACT_JSON.encode([rule, sorted(labels)])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


# Condition and Alert are made anew, never changed (as if frozen): a frozen dataclass's
# __init__ costs ten times a plain one's (2.8 µs against 0.27 for ten fields), and a storm
# at 10,000 racks makes some 100,000 conditions and 10,000 alerts a tick.
@dataclass(slots=True)
class Condition:
    """One rule's verdict for one subject (rack, device, loop...) at one evaluation."""

    rule: str
    labels: Mapping[str, str]
    active: bool
    value: float | None = None
    summary: str = ""
    severity: str | None = "warning"  # None: as its alert has it (unknown: it holds its state)
    for_s: float = 0.0
    suppressed_by: str | None = None  # the firing cause that explains it (alerts.inhibit)
    unit: str = ""  # of value and threshold
    threshold: float | None = None  # the value the condition compares against

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.labels)

    def suppressed(self, by: str) -> Condition:
        """This condition, suppressed by ``by``."""
        return Condition(self.rule, self.labels, self.active, self.value, self.summary,
                         self.severity, self.for_s, by, self.unit, self.threshold)


@dataclass(slots=True)
class ConditionColumn:
    """One rule's conditions over many subjects at once (a rack rule: 10,000 racks a tick),
    as arrays: each stage of the tick judges them together and makes a ``Condition`` only
    for a subject whose alert may change (``condition(k)``), where a Condition a subject
    cost each stage some 3 µs a subject. ``labels`` and ``fingerprints`` cover every subject
    the rule has, made once a site (the same objects every tick); the arrays cover the
    ``subjects`` judged now, in ascending order."""

    rule: str
    labels: Sequence[Mapping[str, str]]
    fingerprints: Sequence[str]
    subjects: np.ndarray  # int: each subject judged, its index into labels
    active: np.ndarray  # bool (unknown: as its alert is, see alerts.rules)
    value: np.ndarray  # float, NaN: unknown
    summary: Callable[[int], str]  # of a subject, by its index into labels
    severity: str = "warning"
    for_s: float = 0.0
    unit: str = ""
    threshold: float | None = None
    suppressed_by: np.ndarray | None = None  # object: the cause (alerts.inhibit) or None

    def condition(self, k: int) -> Condition:
        """The condition of the k-th subject judged."""
        i, v = int(self.subjects[k]), float(self.value[k])
        return Condition(self.rule, self.labels[i], bool(self.active[k]),
                         None if math.isnan(v) else v, self.summary(i), self.severity, self.for_s,
                         None if self.suppressed_by is None else self.suppressed_by[k],
                         self.unit, self.threshold)

    def conditions(self) -> list[Condition]:
        return [self.condition(k) for k in range(len(self.subjects))]


@dataclass(slots=True)
class Alert:
    """A pending or firing alert (``ends_at`` is set only on the snapshot of a resolved one)."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    severity: str
    summary: str
    value: float | None
    state: AlertState
    active_since: float  # unix s the condition started to hold
    starts_at: float | None = None  # unix s it started firing
    last_notified_at: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    suppressed_by: str | None = None
    unit: str = ""
    threshold: float | None = None
    ends_at: float | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acked_by is not None


@dataclass(frozen=True, slots=True)
class Transition:
    """Something on-call must hear about: the alert as it was at ``at`` (unix s)."""

    kind: TransitionKind
    alert: Alert
    at: float
    previous_severity: str | None = None  # of an escalated or deescalated alert

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "resolved" if self.kind == "resolved" else "firing"

    @property
    def delivery_priority(self) -> int:
        """Lower is sent first: critical firing, then warning, info, and resolved last."""
        if self.kind == "resolved":
            return len(SEVERITY_RANK)
        return max(SEVERITY_RANK.values()) - severity_rank(self.alert.severity)


def severity_rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity, SEVERITY_RANK["warning"])


Notify = Callable[[Sequence[Transition]], None]


class Evaluator:
    """The alert state machine, persisted beside the outbox.

    ``notify`` (normally ``Notifier.notify``) is called inside the transaction that records
    the state change, so the outbox rows and the new state commit together or not at all; if
    it raises, nothing changes, in the file or in memory, and the next step notifies again.
    Use from the thread that owns the outbox (the event loop's).
    """

    def __init__(self, store: Outbox, *, repeat_s: float = REPEAT_S, notify: Notify | None = None):
        self._store, self._repeat_s, self._notify = store, repeat_s, notify
        with store.transaction() as db:
            db.execute(_SCHEMA)
            db.execute(_HISTORY)
            db.execute("CREATE INDEX IF NOT EXISTS alert_history_at ON alert_history (at)")
            have = {r[1] for r in db.execute("PRAGMA table_info(alert_state)")}
            for name, decl in _ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE alert_state ADD COLUMN {name} {decl}")
            self._alerts = _load(db)
        self._columns: dict[str, _ColumnState] = {}  # a column rule -> what the last step left

    def step(self, now: float, conditions: Iterable[Condition], hold_absent: bool = False,
             columns: Iterable[ConditionColumn] = ()) -> list[Transition]:
        """Advance every alert to ``now``; a known alert absent from ``conditions`` and
        ``columns`` has cleared, unless ``hold_absent`` (the evaluation was incomplete): it
        then keeps its state.

        Pass every condition of the evaluation: an alert is only kept alive by its condition.
        Of a column, only the subjects whose alert may change are taken one by one: a subject
        active now and at the last step, with the same cause holding it back and no timer of
        its alert (``for_s``, a repeat) due, keeps its alert as it is (its value and summary
        are the column's, see ``alerts``).
        """
        conditions, steady, states = list(conditions), set(), {}
        for col in columns:
            prev = self._columns.get(col.rule)
            moving, suppressed_by = _moving(col, prev, now, self._alerts)
            conditions += [col.condition(k) for k in np.flatnonzero(moving).tolist()]
            kept = col.subjects[col.active & ~moving]
            steady.update(map(col.fingerprints.__getitem__, kept.tolist()))
            states[col.rule] = (col, prev, suppressed_by, moving)
            if prev is not None:  # the rest of its alerts go one by one: as it left them
                left = prev.alerted.copy()
                left[kept if _aligned(col, prev) else []] = False
                self._refresh(prev.column, np.flatnonzero(left))
        held = _merge(conditions)
        if not hold_absent:  # the known alerts that nothing holds now clear
            held.update(dict.fromkeys(self._alerts.keys() - steady - held.keys()))
        alerts = dict(self._alerts)  # the steady, and (hold_absent) the absent, as they are
        transitions, saved, deleted = [], [], []
        for fp in [*(fp for fp in self._alerts if fp in held),
                   *(fp for fp in held if fp not in self._alerts)]:
            old = self._alerts.get(fp)
            alert, transition = _advance(old, held[fp], now, self._repeat_s)
            if alert is None:
                if old is not None:
                    del alerts[fp]
                    deleted.append(fp)
            else:
                alerts[fp] = alert
                if old is None or _durable(old) != _durable(alert):
                    saved.append(alert)
            if transition is not None:
                transitions.append(transition)
        with self._store.transaction() as db:
            _save(db, saved)
            _delete(db, deleted)
            _record(db, transitions, now)
            if transitions and self._notify is not None:
                self._notify(transitions)
        self._alerts = alerts
        for rule, (col, prev, suppressed_by, moving) in states.items():
            self._columns[rule] = _ColumnState.after(col, prev, suppressed_by, moving, alerts,
                                                     self._repeat_s)
        return transitions

    def _refresh(self, col: ConditionColumn, subjects: np.ndarray) -> None:
        """The alerts of these subjects with the value and summary ``col`` gave them, where
        it judged them (a steady alert is kept as the step that last changed it left it)."""
        at = np.searchsorted(col.subjects, subjects)
        judged = at < len(col.subjects)
        judged[judged] = col.subjects[at[judged]] == subjects[judged]
        for i, k in zip(subjects[judged].tolist(), at[judged].tolist(), strict=True):
            if (alert := self._alerts.get(col.fingerprints[i])) is not None:
                self._alerts[alert.fingerprint] = _with_values(alert, col, k)

    def alerts(self) -> ActiveAlerts:
        """The pending and firing alerts now, as an immutable snapshot that makes them
        only when read (a storm's 10,000, with their values from the last step's columns)."""
        return ActiveAlerts(tuple(self._alerts.values()),
                            tuple(s.column for s in self._columns.values()))

    def active_alerts(self) -> list[Alert]:
        """Pending and firing alerts, oldest first."""
        return list(self.alerts().alerts)

    def is_active(self, fingerprint: str) -> bool:
        """Whether an alert is pending or firing."""
        return fingerprint in self._alerts

    def alerting_rules(self) -> set[str]:
        """The rules with an alert pending or firing."""
        return {a.rule for a in self._alerts.values()}

    def acknowledge(self, fingerprint: str, by: str, at: float | None = None) -> Alert:
        """Mark an active alert acknowledged: no repeats until it resolves. KeyError if unknown."""
        acked_at = time.time() if at is None else at
        if (state := self._columns.get(self._alerts[fingerprint].rule)) is not None:
            self._refresh(state.column, np.array([state.column.fingerprints.index(fingerprint)]))
        alert = replace(self._alerts[fingerprint], acked_by=by, acked_at=acked_at)
        with self._store.transaction() as db:
            _save(db, [alert])
        self._alerts[fingerprint] = alert
        return alert


@dataclass(frozen=True)
class ActiveAlerts:
    """Pending and firing alerts as one step (or an acknowledgement) left them, made into
    objects when first read: a column rule's alerts take their value and summary from the
    step's column (a steady alert keeps the object of the step that last changed it)."""

    kept: tuple[Alert, ...]
    columns: tuple[ConditionColumn, ...] = ()

    @cached_property
    def alerts(self) -> tuple[Alert, ...]:
        """Oldest first."""
        fresh = {col.fingerprints[i]: (col, k) for col in self.columns
                 for k, i in enumerate(col.subjects.tolist())}
        out = [a if (hit := fresh.get(a.fingerprint)) is None else _with_values(a, *hit)
               for a in self.kept]
        return tuple(sorted(out, key=attrgetter("active_since", "fingerprint")))


def _with_values(a: Alert, col: ConditionColumn, k: int) -> Alert:
    i, v = int(col.subjects[k]), float(col.value[k])
    return Alert(a.fingerprint, a.rule, a.labels, a.severity, col.summary(i),
                 None if math.isnan(v) else v, a.state, a.active_since, a.starts_at,
                 a.last_notified_at, a.acked_by, a.acked_at, a.suppressed_by, a.unit,
                 a.threshold)


@dataclass(slots=True)
class _ColumnState:
    """What a step left of a column rule, over every subject it has: the column, which have
    an alert, what held each back, and when a timer of its alert is due (its ``for_s`` ends,
    a repeat; inf: none), which would change it without a change of its condition (-inf: a
    subject not judged, taken one by one when it is judged again)."""

    column: ConditionColumn
    alerted: np.ndarray
    suppressed_by: np.ndarray
    due_at: np.ndarray

    @classmethod
    def after(cls, col: ConditionColumn, prev: _ColumnState | None, suppressed_by: np.ndarray,
              moving: np.ndarray, alerts: Mapping[str, Alert], repeat_s: float) -> _ColumnState:
        n = len(col.labels)
        judged, held_back = np.zeros(n, bool), np.full(n, None, object)
        judged[col.subjects], held_back[col.subjects] = True, suppressed_by
        if _aligned(col, prev):  # what changed: the moving, and those not judged (held?)
            alerted, due_at = prev.alerted.copy(), prev.due_at.copy()
            changed = np.union1d(col.subjects[moving], np.flatnonzero(alerted & ~judged))
        else:
            alerted, due_at, changed = np.zeros(n, bool), np.full(n, math.inf), np.arange(n)
        for i in changed.tolist():
            alert = alerts.get(col.fingerprints[i])
            alerted[i], due_at[i] = alert is not None, _due_at(alert, col.for_s, repeat_s)
        due_at[~judged] = -math.inf
        return cls(col, alerted, held_back, due_at)


def _aligned(col: ConditionColumn, prev: _ColumnState | None) -> bool:
    """The same subjects, in the same order, judged the same way as at the last step."""
    return (prev is not None and prev.column.fingerprints is col.fingerprints
            and (prev.column.severity, prev.column.for_s) == (col.severity, col.for_s))


def _moving(col: ConditionColumn, prev: _ColumnState | None, now: float,
            alerts: Mapping[str, Alert]) -> tuple[np.ndarray, np.ndarray]:
    """Of the subjects judged, those whose alert this step may change: active now or with an
    alert, unless both, held back by the same cause (or none) as at the last step, and no
    timer of theirs due. And what holds each back."""
    held_back = (col.suppressed_by if col.suppressed_by is not None
                 else np.full(len(col.subjects), None, object))
    if not _aligned(col, prev):
        return col.active | np.array([col.fingerprints[i] in alerts
                                      for i in col.subjects.tolist()], bool), held_back
    i = col.subjects
    was = prev.alerted[i]
    steady = col.active & was & (held_back == prev.suppressed_by[i]) & (prev.due_at[i] > now)
    return (col.active | was) & ~steady, held_back


def _due_at(alert: Alert | None, for_s: float, repeat_s: float) -> float:
    """When a timer changes ``alert`` with nothing else changed (inf: never)."""
    if alert is None:
        return math.inf
    if alert.state == "pending":
        return alert.active_since + for_s
    if alert.suppressed_by is not None or alert.acknowledged:
        return math.inf
    if alert.last_notified_at is None:
        return -math.inf
    return alert.last_notified_at + repeat_s


def _merge(conditions: Iterable[Condition]) -> dict[str, Condition]:
    """One condition per fingerprint; if a subject is reported twice, an active one wins."""
    held: dict[str, Condition] = {}
    for c in conditions:
        fp = c.fingerprint
        if fp not in held or c.active:
            held[fp] = c
    return held


def _advance(
    alert: Alert | None, cond: Condition | None, now: float, repeat_s: float
) -> tuple[Alert | None, Transition | None]:
    """The alert after this evaluation, and the transition to notify if any."""
    if cond is None or not cond.active:
        return _clear(alert, now, cond)
    if alert is None:
        alert = Alert(
            fingerprint=cond.fingerprint, rule=cond.rule, labels=dict(cond.labels),
            severity=cond.severity or "warning", summary=cond.summary, value=cond.value,
            state="pending", active_since=now,
        )  # fmt: skip
    before = alert.severity
    severity = cond.severity or before
    alert = Alert(  # as dataclasses.replace, at a fraction of its cost: every alert, every tick
        alert.fingerprint, alert.rule, alert.labels, severity, cond.summary, cond.value,
        alert.state, alert.active_since, alert.starts_at, alert.last_notified_at,
        alert.acked_by, alert.acked_at, cond.suppressed_by, cond.unit, cond.threshold,
    )  # fmt: skip
    if alert.state == "pending":
        if now - alert.active_since < cond.for_s:
            return alert, None
        alert = replace(alert, state="firing", starts_at=now)
    if alert.suppressed_by is not None:
        return alert, None
    if alert.last_notified_at is None:  # fired now, or while it was suppressed
        fired = replace(alert, last_notified_at=now)
        return fired, Transition("firing", fired, now)
    if severity != before:
        return _severity_changed(alert, before, now)
    return _repeat(alert, now, repeat_s)


def _severity_changed(alert: Alert, before: str, now: float) -> tuple[Alert, Transition]:
    up = severity_rank(alert.severity) > severity_rank(before)
    changed = replace(alert, last_notified_at=now)
    if up:
        changed = replace(changed, acked_by=None, acked_at=None)
    return changed, Transition("escalated" if up else "deescalated", changed, now, before)


def _clear(alert: Alert | None, now: float, cond: Condition | None) -> tuple[None, Transition | None]:
    if alert is None or alert.state == "pending" or alert.last_notified_at is None:
        return None, None  # never notified: nobody waits for its end
    value = cond.value if cond is not None else None  # the value it cleared at, if known
    return None, Transition("resolved", replace(alert, ends_at=now, value=value), now)


def _repeat(alert: Alert, now: float, repeat_s: float) -> tuple[Alert, Transition | None]:
    last = alert.last_notified_at if alert.last_notified_at is not None else alert.active_since
    if alert.acknowledged or now - last < repeat_s:
        return alert, None
    again = replace(alert, last_notified_at=now)
    return again, Transition("repeat", again, now)


def _durable(a: Alert) -> tuple:
    """What a restart needs of an alert; its value and summary follow from the next tick,
    so a change of those alone is not written (a storm of 10,000 racks would rewrite every
    row every tick)."""
    return (a.state, a.severity, a.active_since, a.starts_at, a.last_notified_at, a.acked_by,
            a.suppressed_by)


def _load(db: sqlite3.Connection) -> dict[str, Alert]:
    alerts: dict[str, Alert] = {}
    for row in db.execute(f"SELECT {', '.join(_COLUMNS)} FROM alert_state ORDER BY active_since"):
        fields = dict(zip(_COLUMNS, row, strict=True))
        fields["labels"] = json.loads(fields["labels"])
        alerts[fields["fingerprint"]] = Alert(**fields)
    return alerts


def _save(db: sqlite3.Connection, alerts: list[Alert]) -> None:
    placeholders = ", ".join("?" for _ in _COLUMNS)
    db.executemany(
        f"INSERT OR REPLACE INTO alert_state ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
        [
            (a.fingerprint, a.rule, json.dumps(a.labels), a.severity, a.summary, a.value,
             a.state, a.active_since, a.starts_at, a.last_notified_at, a.acked_by, a.acked_at,
             a.suppressed_by, a.unit, a.threshold)
            for a in alerts
        ],
    )  # fmt: skip


def _record(db: sqlite3.Connection, transitions: list[Transition], now: float) -> None:
    """Each change of state (not the repeats) into the history; what aged out, out of it."""
    db.executemany(
        "INSERT INTO alert_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(t.at, t.kind, t.alert.fingerprint, t.alert.rule, json.dumps(t.alert.labels),
          t.alert.severity, t.previous_severity, t.alert.summary, t.alert.value, t.alert.unit,
          t.alert.starts_at) for t in transitions if t.kind != "repeat"])  # fmt: skip
    db.execute("DELETE FROM alert_history WHERE at < ?", (now - HISTORY_DAYS * 86_400,))


def read_history(path: Path, since: float, limit: int) -> list[dict]:
    """The newest ``limit`` changes since ``since``, newest first, read on a connection of
    the caller's own (the evaluator's belongs to the event loop's thread)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        rows = db.execute(
            "SELECT at, kind, fingerprint, rule, labels, severity, previous_severity, summary,"
            " value, unit, starts_at FROM alert_history WHERE at >= ? ORDER BY at DESC, rowid"
            " DESC LIMIT ?", (since, limit))
        names = [c[0] for c in rows.description]
        return [dict(zip(names, r)) | {"labels": json.loads(r[4])} for r in rows]


def _delete(db: sqlite3.Connection, fingerprints: list[str]) -> None:
    db.executemany("DELETE FROM alert_state WHERE fingerprint = ?", [(fp,) for fp in fingerprints])
