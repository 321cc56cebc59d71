"""Canonical samples: what every collector produces and every store keeps.

A sample is one field of one series: measurement (device kind such as ``cdu``, or a derived
level such as ``rack``), tags (site, room, row, rack, device), a canonical field name with its
unit in the name (``supply_temp_c``), a value, a timestamp and a quality.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property, partial
from itertools import repeat
from typing import NamedTuple

import numpy as np


class Quality(StrEnum):
    GOOD = "good"
    STALE = "stale"  # not refreshed within its poll interval
    BAD = "bad"  # the device said so: sentinel, exception code, noSuchObject, OPC-UA Bad
    OUT_OF_RANGE = "out_of_range"  # outside the profile's plausible limits


QUALITY = {q.value: q for q in Quality}  # by stored name, without Enum's call per row
BAD_QUALITIES = frozenset({Quality.BAD, Quality.OUT_OF_RANGE})  # what the device read
STALE_AFTER_POLLS = 2.5  # a good value not refreshed in this many poll intervals is stale


class Sample(NamedTuple):
    """Immutable like a frozen dataclass, built at a third of its cost: a 10,000-rack site
    makes 1.3 million a poll cycle and 80,000 a model tick."""

    measurement: str
    tags: dict[str, str]
    field: str
    value: float | None
    ts: float  # unix seconds
    quality: Quality = Quality.GOOD

    @property
    def good(self) -> bool:
        return self.quality is Quality.GOOD and self.value is not None

    @property
    def device(self) -> str:
        return self.tags.get("device", "")


class SampleColumns(Sequence[Sample]):
    """Good samples of one measurement at one time, as an array of rows (each a tag set)
    by fields, NaN where a row has no value of a field: a model tick's rack figures (90,000
    at 10,000 racks), which the stores write from the array, without an object a sample.
    A sequence of its samples, field by field, for every other reader (the spool); ``rows``
    is the part of ``tags`` and ``values`` it holds (`split` shares them, unsliced)."""

    def __init__(self, measurement: str, tags: list[dict[str, str]], fields: Sequence[str],
                 values: np.ndarray, ts: float, rows: range | None = None):
        self.measurement, self.tags, self.fields, self.values, self.ts = (
            measurement, tags, tuple(fields), values, ts)
        self.rows = range(len(tags)) if rows is None else rows

    @cached_property
    def _known(self) -> np.ndarray:
        return np.isfinite(self.values[self.rows.start:self.rows.stop])

    def __len__(self) -> int:
        return int(np.count_nonzero(self._known))

    def column(self, field: str) -> tuple[np.ndarray, list[float]]:
        """The rows (indices into ``tags``) with a value of ``field``, and their values."""
        j = self.fields.index(field)
        known = np.flatnonzero(self._known[:, j])
        return known + self.rows.start, self.values[known + self.rows.start, j].tolist()

    def samples(self, field: str) -> list[Sample]:
        """The samples of one field, each made in C."""
        rows, values = self.column(field)
        tags = (self.tags if len(rows) == len(self.tags)
                else list(map(self.tags.__getitem__, rows.tolist())))
        return list(map(partial(tuple.__new__, Sample), zip(
            repeat(self.measurement), tags, repeat(field), values, repeat(self.ts),
            repeat(Quality.GOOD))))

    @cached_property
    def _all(self) -> list[Sample]:
        return [s for f in self.fields for s in self.samples(f)]

    def __getitem__(self, i):  # type: ignore[override]
        return self._all[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._all)

    def split(self, max_samples: int) -> list[SampleColumns]:
        """Consecutive parts of at most ``max_samples`` samples each (a store's batch)."""
        step = max(1, max_samples // max(1, len(self.fields)))
        return [SampleColumns(self.measurement, self.tags, self.fields, self.values, self.ts,
                              self.rows[i:i + step]) for i in range(0, len(self.rows), step)]


class FreshLatest(Mapping[tuple[str, str], Sample]):
    """The latest samples by (device, series key) as of ``now``, read in place: a good
    sample not refreshed within STALE_AFTER_POLLS of its device's poll intervals reads as
    stale (``poll_s`` None: they were judged before, as a store reader does). A tick reads
    a small share of a large site's series (most are PDU outlets), so staleness is judged
    on lookup, not by copying them all. Valid while nothing writes to ``latest`` (the tick
    runs on the loop that does)."""

    __slots__ = ("_latest", "_now", "_poll_s")

    def __init__(self, latest: Mapping[tuple[str, str], Sample],
                 poll_s: Mapping[str, float] | None, now: float):
        self._latest, self._poll_s, self._now = latest, poll_s, now

    def _stale(self, s: Sample, device: str) -> bool:
        return self._poll_s is not None and self._now - s.ts > STALE_AFTER_POLLS * self._poll_s[device]

    def get(self, key: tuple[str, str], default: Sample | None = None) -> Sample | None:
        s = self._latest.get(key)
        return default if s is None else self._judged(s, key[0])

    def _judged(self, s: Sample, device: str) -> Sample:
        if s.quality is Quality.GOOD and self._stale(s, device):
            return Sample(s.measurement, s.tags, s.field, s.value, s.ts, Quality.STALE)
        return s

    def good_values(self, keys: list[tuple[str, str] | None]) -> list[float]:
        """The good values of these series in one pass, NaN where unknown or no key."""
        get, nan = self._latest.get, math.nan
        if self._poll_s is None:
            return [s.value if k and (s := get(k)) is not None and s.good else nan for k in keys]
        now, poll_s = self._now, self._poll_s
        return [s.value if k and (s := get(k)) is not None and s.good
                and now - s.ts <= STALE_AFTER_POLLS * poll_s[k[0]] else nan for k in keys]

    def holds(self, metric: str) -> bool:
        """Whether good_values reads this series key from arrays (a column at a time)."""
        return False

    def good_value(self, key: tuple[str, str]) -> float:
        """The value if good and fresh, else NaN."""
        s = self.get(key)
        return math.nan if s is None or not s.good else float(s.value)

    def __getitem__(self, key: tuple[str, str]) -> Sample:
        s = self.get(key)
        if s is None:
            raise KeyError(key)
        return s

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


class LatestValues:
    """The good values of the newest samples by (device, series key), NaN where not good,
    as a reader of the store takes them (fresh by its ``since``): arrays, not a `Sample` a
    series, which cost a reader of 88,754 series at 10,000 racks 0.3 s to make. What
    `SiteModel.evaluate` reads, as it reads a `FreshLatest`."""

    def __init__(self, keys: list[tuple[str, str]], values: np.ndarray):
        self._keys, self._values = keys, np.append(values, math.nan)  # [-1]: unknown

    @classmethod
    def of(cls, latest: Mapping[tuple[str, str], Sample]) -> LatestValues:
        return cls(list(latest), np.array(
            [s.value if s.good else math.nan for s in latest.values()], float))

    @cached_property
    def _slots(self) -> dict[tuple[str, str], int]:
        return dict(zip(self._keys, range(len(self._keys))))

    def good_values(self, keys: Sequence[tuple[str, str] | None]) -> np.ndarray:
        get = self._slots.get
        return self._values[np.fromiter((get(k, -1) if k else -1 for k in keys), np.intp, len(keys))]

    def good_value(self, key: tuple[str, str]) -> float:
        return float(self._values[self._slots.get(key, -1)])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class SeriesKeys(tuple):
    """A fixed list of (device, series key), None where there is no such device, that a
    reader reads at every tick: a `LatestTable` finds their slots once, not each tick."""

    slots: np.ndarray | None = None  # in a LatestTable; -1 where not written yet
    resolved_at = -1  # the table's series count when found


class LatestTable:
    """The latest sample of each series of ``keys_read``, and its good value in arrays (NaN
    where the reading was not good), as polls write them. A tick then copies them in a
    fraction of a millisecond and reads 100,000 series by one index, where a dict of every
    sample costs 50 ms to copy and 1.4 us a lookup at 10,000 racks. Written and copied on
    the loop only."""

    def __init__(self, keys_read: frozenset[str], poll_s: Mapping[str, float]):
        # the series keys kept: the model's, and those the rules of the site's own watch
        # (added as polls first read them; a set only the loop adds to)
        self.keys_read, self._poll_s = set(keys_read), poll_s
        self.slots: dict[tuple[str, str], int] = {}
        self._samples: list[Sample] = []
        self._value = np.full(1024, math.nan)
        self._ts = np.zeros(1024)
        self._stale_after_s = np.zeros(1024)

    def put(self, key: tuple[str, str], s: Sample) -> None:
        slot = self.slots.get(key)
        if slot is None:
            slot = self._add(key)
        self._samples[slot] = s
        self._value[slot] = s.value if s.good else math.nan
        self._ts[slot] = s.ts

    def _add(self, key: tuple[str, str]) -> int:
        slot = len(self.slots)
        if slot + 1 >= len(self._value):  # one slot always unused: the -1 of an unknown key
            grow = len(self._value)
            self._value = np.concatenate([self._value, np.full(grow, math.nan)])
            self._ts = np.concatenate([self._ts, np.zeros(grow)])
            self._stale_after_s = np.concatenate([self._stale_after_s, np.zeros(grow)])
        self._stale_after_s[slot] = STALE_AFTER_POLLS * self._poll_s[key[0]]
        self._samples.append(None)
        self.slots[key] = slot
        return slot

    def at(self, now: float, latest: Mapping[tuple[str, str], Sample]) -> LatestArrays:
        """The samples and values as of ``now``, copied; ``latest`` answers for the series
        they do not hold."""
        n = len(self.slots) + 1  # and the unused slot, NaN, that -1 reads
        fresh = now - self._ts[:n] <= self._stale_after_s[:n]
        return LatestArrays(latest, self._poll_s, now, self, self._samples.copy(),
                            np.where(fresh, self._value[:n], math.nan))


class LatestArrays(FreshLatest):
    """`FreshLatest` whose samples and good values of a `LatestTable`'s series come from
    its copy: what the model computed from and what the rules judge are the same readings
    (a leak cleared by a poll meanwhile must not end the cause of the racks' alerts while
    the model still counts it)."""

    __slots__ = ("_samples", "_table", "_values")

    def __init__(self, latest, poll_s, now, table: LatestTable, samples: list[Sample],
                 values: np.ndarray):
        super().__init__(latest, poll_s, now)
        self._table, self._samples, self._values = table, samples, values

    def get(self, key: tuple[str, str], default: Sample | None = None) -> Sample | None:
        if key[1] not in self._table.keys_read:
            return super().get(key, default)
        slot = self._table.slots.get(key)  # a dict the loop only adds to: safe to read here
        if slot is None or slot >= len(self._samples):  # first read after the copy
            return default
        return self._judged(self._samples[slot], key[0])

    def holds(self, metric: str) -> bool:
        return metric in self._table.keys_read

    def good_values(self, keys: SeriesKeys | list) -> np.ndarray:
        if not isinstance(keys, SeriesKeys):
            keys = SeriesKeys(keys)  # found for this call only
        known = len(self._values) - 1
        if keys.slots is None or (keys.resolved_at < known and (keys.slots < 0).any()):
            get = self._table.slots.get
            slots = np.fromiter((get(k, -1) if k else -1 for k in keys), np.intp, len(keys))
            keys.slots = np.where(slots < known, slots, -1)  # added since this copy: not in it
            keys.resolved_at = known
        slots = keys.slots
        if keys.resolved_at > known:  # found in a later copy than this one
            slots = np.where(slots < known, slots, -1)
        return self._values[slots]


@dataclass(frozen=True, slots=True)
class Reading:
    """One metric as a collector read it, before the runtime adds topology tags."""

    metric: str
    value: float | None
    quality: Quality = Quality.GOOD
    raw: object = field(default=None, compare=False)  # register words / SNMP value, for probe
    labels: dict[str, str] = field(default_factory=dict)  # a table row: {"phase": "2"}

    @property
    def key(self) -> str:
        """The metric with its row labels, unique within one device: ``current_a{phase=2}``."""
        return series_key(self.metric, self.labels)


TOPOLOGY_TAGS = frozenset({"site", "room", "row", "rack", "device"})  # the rest are labels


def key_of(field: str, tags: dict[str, str]) -> str:
    """The series key of a stored field: its labels are the tags beyond the topology's."""
    if tags.keys() <= TOPOLOGY_TAGS:  # most series: no labels
        return field
    return series_key(field, {k: v for k, v in tags.items() if k not in TOPOLOGY_TAGS})


def series_key(metric: str, labels: dict[str, str]) -> str:
    if not labels:
        return metric
    return metric + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def check_limits(value: float | None, low: float | None, high: float | None) -> Quality:
    """Quality of a decoded value against a profile's plausible limits."""
    if value is None:
        return Quality.BAD
    if (low is not None and value < low) or (high is not None and value > high):
        return Quality.OUT_OF_RANGE
    return Quality.GOOD


POLL_DELAY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class PollTiming:
    """How late polls start against when they were due, over every device (the counts of
    a Prometheus histogram: ``counts[i]`` started at most ``POLL_DELAY_BUCKETS_S[i]`` late,
    the last any later), and the intervals skipped because a poll ran into the next one."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(POLL_DELAY_BUCKETS_S) + 1))
    late_s: float = 0.0  # the sum
    missed: int = 0

    def started(self, late_s: float) -> None:
        self.counts[bisect_left(POLL_DELAY_BUCKETS_S, late_s)] += 1
        self.late_s += late_s


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """How polling one device goes: what `/metrics`, the API and the unreachable rule read.
    Immutable: the loop replaces a device's record whole, so a reader in another thread (the
    web) sees each record as of one change, never half of one."""

    id: str
    kind: str
    poll_s: float
    state: str = "unknown"  # up | degraded (some points bad) | stale (poll overdue) | down
    # | unknown (never polled yet)
    since: float | None = None  # when the state last changed
    last_ok: float | None = None
    failures: int = 0  # consecutive
    error: str = ""
    polls_total: int = 0
    errors_total: int = 0
    last_poll_ms: float = 0.0
    retry_in_s: float = 0.0  # the current wait before the next poll (grows while down)
    due_at: float | None = None  # the poll under way (or the next one) must end by then
    points_bad: int = 0  # of the last poll that reached it
    points: int = 0
    stalled: bool = False  # the watchdog found no poll ending for too long

    def _now_in(self, state: str, at: float, **changes) -> DeviceHealth:
        """The record with ``changes``, in ``state`` since ``at`` unless it was already."""
        if self.state != state:
            changes.update(state=state, since=at)
        return replace(self, **changes)

    def watch(self, now: float, down_after_s: float) -> DeviceHealth:
        """The liveness watchdog: a poll that has not ended by ``due_at`` makes the device
        ``stale``, and ``down`` once ``down_after_s`` more went by, whatever its collector
        believes (a hung subscription, a half-open socket, a wedged await)."""
        if self.due_at is None or now <= self.due_at:
            return self
        silent_s = now - (self.last_ok or self.due_at)
        if now - self.due_at >= down_after_s:
            if not self.stalled:
                return replace(self, state="down", since=now, stalled=True,
                               error=f"no poll ended for {silent_s:.0f} s: its collector is stuck")
        elif self.state not in ("stale", "down"):
            return replace(self, state="stale", since=now,
                           error=f"no sample for {silent_s:.0f} s: its poll is overdue")
        return self

    def ok(self, now: float, poll_ms: float, points_bad: int = 0, points: int = 0
           ) -> DeviceHealth:
        """A poll that reached the device."""
        return self.heard(now, points_bad, points, polls_total=self.polls_total + 1,
                          last_poll_ms=poll_ms, retry_in_s=self.poll_s)

    def heard(self, at: float, points_bad: int = 0, points: int = 0, **changes) -> DeviceHealth:
        """The device answered at ``at`` (a poll of ours, or a collector's that a core reads
        from the store): ``up``, or ``degraded`` while some of its points read bad or out of
        range (the device answers; its map or its sensors do not)."""
        return self._now_in(
            "degraded" if points_bad else "up", at, last_ok=at, failures=0, stalled=False,
            error=f"reachable, {points_bad} of {points} points bad" if points_bad else "",
            points_bad=points_bad, points=points, **changes)

    def unheard(self, now: float, since: float, stale_after_s: float,
                down_after_s: float) -> DeviceHealth:
        """As a core judges a device from the store its collectors write: ``stale`` once no
        sample of it landed for ``stale_after_s``, ``down`` after ``down_after_s`` (counted
        from ``since`` for a device never heard of): its collector is stopped, or cannot
        reach it. The polls it missed count as failed, for the unreachable rule."""
        silent_s = now - (self.last_ok or since)
        if silent_s > down_after_s:
            changes = {} if self.stalled else {"state": "down", "since": now, "stalled": True}
            return replace(self, failures=int(silent_s // self.poll_s), **changes,
                           error=f"no sample in the store for {silent_s:.0f} s: its collector "
                                 "is stopped or cannot reach it")
        if silent_s > stale_after_s and self.state in ("up", "degraded"):
            return replace(self, state="stale", since=now,
                           error=f"no sample in the store for {silent_s:.0f} s")
        return self

    def fail(self, now: float, error: str) -> DeviceHealth:
        """A poll that did not reach the device."""
        return self._now_in("down", now, failures=self.failures + 1, error=error,
                            stalled=False, polls_total=self.polls_total + 1,
                            errors_total=self.errors_total + 1)


def backoff_s(poll_s: float, failures: int, grace: int, cap_s: float) -> float:
    """Wait before the next poll: the poll interval until ``grace`` polls failed in a row
    (the unreachable alert needs them), then doubling per failure up to ``cap_s``."""
    if failures < grace:
        return poll_s
    return min(poll_s * 2 ** (failures - grace + 1), max(cap_s, poll_s))


def worth_logging(count: int) -> bool:
    """Whether the ``count``-th of a repeated event gets a line: the 1st, 10th, 100th, 1000th
    and every 10,000th, so that a flooding device cannot flood the log."""
    return count in (1, 10, 100, 1000) or count % 10_000 == 0
