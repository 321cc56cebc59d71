"""Embedded store: SQLite in WAL mode, zero set-up (the default and `aidc demo`'s store).

Samples are kept as read for ``raw_days``; each series is also rolled up into 1-minute and
1-hour rows (count, mean, min and max of its good values), kept ``minute_days`` and
``hour_days``, so that a year of a large site fits and a month's trend reads a few hundred
rows a series. The writer rolls up, a minute at a time, everything from the oldest sample
written since its last roll-up (a spool replaying an outage's samples is rolled up too).
A query over windows of whole minutes or hours reads each window's whole rolled-up periods
from the rollups and the rest (its edges, and what is not rolled up yet) raw: the same
means and maxima as from the raw samples alone, while these are kept.

Samples are kept under the key (series, time), so that a series' query reads its own pages
only. Writes go to a small table of the same key, ``recent``, moved into ``samples`` in
key order at each roll-up, and each series' newest sample is kept in ``newest`` (what
``latest`` reads, without a search a series). Written into the big table one by one, each
sample dirtied a page of its own once its series outgrew one, and writes cost more the
longer the store ran: 44,000 series, one sample each every 5 s, 4.2 µs a sample in the
first minute and 19.3 in the fifteenth; through the store now, roll-ups included, 7.2 and
12.4 (benchmarks/storage.py). Reads take both tables; a sample written again with a time
already moved (no writer of aidc does) reads twice until the next move replaces it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from itertools import groupby, repeat
from operator import itemgetter
from pathlib import Path

import numpy as np

from aidc.core.files import private_sqlite
from aidc.core.metrics import QUALITY, LatestValues, Sample, SampleColumns, key_of, series_key
from aidc.core.store import Aggregate, Series, StoreUnavailable

log = logging.getLogger("aidc.core.store.sqlite")
READER_MMAP_BYTES = 1 << 30  # address space, not memory: pages are read only when touched

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY,
  measurement TEXT NOT NULL,
  tags TEXT NOT NULL,            -- JSON object, keys sorted
  field TEXT NOT NULL,
  key TEXT,                      -- series_key: the field and its labels
  device TEXT,                   -- the device's id; NULL: a series of the model's (a rack's)
  UNIQUE (measurement, tags, field)
);
CREATE TABLE IF NOT EXISTS samples (
  series INTEGER NOT NULL REFERENCES series(id),
  ts REAL NOT NULL,
  value REAL,
  quality TEXT NOT NULL,
  PRIMARY KEY (series, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent (  -- written since the last move into samples
  series INTEGER NOT NULL, ts REAL NOT NULL, value REAL, quality TEXT NOT NULL,
  PRIMARY KEY (series, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS newest (  -- each series' newest sample: what latest() reads
  series INTEGER PRIMARY KEY, ts REAL NOT NULL, value REAL, quality TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_1m (  -- good values of [ts, ts + 60 s)
  series INTEGER NOT NULL, ts REAL NOT NULL,
  n INTEGER NOT NULL, mean REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
  PRIMARY KEY (series, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_1h (  -- of the minutes of [ts, ts + 3600 s)
  series INTEGER NOT NULL, ts REAL NOT NULL,
  n INTEGER NOT NULL, mean REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
  PRIMARY KEY (series, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rolled_up (  -- the rollups hold everything written before this
  id INTEGER PRIMARY KEY CHECK (id = 1),
  until REAL NOT NULL
);
"""
# A write binds its rows once, into a temporary table, and SQLite copies them into both
# tables: binding each row for each table took 28 % longer (benchmarks/storage.py). Not with
# temp_store = MEMORY: every sort of the writer's then stays in memory too (a roll-up of
# 600,000 samples peaked 23 MB higher); a batch's pages fit SQLite's cache all the same.
BATCH = ("CREATE TEMP TABLE IF NOT EXISTS batch"
         " (series INTEGER, ts REAL, value REAL, quality TEXT)")
NEWER = ("INSERT INTO newest SELECT * FROM batch WHERE true ON CONFLICT (series) DO UPDATE SET"
         " ts = excluded.ts, value = excluded.value, quality = excluded.quality"
         " WHERE excluded.ts >= newest.ts")  # (rows in the order written: the newest stays)
ROLLUPS = (("rollup_1h", 3600), ("rollup_1m", 60))  # coarsest first
# a time range of every series, searched series by series in the (series, ts) key: a
# condition on ts alone would read the whole table
EACH_SERIES = "series IN (SELECT id FROM series)"
ROLL_UP_EVERY_S = 60.0
MAX_ROLL_UP_S = 3600.0  # a store catching up rolls up an hour of samples a pass


GOOD = " AND quality = 'good' AND value IS NOT NULL"


def _decoded(tag_sets: Iterable[str]) -> list[dict[str, str]]:
    """JSON tag sets decoded in one call: a call per set costs more than the query."""
    return json.loads("[" + ",".join(tag_sets) + "]")


class SqliteStore:
    """Samples in one SQLite file; old samples are deleted after ``retention_days``. A
    ``reader`` (`aidc headroom`, `aidc whatif`) maps the file into memory: its reads of
    scattered pages are then no system calls."""

    def __init__(self, path: Path, raw_days: float = 30, minute_days: float = 90,
                 hour_days: float = 400, reader: bool = False):
        self.path = path
        self.keep_s = {"samples": raw_days * 86400, "rollup_1m": minute_days * 86400,
                       "rollup_1h": hour_days * 86400}
        self._db = private_sqlite(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if reader:
                self._db.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
            self._db.executescript(SCHEMA)
            self._upgrade()
            if not reader:  # a device's trend (its console page) found its series by a scan
                # of every series' tags: 120 ms at 2,000 racks; by this index, under 1 ms
                self._db.execute("CREATE INDEX IF NOT EXISTS series_by_device ON series (device)")
                self._db.execute(BATCH)
        except sqlite3.OperationalError as e:  # locked past the timeout, disk full, I/O error
            self._db.close()
            raise StoreUnavailable(f"{path}: {e}") from None
        self._lock = threading.Lock()  # of the writes' connection
        # Reads take a connection of their own, but for a reader's: in WAL mode it reads what
        # was committed while a write goes on (a roll-up at 2,000 racks holds one 4-6 s,
        # which a console's trend waited out).
        self._reads, self._reads_lock = self._db, self._lock
        if not reader:
            self._reads = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._reads.execute("PRAGMA query_only = ON")
            self._reads_lock = threading.Lock()
        # the file's series not yet written by this process: read whole by the first write
        self._series: dict[tuple[str, str, str], int] | None = None
        self._seen: dict[tuple, int] = {}  # (measurement, field, *names, *values) -> id
        # (measurement, field) -> the tag sets of SampleColumns written, and their series' ids
        self._column_ids: dict[tuple[str, str], tuple[list, np.ndarray]] = {}
        self._next_retention = self._next_roll_up = 0.0

    def _upgrade(self) -> None:
        """What a store made by an older aidc lacks, added once. A store that has it all is
        not written to: a reader that wrote would wait for the runtime's write transactions
        (its flushes, its roll-ups), and fail after SQLite's timeout."""
        self._add_keys()
        if (not self._db.execute("SELECT 1 FROM newest LIMIT 1").fetchone()
                and self._db.execute("SELECT 1 FROM samples LIMIT 1").fetchone()):
            # a store made before the table: a scan of every sample, once
            self._db.execute("INSERT INTO newest SELECT series, max(ts), value, quality"
                             " FROM samples GROUP BY series")
        if not self._db.execute("SELECT 1 FROM rolled_up").fetchone():
            # (the oldest sample is a scan of the whole table: only for a store without the row)
            self._db.execute("INSERT OR IGNORE INTO rolled_up SELECT 1, COALESCE((SELECT MIN(ts)"
                             " FROM samples), ?)", (time.time(),))

    def _add_keys(self) -> None:
        """Stores made before series had their key and device columns get them once, so
        that readers select the series they need by index instead of parsing every tag set;
        an index of both, which a reader of the latest samples reads alone (at 10,000 racks,
        88,754 series of 1.4 million by their keys: 0.24 s, against 0.43 s by key alone)."""
        def columns() -> set[str]:
            return {row[1] for row in self._db.execute("PRAGMA table_info(series)")}

        if not {"key", "device"} <= columns():
            self._db.execute("BEGIN IMMEDIATE")  # another process may be adding them too
            if "key" not in columns():
                self._db.execute("ALTER TABLE series ADD COLUMN key TEXT")
                self._db.executemany("UPDATE series SET key = ? WHERE id = ?", [
                    (key_of(f, json.loads(t)), i)
                    for i, t, f in self._db.execute("SELECT id, tags, field FROM series")])
            if "device" not in columns():
                self._db.execute("ALTER TABLE series ADD COLUMN device TEXT")
                self._db.execute("UPDATE series SET device = json_extract(tags, '$.device')")
                self._db.execute("DROP INDEX IF EXISTS series_by_key")  # of the key alone
            self._db.execute("COMMIT")
        self._db.execute("CREATE INDEX IF NOT EXISTS series_by_key_device ON series (key, device)")

    def _column_rows(self, columns: SampleColumns) -> list[tuple]:
        """The rows of SampleColumns, a field of every row at a time; the series' ids found
        once for the tag sets (the model's racks, the same list every tick)."""
        rows: list[tuple] = []
        for field in columns.fields:
            ids = self._column_ids.get((columns.measurement, field))
            if ids is None or ids[0] is not columns.tags:
                ids = columns.tags, np.array([self._series_id(
                    Sample(columns.measurement, tags, field, None, 0)) for tags in columns.tags])
                self._column_ids[columns.measurement, field] = ids
            at, values = columns.column(field)
            rows += zip(ids[1][at].tolist(), repeat(columns.ts), values, repeat("good"))
        return rows

    def _series_id(self, s: Sample) -> int:
        """The id of the sample's series, made if new. Looked up by the tags as given
        (sorting and encoding them a sample took most of a write's time), then as stored: in
        the map of the file's series (one query, not one a series: on a cold cache each was a
        random read), which gives it up, so that the process holds each series once."""
        seen = (s.measurement, s.field, *s.tags, *s.tags.values())  # flat: a third the bytes
        found = self._seen.get(seen)
        if found is not None:
            return found
        if self._series is None:
            self._series = {(m, t, f): i for i, m, t, f in self._db.execute(
                "SELECT id, measurement, tags, field FROM series")}
        key = (s.measurement, json.dumps(s.tags, sort_keys=True), s.field)
        found = self._series.pop(key, None)  # known from now on by its tags as given alone
        if found is None:  # new, or already known by its tags given in another order
            (found,) = self._db.execute(
                "INSERT INTO series (measurement, tags, field, key, device) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (measurement, tags, field) DO UPDATE SET key = excluded.key"
                " RETURNING id", (*key, key_of(s.field, s.tags), s.tags.get("device"))).fetchone()
        self._seen[seen] = found
        return found

    def write(self, samples: Sequence[Sample]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = (self._column_rows(samples) if isinstance(samples, SampleColumns) else
                        [(self._series_id(s), s.ts, s.value, str(s.quality)) for s in samples])
                self._db.executemany("INSERT INTO batch VALUES (?, ?, ?, ?)", rows)
                self._db.execute("INSERT OR REPLACE INTO recent SELECT * FROM batch")
                self._db.execute(NEWER)
                self._db.execute("DELETE FROM batch")
                if rows:  # rolled up again from the oldest (raw older than that is not kept)
                    oldest = max(min(r[1] for r in rows), time.time() - self.keep_s["samples"])
                    self._db.execute("UPDATE rolled_up SET until = MIN(until, ?)", (oldest,))
                self._db.execute("COMMIT")
            except BaseException as e:
                self._db.execute("ROLLBACK")
                # series inserted in the batch are gone
                self._series, self._seen, self._column_ids = None, {}, {}
                if isinstance(e, sqlite3.OperationalError):  # disk full, I/O error, locked
                    raise StoreUnavailable(f"{self.path}: {e}") from e
                raise
            now = time.time()
            try:  # the samples are stored: what fails here is done again at the next write
                if now >= self._next_roll_up:
                    self.roll_up(now)
                if now >= self._next_retention:
                    self._apply_retention(now)
            except sqlite3.Error as e:
                self._next_roll_up = self._next_retention = now + ROLL_UP_EVERY_S
                log.warning("event=store_upkeep_failed path=%s error=%s", self.path, e)

    def roll_up(self, now: float) -> None:
        """Move the recent samples into ``samples`` (in key order: a page of a series is
        written once a move), then roll up the whole minutes before ``now`` not rolled up
        yet (at most ``MAX_ROLL_UP_S`` of them: the next write goes on) and the hours they
        complete, in one transaction. Call with the lock held (``write`` does)."""
        (until,) = self._db.execute("SELECT until FROM rolled_up").fetchone()
        start = max(until, now - self.keep_s["samples"]) // 60 * 60  # raw still kept
        end = min(now // 60 * 60, start + MAX_ROLL_UP_S)
        self._db.execute("BEGIN")
        try:
            self._db.execute("INSERT OR REPLACE INTO samples SELECT * FROM recent")
            self._db.execute("DELETE FROM recent")
            if end > start:
                self._roll_up(start, end)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._next_roll_up = now + (ROLL_UP_EVERY_S if end >= now // 60 * 60 else 0.0)

    def _roll_up(self, start: float, end: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO rollup_1m SELECT series, CAST(ts / 60 AS INTEGER) * 60"
            " AS m, COUNT(*), AVG(value), MIN(value), MAX(value) FROM samples"
            f" WHERE {EACH_SERIES} AND ts >= ? AND ts < ? AND quality = 'good'"
            " AND value IS NOT NULL GROUP BY series, m", (start, end))  # fmt: skip
        hours = (start // 3600 * 3600, end // 3600 * 3600)  # those ``end`` completes
        self._db.execute(
            "INSERT OR REPLACE INTO rollup_1h SELECT series, CAST(ts / 3600 AS INTEGER)"
            " * 3600 AS h, SUM(n), SUM(mean * n) / SUM(n), MIN(lo), MAX(hi) FROM rollup_1m"
            f" WHERE {EACH_SERIES} AND ts >= ? AND ts < ? GROUP BY series, h", hours)  # fmt: skip
        self._db.execute("UPDATE rolled_up SET until = ?", (end,))

    def _apply_retention(self, now: float) -> None:
        for table, keep_s in self.keep_s.items():
            self._db.execute(f"DELETE FROM {table} WHERE {EACH_SERIES} AND ts < ?",
                             (now - keep_s,))
        self._next_retention = now + 3600

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
        args: dict = {"m": measurement, "f": field, "start": start, "end": end}
        tag_sql = ""
        for i, (k, v) in enumerate((where or {}).items()):
            if k == "device":  # by its index, not a JSON parse of every series' tags
                tag_sql += f" AND s.device = :tag{i}"
            else:
                tag_sql += f" AND json_extract(s.tags, :path{i}) = :tag{i}"
                args[f"path{i}"] = f"$.{k}"
            args[f"tag{i}"] = v
        if labels is not None:
            tag_sql += " AND s.key = :key"
            args["key"] = series_key(field, labels)
        sel = ("WITH sel(id) AS (SELECT s.id FROM series s WHERE s.measurement = :m"
               f" AND s.field = :f{tag_sql}) ")
        if every_s:
            return self._as_series(measurement, field, self._windows(
                sel, args, start, end, every_s, aggregate))
        rows = self._read(sel + " UNION ALL ".join(  # the two tables merged in key order
            f"SELECT series, ts, value FROM {table} WHERE series IN sel AND ts >= :start"
            f" AND ts <= :end{GOOD}" for table in ("samples", "recent")) + " ORDER BY series, ts", args)
        return self._as_series(measurement, field, rows)

    def _pieces(self, start: float, end: float, every_s: float) -> list[tuple[str, float, float]]:
        """[start, end] as (table, from, to) pieces, oldest first: whole periods of a
        rollup where the windows of ``every_s`` are made of them (one window: any) and the
        rollup holds them, the rest raw (the last raw piece includes ``end``)."""
        [(until,)] = self._read("SELECT until FROM rolled_up")
        one_window = every_s >= end - start

        def split(lo: float, hi: float, levels: tuple) -> list[tuple[str, float, float]]:
            for i, (table, period_s) in enumerate(levels):
                if not one_window and every_s % period_s:
                    continue
                a = -(-lo // period_s) * period_s
                b = min(hi // period_s, until // period_s) * period_s
                if b > a:
                    rest = levels[i + 1:]
                    return [*split(lo, a, rest), (table, a, b), *split(b, hi, rest)]
            return [("samples", lo, hi)] if hi > lo or hi == end else []

        return split(start, end, ROLLUPS)

    def _windows(self, sel: str, args: dict, start: float, end: float, every_s: float,
                 aggregate: Aggregate) -> list[tuple]:
        """(series, window, value) rows over the range's pieces, each table's part aggregated by
        itself in its key order (their rows' union sorted as a whole took a quarter longer),
        then the parts together: the rollups' counts and means weigh in as the raw samples
        they stand for."""
        if every_s >= end - start:  # one window: grouped in the tables' key order
            window, group = ":start", "series"
        else:
            window, group, args["every"] = "CAST(ts / :every AS INTEGER) * :every", "series, t", every_s
        of_raw, of_rollup, value = {
            "mean": ("SUM(value) AS s, COUNT(*) AS n", "SUM(mean * n) AS s, SUM(n) AS n",
                     "SUM(s) / SUM(n)"),
            "min": ("MIN(value) AS v", "MIN(lo) AS v", "MIN(v)"),
            "max": ("MAX(value) AS v", "MAX(hi) AS v", "MAX(v)")}[aggregate]
        parts = []
        for i, (table, lo, hi) in enumerate(self._pieces(start, end, every_s)):
            args |= {f"lo{i}": lo, f"hi{i}": hi}
            raw = table == "samples"
            parts += [f"SELECT series, {window} AS t, {of_raw if raw else of_rollup} FROM {t}"
                      f" WHERE series IN sel AND ts >= :lo{i} AND ts {'<=' if raw and hi == end else '<'}"
                      f" :hi{i}{GOOD if raw else ''} GROUP BY {group}"
                      for t in (("samples", "recent") if raw else (table,))]
        sql = (f"{sel}SELECT series, t, {value} FROM (" + " UNION ALL ".join(parts)
               + ") GROUP BY series, t ORDER BY series, t")
        return self._read(sql, args)

    def _as_series(self, measurement: str, field: str, rows: list[tuple]) -> list[Series]:
        """Series of (series id, time, value) rows in series order."""
        points = {series: [(float(t), v) for _, t, v in series_rows]
                  for series, series_rows in groupby(rows, key=itemgetter(0))}
        tag_sets = self._read(  # a tag set once a series, not once a point
            "SELECT s.tags FROM json_each(?) j JOIN series s ON s.id = j.value ORDER BY j.key",
            (json.dumps(list(points)),))
        return [Series(measurement, tags, field, pts) for tags, pts
                in zip(_decoded(t for (t,) in tag_sets), points.values(), strict=True)]

    def latest(
        self, since: float, keys: Collection[str] | None = None
    ) -> dict[tuple[str, str], Sample]:
        rows = self._newest("s.device, s.key, s.measurement, s.tags, s.field, n.value, n.ts,"
                            " n.quality", since, keys)
        return {(device, key): Sample(m, tags, f, v, ts, QUALITY[q])
                for (device, key, m, _, f, v, ts, q), tags in zip(rows, _decoded(r[3] for r in rows))}

    def latest_values(self, since: float, keys: Collection[str] | None = None) -> LatestValues:
        rows = self._newest("s.device, s.key, CASE WHEN n.quality = 'good' THEN n.value END",
                            since, keys)
        return LatestValues([(d, k) for d, k, _ in rows], np.array([r[2] for r in rows], float))

    def _newest(self, columns: str, since: float, keys: Collection[str] | None) -> list[tuple]:
        """Of each device series written at or after ``since`` (with ``keys``, of those
        keys, found by the index of keys and devices), the newest sample's ``columns``."""
        sql = (f"SELECT {columns} FROM series s JOIN newest n ON n.series = s.id"
               " WHERE s.device IS NOT NULL AND n.ts >= ?")
        args: tuple = (since,)
        if keys is not None:
            sql += " AND s.key IN (SELECT value FROM json_each(?))"
            args += (json.dumps(sorted(keys)),)
        return self._read(sql, args)

    def count(self) -> int:
        return self._read("SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM recent)")[0][0]

    def _read(self, sql: str, args: tuple | dict = ()) -> list[tuple]:
        with self._reads_lock:
            return self._reads.execute(sql, args).fetchall()

    def close(self) -> None:
        if self._reads is not self._db:
            with self._reads_lock:
                self._reads.close()
        with self._lock:
            self._db.close()
