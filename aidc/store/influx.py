"""InfluxDB backend: line protocol writes and InfluxQL queries over the v1 HTTP API.

The server's version is read from the ``X-Influxdb-Version`` header of ``/ping``, never
assumed. 1.x is spoken natively (``/write?db=``, ``/query``, user/password); 2.x and 3.x
expose the same endpoints for v1 compatibility with token auth (the bucket is the database),
so one code path serves all three. Points are rendered by influxdb-client's ``Point``, which
owns the escaping rules of line protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from itertools import groupby

import httpx
from influxdb_client import Point, WritePrecision

from aidc.config import Store as StoreConfig
from aidc.metrics import Quality, Sample, key_of, series_key
from aidc.store import Aggregate, Series, StoreRejected, StoreUnavailable

log = logging.getLogger("aidc.store.influx")
# answers that say "not now" rather than "not this": a token rotated (401), a grant missing
# (403), a database dropped (404), a timeout or rate limit (408, 429). The batch is kept.
OUTAGE = {401, 403, 404, 408, 429}


def to_line_protocol(samples: Sequence[Sample]) -> str:
    """One line per (measurement, tags, timestamp); good values as ``field=value``, other
    qualities as ``<field>_quality="bad"`` (and ``<field>_raw`` when a value was read)."""

    def key(s: Sample) -> tuple:
        return (s.measurement, tuple(sorted(s.tags.items())), round(s.ts * 1000))

    lines = []
    for (measurement, tags, ts_ms), group in groupby(sorted(samples, key=key), key=key):
        point = Point(measurement).time(ts_ms, WritePrecision.MS)
        for k, v in tags:
            point.tag(k, v)
        for s in group:
            if s.quality is Quality.GOOD and s.value is not None:
                point.field(s.field, float(s.value))
            else:
                point.field(f"{s.field}_quality", str(s.quality))
                if s.value is not None:
                    point.field(f"{s.field}_raw", float(s.value))
        lines.append(point.to_line_protocol())
    return "\n".join(lines)


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
        if version.lstrip("v").startswith("1.") and self.config.create_database:
            self._post("/query", {"q": f"CREATE DATABASE {_ident(self.config.database)}"})
        self.version = version
        log.info("event=influx_connected url=%s version=%s", self.config.url, version)

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
        conditions = [f"time >= {int(start * 1e9)}", f"time <= {int(end * 1e9)}"]
        conditions += [f"{_ident(k)} = {_literal(v)}" for k, v in (where or {}).items()]
        one_window = bool(every_s) and every_s >= end - start
        select = f"{aggregate}({_ident(field)})" if every_s else _ident(field)
        group = f"time({int(every_s * 1000)}ms), * fill(none)" if every_s and not one_window else "*"
        q = (
            f"SELECT {select} FROM {_ident(measurement)} "
            f"WHERE {' AND '.join(conditions)} GROUP BY {group}"
        )
        result = self._post("/query", {"q": q, "epoch": "ms"}).json()["results"][0]
        if "error" in result:
            raise StoreRejected(f"InfluxDB query failed: {result['error']}")
        found = [
            Series(
                measurement,
                {k: v for k, v in s.get("tags", {}).items() if v},
                field,
                [(start if one_window else t / 1000, v) for t, v in s["values"] if v is not None],
            )
            for s in result.get("series", [])
        ]
        if labels is None:
            return found
        wanted = series_key(field, labels)
        return [s for s in found if key_of(field, s.tags) == wanted]

    def latest(
        self, since: float, keys: Collection[str] | None = None
    ) -> dict[tuple[str, str], Sample]:
        """Newest value per series and field since ``since``; a newer ``<field>_quality``
        marker wins over an older good value (the sample is then shown as not good)."""
        self._connect()
        q = f"SELECT * FROM /.*/ WHERE time >= {int(since * 1e9)} GROUP BY *"
        result = self._post("/query", {"q": q, "epoch": "ms"}).json()["results"][0]
        if "error" in result:
            raise StoreRejected(f"InfluxDB query failed: {result['error']}")
        out = []
        for s in result.get("series", []):
            tags = {k: v for k, v in s.get("tags", {}).items() if v}
            newest: dict[str, tuple[float, object]] = {}
            for row in s["values"]:
                for col, value in zip(s["columns"][1:], row[1:]):
                    if value is not None:
                        newest[col] = (row[0] / 1000, value)
            for col, (ts, value) in newest.items():
                if col.endswith(("_quality", "_raw")):
                    continue
                marker = newest.get(f"{col}_quality")
                if marker and marker[0] >= ts:
                    out.append(Sample(s["name"], tags, col, None, marker[0], Quality(marker[1])))
                else:
                    out.append(Sample(s["name"], tags, col, float(value), ts))
            for col, (ts, q) in newest.items():  # fields only ever seen as not good
                base = col.removesuffix("_quality")
                if col.endswith("_quality") and base not in newest:
                    out.append(Sample(s["name"], tags, base, None, ts, Quality(q)))
        by_key = {(s.tags["device"], key_of(s.field, s.tags)): s for s in out if "device" in s.tags}
        return by_key if keys is None else {k: s for k, s in by_key.items() if k[1] in keys}

    def close(self) -> None:
        self._http.close()
