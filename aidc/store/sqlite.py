"""Embedded store: SQLite in WAL mode, zero set-up (the default and `aidc demo`'s store)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from pathlib import Path

from aidc.files import private_sqlite
from aidc.metrics import QUALITY, Sample, key_of, series_key
from aidc.store import Aggregate, Series, StoreUnavailable

SQL_AGGREGATE = {"mean": "avg", "max": "max"}
READER_MMAP_BYTES = 1 << 30  # address space, not memory: pages are read only when touched

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY,
  measurement TEXT NOT NULL,
  tags TEXT NOT NULL,            -- JSON object, keys sorted
  field TEXT NOT NULL,
  key TEXT,                      -- series_key: the field and its labels
  UNIQUE (measurement, tags, field)
);
CREATE TABLE IF NOT EXISTS samples (
  series INTEGER NOT NULL REFERENCES series(id),
  ts REAL NOT NULL,
  value REAL,
  quality TEXT NOT NULL,
  PRIMARY KEY (series, ts)
) WITHOUT ROWID;
"""


def _decoded(tag_sets: Iterable[str]) -> list[dict[str, str]]:
    """JSON tag sets decoded in one call: a call per set costs more than the query."""
    return json.loads("[" + ",".join(tag_sets) + "]")


class SqliteStore:
    """Samples in one SQLite file; old samples are deleted after ``retention_days``. A
    ``reader`` (`aidc headroom`, `aidc whatif`) maps the file into memory: its reads of
    scattered pages are then no system calls."""

    def __init__(self, path: Path, retention_days: float = 30, reader: bool = False):
        self.path, self.retention_s = path, retention_days * 86400
        self._db = private_sqlite(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if reader:
            self._db.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
        self._db.executescript(SCHEMA)
        self._add_keys()
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], int] | None = None  # loaded by the first write
        self._next_retention = 0.0

    def _add_keys(self) -> None:
        """Stores made before series had their key column get it once, so that readers
        select the series they need by index instead of parsing every tag set."""
        def keyed() -> bool:
            return any(row[1] == "key" for row in self._db.execute("PRAGMA table_info(series)"))

        if not keyed():
            self._db.execute("BEGIN IMMEDIATE")  # another process may be adding it too
            if not keyed():
                self._db.execute("ALTER TABLE series ADD COLUMN key TEXT")
                self._db.executemany("UPDATE series SET key = ? WHERE id = ?", [
                    (key_of(f, json.loads(t)), i)
                    for i, t, f in self._db.execute("SELECT id, tags, field FROM series")])
            self._db.execute("COMMIT")
        self._db.execute("CREATE INDEX IF NOT EXISTS series_by_key ON series (key)")

    def _series_id(self, s: Sample) -> int:
        if self._series is None:
            self._series = {(m, t, f): i for i, m, t, f in self._db.execute(
                "SELECT id, measurement, tags, field FROM series")}
        key = (s.measurement, json.dumps(s.tags, sort_keys=True), s.field)
        if key not in self._series:
            cur = self._db.execute(
                "INSERT INTO series (measurement, tags, field, key) VALUES (?, ?, ?, ?)",
                (*key, key_of(s.field, s.tags)),
            )
            self._series[key] = cur.lastrowid
        return self._series[key]

    def write(self, samples: Sequence[Sample]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = [(self._series_id(s), s.ts, s.value, str(s.quality)) for s in samples]
                self._db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException as e:
                self._db.execute("ROLLBACK")
                self._series = None  # series inserted in the batch are gone: read them again
                if isinstance(e, sqlite3.OperationalError):  # disk full, I/O error, locked
                    raise StoreUnavailable(f"{self.path}: {e}") from e
                raise
            if time.time() >= self._next_retention:
                self._apply_retention()

    def _apply_retention(self) -> None:
        self._db.execute("DELETE FROM samples WHERE ts < ?", (time.time() - self.retention_s,))
        self._next_retention = time.time() + 3600

    def history(
        self,
        measurement: str,
        field: str,
        start: float,
        end: float,
        where: dict[str, str] | None = None,
        every_s: float | None = None,
        labels: dict[str, str] | None = None,
        aggregate: Aggregate = "mean",
    ) -> list[Series]:
        tag_sql = "".join(f" AND json_extract(s.tags, '$.{k}') = ?" for k in (where or {}))
        args: list = [measurement, field, *(where or {}).values()]
        if labels is not None:
            tag_sql += " AND s.key = ?"
            args.append(series_key(field, labels))
        args += [start, end]
        if every_s and every_s >= end - start:  # one window: rows come in series order
            select = f"p.series, ? AS t, {SQL_AGGREGATE[aggregate]}(p.value)"
            group = " GROUP BY p.series"
            args = [start, *args]
        elif every_s:
            select = f"p.series, CAST(p.ts / ? AS INTEGER) * ? AS t, {SQL_AGGREGATE[aggregate]}(p.value)"
            group = " GROUP BY p.series, t ORDER BY p.series, t"
            args = [every_s, every_s, *args]
        else:
            select, group = "p.series, p.ts, p.value", ""  # in key order: (series, ts)
        sql = (  # series by id, the samples' key order: no sorting where none is needed
            f"SELECT {select} FROM samples p WHERE p.series IN (SELECT s.id FROM series s "
            f"WHERE s.measurement = ? AND s.field = ?{tag_sql}) AND p.ts BETWEEN ? AND ? "
            f"AND p.quality = 'good' AND p.value IS NOT NULL{group}"
        )
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        points = {series: [(float(t), v) for _, t, v in series_rows]
                  for series, series_rows in groupby(rows, key=itemgetter(0))}
        with self._lock:  # a tag set once a series, not once a point
            tag_sets = self._db.execute(
                "SELECT s.tags FROM json_each(?) j JOIN series s ON s.id = j.value ORDER BY j.key",
                (json.dumps(list(points)),),
            ).fetchall()
        return [Series(measurement, tags, field, pts) for tags, pts
                in zip(_decoded(t for (t,) in tag_sets), points.values(), strict=True)]

    def latest(
        self, since: float, keys: Collection[str] | None = None
    ) -> dict[tuple[str, str], Sample]:
        sql = (
            "SELECT s.key, s.measurement, s.tags, s.field, p.value, p.ts, p.quality "
            "FROM series s JOIN samples p ON p.series = s.id "
            "AND p.ts = (SELECT max(ts) FROM samples WHERE series = s.id) "
            "WHERE json_extract(s.tags, '$.device') IS NOT NULL AND p.ts >= ?"
        )
        args: tuple = (since,)
        if keys is not None:  # the series in id order, as they lie in the file, not in the
            # key index's order: a page is then read once (0.25 s less for 88,000 series)
            sql += (" AND s.id IN (SELECT id FROM series"
                    " WHERE key IN (SELECT value FROM json_each(?)))")
            args += (json.dumps(sorted(keys)),)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return {
            (tags["device"], key): Sample(m, tags, f, v, ts, QUALITY[q])
            for (key, m, _, f, v, ts, q), tags in zip(rows, _decoded(row[2] for row in rows))
        }

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM samples").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
