"""A disk-backed spool in front of a store: an outage loses nothing up to a stated bound.

Batches the store cannot take wait in a SQLite file and are replayed oldest first, before
any newer batch, once the store answers again. Past ``max_samples`` the oldest batches are
dropped and counted (``dropped_samples``), so the bound is explicit, never silent.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from aidc.metrics import Quality, Sample
from aidc.store import Store, StoreUnavailable

log = logging.getLogger("aidc.store.spool")


def _encode(samples: Sequence[Sample]) -> str:
    return json.dumps([[s.measurement, s.tags, s.field, s.value, s.ts, str(s.quality)] for s in samples])


def _decode(payload: str) -> list[Sample]:
    return [Sample(m, t, f, v, ts, Quality(q)) for m, t, f, v, ts, q in json.loads(payload)]


class SpooledWriter:
    def __init__(self, store: Store, path: Path, max_samples: int = 5_000_000):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.store, self.max_samples = store, max_samples
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " n INTEGER NOT NULL, payload TEXT NOT NULL)"
        )
        self._lock = threading.Lock()
        self.dropped_samples = 0
        self.store_up = True

    def spooled_samples(self) -> int:
        with self._lock:
            return self._db.execute("SELECT coalesce(sum(n), 0) FROM spool").fetchone()[0]

    def write(self, samples: Sequence[Sample]) -> None:
        """Write through to the store, replaying the spool first; spool on StoreUnavailable."""
        with self._lock:
            try:
                self._replay()
                if samples:
                    self.store.write(samples)
                self._set_up(True)
            except StoreUnavailable as e:
                self._set_up(False, str(e))
                if samples:
                    self._append(samples)
            except ValueError as e:  # the store refused the data itself: retrying cannot help
                log.error("event=store_rejected samples=%d error=%r", len(samples), str(e))

    def _set_up(self, up: bool, why: str = "") -> None:
        if up != self.store_up:
            if up:
                log.info("event=store_recovered")
            else:
                log.warning("event=store_unavailable error=%r spooling=true", why)
        self.store_up = up

    def _replay(self) -> None:
        while row := self._db.execute("SELECT id, payload FROM spool ORDER BY id LIMIT 1").fetchone():
            self.store.write(_decode(row[1]))  # raises StoreUnavailable: stays spooled
            self._db.execute("DELETE FROM spool WHERE id = ?", (row[0],))

    def _append(self, samples: Sequence[Sample]) -> None:
        self._db.execute("INSERT INTO spool (n, payload) VALUES (?, ?)", (len(samples), _encode(samples)))
        total = self._db.execute("SELECT coalesce(sum(n), 0) FROM spool").fetchone()[0]
        while total > self.max_samples:
            rid, n = self._db.execute("SELECT id, n FROM spool ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM spool WHERE id = ?", (rid,))
            self.dropped_samples += n
            total -= n
            log.error("event=spool_full dropped_samples=%d bound=%d", n, self.max_samples)

    def close(self) -> None:
        with self._lock:
            self._db.close()
