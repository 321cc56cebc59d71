"""InfluxDB backend: line protocol writes and InfluxQL queries over the v1 HTTP API.

The server's version is read from the ``X-Influxdb-Version`` header of ``/ping``, never
assumed. 1.x is spoken natively (``/write?db=``, ``/query``, user/password); 2.x and 3.x
expose the same endpoints for v1 compatibility with token auth (the bucket is the database),
so one code path serves all three. Points are rendered by influxdb-client's ``Point``, which
owns the escaping rules of line protocol.

On 1.x, where aidc makes the database (``store.create_database``), it also makes what keeps
a year of a large site, when missing: the retention policy ``aidc_raw`` (the default, where
samples are written, kept ``raw_days``), ``aidc_1m`` and ``aidc_1h`` (``minute_days``,
``hour_days``), and continuous queries that fill these with each field's count, sum, min
and max over each minute and hour (recomputed over the last 10 minutes and 2 hours, for
samples a spool writes late). A query that reaches back past the raw samples reads the
finest rollup that does, means weighted by the counts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Sequence
from functools import lru_cache

import httpx
from influxdb_client import Point

from aidc.core.config import Store as StoreConfig
from aidc.core.metrics import (
    TOPOLOGY_TAGS,
    LatestValues,
    Quality,
    Sample,
    SampleColumns,
    key_of,
    series_key,
)
from aidc.core.store import Aggregate, Series, StoreRejected, StoreUnavailable

log = logging.getLogger("aidc.core.store.influx")
# answers that say "not now" rather than "not this": a token rotated (401), a grant missing
# (403), a database dropped (404), a timeout or rate limit (408, 429). The batch is kept.
OUTAGE = {401, 403, 404, 408, 429}


def to_line_protocol(samples: Sequence[Sample]) -> str:
    """One line per (measurement, tags, timestamp in ms); good values as ``field=value``,
    other qualities as ``<field>_quality="bad"`` (and ``<field>_raw`` when a value was read).

    The escaping is influxdb-client's: its ``Point`` renders each tag set, field name and
    string once, and the lines are put together here from those pieces. A ``Point`` a line
    took five times as long as the rest of a write to influxd (``benchmarks/storage.py``)."""
    if isinstance(samples, SampleColumns):
        return _column_lines(samples)
    points: dict[tuple, dict[str, float | str]] = {}
    for s in samples:
        fields = points.setdefault((s.measurement, tuple(s.tags.items()), round(s.ts * 1000)), {})
        if s.quality is Quality.GOOD and s.value is not None:
            fields[s.field] = float(s.value)
        else:
            fields[f"{s.field}_quality"] = str(s.quality)
            if s.value is not None:
                fields[f"{s.field}_raw"] = float(s.value)
    lines = []
    for (measurement, tags, ts_ms), fields in points.items():
        rendered = ",".join(f"{_field_key(k)}={_value(v)}" for k, v in sorted(fields.items())
                            if not isinstance(v, float) or math.isfinite(v))
        if rendered:  # a point of no finite value is no point (as Point renders it)
            lines.append(f"{_series(measurement, tags)} {rendered} {ts_ms}")
    return "\n".join(lines)


def _column_lines(columns: SampleColumns) -> str:
    """A line a row of SampleColumns (good values all, at one time), its fields in name
    order as `to_line_protocol` puts them, read from the array."""
    order = sorted(range(len(columns.fields)), key=columns.fields.__getitem__)
    keys = [_field_key(columns.fields[j]) for j in order]
    rows, ts_ms = columns.rows, round(columns.ts * 1000)
    lines = []
    for tags, row in zip(columns.tags[rows.start:rows.stop],
                         columns.values[rows.start:rows.stop, order].tolist()):
        rendered = ",".join(f"{k}={_value(v)}" for k, v in zip(keys, row) if math.isfinite(v))
        if rendered:
            lines.append(f"{_series(columns.measurement, tuple(tags.items()))} {rendered} {ts_ms}")
    return "\n".join(lines)


@lru_cache(maxsize=1 << 17)
def _series(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """``measurement,tag=value,...`` as ``Point`` escapes and orders it."""
    point = Point(measurement)
    for k, v in tags:
        point.tag(k, v)
    return point.field("f", 1.0).to_line_protocol().removesuffix(" f=1")


@lru_cache(maxsize=4096)
def _field_key(name: str) -> str:
    return Point("m").field(name, 1.0).to_line_protocol()[2:-2]


def _value(value: float | str) -> str:
    """A float as ``Point`` writes it (``2`` for 2.0); a string quoted and escaped by it."""
    if isinstance(value, str):
        return _string(value)
    return str(value).removesuffix(".0")


@lru_cache(maxsize=256)
def _string(value: str) -> str:
    return Point("m").field("f", value).to_line_protocol()[4:]


ROLLUPS = (("aidc_1m", 60, "10m"), ("aidc_1h", 3600, "2h"))  # finest first; recomputed over


def rollup_query(database: str, policy: str, period_s: int, where: str = "") -> str:
    """The SELECT ... INTO of rollup ``policy``: every measurement's fields' count, sum, min
    and max over each ``period_s`` of the raw samples (string fields are counted only)."""
    db = _ident(database)
    return (f"SELECT count(*), sum(*), min(*), max(*) INTO {db}.{_ident(policy)}.:MEASUREMENT"
            f" FROM {db}.\"aidc_raw\"./.*/{where} GROUP BY time({period_s}s), *")


def _is_v1(version: str) -> bool:
    return version.lstrip("v").startswith("1.")


def _rows(result: dict) -> list[dict]:
    """The series of one statement's result; StoreRejected with InfluxDB's error."""
    if "error" in result:
        raise StoreRejected(f"InfluxDB query failed: {result['error']}")
    return result.get("series", [])


def _tags_of(series: dict) -> tuple[tuple[str, str], ...]:
    """A result series' tags as Series has them: GROUP BY * names every tag key of the
    measurement, empty where the series has none (a rollup's series and the raw one are
    then the same series)."""
    return tuple((k, v) for k, v in series.get("tags", {}).items() if v)


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxStore:
    def __init__(self, config: StoreConfig, timeout_s: float = 5.0):
        self.config = config
        headers, params = {}, {"db": config.database}
        if config.token:
            headers["Authorization"] = f"Token {config.token.get_secret_value()}"
        if config.username:
            params["u"] = config.username
            params["p"] = config.password.get_secret_value() if config.password else ""
        self._http = httpx.Client(base_url=config.url, headers=headers, timeout=timeout_s)
        self._params = params
        self.version: str | None = None

    def _connect(self) -> None:
        """Detect the server version once; on 1.x make sure the database exists."""
        if self.version is not None:
            return
        try:
            ping = self._http.get("/ping")
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"InfluxDB at {self.config.url} unreachable: {e}") from None
        version = ping.headers.get("X-Influxdb-Version", "")
        if ping.status_code != 204 or not version:
            raise StoreUnavailable(f"{self.config.url} does not answer /ping like InfluxDB")
        if _is_v1(version) and self.config.create_database:
            self._post("/query", {"q": f"CREATE DATABASE {_ident(self.config.database)}"})
            self._keep()
        self.version = version
        log.info("event=influx_connected url=%s version=%s", self.config.url, version)

    def _keep(self) -> None:
        """The retention policies (made, or set to the site file's durations) and the
        continuous queries (made when missing) of the module's docstring."""
        c, db = self.config, _ident(self.config.database)
        have = {row[0] for row in self._show(f"SHOW RETENTION POLICIES ON {db}")}
        for name, days, default in (("aidc_raw", c.raw_days, True),
                                    ("aidc_1m", c.minute_days, False),
                                    ("aidc_1h", c.hour_days, False)):
            verb = "ALTER" if name in have else "CREATE"
            self._query(f"{verb} RETENTION POLICY {_ident(name)} ON {db} DURATION "
                        f"{round(days * 1440)}m REPLICATION 1{' DEFAULT' * default}")
        have = {row[0] for row in self._show("SHOW CONTINUOUS QUERIES",
                                             self.config.database)}
        for name, period_s, resample in ROLLUPS:
            if name not in have:
                self._query(f"CREATE CONTINUOUS QUERY {_ident(name)} ON {db} RESAMPLE FOR "
                            f"{resample} BEGIN {rollup_query(c.database, name, period_s)} END")

    def _query(self, q: str) -> dict:
        result = self._post("/query", {"q": q, "epoch": "ms"}).json()["results"][0]
        _rows(result)
        return result

    def _show(self, q: str, series_name: str | None = None) -> list[list]:
        """The rows of a SHOW statement (of the series named ``series_name`` if given)."""
        return [row for s in self._query(q).get("series", [])
                if series_name is None or s.get("name") == series_name
                for row in s.get("values") or []]

    def _post(self, path: str, params: dict, content: str | None = None) -> httpx.Response:
        try:
            r = self._http.post(path, params={**self._params, **params}, content=content)
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"InfluxDB at {self.config.url} unreachable: {e}") from None
        if r.status_code in OUTAGE or r.status_code >= 500:
            if r.status_code == 404:
                self.version = None  # next time: /ping again and, if allowed, create it
            raise StoreUnavailable(f"InfluxDB answered {path} with {r.status_code}: "
                                   f"{r.text[:200]}")  # fmt: skip
        if r.status_code >= 400:
            raise StoreRejected(f"InfluxDB rejected {path}: {r.status_code} {r.text[:300]}")
        return r

    def write(self, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        self._connect()
        self._post("/write", {"precision": "ms"}, to_line_protocol(samples))

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
        self._connect()
        tag_conditions = [f"{_ident(k)} = {_literal(v)}" for k, v in (where or {}).items()]
        one_window = bool(every_s) and every_s >= end - start
        source, f = _ident(measurement), _ident(field)
        select = f"{aggregate}({f})" if every_s else f
        group = f"time({int(every_s * 1000)}ms), * fill(none)" if every_s and not one_window else "*"
        policy = self._rollup_for(start, every_s, one_window)
        if policy is None:
            conditions = [f"time >= {int(start * 1e9)}", f"time <= {int(end * 1e9)}", *tag_conditions]
            result = self._query(f"SELECT {select} FROM {source} "
                                 f"WHERE {' AND '.join(conditions)} GROUP BY {group}")
            rows = {_tags_of(s): s["values"] for s in result.get("series", [])}
        else:
            rows = self._rolled_rows(policy, measurement, field, start, end, tag_conditions,
                                     every_s, one_window, group, aggregate)
        found = [
            Series(measurement, dict(tags), field,
                   [(start if one_window else t / 1000, v) for t, v in values if v is not None])
            for tags, values in rows.items()
        ]
        if labels is None:
            return found
        wanted = series_key(field, labels)
        return [s for s in found if key_of(field, s.tags) == wanted]

    def _rolled_rows(self, policy: str, measurement: str, field: str, start: float, end: float,
                     conditions: list[str], every_s: float, one_window: bool, group: str,
                     aggregate: Aggregate) -> dict[tuple, list[list]]:
        """The windows before the raw samples' reach from rollup ``policy``, the rest from
        the raw samples (the rollup holds nothing from before aidc made it, and lags its
        continuous query): each window's (time ms, mean, min or max) by series tags."""
        reach = time.time() - self.config.raw_days * 86400
        split = reach if one_window else math.ceil(reach / every_s) * every_s  # a window's edge
        f = _ident(field)
        parts = {}  # (tags, window) -> [sum, count], [min] or [max]
        for source, since, until, select in (
                (f"{_ident(policy)}.{_ident(measurement)}", start, f"< {int(split * 1e9)}",
                 f"sum({_ident('sum_' + field)}), sum({_ident('count_' + field)})"
                 if aggregate == "mean" else f"{aggregate}({_ident(f'{aggregate}_{field}')})"),
                (_ident(measurement), split, f"<= {int(end * 1e9)}",
                 f"sum({f}), count({f})" if aggregate == "mean" else f"{aggregate}({f})")):
            where = " AND ".join([f"time >= {int(max(since, start) * 1e9)}", f"time {until}",
                                  *conditions])
            result = self._query(f"SELECT {select} FROM {source} WHERE {where} GROUP BY {group}")
            for s in result.get("series", []):
                tags = _tags_of(s)
                for t, *values in s["values"]:
                    if values[0] is None:
                        continue
                    t = 0 if one_window else t  # (each side answers at its own lower bound)
                    if (tags, t) not in parts:
                        parts[(tags, t)] = values
                    elif aggregate == "mean":  # one window on both sides of the split
                        parts[(tags, t)] = [a + b for a, b in zip(parts[(tags, t)], values)]
                    else:
                        parts[(tags, t)] = [(min if aggregate == "min" else max)(
                            parts[(tags, t)][0], values[0])]
        rows: dict[tuple, list[list]] = {}
        for (tags, t), values in sorted(parts.items(), key=lambda item: item[0][1]):
            rows.setdefault(tags, []).append([t, values[0] / values[1] if aggregate == "mean"
                                              else values[0]])
        return rows

    def _rollup_for(self, start: float, every_s: float | None, one_window: bool) -> str | None:
        """The rollup a query from ``start`` reads: none while the raw samples reach back
        that far (or without aidc's policies), else the finest that does and whose periods
        make up the windows."""
        c, now = self.config, time.time()
        if (not every_s or not c.create_database or not _is_v1(self.version or "")
                or start >= now - c.raw_days * 86400):
            return None
        for (policy, period_s, _), days in zip(ROLLUPS, (c.minute_days, c.hour_days)):
            if (one_window or every_s % period_s == 0) and start >= now - days * 86400:
                return policy
        return None

    def latest(
        self, since: float, keys: Collection[str] | None = None
    ) -> dict[tuple[str, str], Sample]:
        """Newest value per series and field since ``since``; a newer ``<field>_quality``
        marker wins over an older good value (the sample is then shown as not good). Each
        device kind's measurement is read as one table, its tags as columns (``GROUP BY *``
        answered the 257,000 series of a 2,000-rack site in 24 s, tables in 6); with
        ``keys``, without the series of labels no key has (a PDU's outlets, most of them)."""
        self._connect()
        tag_keys = {s["name"]: {row[0] for row in s.get("values") or []}
                    for s in self._query("SHOW TAG KEYS").get("series", [])}
        labels = {label.partition("=")[0] for k in keys or () if "{" in k
                  for label in k[k.index("{") + 1:-1].split(",")}

        def without(tags: set[str]) -> str:  # the series of labels no key has
            unread = () if keys is None else sorted(tags - TOPOLOGY_TAGS - labels)
            return "".join(f" AND {_ident(t)} = ''" for t in unread)

        statements = [f"SELECT * FROM {_ident(m)} WHERE time >= {int(since * 1e9)}{without(tags)}"
                      for m, tags in tag_keys.items() if "device" in tags]
        if not statements:
            return {}
        results = self._post("/query", {"q": ";".join(statements), "epoch": "ms"}).json()
        newest_of: dict[tuple[str, tuple], dict[str, tuple[float, object]]] = {}
        for s in (s for r in results["results"] for s in _rows(r)):
            tagged = tag_keys.get(s["name"], set())
            tag_columns = [(i, c) for i, c in enumerate(s["columns"]) if c in tagged]
            field_columns = [(i, c) for i, c in enumerate(s["columns"]) if i and c not in tagged]
            for row in s["values"]:  # oldest first: a newer value of a field replaces it
                series = (s["name"], tuple((c, row[i]) for i, c in tag_columns if row[i]))
                fields = newest_of.get(series)
                if fields is None:
                    fields = newest_of[series] = {}
                ts = row[0] / 1000
                for i, c in field_columns:
                    if row[i] is not None:
                        fields[c] = (ts, row[i])
        out = []
        for (measurement, tag_items), newest in newest_of.items():
            tags = dict(tag_items)
            for col, (ts, value) in newest.items():
                if col.endswith(("_quality", "_raw")):
                    continue
                marker = newest.get(f"{col}_quality")
                if marker and marker[0] >= ts:
                    out.append(Sample(measurement, tags, col, None, marker[0], Quality(marker[1])))
                else:
                    out.append(Sample(measurement, tags, col, float(value), ts))
            for col, (ts, q) in newest.items():  # fields only ever seen as not good
                base = col.removesuffix("_quality")
                if col.endswith("_quality") and base not in newest:
                    out.append(Sample(measurement, tags, base, None, ts, Quality(q)))
        by_key = {(s.tags["device"], key_of(s.field, s.tags)): s for s in out if "device" in s.tags}
        return by_key if keys is None else {k: s for k, s in by_key.items() if k[1] in keys}

    def latest_values(self, since: float, keys: Collection[str] | None = None) -> LatestValues:
        return LatestValues.of(self.latest(since, keys))

    def close(self) -> None:
        self._http.close()
