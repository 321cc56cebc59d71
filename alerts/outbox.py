"""Durable outbox: notifications as SQLite rows (WAL), delivered over HTTP until accepted.

Guarantees:

- **Nothing lost.** A row is committed before anything is sent (with the evaluator's state
  change, in one transaction) and deleted only after a 2xx. Connection errors, timeouts, 408,
  429 and 5xx are retried with exponential backoff and full jitter, honouring ``Retry-After``;
  the schedule is stored on the row, so it survives restarts. Any other status (3xx, 4xx) is
  logged once and the row kept as a dead letter.
- **In order, once.** Only the oldest pending row of a webhook may be in flight, so a
  ``resolved`` never overtakes its ``firing``. A row is leased before it is sent, so no two
  workers (tasks or processes) send it at the same time. Delivery is at-least-once (a crash
  after the receiver answered re-sends the row once its lease expires); the
  ``Idempotency-Key`` header, identical on every attempt, lets the receiver drop that repeat.
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
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx

from aidc.config import Webhook
from aidc.files import private_sqlite
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
    UNIQUE (webhook, idempotency_key)
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (status, webhook, id);
"""
_ROW = (
    "id, webhook, idempotency_key, body, headers, created_at, status, attempts, "
    "next_attempt_at, last_error"
)
_LEASE_MARGIN_S = 5.0  # beyond the webhook timeout, before another worker may take a row
_USER_AGENT = "aidc-alerts/1"


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
    ):
        self._webhooks = webhooks_by_name(webhooks)
        self._retry, self._rng, self._clock = retry, rng or random.Random(), clock
        self._owner = uuid.uuid4().hex
        self._wake: asyncio.Event | None = None
        self._db = private_sqlite(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed notification survives power loss
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

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
        self, webhook: str, body: bytes, headers: Mapping[str, str], idempotency_key: str
    ) -> bool:
        """Store one notification for ``webhook``; False if that key is already queued."""
        with self.transaction() as db:
            now = self._clock()
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox (webhook, idempotency_key, body, headers,"
                " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                (webhook, idempotency_key, body, json.dumps(dict(headers)), now, now),
            )
        if self._wake is not None:
            self._wake.set()
        return cur.rowcount == 1

    # ------------------------------------------------------------ metrics and inspection

    def backlog(self) -> int:
        """Rows waiting for delivery (dead letters excluded)."""
        count = self._db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        return count.fetchone()[0]

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

    async def deliver_forever(self, stop: asyncio.Event, idle_s: float = 1.0) -> None:
        """Deliver until ``stop`` is set; wakes on enqueue, when a retry falls due, or idly."""
        wake = self._wake = asyncio.Event()
        try:
            async with _client() as client:
                while not stop.is_set():
                    wake.clear()
                    try:
                        await self.deliver_due(client=client)
                    except Exception:
                        log.exception("event=outbox_worker_error")
                    await _wait_any([stop, wake], self._sleep_s(idle_s))
        finally:
            self._wake = None

    async def deliver_due(
        self, now: float | None = None, client: httpx.AsyncClient | None = None
    ) -> int:
        """Send every row due at ``now``, webhooks in parallel, each in order; count delivered."""
        if client is None:
            async with _client() as own:
                return await self.deliver_due(now, own)
        now = self._clock() if now is None else now
        names = [r[0] for r in self._db.execute(
            "SELECT DISTINCT webhook FROM outbox WHERE status = 'pending'"
        )]  # fmt: skip
        return sum(await asyncio.gather(*(self._drain(client, name, now) for name in names)))

    async def _drain(self, client: httpx.AsyncClient, name: str, now: float) -> int:
        """Send one webhook's due rows oldest first; stop at the first that must wait."""
        webhook = self._webhooks.get(name)
        lease_s = (webhook.timeout_s if webhook else 0.0) + _LEASE_MARGIN_S
        delivered = 0
        while (row := self._claim_head(name, now, lease_s)) is not None:
            if webhook is None:
                self._dead(row, "-", "webhook_not_configured")
                continue
            outcome = await self._attempt(client, webhook, row)
            if outcome is _Outcome.RETRY:
                break
            delivered += outcome is _Outcome.DELIVERED
        return delivered

    def _claim_head(self, name: str, now: float, lease_s: float) -> OutboxRow | None:
        """Lease the webhook's oldest pending row if it is due and nobody holds it."""
        with self.transaction() as db:
            head = db.execute(
                f"SELECT {_ROW}, lease_until FROM outbox WHERE status = 'pending' AND webhook = ?"
                " ORDER BY id LIMIT 1",
                (name,),
            ).fetchone()
            if head is None:
                return None
            row, lease_until, clock = _row(head[:-1]), head[-1], self._clock()
            if row.next_attempt_at > now or (lease_until is not None and lease_until > clock):
                return None
            db.execute(
                "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                (self._owner, clock + lease_s, row.id),
            )
        return row

    async def _attempt(
        self, client: httpx.AsyncClient, webhook: Webhook, row: OutboxRow
    ) -> _Outcome:
        headers = dict(row.headers)
        if webhook.secret is not None:
            secret = webhook.secret.get_secret_value().encode()
            headers |= signature_headers(secret, row.body, int(self._clock()))
        try:
            async with asyncio.timeout(webhook.timeout_s):
                response = await client.post(
                    webhook.url, content=row.body, headers=headers, timeout=webhook.timeout_s
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

    def _delivered(self, row: OutboxRow, url: str, code: int) -> _Outcome:
        with self.transaction() as db:
            db.execute("DELETE FROM outbox WHERE id = ? AND lease_owner = ?", (row.id, self._owner))
        log.info(
            "event=alert_delivered webhook=%s host=%s row=%d key=%s attempt=%d status=%d",
            row.webhook, _host(url), row.id, row.idempotency_key, row.attempts + 1, code,
        )  # fmt: skip
        return _Outcome.DELIVERED

    def _reschedule(
        self, row: OutboxRow, url: str, error: str, retry_after_s: float | None
    ) -> _Outcome:
        attempts = row.attempts + 1
        delay_s = self._retry.delay_s(attempts, self._rng, retry_after_s)
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?,"
                " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (attempts, self._clock() + delay_s, error, row.id, self._owner),
            )
        log.warning(
            "event=alert_delivery_retry webhook=%s host=%s row=%d key=%s attempt=%d error=%s"
            " retry_in_s=%.3f",
            row.webhook, _host(url), row.id, row.idempotency_key, attempts, error, delay_s,
        )  # fmt: skip
        return _Outcome.RETRY

    def _dead(self, row: OutboxRow, url: str, error: str) -> _Outcome:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ?,"
                " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (error, row.id, self._owner),
            )
        log.error(
            "event=alert_dead_letter webhook=%s host=%s row=%d key=%s error=%s",
            row.webhook, _host(url), row.id, row.idempotency_key, error,
        )  # fmt: skip
        return _Outcome.DEAD

    def _sleep_s(self, idle_s: float) -> float:
        """Until the earliest head row falls due (or its lease ends), at most ``idle_s``."""
        due = self._db.execute(
            "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0))) FROM outbox"
            " WHERE id IN (SELECT MIN(id) FROM outbox WHERE status = 'pending' GROUP BY webhook)"
        ).fetchone()[0]
        return idle_s if due is None else min(idle_s, max(0.0, due - self._clock()))


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
    )  # fmt: skip


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"User-Agent": _USER_AGENT}, follow_redirects=False)


def _host(url: str) -> str:
    """The URL's host only: paths and query strings may carry tokens."""
    try:
        return urlsplit(url).hostname or "-"
    except ValueError:
        return "-"


async def _wait_any(events: list[asyncio.Event], timeout_s: float) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
