"""The running system: poll loops, batched writes, the model tick, alerts and notifications.

Every device has its own asyncio task, interval and timeout, so a dead or slow device never
delays another. Samples go to the in-memory latest view at once and to the store in batches
through the disk spool. Every model tick turns the latest good samples into derived values,
writes them back to the store and evaluates the alert rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from aidc.core.config import DEVICE_KINDS, Site
from aidc.core.derive import SiteModel, SiteStatus
from aidc.core.files import private_dir
from aidc.core.metrics import (
    BAD_QUALITIES,
    STALE_AFTER_POLLS,
    DeviceHealth,
    FreshLatest,
    LatestTable,
    PollTiming,
    Quality,
    Reading,
    Sample,
    SampleColumns,
    SeriesKeys,
    backoff_s,
    worth_logging,
)
from aidc.core.snapshot import rack_power_history
from aidc.core.store import Store, open_store
from aidc.core.store.spool import SpooledWriter
from aidc.core.topology import Topology, shard_of
from alerts.evaluate import ActiveAlerts, Alert, ConditionColumn, Evaluator
from alerts.inhibit import inhibit
from alerts.notify import Notifier
from alerts.outbox import Outbox
from alerts.rules import (
    DEAD_LETTER_ALERT_S,
    RULE_KEYS_READ,
    Inputs,
    Rule,
    StoreState,
    conditions_by_group,
    paging_tests,
    prepare_rack_rules,
)
from alerts.silences import Silences
from collectors import (
    Collector,
    DeviceUnreachable,
    collector_class,
    import_protocols,
    make_collector,
)

log = logging.getLogger("aidc.runtime")
Role = Literal["all", "collect", "core"]
STOP_TIMEOUT_S = 10.0  # the longest a stopping runtime waits for its tasks
WATCHDOG_S = 0.5  # how often the liveness watchdog looks at every device
LAG_WINDOW_S = 60.0  # the loop lag reported is the worst over this window
# devices' changes of state logged a line each in a second; beyond (a switch down at a large
# site: 20,000 lines), the rest are counted in one line at the second's end
STATE_LINES_A_SECOND = 20
CANCEL_GRACE_S = 1.0  # what a cancelled poll gets to close its connections when stopping
# polls start this many at a time, the loop running between: a device's first poll takes
# some 0.2 ms of the loop before its first wait, and 21,752 at once held it for 4 s (the
# watchdog then saw every device as overdue, and the first tick came late). Each step of a
# tick that falls in the start waits a round of the loop: at 10,000 racks, with 100 a round,
# the first tick took 2.5-2.9 s (its alerting 1.8-2.1), with 20, 1.0-1.2 s (0.6-0.75)
START_BATCH = 20
TAKE_BATCH = 100  # devices a core takes from a read of the store between rounds of the loop


async def bounded(awaitable, timeout_s: float):
    """Await ``awaitable`` for at most ``timeout_s``; TimeoutError after that.

    Unlike ``asyncio.wait_for``, it never waits for a cancelled task to end: a protocol
    library that swallows the cancellation (asyncua's teardown does) cannot hold the caller.
    The overstaying task is cancelled and left to finish on its own; its outcome is dropped.
    When the caller itself is cancelled (the runtime stops), the task is cancelled too and
    given CANCEL_GRACE_S to close its connections.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_drop_outcome)
        await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_drop_outcome)
        raise TimeoutError(f"no answer within {timeout_s:g} s (the collector did not give up)")
    if task.cancelled() or isinstance(task.exception(), asyncio.CancelledError):
        # nobody cancelled the caller: a cancellation from inside the collector is its bug,
        # and must not end the caller's poll loop as if the runtime were stopping
        raise RuntimeError("the collector's read was cancelled from within")
    try:
        return task.result()
    finally:  # a failed read's traceback holds this frame, which must not hold the task
        del task, done  # holding the exception: a cycle (37 objects) a failed poll for the GC


async def others_first() -> None:
    """Let every other task that is ready, or whose timer expired, run before this one
    goes on: ``sleep(0)`` would queue it ahead of the timers (the loop looks at them after
    it), and the polls waiting on them would wait for its next step too."""
    await asyncio.sleep(1e-6)


def _drop_outcome(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("event=abandoned_task_ended error=%r", task.exception())


# a collector's sample lands in the store within its flush interval and this (the write):
# a core reads that far back, and judges a sample stale that much later
STORE_LATE_S = 2.0
FULL_READ_S = 60.0  # a core reads every series this often, those it needs every flush
PROBE_REUSE_S = 2.0  # a probe ended this recently is given again, not read again
MIN_TICK_GAP_S = 0.25  # between two ticks' starts, however often a flag flips
POLLS_A_WAKE = 200  # polls woken at once, about: their starts within some 50 ms
MIN_POLL_GRID_S = 0.25


def poll_phase(device_id: str) -> float:
    """Where in its poll interval a device is polled, from 0 to 1: a stable hash of its id,
    so that a site's polls are spread evenly over the interval. Every first poll starts at
    once (the first tick waits for them); had the polls then kept the cadence of that burst,
    at 2,000 racks 4,352 would fall due within a second or two of every five, queued on one
    loop (as Prometheus offsets each target's scrapes by a hash, for the same reason)."""
    digest = hashlib.blake2b(device_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32


def poll_grid_s(devices: int, poll_s: float) -> float:
    """The step of the grid a process's polls wake on (see `poll_wake_at`): as coarse as
    lets about POLLS_A_WAKE polls wake at once, from MIN_POLL_GRID_S to a quarter of the
    interval (a poll starts at most that long after it is due). Each wake-up of the loop
    costs CPU of its own: 200 SNMP devices, each woken at its own phase, took 1.14 ms of the
    process's CPU a poll, 0.56 on a 0.25 s grid and 0.46 on this one's 1.25 s
    (benchmarks/versus.py); at 2,000 racks (4,352 devices, a 0.25 s grid) wakes of some 220
    polls started 99 % of them within 50 ms."""
    return min(poll_s / 4, max(MIN_POLL_GRID_S, poll_s * POLLS_A_WAKE / max(devices, 1)))


def poll_wake_at(due_at: float, grid_s: float) -> float:
    """When a poll due at ``due_at`` (the loop's clock) starts: the next step of the grid,
    the same time for every poll due within one step."""
    return math.ceil(due_at / grid_s) * grid_s


def flipped(test: Callable[[float], object], new: Sample, old: Sample | None) -> bool:
    """Whether ``new`` changes what a flag's ``test`` made of ``old`` (both good)."""
    return old is not None and old.good and new.good and test(old.value) != test(new.value)


def read_deadline_s(device, timeout_s: float, units_sharing: int = 1) -> float:
    """The longest the runtime waits on one read of ``device`` (a poll's, or a probe's on a
    connection of its own): its collector gives up by itself within ``timeouts_a_read``
    timeouts; then a timeout more, and one for each unit queued for the same Modbus gateway
    (``units_sharing``, itself included)."""
    timeouts = collector_class(device.protocol).timeouts_a_read + 1 + units_sharing
    return max(timeouts * timeout_s, 1.0)


@dataclass(frozen=True, slots=True)
class Probe:
    """One device read on demand: each metric as read (raw, value, quality), or why not."""

    device: str
    at: float
    elapsed_ms: float
    readings: tuple[Reading, ...]
    error: str | None

    @property
    def done_at(self) -> float:
        return self.at + self.elapsed_ms / 1000


@dataclass(frozen=True, slots=True)
class TickView:
    """What the web reads of the runtime, published whole at the end of each tick (and
    when an alert is acknowledged): the tick's results and the alerts they left, so that
    an answer never pairs one tick's figures with another's alerts."""

    status: SiteStatus | None  # None before the first tick
    active: ActiveAlerts

    @property
    def alerts(self) -> tuple[Alert, ...]:
        """Pending and firing, oldest first (made when first read)."""
        return self.active.alerts


class NotAnswering(Exception):
    """A call from another thread that the runtime's loop did not take (stopped or busy)."""


class Runtime:
    """``role`` "all" runs everything in one process. A large site splits it: ``collect``
    polls the devices of one ``shard`` (i, n) and writes them to the store, which must then
    be InfluxDB; ``core`` polls nothing, reads the collectors' samples from the store as
    they land, and runs the model, the alerts and the web app on them."""

    def __init__(self, site: Site, data_dir: Path, store: Store | None = None,
                 role: Role = "all", shard: tuple[int, int] = (1, 1)):
        private_dir(data_dir)
        self.site, self.data_dir, self.role, self.shard = site, data_dir, role, shard
        self.topology = Topology(site)
        self.store = store or open_store(site.store, data_dir)
        self.writer = SpooledWriter(self.store, data_dir / "spool.sqlite")
        self.latest: dict[tuple[str, str], Sample] = {}  # (device, Reading.key) -> newest
        self.series_of: dict[str, tuple[str, ...]] = {}  # device -> its keys in `latest`
        self.ever_good: set[tuple[str, str]] = set()  # series that have read good at least once
        self.polled = [] if role == "core" else [
            d for d in site.devices if shard_of(d, shard[1]) == shard[0]]
        self.poll_grid_s = poll_grid_s(len(self.polled),
                                       min(map(site.poll_s, self.polled), default=1.0))
        self.health = {d.id: DeviceHealth(d.id, d.kind, site.poll_s(d))
                       for d in (self.polled if role == "collect" else site.devices)}
        self.model = SiteModel(site)
        # a core's last read of the store that worked, and since then the last that failed
        # and why: (read at, failed at, error), replaced whole (the web thread reads it)
        self.store_read: tuple[float | None, float | None, str | None] = (None, None, None)
        # a core reads a sample a flush and a read of the store after its poll: it is
        # judged stale that much later
        self.late_s = STORE_LATE_S + 2 * site.store.flush_s if role == "core" else 0.0
        self._poll_s = {d: h.poll_s + self.late_s / STALE_AFTER_POLLS
                        for d, h in self.health.items()}
        # of `latest`, the series the model and the built-in rules read, in arrays
        self.model_inputs = LatestTable(self.model.keys_read | RULE_KEYS_READ, self._poll_s)
        self.alerts_db = data_dir / "alerts.sqlite"  # alert state, history and the outbox
        self.outbox = Outbox(self.alerts_db, site.alerts.webhooks)
        self.notifier = Notifier(self.topology, site.alerts, self.outbox, site.web.external_url)
        # the series each rule over a device's metric (the pack's and the site's own) watches,
        # indexed as polls first read them: a tick need not scan every series of a large site
        # (1.3 million at 10,000 racks)
        self._metric_rules: dict[str, list[tuple[str, Rule]]] = {}  # device kind -> its rules
        for name, rule in self.notifier.rules.items():
            if rule.enabled and rule.metric is not None and rule.kind in DEVICE_KINDS:
                self._metric_rules.setdefault(rule.kind, []).append((name, rule))
        self.watched_series: dict[str, dict[tuple[str, str], None]] = {}  # rule -> series
        self._watched_keys: dict[str, SeriesKeys] = {}  # rule -> its series, as the tick reads
        self.silences = Silences(self.outbox)
        self.evaluator = Evaluator(  # offers reminders; the notifier sends each where due
            self.outbox, repeat_s=site.alerts.shortest_repeat_s, notify=self.notifier.notify
        )
        # what the web reads, published whole and never changed: before the first tick, the
        # alerts the last run left
        self.view = TickView(None, self.evaluator.alerts())
        # read by /metrics from the web thread (the outbox's SQLite belongs to the loop);
        # from the file at start: a backlog left by the last run shows before the first tick
        self._count_outbox(time.time())
        self.started_at = time.time()
        self.ticks = 0
        self.last_tick_ms = self.last_alerting_ms = 0.0
        self.bad_series: dict[tuple[str, str], Sample] = {}  # of latest: read bad or out of range
        self._pending: list[Sample] = []
        self._pending_columns: list[SampleColumns] = []  # the ticks' rack series
        self._writing_since: float | None = None  # of the oldest sample being written now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_errors: dict[tuple[str, str], int] = {}
        self._stopping = False
        self.loop_lag_s = 0.0  # worst over LAG_WINDOW_S: the tick and polls were that late
        self.poll_timing = PollTiming()
        self._probe_locks: dict[str, asyncio.Lock] = {}
        self._probes: dict[str, Probe] = {}  # each device's last probe
        self._not_heard_from = set(self.health)  # no poll of theirs ended yet
        self._all_heard_from = asyncio.Event()
        # a poll that flips one of these (a leak, a source on battery) ticks the model now
        self._flags = paging_tests(self.notifier.rules)  # kind -> metric -> test
        self._flag_flipped = asyncio.Event()
        self._state_lines = 0  # devices' changes of state logged this second
        self._states_unlogged: dict[str, list[str]] = {}  # state -> devices, past the lines

    @property
    def status(self) -> SiteStatus | None:
        """The last tick's results (None before the first)."""
        return self.view.status

    def acknowledge(self, fingerprint: str, by: str) -> Alert:
        """On the loop: an operator's acknowledgement, published at once."""
        alert = self.evaluator.acknowledge(fingerprint, by)
        self.view = TickView(self.view.status, self.evaluator.alerts())
        return alert

    def call_soon(self, fn, *args, timeout_s: float = 5.0):
        """Run ``fn(*args)`` on the runtime's event loop (which owns the alert state and its
        SQLite handles) from another thread, such as the web server's, and return its result
        (awaited, if ``fn`` is a coroutine function)."""
        if self._loop is None or self._stopping:
            raise NotAnswering("the runtime is not running")

        async def call():
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result

        try:
            return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout_s)
        except TimeoutError:
            raise NotAnswering(f"the runtime did not answer within {timeout_s:g} s") from None

    # ------------------------------------------------------------------ tasks

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then flush what is pending and close cleanly."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._loop_error)
        tasks = [
            asyncio.create_task(self._flush_forever(), name="writer"),
            asyncio.create_task(self._watch_forever(), name="watchdog"),
        ]
        if self.role != "collect":
            tasks += [
                asyncio.create_task(self._tick_forever(), name="model"),
                asyncio.create_task(self.outbox.deliver_forever(stop), name="notifier"),
                asyncio.create_task(self.notifier.tell_groups_forever(stop), name="alert-groups"),
                asyncio.create_task(self.notifier.resend_to_alertmanager(
                    self.evaluator.active_alerts, stop), name="alertmanager-resend"),
            ]
        if self.role == "core":
            tasks.append(asyncio.create_task(self._read_store_forever(), name="store-reader"))
        log.info("event=runtime_started site=%s role=%s shard=%d/%d devices=%d polled=%d",
                 self.site.site, self.role, *self.shard, len(self.site.devices), len(self.polled))
        try:
            await asyncio.to_thread(import_protocols, {d.protocol for d in self.polled})
            for i, d in enumerate(self.polled):
                if i % START_BATCH == 0:
                    if i:
                        await asyncio.sleep(0)  # the polls started so far, answers and timers run
                    if stop.is_set():  # (also while the protocols were imported)
                        break
                tasks.append(asyncio.create_task(self._poll(d), name=f"poll-{d.id}"))
            await stop.wait()
        finally:
            # Python 3.11's wait_for can lose a cancel that races with its inner call ending
            # (bpo-42130): every loop also checks _stopping, and the wait is bounded
            self._stopping = True
            for t in tasks:
                t.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for t in stuck:
                log.error("event=task_not_stopping task=%s", t.get_name())
            await asyncio.to_thread(self._write, self._take_pending())
            self.writer.close()
            self.store.close()
            self.outbox.close()
            self._log_states_unlogged()
            log.info("event=runtime_stopped")

    def _watch(self, device, key: str, sample: Sample) -> None:
        """Index a series a poll reads first (or again after a change of the device's
        series) for the rules over a metric that watch it."""
        for name, rule in self._metric_rules[device.kind]:
            if rule.watches(name, sample):
                self.watched_series.setdefault(name, {})[(device.id, key)] = None
                self._watched_keys.pop(name, None)  # made again at the next tick
                self.model_inputs.keys_read.add(key)  # kept in arrays: judged as a column
                self.model_inputs.put((device.id, key), sample)

    async def _poll(self, device) -> None:
        tags = self.topology.device_tags[device.id]
        loop = asyncio.get_running_loop()
        next_at = wake_at = loop.time()
        # a collector respects its own timeout; this deadline only guards against a library
        # that does not. Units behind one Modbus gateway queue for it, so each may wait a
        # timeout per unit ahead.
        endpoint = f"{device.host}:{device.port}"
        sharing = len(self.topology.devices_behind_gateway.get(endpoint, [device.id]))
        deadline_s = read_deadline_s(device, self.site.timeout_s(device), sharing)
        collector = make_collector(device, self.site.timeout_s(device), self.site.poll_s(device))
        phase: float | None = poll_phase(device.id)
        try:
            while not self._stopping:
                started, now = loop.time(), time.time()
                if self.health[device.id].polls_total:
                    self.poll_timing.started(max(0.0, started - wake_at))
                self._changed(device.id, due_at=now + deadline_s)
                try:
                    readings = await bounded(collector.read(), deadline_s)
                except (DeviceUnreachable, TimeoutError) as e:
                    self._device_failed(device, now, str(e) or type(e).__name__)
                    collector = await self._renew(device, collector, deadline_s)
                except Exception as e:  # a bug: keep polling the others, log the traceback
                    log.exception("event=poll_error device=%s", device.id)
                    self._device_failed(device, now, f"internal error: {e!r}")
                    collector = await self._renew(device, collector, deadline_s)
                else:
                    bad = sum(r.quality is not Quality.GOOD for r in readings)
                    keys = tuple(r.key for r in readings)  # (series_key() each: made once)
                    samples = [Sample(device.kind, tags | r.labels if r.labels else tags,
                                      r.metric, r.value, now, r.quality) for r in readings]
                    self.health[device.id] = self.health[device.id].ok(
                        now, (loop.time() - started) * 1000, bad, len(readings))
                    self._take(device, keys, keys, samples)
                    self._pending += samples
                self._heard_from(device.id)
                health = self.health[device.id]
                retry_in_s = backoff_s(health.poll_s, health.failures,
                                       self.site.alerts.unreachable_intervals,
                                       self.site.defaults.backoff_max_s)
                next_at += retry_in_s
                if next_at < loop.time():  # missed ticks are skipped, not bunched
                    self.poll_timing.missed += 1 + int((loop.time() - next_at) // retry_in_s)
                    next_at = loop.time() + retry_in_s
                if phase is not None:  # once, after the first: to the device's own phase
                    next_at, phase = next_at + phase * retry_in_s, None
                wake_at = poll_wake_at(next_at, self.poll_grid_s)
                self._changed(device.id, retry_in_s=retry_in_s,
                              due_at=time.time() + (wake_at - loop.time()) + deadline_s)
                await asyncio.sleep(wake_at - loop.time())
        finally:
            with contextlib.suppress(Exception, TimeoutError):
                await bounded(collector.close(), deadline_s)

    def _take(self, device, series: tuple[str, ...], keys: tuple[str, ...],
              samples: list[Sample]) -> None:
        """A device's samples as newly read (by its poll, or from the store by a core),
        with their series keys, into the latest view, the model's table and the watches;
        ``series``: the keys of every series the device has."""
        new_series = device.kind in self._metric_rules and series != self.series_of.get(device.id)
        self.series_of[device.id] = series
        flags = self._flags.get(device.kind)
        inputs = self.model_inputs
        for k, s in zip(keys, samples):
            key = (device.id, k)
            if s.quality is Quality.GOOD:
                self.ever_good.add(key)
            if flags and s.field in flags and flipped(flags[s.field], s, self.latest.get(key)):
                self._flag_flipped.set()
            self.latest[key] = s
            if k in inputs.keys_read:
                inputs.put(key, s)
            if new_series:
                self._watch(device, k, s)
            if s.quality in BAD_QUALITIES:
                self.bad_series[key] = s
            elif self.bad_series:
                self.bad_series.pop(key, None)

    def _heard_from(self, device_id: str) -> None:
        if self._not_heard_from:
            self._not_heard_from.discard(device_id)
            if not self._not_heard_from:
                self._all_heard_from.set()

    async def probe(self, device_id: str) -> Probe:
        """Read one device now, once, on a connection of its own, as `aidc probe` does; what
        it read goes nowhere but the answer. One probe of a device at a time, and one that
        ended less than PROBE_REUSE_S ago is given again: clicks in a row (or callers waiting
        on the same probe) cost the device one read."""
        device = self.topology.device_by_id[device_id]
        async with self._probe_locks.setdefault(device_id, asyncio.Lock()):
            last = self._probes.get(device_id)
            if last is not None and time.time() - last.done_at < PROBE_REUSE_S:
                return last
            loop, at = asyncio.get_running_loop(), time.time()
            started, deadline_s = loop.time(), read_deadline_s(device, self.site.timeout_s(device))
            collector = make_collector(device, self.site.timeout_s(device))
            readings, error = (), None
            try:
                readings = tuple(await bounded(collector.read(), deadline_s))
            except (DeviceUnreachable, TimeoutError) as e:
                error = str(e) or f"no answer within {deadline_s:g} s"
            finally:
                with contextlib.suppress(Exception, TimeoutError):
                    await bounded(collector.close(), deadline_s)
            probe = Probe(device_id, at, (loop.time() - started) * 1000, readings, error)
            self._probes[device_id] = probe
            log.info("event=device_probed device=%s ms=%.0f readings=%d error=%s", device_id,
                     probe.elapsed_ms, len(readings), error)
            return probe

    async def _renew(self, device, collector: Collector, deadline_s: float) -> Collector:
        """After a failed poll: close the collector's connections, or, if even closing hangs,
        abandon it for a new one (its stuck task was cancelled and is left to end alone)."""
        try:
            await bounded(collector.close(), deadline_s)
            return collector
        except TimeoutError:
            log.error("event=collector_abandoned device=%s reason=close_hung", device.id)
        except Exception:
            log.exception("event=collector_close_error device=%s", device.id)
        return make_collector(device, self.site.timeout_s(device), self.site.poll_s(device))

    async def _watch_forever(self) -> None:
        """Liveness, whatever a protocol library believes: a device whose poll has not
        finished by its deadline is stale, and down after ``unreachable_intervals`` more poll
        intervals (a hung subscription, a half-open socket, a wedged await, a dead task).
        Its own sleep measures the event loop's lag: how late a ready task starts."""
        intervals = self.site.alerts.unreachable_intervals
        loop = asyncio.get_running_loop()
        lags: deque[tuple[float, float]] = deque()  # (loop time, lag s) over LAG_WINDOW_S
        logged_at = loop.time()  # of the last count of the changes of state not logged
        while not self._stopping:
            asleep_at = loop.time()
            await asyncio.sleep(WATCHDOG_S)
            lags.append((loop.time(), max(0.0, loop.time() - asleep_at - WATCHDOG_S)))
            while lags[0][0] < lags[-1][0] - LAG_WINDOW_S:
                lags.popleft()
            self.loop_lag_s = max(lag for _, lag in lags)
            now = time.time()
            for h in self.health.values():
                if (watched := h.watch(now, intervals * h.poll_s)) is not h:
                    self.health[h.id] = watched  # (a value replaced: the dict keeps its size)
                    if watched.state != h.state:
                        self._log_state(watched.state, h.id, watched.error)
            if loop.time() - logged_at >= 1.0:
                self._log_states_unlogged()
                logged_at = loop.time()

    def _watched(self) -> dict[str, SeriesKeys]:
        """Each rule over a device metric -> the series it watches, their slots in the tick's
        arrays found once while the series stay the same."""
        for name, series in self.watched_series.items():
            if name not in self._watched_keys:
                self._watched_keys[name] = SeriesKeys(series)
        return self._watched_keys

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio's own reports (a protocol library that failed on what a device sent, a
        task nobody awaited): one structured line each, the first of a kind with its
        traceback, then at the 10th, 100th, ... with the count: a flooding device cannot
        flood the log."""
        message, error = context.get("message", ""), context.get("exception")
        key = (message, type(error).__name__)
        count = self._loop_errors[key] = self._loop_errors.get(key, 0) + 1
        if worth_logging(count):
            log.warning("event=loop_error count=%d message=%r error=%r", count, message[:200],
                        error, exc_info=error if count == 1 else None)  # fmt: skip

    def _changed(self, device_id: str, **changes) -> None:
        """A device's health record replaced by one with ``changes`` (records are
        immutable: the web reads them from its threads)."""
        self.health[device_id] = replace(self.health[device_id], **changes)

    def _device_failed(self, device, now: float, error: str) -> None:
        health = self.health[device.id]
        if health.state != "down":
            self._log_state("unreachable", device.id, error)
        self.health[device.id] = health.fail(now, error)

    def _log_state(self, state: str, device_id: str, error: str) -> None:
        """A device's change of state: a line each, up to STATE_LINES_A_SECOND a second;
        the rest are counted by ``_log_states_unlogged``."""
        if self._state_lines < STATE_LINES_A_SECOND:
            self._state_lines += 1
            log.warning("event=device_%s device=%s error=%r", state, device_id, error)
        else:
            self._states_unlogged.setdefault(state, []).append(device_id)

    def _log_states_unlogged(self) -> None:
        """One line a state for the changes of state a second that had no line of their own;
        each device's state and error are in /api/v1/devices."""
        for state, devices in self._states_unlogged.items():
            log.warning("event=devices_%s count=%d devices=%s%s (not logged one by one)",
                        state, len(devices), ",".join(devices[:5]),
                        f" and {len(devices) - 5} more" if len(devices) > 5 else "")
        self._states_unlogged, self._state_lines = {}, 0

    def _take_pending(self) -> list[Sequence[Sample]]:
        """What polls and ticks queued, in batches of store.batch_size (on the loop only)."""
        pending, self._pending = self._pending, []
        columns, self._pending_columns = self._pending_columns, []
        size = self.site.store.batch_size
        return [*(pending[i:i + size] for i in range(0, len(pending), size)),
                *(part for c in columns for part in c.split(size))]

    def _write(self, batches: list[Sequence[Sample]]) -> None:
        try:
            for batch in batches:  # in a worker thread: store I/O never blocks the loop
                self._writing_since = (batch.ts if isinstance(batch, SampleColumns)
                                       else batch[0].ts)  # (columns: never made samples)
                self.writer.write(batch)
        finally:
            self._writing_since = None

    def store_behind_s(self, now: float) -> float:
        """How far behind the store is: the age of the oldest sample it has not taken yet,
        queued, being written or spooled (0 when it holds everything). The samples of a
        batch, and the batches, are queued in the order of their times, near enough."""
        # the web thread asks too: the lists are swapped, not cleared
        pending, columns = self._pending, self._pending_columns
        waiting = [t for t in (self.writer.spooled_since, self._writing_since,
                               pending[0].ts if pending else None,
                               columns[0].ts if columns else None) if t is not None]
        return max(0.0, now - min(waiting)) if waiting else 0.0

    async def _read_store_forever(self) -> None:
        """A core's polls: every ``flush_s``, the samples the collectors wrote since the
        last read (from STORE_LATE_S and a flush before it) into the latest view, as a poll
        would put them, and each device judged by its newest sample. A write that lands
        later is not read: the poll after it is. Each read takes every series without
        labels and those the model and the rules read; every FULL_READ_S, every series (a
        PDU's outlets, most of a site's, for the device pages and the quality rule). While
        the store cannot be read, nothing is judged: its outage is not the devices'."""
        intervals, flush_s = self.site.alerts.unreachable_intervals, self.site.store.flush_s
        newest_s = max((h.poll_s for h in self.health.values()), default=0) + self.late_s
        since, full_at, unlabelled = self.started_at - newest_s, -math.inf, frozenset()
        failures = 0
        while not self._stopping:
            now = time.time()
            full = now - full_at >= FULL_READ_S
            keys = None if full else unlabelled | self.model_inputs.keys_read
            try:
                fresh, keys_read = await asyncio.to_thread(
                    self._read_store, min(since, now - newest_s) if full else since, keys)
            except Exception as e:  # noqa: BLE001  (down, or answering garbage: read again)
                failures += 1
                self.store_read = (self.store_read[0], time.time(), str(e)[:300])
                if worth_logging(failures):
                    log.warning("event=store_unread count=%d error=%r", failures, str(e)[:300])
            else:
                failures, since = 0, now - STORE_LATE_S - flush_s
                self.store_read = (now, None, None)
                await self._take_from_store(fresh)
                if full:
                    full_at, unlabelled = now, frozenset(k for k in keys_read if "{" not in k)
                for h in self.health.values():
                    self.health[h.id] = h.unheard(
                        now, self.started_at, STALE_AFTER_POLLS * h.poll_s + self.late_s,
                        intervals * h.poll_s + self.late_s)
            await asyncio.sleep(flush_s)

    def _read_store(self, since: float, keys: frozenset[str] | None
                    ) -> tuple[dict[str, list[tuple[str, Sample]]], set[str]]:
        """In a worker thread: the samples of the site's devices written since ``since``
        (of the series with ``keys``), device by device, as (series key, sample); and the
        series keys read (made here, not on the loop: 257,000 series at 2,000 racks)."""
        by_device: dict[str, list[tuple[str, Sample]]] = {}
        keys_read: set[str] = set()
        for (device_id, key), s in self.store.latest(since, keys).items():
            if device_id in self.health:
                by_device.setdefault(device_id, []).append((key, s))
                keys_read.add(key)
        return by_device, keys_read

    async def _take_from_store(self, by_device: dict[str, list[tuple[str, Sample]]]) -> None:
        """What a core read, device by device, as its polls would have taken it: only the
        series newer than those it has, each device heard of at its newest sample. The loop
        runs between every TAKE_BATCH devices: a read of every series of a 2,000-rack site
        (257,000) held it 0.5-0.7 s in one go, 0.15-0.35 s so (the garbage collector's
        passes over the new samples)."""
        for i, (device_id, news) in enumerate(by_device.items()):
            if i % TAKE_BATCH == 0 and i:
                await others_first()
            latest = self.latest
            news = [(k, s) for k, s in news
                    if (old := latest.get((device_id, k))) is None or s.ts > old.ts]
            if not news:
                continue  # nothing newer than what was read before
            known = self.series_of.get(device_id, ())
            keys, samples = zip(*news)
            added = set(keys).difference(known)  # the read's other series: as they were
            series = tuple(sorted((*known, *added))) if added else known
            self._take(self.topology.device_by_id[device_id], series, keys, list(samples))
            newest = max(s.ts for s in samples)  # of the device's last poll the store had
            polled = [s for s in samples if s.ts == newest]
            self.health[device_id] = self.health[device_id].heard(
                newest, sum(not s.good for s in polled), len(polled))
            self._heard_from(device_id)

    async def _flush_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.site.store.flush_s)
            await asyncio.to_thread(self._write, self._take_pending())

    async def _tick_forever(self) -> None:
        """The first tick as soon as every device's first poll has ended (answered or not),
        at most a tick interval after the start, its peak window holding what the store
        kept from before the start; then one every tick interval, or sooner when a poll
        flips a critical flag: a leak pages a poll after it starts, not a tick later."""
        prepared = asyncio.create_task(asyncio.to_thread(self._before_first_tick))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_heard_from.wait(), self.site.model.tick_s)
        await prepared  # bounded by the store's own timeouts; the tick owns the peaks next
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            self._flag_flipped.clear()  # the tick reads what the polls have read until now
            try:
                await self.tick(time.time())
            except Exception:
                log.exception("event=model_tick_error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flag_flipped.wait(), self.site.model.tick_s)
            await asyncio.sleep(started + MIN_TICK_GAP_S - loop.time())

    # ------------------------------------------------------------------ the model tick

    def _before_first_tick(self) -> None:
        """What the first tick needs that is not a poll's, while the first polls run: the
        rack rules' subjects, and the peak window as the store kept it. Capacity holds the
        peak of the whole window, restart or not: a runtime that started with an empty window
        would show a restarted site more headroom than it has."""
        with contextlib.suppress(Exception):  # (a bug: the tick's own try says which)
            prepare_rack_rules(self.site, self.topology, self.notifier.rules)
        try:
            self.model.peaks.extend(rack_power_history(self.model, self.store, time.time()))
        except Exception as e:  # noqa: BLE001  (a store down or broken: the window starts empty)
            log.warning("event=peak_history_unread error=%r", str(e)[:300])

    def _count_outbox(self, now: float) -> None:
        self.notifier_backlog = self.outbox.backlog()
        self.notifier_oldest_s = self.outbox.oldest_age_s(now)
        self.notifier_dead_letters, self.notifier_dead_lately = self.outbox.dead_letter_counts(
            since=now - DEAD_LETTER_ALERT_S)
        self.notifier_groups_held = self.notifier.groups_held()

    def _evaluate(self, latest: FreshLatest, now: float) -> tuple[
            SiteStatus, list[Sample], SampleColumns]:
        return (status := self.model.evaluate(latest, now)), *self.model.derived_series(status)

    def fresh_latest(self, now: float) -> FreshLatest:
        """The latest samples as of ``now``, a good one not refreshed for 2.5 of its
        device's polls read as stale: what the web reads (a lookup is safe from its threads)."""
        return FreshLatest(self.latest, self._poll_s, now)

    async def tick(self, now: float) -> SiteStatus:
        """One model tick. The model runs in a worker thread on a copy of its inputs, so that
        polls go on meanwhile (at 10,000 racks it takes 15-30 ms); the rules judge the same
        copy (the outlets, when the model sums them, from a copy of every latest sample) on
        the loop, which owns the alert state; the polls run between each group of rules, the
        inhibition, the evaluator and publishing. A rule over every rack goes through them
        as one column (alerts.evaluate.ConditionColumn): in a storm, 10,000 racks' alerts that
        stay as they were cost each stage a few ms, not 15-50."""
        t0 = time.perf_counter()
        inputs = self.model_inputs.at(now, dict(self.latest) if self.model.reads_outlets
                                      else self.latest)
        status, derived, rack_series = await asyncio.to_thread(self._evaluate, inputs, now)
        self._pending.extend(derived)
        self._pending_columns.append(rack_series)
        t1 = time.perf_counter()
        w = self.writer
        store = StoreState(w.store_up, w.store_error, w.spooled_samples(), w.max_samples,
                           w.dropped_samples, w.rejected_samples, w.last_loss_at,
                           self.store_behind_s(now))
        conditions, columns, complete = [], [], True
        for found in conditions_by_group(Inputs(  # the alerts as the last tick (or an
                # acknowledgement) left them
                self.site, list(self.health.values()), status, inputs, self.evaluator.is_active,
                store, now, self.notifier_dead_lately,
                alerting_rules=self.evaluator.alerting_rules(), bad_series=self.bad_series,
                given_topology=self.topology, derived=[*derived, rack_series],
                watched=self._watched(), given_rules=self.notifier.rules)):
            for c in found or ():
                (columns if isinstance(c, ConditionColumn) else conditions).append(c)
            complete &= found is not None  # a group that failed resolves nothing
            await others_first()
        try:
            conditions = inhibit(self.topology, conditions, status.rack_limiting, columns)
        except Exception:  # a bug here must cost extra pages, never the tick
            log.exception("event=inhibit_error")
        await others_first()
        conditions = self.silences.apply(conditions, now, columns)
        # notifications commit with the state change; a rule that failed resolves nothing
        self.evaluator.step(now, conditions, hold_absent=not complete, columns=columns)
        await others_first()  # (an acknowledgement meanwhile publishes its own view)
        self._count_outbox(now)
        self.view = TickView(status, self.evaluator.alerts())
        self.ticks += 1
        t2 = time.perf_counter()
        self.last_tick_ms, self.last_alerting_ms = (t2 - t0) * 1000, (t2 - t1) * 1000
        return status
