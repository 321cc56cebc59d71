"""Both store backends against the same expectations; InfluxDB is a real influxd."""

from __future__ import annotations

import math
import sqlite3
import threading
import time

import numpy as np
import pytest

from aidc.core.config import Store as StoreConfig
from aidc.core.metrics import Quality, Sample, SampleColumns
from aidc.core.net import free_port
from aidc.core.store import StoreUnavailable
from aidc.core.store.influx import InfluxStore, rollup_query, to_line_protocol
from aidc.core.store.spool import SpooledWriter
from aidc.core.store.sqlite import SqliteStore
from tests.conftest import Influxd

T0 = float(int(time.time()) // 10 * 10 - 3600)  # an hour ago (inside retention), on a 10 s edge
CDU = {"site": "s", "device": "cdu-1"}
CDU2 = {"site": "s", "device": "cdu-2"}


def samples() -> list[Sample]:
    return [
        Sample("cdu", CDU, "supply_temp_c", 40.0, T0),
        Sample("cdu", CDU, "supply_temp_c", 42.0, T0 + 4),
        Sample("cdu", CDU, "supply_temp_c", None, T0 + 8, Quality.BAD),  # sensor fault
        Sample("cdu", CDU, "supply_temp_c", 99.5, T0 + 9, Quality.OUT_OF_RANGE),
        Sample("cdu", CDU, "supply_temp_c", 44.0, T0 + 12),
        Sample("cdu", CDU2, "supply_temp_c", 30.0, T0 + 1),
        Sample("rack", {"site": "s", "room": "hall 1,west", "rack": "A=1"}, "power_kw", 80.5, T0),
    ]


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "aidc.sqlite")
    else:
        influxd = request.getfixturevalue("influxd")
        s = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url, database=f"t{free_port()}"))
    yield s
    s.close()


def by_device(series):
    return {s.tags.get("device", s.tags.get("rack")): s.points for s in series}


def test_history_holds_only_good_values(store):
    store.write(samples())
    got = by_device(store.history("cdu", "supply_temp_c", T0 - 1, T0 + 60))
    assert got == {"cdu-1": [(T0, 40.0), (T0 + 4, 42.0), (T0 + 12, 44.0)], "cdu-2": [(T0 + 1, 30.0)]}


def test_history_filters_by_tag_and_time(store):
    store.write(samples())
    got = store.history("cdu", "supply_temp_c", T0 + 2, T0 + 60, where={"device": "cdu-1"})
    assert by_device(got) == {"cdu-1": [(T0 + 4, 42.0), (T0 + 12, 44.0)]}


def test_window_means(store):
    store.write(samples())
    got = store.history("cdu", "supply_temp_c", T0, T0 + 19.999, where={"device": "cdu-1"}, every_s=10)
    # window [T0, T0+10): mean(40, 42) = 41 (the bad and out-of-range samples are not averaged in)
    # window [T0+10, T0+20): 44
    assert by_device(got) == {"cdu-1": [(T0, 41.0), (T0 + 10, 44.0)]}


def test_window_maxima(store):
    store.write(samples())
    got = store.history("cdu", "supply_temp_c", T0, T0 + 19.999, where={"device": "cdu-1"},
                        every_s=10, aggregate="max")
    # window [T0, T0+10): max(40, 42), not the out-of-range 99.5; window [T0+10, T0+20): 44
    assert by_device(got) == {"cdu-1": [(T0, 42.0), (T0 + 10, 44.0)]}
    # a window spanning the range, off the windows' edges: one point each, stamped its start
    got = store.history("cdu", "supply_temp_c", T0 + 3, T0 + 13, every_s=10, aggregate="max")
    assert by_device(got) == {"cdu-1": [(T0 + 3, 44.0)]}  # cdu-2's one point is at T0 + 1


def test_window_minima(store):
    store.write(samples())
    got = store.history("cdu", "supply_temp_c", T0, T0 + 19.999, where={"device": "cdu-1"},
                        every_s=10, aggregate="min")
    assert by_device(got) == {"cdu-1": [(T0, 40.0), (T0 + 10, 44.0)]}  # not the bad sample


def test_tags_with_spaces_commas_and_equals_round_trip(store):
    store.write(samples())
    (series,) = store.history("rack", "power_kw", T0 - 1, T0 + 1)
    assert series.tags == {"site": "s", "room": "hall 1,west", "rack": "A=1"}
    assert series.points == [(T0, 80.5)]


def rack_columns(at: float, values: list[list[float]], tags: list | None = None) -> SampleColumns:
    """A tick's rack series as the model gives them: three racks (tags that need escaping)
    by two fields, NaN where a rack has no value."""
    tags = tags or [{"site": "s", "room": "hall 1,west", "rack": f"A={i}"} for i in range(3)]
    return SampleColumns("rack", tags, ("power_kw", "headroom_kw"), np.array(values), at)


def test_a_ticks_rack_columns_are_stored_as_their_samples(store):
    """Written from the array, in parts of a batch's size, a tick after another on the same
    racks (the ids found once) and on a rack more: each value where its sample would be,
    and none where the array had none."""
    first = rack_columns(T0, [[80.5, 19.5], [np.nan, np.nan], [12.0, np.nan]])
    assert len(first) == 3
    assert [(s.tags["rack"], s.field, s.value) for s in first] == [
        ("A=0", "power_kw", 80.5), ("A=2", "power_kw", 12.0), ("A=0", "headroom_kw", 19.5)]
    for part in first.split(3):  # a row (two fields) a part
        store.write(part)
    store.write(rack_columns(T0 + 5, [[81.0, 19.0], [40.0, -2.5], [np.nan, 7.0]], first.tags))
    store.write(rack_columns(T0 + 10, [[1.0, 2.0]],
                             [{"site": "s", "room": "hall 1,west", "rack": "B=1"}]))

    def stored(field):
        return {s.tags["rack"]: s.points for s in store.history("rack", field, T0 - 1, T0 + 11)}

    assert stored("power_kw") == {"A=0": [(T0, 80.5), (T0 + 5, 81.0)], "A=1": [(T0 + 5, 40.0)],
                                  "A=2": [(T0, 12.0)], "B=1": [(T0 + 10, 1.0)]}
    assert stored("headroom_kw") == {"A=0": [(T0, 19.5), (T0 + 5, 19.0)], "A=1": [(T0 + 5, -2.5)],
                                     "A=2": [(T0 + 5, 7.0)], "B=1": [(T0 + 10, 2.0)]}


def test_line_protocol_of_rack_columns_is_that_of_their_samples():
    columns = rack_columns(T0, [[80.5, 19.5], [np.nan, 3.0], [np.nan, np.nan]])
    assert sorted(to_line_protocol(columns).splitlines()) == sorted(
        to_line_protocol(list(columns)).splitlines())
    assert len(to_line_protocol(columns).splitlines()) == 2  # a line a rack with a value


def test_line_protocol_marks_quality_instead_of_hiding_it():
    lines = to_line_protocol(samples()[2:4]).splitlines()
    ms = int(T0 * 1000)
    assert lines == [
        f'cdu,device=cdu-1,site=s supply_temp_c_quality="bad" {ms + 8000}',
        f'cdu,device=cdu-1,site=s supply_temp_c_quality="out_of_range",supply_temp_c_raw=99.5 {ms + 9000}',
    ]


def test_line_protocol_escapes_as_influxdb_clients_point_does():
    """The lines are put together from pieces Point renders once (a tag set, a field name):
    the same text as a Point a line, for names that need escaping, floats of every kind,
    and a point whose only value is not finite (no line)."""
    from influxdb_client import Point, WritePrecision

    odd = ["hall 1,west", "A=1", 'q"uote', "back\\slash\\", "tab\tnew\nline", "#hash", "é"]
    values = [0.0, -1.5, 2.0, 1e21, 1.2345678901234567e-7, 3.0e-300, float("inf")]
    samples = [Sample(m, {"site": "s", "room": tag}, f, v, T0 + i)
               for i, (m, tag, f, v) in enumerate(zip(odd, reversed(odd), odd, values))]
    samples.append(Sample("rack", {"rack": "r"}, "power_kw", float("nan"), T0))
    expected = []
    for s in samples:
        point = Point(s.measurement).time(round(s.ts * 1000), WritePrecision.MS)
        for k, v in s.tags.items():
            point.tag(k, v)
        expected.append(point.field(s.field, s.value).to_line_protocol())
    with pytest.warns(SyntaxWarning):  # Point's: a measurement that starts with '#'
        assert to_line_protocol(samples).splitlines() == [line for line in expected if line]


def test_influx_version_is_detected(influxd):
    s = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url, database="ver"))
    s.write(samples()[:1])
    assert s.version.startswith("1.6")


def test_spool_keeps_everything_through_an_influxdb_outage_and_replays_in_order(tmp_path,
                                                                              reliability):
    (tmp_path / "influxd").mkdir()
    server = Influxd(tmp_path / "influxd")  # configured, not started: the store is down
    store = InfluxStore(StoreConfig(backend="influxdb", url=server.url, database="outage"), timeout_s=5)
    writer = SpooledWriter(store, tmp_path / "spool.sqlite")
    batches = [
        [Sample("pdu", {"device": "pdu-1"}, "power_kw", float(i), T0 + i)] for i in range(50)
    ]
    for b in batches[:30]:
        writer.write(b)
    writer.write(rack_columns(T0 + 1, [[80.5, 19.5], [np.nan, np.nan], [12.0, np.nan]]))
    assert not writer.store_up
    assert writer.spooled_samples() == 33  # and a tick's rack array, as its samples
    assert writer.spooled_since == T0  # the oldest waiting: what store_behind is aged from
    server.start()
    try:
        for b in batches[30:]:
            writer.write(b)
        assert writer.store_up and writer.spooled_samples() == 0 and writer.dropped_samples == 0
        assert writer.spooled_since is None
        (series,) = store.history("pdu", "power_kw", T0 - 1, T0 + 100)
        written = [(T0 + i, float(i)) for i in range(50)]
        reliability.count("samples: influxd not started, then up (writer)", "samples", 50,
                          lost=len(set(written) - set(series.points)))
        assert series.points == written
        assert {s.tags["rack"]: s.points for s in store.history("rack", "power_kw", T0, T0 + 2)
                } == {"A=0": [(T0 + 1, 80.5)], "A=2": [(T0 + 1, 12.0)]}
    finally:
        server.stop()
        writer.close()


def test_spool_bound_drops_oldest_and_counts_them(tmp_path):
    down = InfluxStore(StoreConfig(backend="influxdb", url=f"http://127.0.0.1:{free_port()}"), timeout_s=0.5)
    writer = SpooledWriter(down, tmp_path / "spool.sqlite", max_samples=10)
    for i in range(4):
        writer.write([Sample("pdu", {"device": "p"}, "power_kw", float(j), T0 + 4 * i + j) for j in range(4)])
    # 16 samples offered, bound 10: the two oldest batches (8 samples) are dropped
    assert writer.spooled_samples() == 8
    assert writer.dropped_samples == 8
    assert writer.spooled_since == T0 + 8  # the oldest kept
    writer.close()
    reopened = SpooledWriter(down, tmp_path / "spool.sqlite", max_samples=10)
    assert reopened.spooled_since == T0 + 8  # from the file, before any write
    reopened.close()


def test_a_spool_from_before_the_oldest_column_says_its_oldest_sample(tmp_path):
    """A spool file written before each row kept its oldest time: opened, it gains the
    column and reads that row's oldest from its samples; new rows keep theirs."""
    import sqlite3

    from aidc.core.store.spool import _encode

    path = tmp_path / "spool.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL,"
                   " payload TEXT NOT NULL)")
        db.execute("INSERT INTO spool (n, payload) VALUES (2, ?)", (_encode(
            [Sample("pdu", {"device": "p"}, "power_kw", 1.0, T0 + 5),
             Sample("pdu", {"device": "p"}, "power_kw", 2.0, T0 + 3)]),))
    down = InfluxStore(StoreConfig(backend="influxdb", url=f"http://127.0.0.1:{free_port()}"), timeout_s=0.5)
    writer = SpooledWriter(down, path)
    assert (writer.spooled_samples(), writer.spooled_since) == (2, T0 + 3)
    writer.write([Sample("pdu", {"device": "p"}, "power_kw", 3.0, T0 + 9)])
    with sqlite3.connect(path) as db:
        assert [o for (o,) in db.execute("SELECT oldest FROM spool ORDER BY id")] == [None, T0 + 9]
    writer.close()


def _query(influxd, q: str) -> None:
    import httpx

    httpx.post(f"{influxd.url}/query", params={"q": q}, timeout=5).raise_for_status()


def test_a_dropped_database_is_an_outage_and_is_created_again(influxd, tmp_path, reliability):
    """DROP DATABASE under a running writer: InfluxDB answers 404. Nothing is discarded: the
    batches are spooled, the store is down, the database is created again and the spool
    replayed in order, counters at 0."""
    db = f"dropped{free_port()}"
    store = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url, database=db))
    writer = SpooledWriter(store, tmp_path / "spool.sqlite")
    batch = [[Sample("pdu", {"device": "p"}, "power_kw", float(i), T0 + i)] for i in range(20)]
    writer.write(batch[0])
    _query(influxd, f'DROP DATABASE "{db}"')
    writer.write(batch[1])  # 404: spooled; the next write creates the database first
    assert (writer.store_up, writer.spooled_samples()) == (False, 1)
    assert "404" in writer.store_error and "database not found" in writer.store_error
    for b in batch[2:]:
        writer.write(b)
    assert writer.store_up and writer.spooled_samples() == 0
    assert (writer.dropped_samples, writer.rejected_samples) == (0, 0)
    (series,) = store.history("pdu", "power_kw", T0 - 1, T0 + 100)
    after_drop = [float(i) for i in range(1, 20)]  # 0 went with the database
    values = [v for _, v in series.points]
    reliability.count("samples: DROP DATABASE under the writer", "samples", len(after_drop),
                      lost=len(set(after_drop) - set(values)))
    assert values == after_drop
    writer.close()


def test_a_missing_database_not_to_be_created_waits_in_the_spool(influxd, tmp_path):
    config = StoreConfig(backend="influxdb", url=influxd.url, database=f"absent{free_port()}",
                         create_database=False)
    writer = SpooledWriter(InfluxStore(config), tmp_path / "spool.sqlite")
    writer.write([Sample("pdu", {"device": "p"}, "power_kw", 1.0, T0)])
    assert (writer.store_up, writer.spooled_samples(), writer.rejected_samples) == (False, 1, 0)
    writer.close()


def test_a_batch_the_store_refuses_is_set_aside_counted_and_the_replay_goes_on(influxd, tmp_path):
    """A field type conflict (400) cannot succeed by retrying: the batch moves to the spool's
    rejected table, counted and kept, and neither blocks the spooled batches behind it nor
    hides what follows. The counters survive a restart."""
    db = f"conflict{free_port()}"
    store = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url, database=db))
    writer = SpooledWriter(store, tmp_path / "spool.sqlite")
    # power_kw_quality holds strings (a bad sample's marker): a float there conflicts
    writer.write([Sample("pdu", {"device": "p"}, "power_kw", None, T0, Quality.BAD)])
    conflict = [Sample("pdu", {"device": "p"}, "power_kw_quality", 1.0, T0 + 1)]
    writer.write(conflict)
    assert writer.rejected_samples == 1 and writer.store_up and writer.last_loss_at
    (kept,) = writer.rejected()
    assert kept["samples"] == 1 and "400" in kept["error"] and kept["first"] == conflict
    writer.write([Sample("pdu", {"device": "p"}, "power_kw", 5.0, T0 + 2)])
    (series,) = store.history("pdu", "power_kw", T0 - 1, T0 + 100)
    assert series.points == [(T0 + 2, 5.0)]
    writer.close()
    reopened = SpooledWriter(store, tmp_path / "spool.sqlite")
    assert reopened.rejected_samples == 1
    reopened.close()


def test_a_refused_batch_in_the_spool_never_blocks_the_replay(tmp_path):
    (tmp_path / "influxd").mkdir()
    server = Influxd(tmp_path / "influxd")
    store = InfluxStore(StoreConfig(backend="influxdb", url=server.url, database="replay"),
                        timeout_s=5)
    writer = SpooledWriter(store, tmp_path / "spool.sqlite")
    server.start()
    try:
        writer.write([Sample("pdu", {"device": "p"}, "power_kw", None, T0, Quality.BAD)])
        server.stop()
        writer.write([Sample("pdu", {"device": "p"}, "power_kw_quality", 1.0, T0 + 1)])  # refused later
        writer.write([Sample("pdu", {"device": "p"}, "power_kw", 7.0, T0 + 2)])
        assert (writer.store_up, writer.spooled_samples()) == (False, 2)
        server.start()
        writer.write([Sample("pdu", {"device": "p"}, "power_kw", 8.0, T0 + 3)])
        assert (writer.spooled_samples(), writer.rejected_samples) == (0, 1)
        (series,) = store.history("pdu", "power_kw", T0 - 1, T0 + 100)
        assert series.points == [(T0 + 2, 7.0), (T0 + 3, 8.0)]
    finally:
        server.stop()
        writer.close()


def test_sqlite_store_survives_reopen(tmp_path):
    s = SqliteStore(tmp_path / "a.sqlite")
    s.write(samples())
    s.close()
    s = SqliteStore(tmp_path / "a.sqlite")
    s.write([Sample("cdu", CDU, "supply_temp_c", 46.0, T0 + 14)])
    got = by_device(s.history("cdu", "supply_temp_c", T0 - 1, T0 + 60, where={"device": "cdu-1"}))
    assert got["cdu-1"][-1] == (T0 + 14, 46.0)
    assert s.count() == 8
    s.close()


def test_a_reader_opens_and_reads_while_the_runtime_holds_the_write_lock(tmp_path):
    """`aidc headroom` opens the store while `aidc run` writes or rolls up: it must not wait
    for that transaction to end, and reads what was committed."""
    path = tmp_path / "held.sqlite"
    writer = SqliteStore(path)
    writer.write([Sample("pdu", {"device": "pdu-1"}, "power_kw", 10.0 + i, T0 + i) for i in range(3)])
    writer.roll_up(T0 + 60)
    writer.write([Sample("pdu", {"device": "pdu-1"}, "power_kw", 20.0, T0 + 70)])
    writer._db.execute("BEGIN IMMEDIATE")  # a write under way
    try:
        reader = SqliteStore(path, reader=True)
        assert reader.latest_values(T0).good_value(("pdu-1", "power_kw")) == 20.0
        [series] = reader.history("pdu", "power_kw", T0, T0 + 70, every_s=100, aggregate="max")
        assert series.points == [(T0, 20.0)]
        reader.close()
    finally:
        writer._db.execute("ROLLBACK")
    writer.close()


def test_the_runtime_reads_its_store_while_it_writes_or_rolls_up(tmp_path):
    """The console's trends and the API read the runtime's own store from other threads:
    they read what was committed, without waiting for the write under way (a roll-up of a
    2,000-rack minute took 4-6 s, all of it a trend's wait)."""
    s = SqliteStore(tmp_path / "busy.sqlite")
    s.write([Sample("pdu", {"device": "pdu-1"}, "power_kw", 10.0 + i, T0 + i) for i in range(3)])
    done, got = threading.Event(), []

    def read() -> None:
        got.append(s.history("pdu", "power_kw", T0, T0 + 10, every_s=10, aggregate="max"))
        got.append(s.latest_values(T0).good_value(("pdu-1", "power_kw")))
        done.set()

    with s._lock:  # the writer, mid-transaction
        s._db.execute("BEGIN IMMEDIATE")
        s._db.execute("DELETE FROM recent")
        try:
            threading.Thread(target=read, daemon=True).start()
            assert done.wait(60), "a read waited for the write"
        finally:
            s._db.execute("ROLLBACK")
    [series], latest = got
    assert series.points == [(T0, 12.0)] and latest == 12.0  # as committed
    s.close()


def test_a_store_that_stays_locked_is_unavailable_in_one_line(tmp_path):
    """A new store cannot be made while another process holds its file's write lock: the
    store is unavailable (at once here: SQLite does not wait to change the journal mode),
    with the file named, and no traceback."""
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match=r"locked\.sqlite: database is locked"):
            SqliteStore(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_series_is_one_whatever_the_order_of_its_tags_across_reopens_and_rollbacks(tmp_path):
    """The writer knows a series by its tags as given, else finds it in the file (by its
    sorted tags) before making it: never twice, and never an id a rolled-back batch made."""
    turned = dict(reversed(CDU.items()))
    s = SqliteStore(tmp_path / "a.sqlite")
    s.write([Sample("cdu", CDU, "supply_temp_c", 45.0, T0)])
    s.write([Sample("cdu", turned, "supply_temp_c", 45.5, T0 + 1)])
    with pytest.raises(sqlite3.ProgrammingError):  # a value no number: the batch rolled back
        s.write([Sample("cdu", CDU2, "supply_temp_c", 30.0, T0), Sample("cdu", CDU2, "x", {}, T0)])
    s.write([Sample("cdu", CDU2, "supply_temp_c", 31.0, T0 + 2)])
    s.close()
    s = SqliteStore(tmp_path / "a.sqlite")
    s.write([Sample("cdu", turned, "supply_temp_c", 46.0, T0 + 2)])
    got = by_device(s.history("cdu", "supply_temp_c", T0 - 1, T0 + 60))
    assert got == {"cdu-1": [(T0, 45.0), (T0 + 1, 45.5), (T0 + 2, 46.0)], "cdu-2": [(T0 + 2, 31.0)]}
    s.close()


def test_sqlite_retention_deletes_old_samples(tmp_path):
    s = SqliteStore(tmp_path / "r.sqlite", raw_days=1)
    now = time.time()
    s.write([Sample("pdu", {"device": "p"}, "power_kw", 1.0, now - 2 * 86400),
             Sample("pdu", {"device": "p"}, "power_kw", 2.0, now)])
    assert by_device(s.history("pdu", "power_kw", 0, now + 1)) == {"p": [(now, 2.0)]}
    s.close()


def test_latest_gives_the_newest_sample_of_every_device_series_with_its_quality(store):
    store.write(samples())
    got = store.latest(T0 - 1)
    # cdu-1's newest supply_temp_c is the good 44.0 at T0+12 (newer than the bad ones)
    assert (got[("cdu-1", "supply_temp_c")].value, got[("cdu-1", "supply_temp_c")].ts) == (44.0, T0 + 12)
    assert got[("cdu-1", "supply_temp_c")].quality is Quality.GOOD
    assert got[("cdu-2", "supply_temp_c")].value == 30.0
    assert got[("cdu-1", "supply_temp_c")].tags == CDU
    assert set(got) == {("cdu-1", "supply_temp_c"), ("cdu-2", "supply_temp_c")}  # no rack's
    store.write([Sample("cdu", CDU2, "supply_temp_c", None, T0 + 20, Quality.BAD)])
    got = store.latest(T0 - 1)
    assert got[("cdu-2", "supply_temp_c")].quality is Quality.BAD
    assert got[("cdu-2", "supply_temp_c")].value is None
    assert store.latest(T0 + 30) == {}
    # what a reader evaluates the model on: the same series' good values, NaN if not good
    values = store.latest_values(T0 - 1)
    assert sorted(values) == sorted(got)
    assert values.good_value(("cdu-1", "supply_temp_c")) == 44.0
    assert np.isnan(values.good_values([("cdu-2", "supply_temp_c"), ("cdu-9", "x"), None])).all()
    assert list(store.latest_values(T0 - 1, keys={"flow_lpm"})) == []


def test_sqlite_reads_a_series_the_same_across_its_move_from_the_recent_table(tmp_path):
    """Writes land in a small table, moved into the big one at each roll-up: a series whose
    older samples are moved and newer ones not reads the same points, windows and latest
    sample as one written at once; a late sample older than moved ones hides nothing."""
    def reads(s: SqliteStore) -> tuple:
        return (by_device(s.history("cdu", "supply_temp_c", T0 - 1, T0 + 60)),
                by_device(s.history("cdu", "supply_temp_c", T0, T0 + 19, every_s=10)),
                by_device(s.history("cdu", "supply_temp_c", T0, T0 + 60, every_s=60,
                                    aggregate="max")),
                {k: (x.value, x.ts, x.quality) for k, x in s.latest(T0 - 1).items()})

    data = samples()
    whole, split = SqliteStore(tmp_path / "whole.sqlite"), SqliteStore(tmp_path / "split.sqlite")
    whole.write(data)
    split.write(data[:3] + data[5:6])
    split.roll_up(time.time())
    tables = "SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM recent)"
    assert split._db.execute(tables).fetchone() == (4, 0)
    split._next_roll_up = float("inf")  # the rest written before the next roll-up
    split.write(data[3:5] + data[6:])
    assert split._db.execute(tables).fetchone() == (4, 3)
    assert reads(split) == reads(whole)
    raw, windows, peak, latest = reads(split)
    assert raw["cdu-1"] == [(T0, 40.0), (T0 + 4, 42.0), (T0 + 12, 44.0)]
    assert windows["cdu-1"] == [(T0, 41.0), (T0 + 10, 44.0)]
    assert peak == {"cdu-1": [(T0, 44.0)], "cdu-2": [(T0, 30.0)]}
    assert latest[("cdu-1", "supply_temp_c")] == (44.0, T0 + 12, Quality.GOOD)
    split.roll_up(time.time())
    split.write([Sample("cdu", CDU, "supply_temp_c", 41.0, T0 + 2)])  # a replay, late
    raw, _, _, latest = reads(split)
    assert raw["cdu-1"] == [(T0, 40.0), (T0 + 2, 41.0), (T0 + 4, 42.0), (T0 + 12, 44.0)]
    assert latest[("cdu-1", "supply_temp_c")] == (44.0, T0 + 12, Quality.GOOD)
    whole.close()
    split.close()


def test_the_runtime_writes_in_batches_of_store_batch_size(tmp_path):
    from aidc.core.config import Store as Cfg
    from aidc.core.config import load_site
    from aidc.runtime import Runtime
    from tests.conftest import ROOT

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    runtime = Runtime(site.model_copy(update={"store": Cfg(batch_size=2)}), tmp_path)
    runtime._pending = samples()[:5]
    runtime._pending_columns = [rack_columns(T0, [[1.0, 2.0], [np.nan, np.nan], [5.0, 6.0]])]
    batches = runtime._take_pending()
    assert [len(b) for b in batches] == [2, 2, 1, 2, 0, 2]  # a rack a part
    assert runtime._pending == runtime._pending_columns == []
    runtime._write(batches)  # the parts written from the array, never made into samples
    assert not any("_all" in vars(b) for b in batches if isinstance(b, SampleColumns))
    assert {s.tags["rack"]: s.points for s in runtime.store.history(
        "rack", "headroom_kw", T0, T0)} == {"A=0": [(T0, 2.0)], "A=2": [(T0, 6.0)]}
    runtime.writer.close()
    runtime.store.close()


def test_the_data_directory_is_private(tmp_path):
    """0700 for the directory, 0600 for every database and its -wal/-shm files."""
    import stat

    from aidc.core.config import load_site
    from aidc.runtime import Runtime
    from tests.conftest import ROOT

    data = tmp_path / "data"
    runtime = Runtime(load_site(ROOT / "site_configs" / "demo.yaml"), data)
    runtime.writer.write(samples())
    runtime.outbox.backlog()
    files = sorted(p.name for p in data.iterdir())
    assert {"aidc.sqlite", "aidc.sqlite-wal", "spool.sqlite", "alerts.sqlite"} <= set(files)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in data.iterdir()} == {
        name: "0o600" for name in files}
    runtime.writer.close()
    runtime.store.close()
    runtime.outbox.close()


def test_a_reader_selects_series_by_key_and_by_labels(store):
    """`aidc headroom` reads only the series the model needs: a PDU's power_kw and phase
    currents, not its outlets' power_kw{outlet=N} (at 10,000 racks, 88,000 of 1.3 million);
    and the rack power history takes the PDU's power_kw, not its outlets' under the same
    field name (before, an outlet's points could overwrite the PDU's and shrink the peak)."""
    pdu = {"site": "s", "device": "pdu-1", "rack": "R1"}
    store.write([Sample("pdu", pdu, "power_kw", 18.0, T0),
                 Sample("pdu", pdu | {"outlet": "1"}, "power_kw", 1.5, T0),
                 Sample("pdu", pdu | {"phase": "1"}, "current_a", 25.0, T0),
                 Sample("pdu", pdu | {"phase": "2"}, "current_a", 26.0, T0),
                 Sample("pdu", pdu, "energy_kwh", 900.0, T0)])
    got = {k: s.value for k, s in store.latest(T0 - 1, keys={"power_kw", "current_a{phase=1}"}).items()}
    assert got == {("pdu-1", "power_kw"): 18.0, ("pdu-1", "current_a{phase=1}"): 25.0}
    assert len(store.latest(T0 - 1)) == 5
    (series,) = store.history("pdu", "power_kw", T0 - 1, T0 + 1, labels={})
    assert series.points == [(T0, 18.0)]
    (series,) = store.history("pdu", "power_kw", T0 - 1, T0 + 1, labels={"outlet": "1"})
    assert series.points == [(T0, 1.5)]


def test_a_store_made_before_series_keys_gets_them_once(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # the schema as it was, with two series
    db.executescript("""
        CREATE TABLE series (id INTEGER PRIMARY KEY, measurement TEXT NOT NULL,
          tags TEXT NOT NULL, field TEXT NOT NULL, UNIQUE (measurement, tags, field));
        CREATE TABLE samples (series INTEGER NOT NULL REFERENCES series(id), ts REAL NOT NULL,
          value REAL, quality TEXT NOT NULL, PRIMARY KEY (series, ts)) WITHOUT ROWID;
        INSERT INTO series VALUES (1, 'pdu', '{"device": "p", "site": "s"}', 'power_kw');
        INSERT INTO series VALUES (2, 'pdu', '{"device": "p", "outlet": "3", "site": "s"}',
                                   'power_kw');
    """)
    db.executemany("INSERT INTO samples VALUES (?, ?, ?, 'good')", [(1, T0, 9.0), (2, T0, 0.5)])
    db.commit()
    db.close()
    s = SqliteStore(path)
    assert [(x.tags, x.value) for x in s.latest(T0 - 1, keys={"power_kw{outlet=3}"}).values()] == [
        ({"device": "p", "outlet": "3", "site": "s"}, 0.5)]
    s.write([Sample("pdu", {"device": "p", "site": "s"}, "power_kw", 9.5, T0 + 5)])
    assert [x.value for x in s.latest(T0 - 1, keys={"power_kw"}).values()] == [9.5]
    assert s.latest_values(T0 - 1, keys={"power_kw"}).good_value(("p", "power_kw")) == 9.5
    s.close()


def test_a_store_made_before_series_devices_gets_them_once(tmp_path):
    """Until 2026-12-03 series had a key and no device column: a reader of the latest
    values finds each device's series by both once it is added."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    s = SqliteStore(path)
    s.write([Sample("pdu", {"device": "p", "site": "s"}, "power_kw", 9.0, T0),
             Sample("rack", {"rack": "R1", "site": "s"}, "power_kw", 9.0, T0)])
    s.close()
    db = sqlite3.connect(path)  # as it was
    db.executescript("""
        DROP INDEX series_by_key_device;
        DROP INDEX series_by_device;
        ALTER TABLE series DROP COLUMN device;
        CREATE INDEX series_by_key ON series (key);
    """)
    db.close()
    s = SqliteStore(path)
    assert list(s.latest_values(T0 - 1, keys={"power_kw"})) == [("p", "power_kw")]
    s.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT key, device FROM series ORDER BY id").fetchall() == [
        ("power_kw", "p"), ("power_kw", None)]
    assert [name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'series'"
        " AND sql IS NOT NULL")] == ["series_by_key_device", "series_by_device"]
    db.close()


# ---------------------------------------------------------------- rollups (embedded)

H0 = float((int(time.time()) - 86400) // 3600 * 3600)  # an hour's start, a day ago
PUE = {"site": "s"}


def three_hours() -> list[Sample]:
    """A site's PUE every 10 s for three hours, 0, 1 ... 6 over and over, and a bad read."""
    return [Sample("site", PUE, "pue", float(i % 7), H0 + 10 * i) for i in range(3 * 360)] + [
        Sample("site", PUE, "pue", 99.0, H0 + 15, Quality.OUT_OF_RANGE)]


def rolled_up(s: SqliteStore, until: float) -> None:
    """Roll up until everything before ``until`` is (a pass takes an hour at most)."""
    while s._db.execute("SELECT until FROM rolled_up").fetchone()[0] < until // 60 * 60:
        s.roll_up(time.time())


def brute(samples: list[Sample], start: float, end: float, every_s: float, fn) -> list[tuple]:
    """The windows of the good samples in [start, end], as the raw query makes them."""
    windows: dict[float, list[float]] = {}
    for x in samples:
        if start <= x.ts <= end and x.quality is Quality.GOOD:
            windows.setdefault(x.ts // every_s * every_s, []).append(x.value)
    return [(t, fn(v)) for t, v in sorted(windows.items())]


def test_sqlite_rolls_up_minutes_and_hours_of_good_values(tmp_path):
    s = SqliteStore(tmp_path / "r.sqlite")
    s.write(three_hours())
    rolled_up(s, H0 + 3 * 3600 + 30)
    [series] = [i for (i,) in s._db.execute("SELECT id FROM series")]
    minute = s._db.execute("SELECT n, mean, lo, hi FROM rollup_1m WHERE ts = ?", (H0,)).fetchone()
    assert minute == (6, 2.5, 0.0, 5.0)  # 0 1 2 3 4 5: the out-of-range 99 is not a value
    assert s._db.execute("SELECT COUNT(*) FROM rollup_1m").fetchone() == (180,)
    hour = s._db.execute("SELECT n, mean, lo, hi FROM rollup_1h WHERE series = ? AND ts = ?",
                         (series, H0)).fetchone()
    assert hour[0] == 360 and hour[1] == pytest.approx(1074 / 360)  # 51 x (0+...+6) + 0+1+2
    assert hour[2:] == (0.0, 6.0)
    assert s._db.execute("SELECT COUNT(*) FROM rollup_1h").fetchone() == (3,)
    s.close()


@pytest.mark.parametrize(("every_s", "aggregate"), [
    (600, "mean"), (3600, "max"), (7200, "mean"), (300, "max"), (1800, "mean"), (3600, "min"),
    (300, "min")])
def test_sqlite_reads_whole_periods_from_rollups_and_the_same_as_raw(tmp_path, every_s, aggregate):
    """Windows of whole minutes or hours over an unaligned range: whole periods come from the
    rollups, edges and the part not rolled up yet raw (moved, or still recent: written after
    the roll-up), and every window is what the raw samples give."""
    data = three_hours()
    s = SqliteStore(tmp_path / "r.sqlite")
    s.write(data)
    rolled_up(s, H0 + 2 * 3600 + 30)  # the third hour is not rolled up yet
    late = [Sample("site", PUE, "pue", 7.5 - i % 9, H0 + 2 * 3600 + 5 + 20 * i) for i in range(180)]
    s._next_roll_up = math.inf  # not moved by this write: recent, beside moved samples
    s.write(late)
    assert s._db.execute("SELECT COUNT(*) FROM recent").fetchone() == (180,)
    data += late
    start, end = H0 + 125, H0 + 3 * 3600 - 35
    pieces = s._pieces(start, end, every_s)
    assert {t for t, _, _ in pieces} >= {"rollup_1m", "samples"}  # both were read
    assert pieces[0][1] == start and pieces[-1][2] == end
    fn = {"max": max, "min": min, "mean": lambda v: sum(v) / len(v)}[aggregate]
    [got] = s.history("site", "pue", start, end, every_s=every_s, aggregate=aggregate)
    expected = brute(data, start, end, every_s, fn)
    assert [t for t, _ in got.points] == [t for t, _ in expected]
    assert [v for _, v in got.points] == pytest.approx([v for _, v in expected], abs=1e-12)
    [one] = s.history("site", "pue", start, end, every_s=end - start, aggregate=aggregate)
    everything = [x.value for x in data if start <= x.ts <= end and x.quality is Quality.GOOD]
    assert one.points[0] == (start, pytest.approx(fn(everything), abs=1e-12))
    s.close()


@pytest.mark.parametrize("aggregate", ["mean", "min", "max"])
def test_a_range_that_ends_on_a_rolled_up_minute_takes_none_of_that_minute(tmp_path, aggregate):
    """The rollup row stamped ``end`` holds [end, end + 60 s): only its sample at ``end`` is
    in the range, read raw."""
    data = three_hours()
    s = SqliteStore(tmp_path / "r.sqlite")
    s.write(data)
    rolled_up(s, H0 + 3 * 3600)
    start, end = H0 + 125, H0 + 7200
    assert ("rollup_1m", end) in [(table, hi) for table, _, hi in s._pieces(start, end, 600)]
    fn = {"max": max, "min": min, "mean": lambda v: sum(v) / len(v)}[aggregate]
    for every_s in (600, end - start):
        [got] = s.history("site", "pue", start, end, every_s=every_s, aggregate=aggregate)
        expected = brute(data, start, end, every_s, fn) if every_s == 600 else [(start, fn(
            [x.value for x in data if start <= x.ts <= end and x.quality is Quality.GOOD]))]
        assert [t for t, _ in got.points] == [t for t, _ in expected]
        assert [v for _, v in got.points] == pytest.approx([v for _, v in expected], abs=1e-12)
    s.close()


def test_sqlite_keeps_rollups_after_the_raw_samples_age_out_and_rolls_up_late_ones(tmp_path):
    """A day-old hour rolled up, then the store keeps raw samples only half a day: the
    hour's trend still answers, from the rollups. A sample written late (a spool replaying
    an outage) into a rolled-up minute counts at once and is rolled up again."""
    data = three_hours()
    path = tmp_path / "r.sqlite"
    s = SqliteStore(path)
    s.write(data)
    rolled_up(s, H0 + 3 * 3600)
    late = Sample("site", PUE, "pue", 20.0, H0 + 5)  # into the rolled-up minute H0
    s._next_roll_up = float("inf")  # written between two roll-ups
    s.write([late])
    assert s._pieces(H0, H0 + 3600, 60)[0] == ("samples", H0, H0 + 3600)  # raw until rolled
    [got] = s.history("site", "pue", H0, H0 + 3599, every_s=60)
    assert got.points[0] == (H0, pytest.approx((15 + 20) / 7))
    rolled_up(s, H0 + 3 * 3600)
    assert s._db.execute("SELECT n, hi FROM rollup_1m WHERE ts = ?", (H0,)).fetchone() == (7, 20.0)
    s.close()
    s = SqliteStore(path, raw_days=0.5)
    s._apply_retention(time.time())
    assert s.history("site", "pue", H0, H0 + 3 * 3600) == []  # raw: gone
    [hourly] = s.history("site", "pue", H0, H0 + 3 * 3600 - 1, every_s=3600, aggregate="max")
    assert hourly.points == [(H0, 20.0), (H0 + 3600, 6.0), (H0 + 7200, 6.0)]
    s.close()


def test_store_retention_must_keep_a_rollup_at_least_as_long_as_what_it_is_made_of():
    with pytest.raises(ValueError, match="raw_days <= minute_days <= hour_days"):
        StoreConfig(raw_days=100, minute_days=90)


def test_influxdb_gets_retention_policies_and_rollups_and_reads_them_past_the_raw(influxd):
    """On a real influxd: aidc makes its retention policies (raw the default) and the
    continuous queries that roll up; the minutes' rollup (its query run once, as influxd
    runs it each minute) answers a trend that reaches back past the raw samples with the
    windows the raw samples give. A second start changes a policy's duration, and adds no
    second continuous query."""
    db = f"keep{free_port()}"
    config = StoreConfig(backend="influxdb", url=influxd.url, database=db, raw_days=0.5,
                         minute_days=2, hour_days=30)
    s = InfluxStore(config)
    now = time.time()
    start = float(int(now - 3 * 3600) // 60 * 60)
    data = [Sample("site", PUE, "pue", float(i % 7), start + 10 * i) for i in range(2 * 360)] + [
        Sample("site", PUE, "pue", None, start + 15, Quality.BAD)]
    s.write(data)
    policies = {row[0]: row for row in s._show(f'SHOW RETENTION POLICIES ON "{db}"')}
    assert {n: (p[1], p[4]) for n, p in policies.items() if n.startswith("aidc")} == {
        "aidc_raw": ("12h0m0s", True), "aidc_1m": ("48h0m0s", False),
        "aidc_1h": ("720h0m0s", False)}
    assert [r[0] for r in s._show("SHOW CONTINUOUS QUERIES", db)] == ["aidc_1m", "aidc_1h"]
    s._query(rollup_query(db, "aidc_1m", 60, f" WHERE time >= {int(start)}s"))
    back = now - 0.75 * 86400  # before the raw policy's reach: the minutes answer
    assert s._rollup_for(back, 600, False) == "aidc_1m"
    assert s._rollup_for(now - 3600, 600, False) is None  # raw reaches: raw answers
    for every_s, aggregate, fn in ((600, "mean", lambda v: sum(v) / len(v)), (3600, "max", max)):
        [got] = s.history("site", "pue", back, now, every_s=every_s, aggregate=aggregate)
        [raw] = s.history("site", "pue", start, now, every_s=every_s, aggregate=aggregate)
        expected = brute(data, start, now, every_s, fn)
        assert [t for t, _ in got.points] == [t for t, _ in expected] == [t for t, _ in raw.points]
        assert [v for _, v in got.points] == pytest.approx([v for _, v in expected])
    s.close()
    s = InfluxStore(config.model_copy(update={"raw_days": 1.0}))
    s.write(data[:1])
    policies = {row[0]: row for row in s._show(f'SHOW RETENTION POLICIES ON "{db}"')}
    assert policies["aidc_raw"][1] == "24h0m0s"
    assert [r[0] for r in s._show("SHOW CONTINUOUS QUERIES", db)] == ["aidc_1m", "aidc_1h"]
    s.close()


def test_an_influxdb_trend_past_the_raw_reach_reads_the_rollup_only_for_what_raw_lost(influxd):
    """On a real influxd, a trend reaching back past the raw samples takes the windows
    before their reach from the minutes' rollup and the rest from the raw samples: right
    after the start the rollup holds nothing recent (its continuous query has not run, and
    never runs over what was written before it). Hand-computed: the rollup's hour 20 h ago
    holds 4 values summing to 10 and 1 value of 2 (max 5); the raw hour 3 h ago holds 1, 2
    and 6. A room's series only the raw samples hold stays apart, and the site's is one
    series whichever side answers."""
    db = f"split{free_port()}"
    s = InfluxStore(StoreConfig(backend="influxdb", url=influxd.url, database=db, raw_days=0.5,
                                minute_days=2, hour_days=30))
    now = time.time()
    old, new = (float(int(now - h * 3600) // 3600 * 3600) for h in (20, 3))
    s.write([Sample("site", PUE, "pue", v, new + 10 * i) for i, v in enumerate((1.0, 2.0, 6.0))]
            + [Sample("site", PUE | {"room": "r1"}, "pue", 9.0, new)])
    s._post("/write", {"precision": "s", "rp": "aidc_1m"},
            f"site,site=s sum_pue=10,count_pue=4i,min_pue=1,max_pue=3 {int(old)}\n"
            f"site,site=s sum_pue=2,count_pue=1i,min_pue=2,max_pue=5 {int(old + 60)}")
    back = now - 0.9 * 86400
    assert s._rollup_for(back, 3600, False) == "aidc_1m"
    def by_room(**kw):
        series = s.history("site", "pue", back, now, **kw)
        assert len(series) == 2  # the site's, and the room's
        return {x.tags.get("room"): x.points for x in series}

    assert by_room(every_s=3600) == {None: [(old, pytest.approx(12 / 5)), (new, pytest.approx(3.0))],
                                     "r1": [(new, 9.0)]}
    assert by_room(every_s=3600, aggregate="max") == {None: [(old, 5.0), (new, 6.0)],
                                                      "r1": [(new, 9.0)]}
    assert by_room(every_s=3600, aggregate="min") == {None: [(old, 1.0), (new, 1.0)],
                                                      "r1": [(new, 9.0)]}
    whole = by_room(every_s=now - back)  # one window, on both sides of the raw reach
    assert whole == {None: [(back, pytest.approx(21 / 8))], "r1": [(back, 9.0)]}
    s.close()
