"""Durable outbox: notifications as SQLite rows (WAL), delivered over HTTP until accepted.

Guarantees:

- **Nothing lost.** A row is committed before anything is sent (with the evaluator's state
  change, in one transaction) and deleted only after a 2xx. Connection errors, timeouts, 408,
  429 and 5xx are retried with exponential backoff and full jitter, honouring ``Retry-After``;
  the schedule is stored on the row, so it survives restarts. Any other status (3xx, 4xx) is
  logged once and the row kept as a dead letter.
- **Each alert in order, once.** The notifications of one alert go out one at a time, oldest
  first, so a ``resolved`` never overtakes its ``firing``. A row is leased before it is sent,
  so no two workers (tasks or processes) send it at the same time. Delivery is at-least-once
  (a crash after the receiver answered re-sends the row once its lease expires); the
  ``Idempotency-Key`` header, identical on every attempt, lets the receiver drop that repeat.
- **The urgent first, nobody waits on a slow peer.** Each receiver has its own worker, so a
  slow or dead receiver never delays another. Within a receiver, the next row sent is the
  most urgent head of an alert's queue (critical firing before warning, firing before
  resolved, then oldest), and up to ``max_in_flight`` alerts are sent at once, so one slow
  row does not hold back a critical one. A receiver that failed (refused, timed out, 5xx,
  429) is left alone until its retry falls due, then probed with its most urgent row alone
  until it answers again, rather than tried once per queued alert.
- **The live config decides** where a row goes: URL, secret and timeout are read from the
  webhook's current configuration at each attempt, so correcting a wrong URL flushes the
  backlog, and the signature's timestamp is fresh however long the receiver was down. Rows of
  a webhook no longer configured become dead letters. Secrets are never written to disk or
  logs; logs name the URL's host only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx

from aidc.core.config import Webhook
from aidc.core.files import private_sqlite
from alerts.formats import signature_headers

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    alert TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 0,
    UNIQUE (webhook, idempotency_key)
);
CREATE TABLE IF NOT EXISTS told (  -- the receivers an alert was sent to, until it resolves
    alert TEXT NOT NULL,
    webhook TEXT NOT NULL,
    at REAL NOT NULL DEFAULT 0,  -- when it was last queued for that receiver
    PRIMARY KEY (alert, webhook)
) WITHOUT ROWID;
"""
# Added after the first release: an outbox file written by it gains them on open (its rows
# then form one queue per webhook, in order, as they did; its receivers are due a reminder).
_ADDED_COLUMNS = {
    "outbox": {
        "alert": "TEXT NOT NULL DEFAULT ''",  # the alert's fingerprint: its rows go in order
        "priority": "INTEGER NOT NULL DEFAULT 0",  # lower goes first among the alerts' heads
        "dead_at": "REAL",  # when a receiver refused it for good (dead letters only)
    },
    "told": {"at": "REAL NOT NULL DEFAULT 0"},
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (status, webhook, id);
CREATE INDEX IF NOT EXISTS outbox_alert ON outbox (status, webhook, alert, id);
"""
_ROW = (
    "id, webhook, idempotency_key, body, headers, created_at, status, attempts, "
    "next_attempt_at, last_error, alert, priority"
)
_HEAD_OF_AN_ALERT = (  # a pending row of webhook ?, the oldest of its alert's
    "status = 'pending' AND webhook = ? AND id = (SELECT MIN(id) FROM outbox"
    " WHERE status = 'pending' AND webhook = o.webhook AND alert = o.alert)"
)
MAX_IN_FLIGHT = 4  # alerts sent to one receiver at once
_LEASE_MARGIN_S = 5.0  # beyond the webhook timeout, before another worker may take a row
_USER_AGENT = "aidc-alerts/1"
# an idle worker looks at the rows this often: enqueueing wakes it, and a retry's due time;
# this finds rows another process queued, and bounds a wait the wall clock stepped across.
# Each look wakes the event loop and reads the file: at 1 s, with the notifier's (which
# shares it), an idle `aidc run` of one rack took 3.1 ms of CPU a second, at 5 s 2.6
IDLE_S = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
    And Jitter", 2015): attempt n waits uniform(0, min(cap_s, base_s * 2**(n-1)))."""

    base_s: float = 1.0
    cap_s: float = 300.0
    max_retry_after_s: float = 3600.0  # a receiver's Retry-After is honoured up to this

    def delay_s(self, attempts: int, rng: random.Random, retry_after_s: float | None) -> float:
        """Seconds before the next attempt, after ``attempts`` failed ones."""
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** min(attempts - 1, 62)))
        if retry_after_s is None:
            return backoff
        return max(backoff, min(retry_after_s, self.max_retry_after_s))


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    webhook: str
    idempotency_key: str
    body: bytes
    headers: dict[str, str]
    created_at: float
    status: Literal["pending", "dead"]
    attempts: int
    next_attempt_at: float
    last_error: str | None
    alert: str = ""
    priority: int = 0


class _Outcome(Enum):
    DELIVERED = "delivered"
    DEAD = "dead"
    RETRY = "retry"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), None if absent/bad."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class Outbox:
    """Notification rows in SQLite and the worker that delivers them.

    Use from one thread (the event loop's); ``transaction()`` lets the evaluator commit its
    state with the rows it enqueues.
    """

    def __init__(
        self,
        path: str | Path,
        webhooks: Iterable[Webhook] = (),
        *,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        max_in_flight: int = MAX_IN_FLIGHT,
    ):
        self._webhooks = webhooks_by_name(webhooks)
        self._max_in_flight = max_in_flight
        self._retry, self._rng, self._clock = retry, rng or random.Random(), clock
        self._owner = uuid.uuid4().hex
        self._wake: asyncio.Event | None = None
        self._receiver_wakes: dict[str, asyncio.Event] = {}
        self._paused_until: dict[str, float] = {}  # a receiver that failed, until its retry
        self._failing: set[str] = set()  # receivers whose last answer was a failure: one probe
        self._db = private_sqlite(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed notification survives power loss
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        self._db.executescript(_INDEXES)

    def close(self) -> None:
        self._db.close()

    @property
    def reader(self) -> sqlite3.Connection:
        """The connection, for queries outside a transaction (from the owning thread)."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; joins the caller's if one is already open."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.rollback()
            raise
        self._db.commit()

    def enqueue(
        self, webhook: str, body: bytes, headers: Mapping[str, str], idempotency_key: str,
        alert: str = "", priority: int = 0, told_at: float | None = None,
    ) -> bool:
        """Store one notification for ``webhook``; False if that key is already queued.

        Rows of one ``alert`` are sent in order; among alerts, lower ``priority`` goes first.
        With ``told_at`` (the time of what it tells), the webhook is then one the alert was
        ``told`` to.
        """
        with self.transaction() as db:
            now = self._clock()
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox (webhook, idempotency_key, body, headers,"
                " created_at, next_attempt_at, alert, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (webhook, idempotency_key, body, json.dumps(dict(headers)), now, now, alert,
                 priority),
            )  # fmt: skip
            if alert and told_at is not None:
                self.mark_told(alert, webhook, told_at)
        for wake in (self._wake, self._receiver_wakes.get(webhook)):
            if wake is not None:
                wake.set()
        return cur.rowcount == 1

    def mark_told(self, alert: str, webhook: str, at: float) -> None:
        """``webhook`` was told of ``alert`` at ``at``."""
        self._db.execute("INSERT INTO told VALUES (?, ?, ?) ON CONFLICT (alert, webhook)"
                         " DO UPDATE SET at = excluded.at", (alert, webhook, at))

    def told(self, alert: str) -> dict[str, float]:
        """The webhooks sent (or queued) a notification of ``alert`` since it fired, and
        when each was last queued one."""
        return dict(self._db.execute("SELECT webhook, at FROM told WHERE alert = ?", (alert,)))

    def forget(self, alert: str) -> None:
        """``alert`` resolved: whom it was told to no longer matters."""
        with self.transaction() as db:
            db.execute("DELETE FROM told WHERE alert = ?", (alert,))

    # ------------------------------------------------------------ metrics and inspection

    def backlog(self) -> int:
        """Rows waiting for delivery (dead letters excluded)."""
        count = self._db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        return count.fetchone()[0]

    def dead_letter_counts(self, since: float) -> tuple[int, int]:
        """Dead letters: all of them, and those dead since ``since`` (one dead before aidc
        kept the time is in the first count only), in one query."""
        query = ("SELECT COUNT(*), COUNT(CASE WHEN dead_at >= ? THEN 1 END) FROM outbox"
                 " WHERE status = 'dead'")
        return tuple(self._db.execute(query, (since,)).fetchone())

    def oldest_age_s(self, now: float | None = None) -> float:
        """Age of the oldest row waiting for delivery, 0 when there is none."""
        oldest = self._db.execute(
            "SELECT MIN(created_at) FROM outbox WHERE status = 'pending'"
        ).fetchone()[0]
        now = self._clock() if now is None else now
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def pending(self) -> list[OutboxRow]:
        """Rows waiting for delivery, in delivery order per webhook."""
        return self._rows("pending")

    def dead_letters(self) -> list[OutboxRow]:
        """Rows a receiver refused for good (kept for inspection)."""
        return self._rows("dead")

    def _rows(self, status: str) -> list[OutboxRow]:
        rows = self._db.execute(
            f"SELECT {_ROW} FROM outbox WHERE status = ? ORDER BY id", (status,)
        )
        return [_row(r) for r in rows]

    # ------------------------------------------------------------ delivery

    async def deliver_forever(self, stop: asyncio.Event, idle_s: float = IDLE_S) -> None:
        """Deliver until ``stop`` is set: one worker per receiver with rows, each waking on
        enqueue, when a retry falls due, or idly."""
        wake = self._wake = asyncio.Event()
        self._receiver_wakes = {}  # events of this loop (an Event binds to the loop it waits in)
        workers: dict[str, asyncio.Task[None]] = {}
        try:
            async with await http_client() as client:
                while not stop.is_set():
                    wake.clear()
                    for name in self._queued_webhooks():
                        if name not in workers or workers[name].done():
                            workers[name] = asyncio.create_task(
                                self._serve(client, name, stop, idle_s), name=f"outbox-{name}"
                            )
                    await wait_any([stop, wake], idle_s)
                await asyncio.gather(*workers.values(), return_exceptions=True)
        finally:
            for worker in workers.values():
                worker.cancel()
            self._wake, self._receiver_wakes = None, {}

    async def _serve(
        self, client: httpx.AsyncClient, name: str, stop: asyncio.Event, idle_s: float
    ) -> None:
        """One receiver's worker; ends when its queue is empty (restarted on enqueue)."""
        wake = self._receiver_wakes.setdefault(name, asyncio.Event())
        while not stop.is_set():
            wake.clear()
            try:
                await self._drain(client, name, None, wake)
            except Exception:
                log.exception("event=outbox_worker_error webhook=%s", name)
            if not self._has_pending(name):
                return
            await wait_any([stop, wake], self._sleep_s(name, idle_s))

    async def deliver_due(
        self, now: float | None = None, client: httpx.AsyncClient | None = None
    ) -> int:
        """Send every row due at ``now`` (default: as time goes), receivers in parallel; count
        delivered."""
        if client is None:
            async with await http_client() as own:
                return await self.deliver_due(now, own)
        names = self._queued_webhooks()
        return sum(await asyncio.gather(*(self._drain(client, name, now) for name in names)))

    async def _drain(
        self, client: httpx.AsyncClient, name: str, now: float | None,
        wake: asyncio.Event | None = None,
    ) -> int:
        """Send one receiver's due rows, most urgent alert first, up to ``max_in_flight`` at
        once (one, as a probe, while the receiver is failing); stop claiming once it failed.
        Returns when none is in flight."""
        webhook = self._webhooks.get(name)
        lease_s = (webhook.timeout_s if webhook else 0.0) + _LEASE_MARGIN_S
        delivered, failed = 0, False
        sending: set[asyncio.Task[_Outcome]] = set()
        try:
            while True:
                while not failed and len(sending) < (
                    1 if name in self._failing else self._max_in_flight
                ) and (row := self._claim_next(name, self._clock() if now is None else now, lease_s)):
                    if webhook is None:
                        self._dead(row, "-", "webhook_not_configured")
                    else:
                        sending.add(asyncio.create_task(self._attempt(client, webhook, row)))
                if not sending:
                    return delivered
                woken = asyncio.ensure_future(wake.wait()) if wake is not None else None
                done, _ = await asyncio.wait(
                    sending | ({woken} if woken else set()), return_when=asyncio.FIRST_COMPLETED
                )
                if woken is not None:
                    woken.cancel()
                    wake.clear()  # a new row: the loop above claims it if a slot is free
                for task in done - {woken}:
                    sending.discard(task)  # type: ignore[arg-type]
                    outcome = task.result()
                    delivered += outcome is _Outcome.DELIVERED
                    failed |= outcome is _Outcome.RETRY
        finally:
            for task in sending:
                task.cancel()

    def _claim_next(self, name: str, now: float, lease_s: float) -> OutboxRow | None:
        """Lease the most urgent due row that heads its alert's queue, unless the receiver
        is paused after a failure or the head is held (in flight) by a worker."""
        if self._paused_until.get(name, 0.0) > now:
            return None
        with self.transaction() as db:
            clock = self._clock()
            head = db.execute(
                f"SELECT {_ROW} FROM outbox AS o WHERE {_HEAD_OF_AN_ALERT}"
                " AND next_attempt_at <= ? AND COALESCE(lease_until, 0) <= ?"
                " ORDER BY priority, id LIMIT 1",
                (name, now, clock),
            ).fetchone()
            if head is None:
                return None
            db.execute(
                "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                (self._owner, clock + lease_s, head[0]),
            )
        return _row(head)

    async def _attempt(
        self, client: httpx.AsyncClient, webhook: Webhook, row: OutboxRow
    ) -> _Outcome:
        if webhook.format == "apprise":
            return await self._attempt_apprise(webhook, row)
        headers, body = dict(row.headers), row.body
        if webhook.format == "pagerduty":  # its key is added as it goes, never kept
            body = json.dumps(json.loads(body) | {
                "routing_key": webhook.routing_key.get_secret_value()}).encode()
        if webhook.secret is not None:  # what is signed is what is sent
            secret = webhook.secret.get_secret_value().encode()
            headers |= signature_headers(secret, body, int(self._clock()))
        try:
            async with asyncio.timeout(webhook.timeout_s):
                response = await client.post(
                    webhook.url, content=body, headers=headers, timeout=webhook.timeout_s
                )
        except (httpx.TransportError, httpx.InvalidURL, TimeoutError) as exc:
            return self._reschedule(row, webhook.url, type(exc).__name__, None)
        code = response.status_code
        if 200 <= code < 300:
            return self._delivered(row, webhook.url, code)
        if code in (408, 429) or code >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
            return self._reschedule(row, webhook.url, f"http_{code}", retry_after)
        return self._dead(row, webhook.url, f"http_{code}")

    async def _attempt_apprise(self, webhook: Webhook, row: OutboxRow) -> _Outcome:
        """One message through apprise, which speaks each chat or paging service's own API
        and says only whether it was sent: a failure is retried like a 5xx. Services without
        an idempotency key may show a message twice after a timeout."""
        import apprise

        message = json.loads(row.body)
        sender = apprise.Apprise()
        sender.add(webhook.url)
        try:
            async with asyncio.timeout(webhook.timeout_s):
                sent = await sender.async_notify(body=message["body"], title=message["title"],
                                                 notify_type=message["type"])
        except TimeoutError:
            sent = False
        if sent:
            return self._delivered(row, webhook.url, "sent")
        return self._reschedule(row, webhook.url, "apprise_not_sent", None)

    def _delivered(self, row: OutboxRow, url: str, code: int | str) -> _Outcome:
        with self.transaction() as db:
            db.execute("DELETE FROM outbox WHERE id = ? AND lease_owner = ?", (row.id, self._owner))
        self._failing.discard(row.webhook)
        log.info(
            "event=alert_delivered webhook=%s host=%s row=%d key=%s attempt=%d status=%s",
            row.webhook, host_of(url), row.id, row.idempotency_key, row.attempts + 1, code,
        )  # fmt: skip
        return _Outcome.DELIVERED

    def _reschedule(
        self, row: OutboxRow, url: str, error: str, retry_after_s: float | None
    ) -> _Outcome:
        attempts = row.attempts + 1
        delay_s = self._retry.delay_s(attempts, self._rng, retry_after_s)
        retry_at = self._clock() + delay_s
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?,"
                " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (attempts, retry_at, error, row.id, self._owner),
            )
        self._paused_until[row.webhook] = max(self._paused_until.get(row.webhook, 0), retry_at)
        self._failing.add(row.webhook)
        log.warning(
            "event=alert_delivery_retry webhook=%s host=%s row=%d key=%s attempt=%d error=%s"
            " retry_in_s=%.3f",
            row.webhook, host_of(url), row.id, row.idempotency_key, attempts, error, delay_s,
        )  # fmt: skip
        return _Outcome.RETRY

    def _dead(self, row: OutboxRow, url: str, error: str) -> _Outcome:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ?,"
                " dead_at = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE id = ? AND lease_owner = ?",
                (error, self._clock(), row.id, self._owner),
            )
        self._failing.discard(row.webhook)  # it answered, if only to refuse
        log.error(
            "event=alert_dead_letter webhook=%s host=%s row=%d key=%s error=%s",
            row.webhook, host_of(url), row.id, row.idempotency_key, error,
        )  # fmt: skip
        return _Outcome.DEAD

    def _queued_webhooks(self) -> list[str]:
        query = "SELECT DISTINCT webhook FROM outbox WHERE status = 'pending'"
        return [r[0] for r in self._db.execute(query)]

    def _has_pending(self, name: str) -> bool:
        query = "SELECT 1 FROM outbox WHERE status = 'pending' AND webhook = ? LIMIT 1"
        return self._db.execute(query, (name,)).fetchone() is not None

    def _sleep_s(self, name: str, idle_s: float) -> float:
        """Until the receiver's earliest head row falls due (or its lease ends, or the
        receiver's pause), at most ``idle_s``."""
        due = self._db.execute(
            "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0))) FROM outbox AS o"
            f" WHERE {_HEAD_OF_AN_ALERT}",
            (name,),
        ).fetchone()[0]
        if due is None:
            return idle_s
        due = max(due, self._paused_until.get(name, 0.0))
        return min(idle_s, max(0.0, due - self._clock()))


def webhooks_by_name(webhooks: Iterable[Webhook]) -> dict[str, Webhook]:
    """Webhooks keyed by name; a name is a delivery queue, so it must be unique."""
    by_name: dict[str, Webhook] = {}
    for w in webhooks:
        if w.name in by_name:
            raise ValueError(f"webhook name '{w.name}' is used twice; give each webhook a name")
        by_name[w.name] = w
    return by_name


def _row(r: tuple) -> OutboxRow:
    return OutboxRow(
        id=r[0], webhook=r[1], idempotency_key=r[2], body=bytes(r[3]), headers=json.loads(r[4]),
        created_at=r[5], status=r[6], attempts=r[7], next_attempt_at=r[8], last_error=r[9],
        alert=r[10], priority=r[11],
    )  # fmt: skip


async def http_client() -> httpx.AsyncClient:
    """A client for webhooks, made in a worker thread: loading its CA certificates on the
    event loop held every poll for 55-180 ms."""
    return await asyncio.to_thread(
        httpx.AsyncClient, headers={"User-Agent": _USER_AGENT}, follow_redirects=False)


def host_of(url: str) -> str:
    """The URL's host only: paths and query strings may carry tokens. For apprise's
    service URLs (slack://, pagerduty://...) the scheme only: tokens sit where a host would."""
    try:
        parts = urlsplit(url)
        return (parts.hostname or "-") if parts.scheme in ("http", "https") else f"{parts.scheme}://"
    except ValueError:
        return "-"


async def wait_any(events: list[asyncio.Event], timeout_s: float) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def read_deliveries(path: Path, limit: int) -> list[dict]:
    """Notifications not delivered yet (pending, with their attempts and last error) and
    dead letters, oldest first, ``limit`` of each; on a connection of the caller's own."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        rows = db.execute(
            "SELECT * FROM (SELECT webhook, alert, status, created_at, attempts, next_attempt_at,"
            " last_error, id FROM outbox WHERE status = 'pending' ORDER BY id LIMIT ?)"
            " UNION ALL SELECT * FROM (SELECT webhook, alert, status, created_at, attempts,"
            " next_attempt_at, last_error, id FROM outbox WHERE status = 'dead' ORDER BY id"
            " LIMIT ?)", (limit, limit))
        names = [c[0] for c in rows.description][:-1]
        return [dict(zip(names, r)) for r in rows]
