"""The SQLite audit appender in a child process, fed over a pipe by the API process's event loop.

Every consent check commits an audit row before it answers. Committing on the
event loop cost about 0.15 ms of the loop's CPU per row at 1,500 checks/s
(measured here: 160-250 ms a second of SQLite and JSON work), while the loop was
the bottleneck at 96% of a core. A writer thread did not help: it needs the GIL
for the Python half of every commit and hands it back on every SQLite call.
Here the loop only pickles plain tuples and writes them to a pipe, about 20 µs
a batch. The child builds the rows and commits them on the other core, and
answers each batch; a request still answers only after its rows are committed.

The child also signs the consent receipts of the checks in a batch, after
the commit, and answers them with it, so that a receipt cannot exist for a
check whose audit row is not committed. Ed25519 signing is about 45 µs a
receipt, and on the loop it was 13% of the loop's samples at 1,500 checks/s
(py-spy). Here it costs the child more than it saved the loop (0.13 against
0.08-0.14 of a core, in a busy hour), but the loop is the one process that
every request queues on. Measured (bench/HTTP_LOG.md, bench/http_ab.py): median p99 at
1,500 checks/s 15.8 against 22.5 ms in one interleaved comparison.

If the child dies, its batches fail with AuditUnavailable (nothing was
decided without an audit row), and the next batch starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from consent_service.services.changes import Event

if TYPE_CHECKING:
    from consent_service.receipts import ReceiptKeys

log = logging.getLogger(__name__)
_BUSY_RETRY_SECONDS = 0.0002
# About 260 pickled bytes a row and 350 for a receipt's claims: a batch fits a 64 KB pipe
# buffer, so sending never blocks the loop, even while a freshly started child is still importing.
MAX_BATCH_ROWS = 100
_FRAME_HEADER = 4
_READ_BYTES = 1 << 16

Claims = dict[str, Any]
# Each request's rows, their revision, and the claims of its receipt (None: no receipt).
Requests = list[tuple[list[Event], int | None, Claims | None]]
# What a batch comes to: None and each request's signed receipt, or an error and None.
Answer = tuple[str | None, list[str | None] | None]
_Wire = list[tuple[list[tuple[Any, ...]], int | None, Claims | None]]


def to_wire(requests: Requests) -> _Wire:
    """Plain tuples: half the cost of pickling the dataclasses (4.2 against 7.7 µs a 4-row batch)."""
    return [
        (
            [(e.action, e.actor_id, e.subject_id, e.decision, e.reason, e.details) for e in events],
            revision,
            claims,
        )
        for events, revision, claims in requests
    ]


def from_wire(wire: _Wire) -> Requests:
    return [([Event(*fields) for fields in events], revision, claims) for events, revision, claims in wire]


class AppenderProcess:
    """The parent's end: one batch in flight at a time, its answer read by the event loop."""

    def __init__(self, *, url: str, sqlite_synchronous: str, receipt_key: bytes | None = None) -> None:
        """`receipt_key`: the raw Ed25519 private key that signs receipts, if any are asked for."""
        self._url = url
        self._sync = sqlite_synchronous
        self._receipt_key = receipt_key
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Any = None
        self._process: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_done: Callable[[Answer], None] | None = None
        self._inbox = bytearray()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        self._process, self._conn = spawn_with_pipe(
            self._ctx,
            target=run,
            name="consent-audit-appender",
            url=self._url,
            sqlite_synchronous=self._sync,
            receipt_key=self._receipt_key,
        )

    def send(
        self, requests: Requests, *, loop: asyncio.AbstractEventLoop, on_done: Callable[[Answer], None]
    ) -> None:
        """Hand a batch to the child; `on_done(answer)` runs on the loop once it is committed or failed."""
        if self._conn is None:
            self.start()
        if self._loop is not loop:
            if self._loop is not None:
                self._loop.remove_reader(self._conn.fileno())
            loop.add_reader(self._conn.fileno(), self._readable)
            self._loop = loop
        self._on_done = on_done
        try:
            self._conn.send(to_wire(requests))
        except (OSError, ValueError):
            self._lost("the audit appender process is gone")

    def _readable(self) -> None:
        # The event loop made this end non-blocking, and an answer carrying receipts can
        # arrive in several pieces: Connection.recv would fail on the first empty read as
        # if the child had died. So the bytes are gathered here and framed by answer().
        try:
            chunk = os.read(self._conn.fileno(), _READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._lost("the audit appender process exited")
            return
        self._inbox += chunk
        while len(self._inbox) >= _FRAME_HEADER:
            size = int.from_bytes(self._inbox[:_FRAME_HEADER], "big")
            if len(self._inbox) < _FRAME_HEADER + size:
                return
            frame = bytes(self._inbox[_FRAME_HEADER : _FRAME_HEADER + size])
            del self._inbox[: _FRAME_HEADER + size]
            self._finish(pickle.loads(frame))  # noqa: S301 (our own child's answer)

    def _finish(self, answer: Answer) -> None:
        done, self._on_done = self._on_done, None
        if done is not None:
            done(answer)

    def _lost(self, why: str) -> None:
        log.error("%s; starting another for the next batch", why)
        self._close()
        self._finish((why, None))

    def _close(self) -> None:
        if self._conn is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._conn.fileno())
                self._loop = None
            self._conn.close()
            self._conn = None
        self._inbox = bytearray()
        if self._process is not None:
            self._process.join(timeout=0.1)
            if self._process.is_alive():
                self._process.terminate()
            self._process = None

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
            if self._process is not None:
                self._process.join(timeout=10)
        self._close()


def spawn_with_pipe(ctx: Any, *, target: Callable[..., None], name: str, **kwargs: Any) -> tuple[Any, Any]:
    """A daemon child running `target(**kwargs, conn=its end of a pipe, parent=this pid)`:
    the process, and this end of the pipe."""
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(
        target=target, kwargs={**kwargs, "conn": child, "parent": os.getpid()}, name=name, daemon=True
    )
    process.start()
    child.close()
    return process, parent


def answer(conn: Any, message: Answer) -> None:
    """The child's answer to a batch: a 4-byte length, then the pickle (read by AppenderProcess)."""
    payload = pickle.dumps(message)
    view = memoryview(len(payload).to_bytes(_FRAME_HEADER, "big") + payload)
    fd = conn.fileno()
    while view:
        view = view[os.write(fd, view) :]


def sign_receipt(keys: ReceiptKeys | None, claims: Claims | None) -> str | None:
    """The receipt for a committed request, if it asked for one."""
    if claims is None:
        return None
    if keys is None:
        raise ValueError("a receipt was asked of an audit writer that has no receipt key")
    return keys.sign(claims)


def run(*, url: str, sqlite_synchronous: str, receipt_key: bytes | None, conn: Any, parent: int) -> None:
    """The child: commit each batch received and sign its receipts, answer, until told to stop."""
    from consent_service.db import SQLITE_BUSY_TIMEOUT_MS, make_engine
    from consent_service.receipts import ReceiptKeys
    from consent_service.services.changes import SqliteAuditAppender, WriterBusy

    logging.basicConfig(level=logging.WARNING)
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    appender = SqliteAuditAppender(engine)
    keys = ReceiptKeys.from_raw(receipt_key) if receipt_key is not None else None
    # Every request waits on this process's commits, so a GC pass here is a pause for all of
    # them; set-up's objects (about 70,000) are frozen out of every pass (see housekeeping.py).
    gc.collect()
    gc.freeze()
    try:
        while True:
            # A parent killed without a chance to stop us closes the pipe: EOFError.
            try:
                wire = conn.recv()
            except (EOFError, OSError):
                return
            if wire is None or os.getppid() != parent:
                return
            try:
                requests = from_wire(wire)
                give_up = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
                while True:
                    try:
                        appender.write([(events, revision) for events, revision, _ in requests])
                        break
                    except WriterBusy:
                        # Finer than SQLite's own busy handler: the writer ahead of us (a
                        # WAL checkpoint's locked pass, a checkpoint row) is done in a moment.
                        if time.monotonic() > give_up:
                            raise
                        time.sleep(_BUSY_RETRY_SECONDS)
                answer(conn, (None, [sign_receipt(keys, claims) for _, _, claims in requests]))
            except Exception as exc:
                log.exception("audit batch failed")
                answer(conn, (f"{type(exc).__name__}: {exc}", None))
    finally:
        appender.close()
        engine.dispose()
