"""Storage, as the runtime's writer uses it, against what each store takes by itself.

- **Ingest**: one sample of every series of a 2,000-rack site (4,400 devices, 10 fields
  each), round after round, in the writer's batches of 5,000, through `SqliteStore.write`
  and `InfluxStore.write` (a real influxd). Baselines, the same run: SQLite taking the same
  rows already built (`executemany` into the same table, a transaction a batch), and influxd
  taking the same points already rendered as line protocol, a request a batch.
- **Sustained ingest** on the embedded store: the same site's series for SUSTAINED_MIN
  minutes, as the runtime's writer gives them (a flush a second, each with the fifth of the
  devices polled in it; a poll every 5 s), rolled up each minute. CPU a sample, minute by
  minute: a store of samples clustered by series grows a page a series, and the cost of a
  write grew with it. Baseline, the same run: the same rows into the series-clustered
  table directly, as the store wrote them until moving them in from a small table.
- **A 30-day trend** of a site metric (300 windows, as the console asks it) on the embedded
  store with its minute and hour rollups, against the same store read raw (its rollups not
  made). The store keeps each series under its own key, so the other series of a large site
  do not change what one series' query reads.

Medians over the rounds (ingest) and the calls (trend).
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from aidc.core.config import Store as StoreConfig
from aidc.core.metrics import Sample
from aidc.core.store.influx import InfluxStore, to_line_protocol
from aidc.core.store.sqlite import SCHEMA, SqliteStore
from benchmarks.common import write_result
from tests.conftest import Influxd

DEVICES, FIELDS, ROUNDS, BATCH = 4_400, 10, 10, 5_000
SUSTAINED_MIN = 10
TREND_DAYS, TREND_POINTS, TREND_CALLS, TICK_S = 30, 300, 10, 5
RESULT = Path(__file__).parent / "results" / "storage.json"
TARGETS = {"embedded_samples_per_s": 300_000, "influxdb_points_per_s": 200_000,
           "trend_30d_rolled_up_ms": 500}


def rounds(start: float) -> list[list[Sample]]:
    """Every series' sample of each round, 5 s apart."""
    tags = [{"site": "bench", "device": f"pdu-{d:04d}"} for d in range(DEVICES)]
    return [[Sample("pdu", t, f"field_{f}", 1.0 + r + f, start + 5 * r)
             for t in tags for f in range(FIELDS)] for r in range(ROUNDS)]


def batches(samples: list) -> list[list]:
    return [samples[i:i + BATCH] for i in range(0, len(samples), BATCH)]


def rate(write, data: list[list]) -> float:
    """Median over the rounds of items written a second; ``data``: each round's batches."""
    rates = []
    for round_batches in data:
        t0 = time.perf_counter()
        for batch in round_batches:
            write(batch)
        rates.append(sum(map(len, round_batches)) / (time.perf_counter() - t0))
    return statistics.median(rates)


class SqliteAlone:
    """The store's tables in a SQLite file opened as the store opens its own, and samples
    written straight into ``samples`` (a transaction a batch of rows already built): the
    baseline, and the layout the store wrote until it moved samples in from ``recent``."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.ids: dict[tuple[str, str], int] = {}

    def rows(self, samples: list[Sample]) -> list[tuple]:
        return [(self.ids.setdefault((s.tags["device"], s.field), len(self.ids)), s.ts,
                 s.value, "good") for s in samples]

    def insert(self, batch: list[tuple]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?)", batch)
        self.db.execute("COMMIT")


def embedded(tmp: Path, data: list[list[Sample]]) -> tuple[float, float]:
    """Samples a second through the store, and through SQLite alone."""
    store = SqliteStore(tmp / "ingest.sqlite")
    ours = rate(store.write, [batches(r) for r in data])
    store.close()
    alone = SqliteAlone(tmp / "baseline.sqlite")
    rows = [alone.rows(r) for r in data]
    baseline = rate(alone.insert, [batches(r) for r in rows])
    alone.db.close()
    return ours, baseline


def influxdb(tmp: Path, data: list[list[Sample]]) -> tuple[float, float, int]:
    """Samples a second through the store, and as line protocol alone; lines a round."""
    (tmp / "influxd").mkdir()
    server = Influxd(tmp / "influxd")
    server.start()
    try:
        store = InfluxStore(StoreConfig(backend="influxdb", url=server.url, database="ours"))
        ours = rate(store.write, [batches(r) for r in data])
        store.close()
        http = httpx.Client(base_url=server.url, timeout=60)
        http.post("/query", params={"q": "CREATE DATABASE baseline"}).raise_for_status()
        bodies = [[to_line_protocol(b) for b in batches(r)] for r in data]
        lines = sum(body.count("\n") + 1 for body in bodies[0])

        def post(body: str) -> None:
            http.post("/write", params={"db": "baseline", "precision": "ms"},
                      content=body).raise_for_status()

        samples_per_body = [[len(b) for b in batches(r)] for r in data]
        rates = []
        for round_bodies, sizes in zip(bodies, samples_per_body, strict=True):
            t0 = time.perf_counter()
            for body in round_bodies:
                post(body)
            rates.append(sum(sizes) / (time.perf_counter() - t0))
        http.close()
        return ours, statistics.median(rates), lines
    finally:
        server.stop()


def sustained(tmp: Path) -> tuple[list[float], list[float]]:
    """CPU µs a sample, minute by minute, through the store and into the table alone."""
    start = time.time() - (SUSTAINED_MIN + 5) * 60
    tags = [{"site": "bench", "device": f"pdu-{d:04d}"} for d in range(DEVICES)]

    def flush(second: int) -> list[Sample]:  # the devices polled in that second
        return [Sample("pdu", t, f"field_{f}", float(second), start + second)
                for t in tags[second % 5::5] for f in range(FIELDS)]

    store = SqliteStore(tmp / "sustained.sqlite")
    store._next_roll_up = store._next_retention = float("inf")  # rolled up on the flushes' clock
    table = SqliteAlone(tmp / "sustained_baseline.sqlite")

    def alone(samples: list[Sample]) -> None:
        for batch in batches(table.rows(samples)):
            table.insert(batch)

    def ours(samples: list[Sample]) -> None:
        for batch in batches(samples):
            store.write(batch)

    per_minute: dict[str, list[float]] = {"ours": [], "alone": []}
    for minute in range(SUSTAINED_MIN):
        cpu = {"ours": 0.0, "alone": 0.0}
        for second in range(minute * 60, (minute + 1) * 60):
            samples = flush(second)
            for name, write in (("ours", ours), ("alone", alone)):
                t0 = time.process_time()
                write(samples)
                cpu[name] += time.process_time() - t0
        t0 = time.process_time()
        with store._lock:
            store.roll_up(start + (minute + 1) * 60)
        cpu["ours"] += time.process_time() - t0
        for name, seconds in cpu.items():
            per_minute[name].append(seconds / (60 * DEVICES * FIELDS / 5) * 1e6)
        print(f"  minute {minute + 1}: µs a sample, ours {per_minute['ours'][-1]:.1f},"
              f" into the table alone {per_minute['alone'][-1]:.1f}", flush=True)
    store.close()
    table.db.close()
    return per_minute["ours"], per_minute["alone"]


def trend(tmp: Path) -> tuple[float, float, int]:
    """Median ms of a 30-day trend rolled up and raw, and the raw points it spans."""
    now = time.time()
    start = now - TREND_DAYS * 86400
    days = [[Sample("site", {"site": "bench"}, "pue", 1.2 + (t % 600) / 6000, t)
             for t in range(int(start + d * 86400), int(min(now, start + (d + 1) * 86400)),
                            TICK_S)] for d in range(TREND_DAYS + 1)]
    stores = {"rolled_up": SqliteStore(tmp / "rolled.sqlite"),
              "raw": SqliteStore(tmp / "raw.sqlite")}
    stores["raw"]._next_roll_up = float("inf")  # never rolled up: every query reads raw
    for store in stores.values():
        for day in days:
            for batch in batches(day):
                store.write(batch)
    rolled = stores["rolled_up"]
    while rolled._db.execute("SELECT until FROM rolled_up").fetchone()[0] < now // 60 * 60 - 60:
        rolled.roll_up(time.time())  # as a running writer keeps it: a minute behind at most
    out = {}
    every_s = TREND_DAYS * 86400 / TREND_POINTS
    for name, store in stores.items():
        ms = []
        for _ in range(TREND_CALLS):
            t0 = time.perf_counter()
            [series] = store.history("site", "pue", now - TREND_DAYS * 86400, now,
                                     every_s=every_s)
            ms.append((time.perf_counter() - t0) * 1000)
        assert 290 <= len(series.points) <= TREND_POINTS + 1, len(series.points)
        out[name] = statistics.median(ms)
        store.close()
    return out["rolled_up"], out["raw"], sum(map(len, days))


def main() -> None:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data = rounds(time.time() - 3600)
        ours, baseline = embedded(tmp, data)
        figures |= {"embedded_samples_per_s": round(ours), "sqlite_alone_rows_per_s": round(baseline)}
        ours_i, baseline_i, lines = influxdb(tmp, data)
        per_line = DEVICES * FIELDS / lines
        figures |= {"influxdb_samples_per_s": round(ours_i),
                    "influxdb_points_per_s": round(ours_i / per_line),
                    "line_protocol_alone_samples_per_s": round(baseline_i),
                    "line_protocol_alone_points_per_s": round(baseline_i / per_line),
                    "samples_per_point": per_line}
        ours_s, alone_s = sustained(tmp)
        figures |= {"sustained_first_minute_us_a_sample": round(ours_s[0], 1),
                    f"sustained_minute_{SUSTAINED_MIN}_us_a_sample": round(ours_s[-1], 1),
                    "sustained_alone_first_minute_us_a_sample": round(alone_s[0], 1),
                    f"sustained_alone_minute_{SUSTAINED_MIN}_us_a_sample": round(alone_s[-1], 1)}
        rolled, raw, points = trend(tmp)
        figures |= {"trend_30d_rolled_up_ms": round(rolled, 1), "trend_30d_raw_ms": round(raw, 1),
                    "trend_30d_raw_points": points}
    ratios = {"embedded_vs_sqlite_alone": round(ours / baseline, 2),
              "influxdb_vs_line_protocol_alone": round(ours_i / baseline_i, 2),
              "trend_30d_rolled_up_vs_raw": round(rolled / raw, 3),
              f"sustained_minute_{SUSTAINED_MIN}_vs_alone": round(ours_s[-1] / alone_s[-1], 2),
              f"sustained_minute_{SUSTAINED_MIN}_vs_first": round(ours_s[-1] / ours_s[0], 2),
              f"sustained_alone_minute_{SUSTAINED_MIN}_vs_first": round(alone_s[-1] / alone_s[0], 2)}
    for k, v in figures.items():
        print(f"  {k:<36}{v:>14,}")
    for k, v in ratios.items():
        print(f"  {k:<36}{v:>14}")
    print("  targets: " + ", ".join(f"{k} {'<' if k.endswith('_ms') else '>'} {v:,}"
                                    for k, v in TARGETS.items()))
    write_result(
        RESULT, machine_note=f"influxd on 127.0.0.1, {DEVICES:,} devices x {FIELDS} fields, "
                             f"batches of {BATCH:,}", figures=figures, ratios=ratios,
        baseline="the same rows into SQLite alone (sustained: into the series-clustered table "
                 "directly) and the same points as pre-rendered line "
                 "protocol, a request a batch; the same 30 days read raw; same run",
        targets={k: f"{'<' if k.endswith('_ms') else '>'} {v}" for k, v in TARGETS.items()})


if __name__ == "__main__":
    main()
