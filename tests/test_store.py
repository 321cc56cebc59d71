"""Both store backends against the same expectations; InfluxDB is a real influxd."""

from __future__ import annotations

import time

import pytest

from aidc.config import Store as StoreConfig
from aidc.metrics import Quality, Sample
from aidc.net import free_port
from aidc.store.influx import InfluxStore, to_line_protocol
from aidc.store.spool import SpooledWriter
from aidc.store.sqlite import SqliteStore
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


def test_tags_with_spaces_commas_and_equals_round_trip(store):
    store.write(samples())
    (series,) = store.history("rack", "power_kw", T0 - 1, T0 + 1)
    assert series.tags == {"site": "s", "room": "hall 1,west", "rack": "A=1"}
    assert series.points == [(T0, 80.5)]


def test_line_protocol_marks_quality_instead_of_hiding_it():
    lines = to_line_protocol(samples()[2:4]).splitlines()
    ms = int(T0 * 1000)
    assert lines == [
        f'cdu,device=cdu-1,site=s supply_temp_c_quality="bad" {ms + 8000}',
        f'cdu,device=cdu-1,site=s supply_temp_c_quality="out_of_range",supply_temp_c_raw=99.5 {ms + 9000}',
    ]


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
    assert not writer.store_up
    assert writer.spooled_samples() == 30
    server.start()
    try:
        for b in batches[30:]:
            writer.write(b)
        assert writer.store_up and writer.spooled_samples() == 0 and writer.dropped_samples == 0
        (series,) = store.history("pdu", "power_kw", T0 - 1, T0 + 100)
        written = [(T0 + i, float(i)) for i in range(50)]
        reliability.count("samples: influxd not started, then up (writer)", "samples", 50,
                          lost=len(set(written) - set(series.points)))
        assert series.points == written
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


def test_sqlite_retention_deletes_old_samples(tmp_path):
    s = SqliteStore(tmp_path / "r.sqlite", retention_days=1)
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


def test_the_runtime_writes_in_batches_of_store_batch_size(tmp_path):
    from aidc.config import Store as Cfg
    from aidc.config import load_site
    from aidc.runtime import Runtime
    from tests.conftest import ROOT

    site = load_site(ROOT / "site_configs" / "demo.yaml")
    runtime = Runtime(site.model_copy(update={"store": Cfg(batch_size=2)}), tmp_path)
    runtime._pending = samples()[:5]
    assert [len(b) for b in runtime._take_pending()] == [2, 2, 1]
    assert runtime._pending == []


def test_the_data_directory_is_private(tmp_path):
    """0700 for the directory, 0600 for every database and its -wal/-shm files."""
    import stat

    from aidc.config import load_site
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
    s.close()
