"""Group commit for audit rows that record decisions (no state change to share a transaction with).

Each request waits until its rows are committed before it answers, so an
acknowledged decision is always audited; under load one transaction carries
many requests' rows, which keeps the database from becoming the bottleneck.

On PostgreSQL a background thread commits, so network round trips never
block the event loop. On SQLite a commit is local CPU work, and a thread that
needs the GIL back after every SQLite call starves behind a busy event loop
(measured: 15 ms per 16-row commit at 1,200 checks/s, a ceiling of about
1,000 checks/s); there the batch is committed on the event loop itself, once
per loop pass, which makes the same commit cost well under a millisecond.
With `synchronous=FULL` a commit waits for an fsync, which must not stall the
loop, so that setting keeps the thread. The price of committing on the loop:
while another process (the admin CLI, a worker) holds SQLite's
write lock, the loop waits in SQLite's busy handler for that transaction.
SQLite is the one-machine default; several processes belong on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future

from sqlalchemy import Engine

from consent_service.db import write_connection, writer_lock
from consent_service.errors import AuditUnavailable
from consent_service.services.changes import Event, SqliteAuditAppender, write_event_groups

log = logging.getLogger(__name__)
_Item = tuple[list[Event], int | None, "Future[None] | asyncio.Future[None]"]


_SQLITE_NORMAL = 1  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def _sqlite_synchronous(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


class AuditWriter:
    """Commits queued audit rows in batches: on the event loop (SQLite) or a background thread."""

    def __init__(self, engine: Engine, *, max_batch: int = 1000, linger: float = 0.001) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._linger = linger
        self._inline = engine.dialect.name == "sqlite" and _sqlite_synchronous(engine) == _SQLITE_NORMAL
        self._appender: SqliteAuditAppender | None = None
        self._running = False
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending: list[_Item] = []
        self._flush_scheduled = False

    def start(self) -> None:
        self._running = True
        if self._inline:
            self._appender = SqliteAuditAppender(self._engine)
        else:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    async def append(self, events: list[Event], *, revision: int | None) -> None:
        """Return once the events are durably committed; raise AuditUnavailable otherwise."""
        if not self._running:
            raise AuditUnavailable("audit writer is not running")
        if self._inline:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._pending.append((events, revision, waiter))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                # After the callbacks already ready: requests that arrived in
                # the same loop pass share this commit.
                loop.call_soon(self._flush_inline, loop)
            await waiter
            return
        future: Future[None] = Future()
        self._queue.put((events, revision, future))
        await asyncio.wrap_future(future)

    def _flush_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        lock = writer_lock(self._engine)
        if lock is not None and not lock.acquire(blocking=False):
            # Another writer of this process holds SQLite; never block the loop on it.
            loop.call_later(0.0005, self._flush_inline, loop)
            return
        try:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            self._commit(batch, lock_held=True)
        finally:
            if lock is not None:
                lock.release()
        if self._pending:
            loop.call_soon(self._flush_inline, loop)
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
        groups = [(events, revision) for events, revision, _ in batch]
        try:
            if self._appender is not None:
                self._appender.write(groups)
            else:
                with write_connection(self._engine, lock_held=lock_held) as conn:
                    write_event_groups(conn, groups)
                    conn.commit()
        except Exception as exc:
            log.exception("audit batch of %d requests failed", len(batch))
            error = AuditUnavailable("the audit log could not be written; nothing was decided")
            error.__cause__ = exc
            for _, _, future in batch:
                if not future.done():  # done: the request was cancelled meanwhile
                    future.set_exception(error)
            return
        for _, _, future in batch:
            if not future.done():
                future.set_result(None)
