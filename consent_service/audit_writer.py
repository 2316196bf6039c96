"""Group commit for audit rows that record decisions (no state change to share a transaction with).

Each request waits until its rows are committed (or, with the journal, written
to the journal file) before it answers, so an acknowledged decision is always
audited; under load one transaction carries many requests' rows, which keeps
the database from becoming the bottleneck. A request may ask for its consent
receipt: it is signed once the rows are committed or journaled, so no receipt
exists for a decision that was not audited.

Where the commit runs:
- PostgreSQL, or SQLite with `synchronous=FULL` (an fsync per commit): a
  background thread, so round trips and fsyncs never block the event loop.
- SQLite by default (`offload="journal"`): the loop appends the rows to a
  journal file and signs the receipt; a child moves them into the table in bulk
  (audit_journal.py). About 30% less CPU per check in all than the next option,
  with checks answered by consent-serve's protocol.
- SQLite with `offload="process"`: a child process fed over a pipe, which
  commits the rows, and signs the receipts, before the check answers
  (audit_process.py). Building and committing the rows cost the loop about
  0.15 ms of CPU per check, a sixth to a quarter of its time at 1,500 checks/s,
  and a thread cannot take that work off the loop: it needs the GIL for the
  Python half and hands it back on every SQLite call (measured at 1,500
  checks/s with a 0.5 ms switch interval: p99 122 ms against 19 ms inline).
- SQLite without offload (tests, embedding): on the event loop itself, once
  per loop pass. While another connection holds SQLite's write lock the batch
  is retried from the loop every half millisecond instead of waiting in
  SQLite's sleeping busy handler, and fails closed after the usual busy timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import Literal

from sqlalchemy import Engine

from consent_service.audit_journal import MAX_LAG_SECONDS, JournalIngester, JournalWriter, encode, journal_dir
from consent_service.audit_process import MAX_BATCH_ROWS, Answer, AppenderProcess, Claims, sign_receipt
from consent_service.db import SQLITE_BUSY_TIMEOUT_MS, write_connection, writer_lock
from consent_service.errors import AuditUnavailable, Overloaded
from consent_service.receipts import ReceiptKeys
from consent_service.services.changes import Event, SqliteAuditAppender, WriterBusy, write_event_groups

log = logging.getLogger(__name__)
# A request's rows, their revision, its receipt's claims (None: no receipt), and its waiter.
_Item = tuple[list[Event], int | None, Claims | None, "Future[str | None] | asyncio.Future[str | None]"]


_RETRY_SECONDS = 0.0005
_SQLITE_NORMAL = 1  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def _sqlite_synchronous(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


class AuditWriter:
    """Commits queued audit rows in batches: in a child process, on the event loop, or in a thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        keys: ReceiptKeys | None = None,
        max_batch: int = 1000,
        linger: float = 0.001,
        offload: Literal["journal", "process"] | None = None,
        max_pending: int = 5_000,
    ) -> None:
        """`keys` sign the receipts asked for; `offload`: on a SQLite file, take the rows off the
        loop through a journal (audit_journal.py) or a child that commits them before the check
        answers (audit_process.py); `max_pending`: how many appends may wait at once before
        more are refused (Overloaded)."""
        self._engine = engine
        self._max_pending = max_pending
        self._waiting = 0
        self._keys = keys
        self._max_batch = max_batch
        self._linger = linger
        self._inline = engine.dialect.name == "sqlite" and _sqlite_synchronous(engine) == _SQLITE_NORMAL
        url = engine.url.render_as_string(hide_password=False)
        directory = journal_dir(engine)
        self._journal: JournalWriter | None = None
        self._ingester: JournalIngester | None = None
        self._journal_since = 0.0
        if self._inline and offload == "journal" and directory is not None:
            self._journal = JournalWriter(directory)
            self._ingester = JournalIngester(url=url, directory=directory)
        self._child = (
            AppenderProcess(
                url=url,
                sqlite_synchronous="NORMAL",
                receipt_key=keys.raw_signing_key() if keys is not None else None,
            )
            if self._inline and offload == "process"
            else None
        )
        self._in_flight: list[_Item] = []
        self._appender: SqliteAuditAppender | None = None
        self._running = False
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending: list[_Item] = []
        self._flush_scheduled = False
        self._busy_since = 0.0

    def start(self) -> None:
        self._running = True
        if self._ingester is not None:
            self._journal_since = time.monotonic()
            self._ingester.start()
        elif self._child is not None:
            self._child.start()
        elif self._inline:
            self._appender = SqliteAuditAppender(self._engine)
        else:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._journal is not None and self._ingester is not None:
            self._journal.close()
            self._ingester.stop()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        if self._appender is not None:
            self._appender.close()
            self._appender = None
        if self._child is not None:
            self._child.stop()
            unanswered, self._in_flight, self._pending = self._in_flight + self._pending, [], []
            self._flush_scheduled = False
            self._fail(unanswered, RuntimeError("the audit writer stopped"))

    async def append(
        self, events: list[Event], *, revision: int | None, receipt: Claims | None = None
    ) -> str | None:
        """Return once the events are durably committed, with `receipt` signed if given (else None).

        Raise AuditUnavailable when they could not be committed, Overloaded (before anything
        is queued) when `max_pending` appends are already waiting.
        """
        if not self._running:
            raise AuditUnavailable("audit writer is not running")
        if receipt is not None and self._keys is None:
            raise ValueError("this audit writer has no receipt key")
        if self._waiting >= self._max_pending:
            raise Overloaded(
                f"{self._waiting} consent checks are waiting for their audit rows; try again shortly",
                details={"retry_after_seconds": 1},
            )
        self._waiting += 1
        try:
            return await self._append(events, revision, receipt)
        finally:
            self._waiting -= 1

    async def _append(self, events: list[Event], revision: int | None, receipt: Claims | None) -> str | None:
        if self._journal is not None:
            self._journal_append(events, revision)
            return sign_receipt(self._keys, receipt)
        if self._inline:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[str | None] = loop.create_future()
            self._pending.append((events, revision, receipt, waiter))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                # After the callbacks already ready: requests that arrived in
                # the same loop pass share this commit.
                loop.call_soon(self._flush_inline if self._child is None else self._send, loop)
            return await waiter
        future: Future[str | None] = Future()
        self._queue.put((events, revision, receipt, future))
        return await asyncio.wrap_future(future)

    def _journal_append(self, events: list[Event], revision: int | None) -> None:
        assert self._journal is not None and self._ingester is not None
        now = time.monotonic()
        self._ingester.keep_alive(now)
        lag = now - max(self._ingester.ingested_through, self._journal_since)
        if lag > MAX_LAG_SECONDS:
            raise AuditUnavailable(
                f"audit rows are {lag:.0f} s behind their journal; nothing was decided",
                details={"retry_after_seconds": 5},
            )
        try:
            self._journal.append(encode(events, revision=revision, at=time.time()))
        except OSError as exc:
            log.error("audit journal write failed: %s", os.strerror(exc.errno or 0))
            raise AuditUnavailable("the audit log could not be written; nothing was decided") from exc

    def flush(self, *, timeout: float = 5.0) -> None:
        """Block until every row appended so far is in the table (a no-op but for the journal).

        For readers that must see every answered check; call it off the event loop.
        Raises AuditUnavailable if the rows are not in within `timeout` seconds.
        """
        if self._ingester is None:
            return
        target = time.monotonic()
        self._ingester.wake()
        while self._ingester.ingested_through < target:
            if time.monotonic() - target > timeout:
                raise AuditUnavailable(f"audit rows did not reach the table within {timeout:g} s")
            time.sleep(0.002)

    def _flush_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        lock = writer_lock(self._engine)
        if lock is not None and not lock.acquire(blocking=False):
            # Another writer of this process holds SQLite; never block the loop on it.
            loop.call_later(_RETRY_SECONDS, self._flush_inline, loop)
            return
        try:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                self._commit(batch, lock_held=True)
            except WriterBusy:
                # Another process holds it (the same wait, without SQLite's sleeping busy handler).
                self._pending[:0] = batch
                now = time.monotonic()
                self._busy_since = self._busy_since or now
                if now - self._busy_since < SQLITE_BUSY_TIMEOUT_MS / 1000:
                    loop.call_later(_RETRY_SECONDS, self._flush_inline, loop)
                    return
                self._pending = self._pending[len(batch) :]
                self._fail(batch, WriterBusy("the SQLite write lock was held too long"))
            self._busy_since = 0.0
        finally:
            if lock is not None:
                lock.release()
        if self._pending:
            loop.call_soon(self._flush_inline, loop)
        else:
            self._flush_scheduled = False

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the pending rows to the child; rows that arrive meanwhile form the next batch."""
        assert self._child is not None
        count = rows = 0
        for events, _, _, _ in self._pending:
            if count and rows + len(events) > MAX_BATCH_ROWS:
                break
            count, rows = count + 1, rows + len(events)
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._in_flight = batch
        try:
            self._child.send(
                [(events, revision, claims) for events, revision, claims, _ in batch],
                loop=loop,
                on_done=lambda answer: self._sent(loop, answer),
            )
        except Exception as exc:  # the child could not be started
            self._sent(loop, (f"{type(exc).__name__}: {exc}", None))

    def _sent(self, loop: asyncio.AbstractEventLoop, answer: Answer) -> None:
        batch, self._in_flight = self._in_flight, []
        error, receipts = answer
        if error is None and receipts is not None and len(receipts) == len(batch):
            for (_, _, _, future), receipt in zip(batch, receipts, strict=True):
                if not future.done():
                    future.set_result(receipt)
        else:
            self._fail(batch, RuntimeError(error or "the audit appender answered for another batch"))
        if self._pending:
            self._send(loop)
        else:
            self._flush_scheduled = False

    def _run(self) -> None:
        busy = False
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            # Under load, waiters woken by the last commit re-submit a moment
            # later; lingering briefly lets them share the next commit instead
            # of each paying for one. When idle, commit at once.
            deadline = time.monotonic() + (self._linger if busy else 0.0)
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            busy = len(batch) > 1
            self._commit(batch)

    def _commit(self, batch: list[_Item], *, lock_held: bool = False) -> None:
        groups = [(events, revision) for events, revision, _, _ in batch]
        try:
            if self._appender is not None:
                self._appender.write(groups)
            else:
                with write_connection(self._engine, lock_held=lock_held) as conn:
                    write_event_groups(conn, groups)
                    conn.commit()
        except WriterBusy:
            raise
        except Exception as exc:
            self._fail(batch, exc)
            return
        # In the writer thread, signing lets go of the GIL; inline, it is on the loop as before.
        for _, _, claims, future in batch:
            if not future.done():
                try:
                    future.set_result(sign_receipt(self._keys, claims))
                except Exception as exc:
                    future.set_exception(exc)

    def _fail(self, batch: list[_Item], cause: Exception) -> None:
        if not batch:
            return
        log.error("audit batch of %d requests failed", len(batch), exc_info=cause)
        error = AuditUnavailable("the audit log could not be written; nothing was decided")
        error.__cause__ = cause
        for _, _, _, future in batch:
            if not future.done():  # done: the request was cancelled meanwhile
                future.set_exception(error)
