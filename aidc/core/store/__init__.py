"""Storage: one interface, two backends (embedded SQLite, InfluxDB), and a disk spool.

Only ``good`` values count in history queries and aggregates; samples of any other quality
are kept (with their quality) so that they can be shown, never silently averaged in.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from aidc.core.config import Store as StoreConfig
from aidc.core.metrics import LatestValues, Sample


class StoreUnavailable(Exception):
    """The store could not take the samples now (down, unauthorised, no database): they
    were not written; keep them and retry."""


class StoreRejected(ValueError):
    """The store refused the samples themselves (malformed, a field type conflict):
    retrying the same batch cannot help."""


@dataclass(frozen=True)
class Series:
    measurement: str
    tags: dict[str, str]
    field: str
    points: list[tuple[float, float]]  # (unix seconds, value), oldest first


Aggregate = Literal["mean", "min", "max"]


class Store(Protocol):
    def write(self, samples: Sequence[Sample]) -> None:
        """Write a batch; raise StoreUnavailable when the store cannot take it now."""

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
        """Good values of ``field`` in [start, end], one Series per tag set; with
        ``every_s``, the ``aggregate`` (mean, min or max) over windows of that length, stamped
        with the window's start (as InfluxDB's GROUP BY time does), or over [start, end] as
        one window, stamped ``start``, when ``every_s`` spans it; with
        ``labels``, only the series with exactly those labels (``{}``: none, so a PDU's
        ``power_kw`` and not its outlets' ``power_kw{outlet=N}``)."""

    def latest(
        self, since: float, keys: Collection[str] | None = None
    ) -> dict[tuple[str, str], Sample]:
        """The newest sample of every device's series written at or after ``since``, any
        quality, keyed like the runtime's latest view: (device, ``series_key``); with
        ``keys``, only of the series with those keys. Series of no device (the rack and
        site values the model derives) are not in it."""

    def latest_values(self, since: float, keys: Collection[str] | None = None) -> LatestValues:
        """The good values of what `latest` gives, as arrays: what a reader of the store
        evaluates the model on."""

    def close(self) -> None: ...


def open_store(config: StoreConfig, data_dir: Path, create: bool = True) -> Store:
    """The site's store; ``create=False`` (readers such as `aidc headroom`) refuses to make
    an empty embedded store where none is, and says where it looked."""
    if config.backend == "influxdb":
        from aidc.core.store.influx import InfluxStore

        return InfluxStore(config)
    from aidc.core.store.sqlite import SqliteStore

    path = Path(config.path)
    path = path if path.is_absolute() else data_dir / path
    if not create and not path.is_file():
        raise StoreUnavailable(
            f"no store at {path}: give the --data-dir that `aidc run` (or `aidc demo`) uses")
    return SqliteStore(path, config.raw_days, config.minute_days, config.hour_days,
                       reader=not create)
