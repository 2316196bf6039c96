"""Group commit for audit rows that record decisions (no state change to share a transaction with).

Each request waits until its rows are committed before it answers, so an
acknowledged decision is always audited; under load one transaction carries
many requests' rows, which keeps the database from becoming the bottleneck.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future

from sqlalchemy import Engine
from sqlmodel import Session

from consent_service.db import write_transaction
from consent_service.errors import AuditUnavailable
from consent_service.services.changes import Event, write_event_groups

log = logging.getLogger(__name__)
_Item = tuple[list[Event], int | None, Future[None]]


class AuditWriter:
    """One background thread that commits queued audit rows in batches."""

    def __init__(self, engine: Engine, *, max_batch: int = 1000, linger: float = 0.001) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._linger = linger
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def append(self, events: list[Event], *, revision: int | None) -> None:
        """Return once the events are durably committed; raise AuditUnavailable otherwise."""
        future: Future[None] = Future()
        if self._thread is None:
            raise AuditUnavailable("audit writer is not running")
        self._queue.put((events, revision, future))
        await asyncio.wrap_future(future)

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

    def _commit(self, batch: list[_Item]) -> None:
        try:
            with Session(self._engine) as session, write_transaction(session):
                write_event_groups(session, [(events, revision) for events, revision, _ in batch])
                session.commit()
        except Exception as exc:
            log.exception("audit batch of %d requests failed", len(batch))
            error = AuditUnavailable("the audit log could not be written; nothing was decided")
            error.__cause__ = exc
            for _, _, future in batch:
                future.set_exception(error)
            return
        for _, _, future in batch:
            future.set_result(None)
