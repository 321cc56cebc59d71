"""A disk-backed spool in front of a store: an outage loses nothing up to a stated bound.

Batches the store cannot take now (StoreUnavailable: down, unauthorised, database dropped)
wait in a SQLite file and are replayed oldest first, before any newer batch, once the store
answers again. Past ``max_samples`` the oldest batches are dropped and counted
(``dropped_samples``), so the bound is explicit, never silent. A batch the store refuses as
such (StoreRejected: malformed, a type conflict) cannot succeed by retrying: it moves to the
``rejected`` table, counted (``rejected_samples``) and kept for inspection, and the replay
goes on behind it. Both counters survive a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from aidc.core.files import private_sqlite
from aidc.core.metrics import Quality, Sample
from aidc.core.store import Store, StoreRejected, StoreUnavailable

log = logging.getLogger("aidc.core.store.spool")
SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL,
                                  payload TEXT NOT NULL, oldest REAL);
CREATE TABLE IF NOT EXISTS rejected (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
                                     n INTEGER NOT NULL, error TEXT NOT NULL,
                                     payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _encode(samples: Sequence[Sample]) -> str:
    return json.dumps([[s.measurement, s.tags, s.field, s.value, s.ts, str(s.quality)] for s in samples])


def _decode(payload: str) -> list[Sample]:
    return [Sample(m, t, f, v, ts, Quality(q)) for m, t, f, v, ts, q in json.loads(payload)]


class SpooledWriter:
    def __init__(self, store: Store, path: Path, max_samples: int = 5_000_000):
        self.store, self.max_samples = store, max_samples
        self._db = private_sqlite(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        if "oldest" not in {r[1] for r in self._db.execute("PRAGMA table_info(spool)")}:
            self._db.execute("ALTER TABLE spool ADD COLUMN oldest REAL")  # a spool from before
        self._lock = threading.Lock()
        counters = dict(self._db.execute("SELECT name, value FROM counters"))
        self.dropped_samples = counters.get("dropped_samples", 0)
        self.rejected_samples = counters.get("rejected_samples", 0)
        self.store_up = True
        self.store_error = ""
        self.last_loss_at: float | None = None  # when a sample was last dropped or rejected
        self._spooled = self._db.execute("SELECT coalesce(sum(n), 0) FROM spool").fetchone()[0]
        self.spooled_since = self._first_spooled_ts()  # of the oldest sample waiting

    def _first_spooled_ts(self) -> float | None:
        """The time of the oldest sample spooled (a row from before the column, decoded)."""
        row = self._db.execute("SELECT id, oldest FROM spool ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        rid, oldest = row
        if oldest is None:
            (payload,) = self._db.execute("SELECT payload FROM spool WHERE id = ?", (rid,)).fetchone()
            oldest = min((s.ts for s in _decode(payload)), default=None)
        return oldest

    def spooled_samples(self) -> int:
        """Samples waiting for the store (read without waiting for a write in progress)."""
        return self._spooled

    def rejected(self, limit: int = 10) -> list[dict]:
        """The newest batches the store refused: when, how many samples, why, and the first
        samples of each (for inspection; they stay in the spool file)."""
        with self._lock:
            rows = self._db.execute("SELECT at, n, error, payload FROM rejected ORDER BY id DESC "
                                    "LIMIT ?", (limit,)).fetchall()  # fmt: skip
        return [{"at": at, "samples": n, "error": error, "first": _decode(payload)[:3]}
                for at, n, error, payload in rows]

    def write(self, samples: Sequence[Sample]) -> None:
        """Write through to the store, replaying the spool first; spool on StoreUnavailable,
        set aside on StoreRejected."""
        with self._lock:
            try:
                self._replay()
                if samples:
                    try:
                        self.store.write(samples)
                    except StoreRejected as e:
                        self._reject(_encode(samples), len(samples), str(e))
                self._set_up(True)
            except StoreUnavailable as e:
                self._set_up(False, str(e))
                if samples:
                    self._append(samples)

    def _set_up(self, up: bool, why: str = "") -> None:
        if up != self.store_up:
            if up:
                log.info("event=store_recovered")
            else:
                log.warning("event=store_unavailable error=%r spooling=true", why)
        self.store_up, self.store_error = up, why

    def _replay(self) -> None:
        while row := self._db.execute("SELECT id, n, payload FROM spool ORDER BY id LIMIT 1").fetchone():
            rid, n, payload = row
            samples = _decode(payload)
            self.spooled_since = min((s.ts for s in samples), default=self.spooled_since)
            try:
                self.store.write(samples)  # raises StoreUnavailable: stays spooled
                self._db.execute("DELETE FROM spool WHERE id = ?", (rid,))
            except StoreRejected as e:  # moved, in one transaction: a crash counts it once
                self._db.execute("BEGIN")
                self._reject(payload, n, str(e))
                self._db.execute("DELETE FROM spool WHERE id = ?", (rid,))
                self._db.execute("COMMIT")
            self._spooled -= n
        self.spooled_since = None

    def _reject(self, payload: str, n: int, error: str) -> None:
        self._db.execute("INSERT INTO rejected (at, n, error, payload) VALUES (?, ?, ?, ?)",
                         (time.time(), n, error[:1000], payload))  # fmt: skip
        self.rejected_samples += n
        self.last_loss_at = time.time()
        self._count("rejected_samples", self.rejected_samples)
        log.error("event=store_rejected samples=%d error=%r kept=rejected", n, error[:300])

    def _count(self, name: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, value))

    def _append(self, samples: Sequence[Sample]) -> None:
        oldest = min(s.ts for s in samples)
        self._db.execute("INSERT INTO spool (n, payload, oldest) VALUES (?, ?, ?)",
                         (len(samples), _encode(samples), oldest))
        if self.spooled_since is None:
            self.spooled_since = oldest
        self._spooled += len(samples)
        while self._spooled > self.max_samples:
            rid, n = self._db.execute("SELECT id, n FROM spool ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM spool WHERE id = ?", (rid,))
            self.dropped_samples += n
            self.last_loss_at = time.time()
            self._count("dropped_samples", self.dropped_samples)
            self._spooled -= n
            self.spooled_since = self._first_spooled_ts()
            log.error("event=spool_full dropped_samples=%d bound=%d", n, self.max_samples)

    def close(self) -> None:
        with self._lock:
            self._db.close()
