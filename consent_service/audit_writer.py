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
from concurrent.futures import Future

from sqlalchemy import Engine
from sqlmodel import Session

from consent_service.db import write_transaction
from consent_service.errors import AuditUnavailable
from consent_service.services.changes import Event, write_events

log = logging.getLogger(__name__)
_Item = tuple[list[Event], int | None, Future[None]]


class AuditWriter:
    """One background thread that commits queued audit rows in batches."""

    def __init__(self, engine: Engine, *, max_batch: int = 1000) -> None:
        self._engine = engine
        self._max_batch = max_batch
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
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        try:
            with Session(self._engine) as session, write_transaction(session):
                for events, revision, _ in batch:
                    write_events(session, events, revision=revision)
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
