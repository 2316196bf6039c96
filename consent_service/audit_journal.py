"""SQLite audit rows of consent checks through a journal file, ingested into audit_event in bulk.

The default on SQLite (CONSENT_AUDIT_WRITER=journal). A consent check answers only
once its audit record is durable. With the appender child (audit_process.py,
CONSENT_AUDIT_WRITER=process) that means a commit of one to three rows per batch: a
pipe wake-up of the child and one back for every batch, and about ten 2 KB WAL frames
a row (the table, its indexes, the counter, the header). At 1,500 checks/s the child
took 0.29-0.33 of a core and the housekeeper 0.05, beside the event loop's 0.36-0.40
(bench/HTTP_LOG.md, fourteenth sitting).

Here the event loop signs the receipts (40-86 µs each), which in the fourteenth sitting
made p99 worse where the loop was the bottleneck. Once consent-serve's protocol took
uvicorn's ASGI work off the loop (api/check_protocol.py), the journal won or tied every
comparison, with about 30% less CPU per check in all (fifteenth sitting). A grant or
revocation may wait behind an ingest's transaction (about 3.5 ms at 1,500 checks/s)
instead of a batch of one to three rows.

Here the event loop appends each check's rows to a journal file, one JSON line a
row, in one write(2), and signs the receipt itself; a child process moves the
lines into audit_event every INGEST_INTERVAL_SECONDS, at most MAX_INGEST_ROWS a
transaction. The record is as durable when the check answers as a SQLite commit
at synchronous=NORMAL, the setting the appender runs at: in the operating system's
page cache, safe from any process's crash, not from the machine's. The rows keep
the time of their decision; their log sequence numbers are given at ingestion.

Exactly once: each file's ingested length is moved on in the transaction that
inserts its rows (table audit_journal), whichever ingester commits it, so several
API processes on one database may ingest one another's files. A writer holds an
exclusive flock on its current file; a file nobody holds is final (a rotated one,
or one whose process ended), and is deleted once all of it is in. A record is
only ever taken whole (up to its newline): a write cut short is cut off again
by the writer, or, if the process died in it, left behind in a final file, and
that check never answered.

The table may lag the decisions by about INGEST_INTERVAL_SECONDS. Readers that
must see every answered check (the auditors' event listing) call
AuditWriter.flush first. If ingestion falls MAX_LAG_SECONDS behind (the child
keeps failing, or cannot keep up), checks are refused: nothing is decided whose
record may not reach the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import multiprocessing
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine

from consent_service.audit_process import spawn_with_pipe
from consent_service.db import sqlite_database_file
from consent_service.services.changes import Event, WriterBusy

log = logging.getLogger(__name__)

PREFIX = "journal-"
SUFFIX = ".jsonl"
ROTATE_BYTES = 16 << 20
INGEST_INTERVAL_SECONDS = 0.05
MAX_LAG_SECONDS = 30.0
# Rows per transaction: SQLite has one write lock, and a grant or revocation waits behind
# an ingest that holds it, about 47 µs a row here (decoding and building the rows included).
# At 1,500 checks/s a pass takes about 75 rows (3.5 ms); only catching up reaches this (9 ms).
MAX_INGEST_ROWS = 200
_READ_BYTES = 1 << 18
_BUSY_RETRY_SECONDS = 0.001
_FAILED_RETRY_SECONDS = 1.0
_LIVENESS_SECONDS = 1.0

_CONSUMED = "SELECT consumed FROM audit_journal WHERE name = ?"
_MOVE_ON = (
    "INSERT INTO audit_journal (name, consumed) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET consumed = excluded.consumed"
)
_FORGET = "DELETE FROM audit_journal WHERE name = ?"


class JournalCorrupt(Exception):
    """A journal holds something that is not a record; ingestion of that file stops there."""


def journal_dir(engine: Engine) -> Path | None:
    """Where a SQLite database's journal files live (beside it), or None for other databases."""
    path = sqlite_database_file(engine.url)
    return None if path is None else path.with_name(f"{path.stem}.audit-journal")


def encode(events: list[Event], *, revision: int | None, at: float) -> bytes:
    """One line a row: [time, revision, action, actor, subject, decision, reason, details].

    Written on the event loop for every consent check, so with orjson (compact, UTF-8;
    0.4 against json.dumps's 5.4 µs a row here).
    """
    return b"".join(
        orjson.dumps([at, revision, e.action, e.actor_id, e.subject_id, e.decision, e.reason, e.details])
        + b"\n"
        for e in events
    )


def decode(line: bytes) -> tuple[list[Event], int | None, datetime]:
    try:
        at, revision, action, actor, subject, decision, reason, details = orjson.loads(line)
        return (
            [Event(action, actor, subject, decision, reason, details)],
            revision,
            datetime.fromtimestamp(at, UTC),
        )
    except (ValueError, TypeError) as exc:
        raise JournalCorrupt(f"not a journal record: {line[:80]!r}") from exc


class JournalWriter:
    """The API process's end: appends records to its own file, rotating it past `rotate_bytes`."""

    def __init__(self, directory: Path, *, rotate_bytes: int = ROTATE_BYTES) -> None:
        self._directory = directory
        self._rotate_bytes = rotate_bytes
        self._fd: int | None = None
        self._size = 0

    def append(self, data: bytes) -> None:
        """Write the records whole, or raise OSError with none of them in the journal."""
        if self._fd is None or self._size >= self._rotate_bytes:
            self._open()
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # A torn record would sit in front of every later one: cut it off, or, if even
            # that fails, leave the file (final once closed; the ingester stops at the tear).
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self.close()
            raise
        self._size += len(data)

    def _open(self) -> None:
        self.close()
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Locked before it gets the name ingesters look for: unlocked, it would pass for final.
        name = f"{PREFIX}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        hidden = self._directory / f".{name}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self._directory / name)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, 0

    def close(self) -> None:
        """Release the current file: from now on it is final."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _is_final(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def ingest(appender: Any, directory: Path, *, max_rows: int = MAX_INGEST_ROWS) -> int:
    """Move every whole record in the directory's journals into audit_event; the rows moved.

    `appender` is a SqliteAuditAppender. Raises WriterBusy (nothing of that transaction
    written) when another connection holds the write lock.
    """
    moved = 0
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")):
        final = _is_final(path)  # before reading: a file found final stays final
        while (rows := _ingest_some(appender, path, max_rows=max_rows)) > 0:
            moved += rows
        if final:
            _finish(appender, path)
    forget_finished(appender, directory)
    return moved


def _ingest_some(appender: Any, path: Path, *, max_rows: int) -> int:
    with appender.transaction():
        found = appender.db.execute(_CONSUMED, (path.name,)).fetchone()
        consumed = found[0] if found else 0
        try:
            with path.open("rb") as f:
                f.seek(consumed)
                data = f.read(_READ_BYTES)
        except FileNotFoundError:  # another ingester finished it
            return 0
        lines = data.split(b"\n", max_rows)[:-1]  # whole records only: each was followed by a newline
        if not lines:
            if len(data) == _READ_BYTES:
                raise JournalCorrupt(f"{path.name}: no record ends in {_READ_BYTES} bytes at {consumed}")
            return 0
        decoded = [decode(line) for line in lines]
        appender.insert(
            [(events, revision) for events, revision, _ in decoded], at=[at for *_, at in decoded]
        )
        appender.db.execute(_MOVE_ON, (path.name, consumed + sum(len(line) + 1 for line in lines)))
    return len(lines)


def _finish(appender: Any, path: Path) -> None:
    """Delete a final file all of whose whole records are in (its progress row goes after it,
    in forget_finished: a row outliving its file is harmless, a file outliving its row is
    read again from the start)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:  # another ingester finished it
        return
    found = appender.db.execute(_CONSUMED, (path.name,)).fetchone()
    left = size - (found[0] if found else 0)
    if left:
        log.warning(
            "%s: %d bytes after its last whole record dropped (its writer died in a write)", path.name, left
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def forget_finished(appender: Any, directory: Path) -> None:
    """Drop the progress rows of files that are gone. A row is only made by ingesting its file,
    which then exists, and names are never reused: a missing file was finished, never yet to
    come. Left for the next pass while another connection holds the write lock."""
    names = [name for (name,) in appender.db.execute("SELECT name FROM audit_journal")]
    gone = [name for name in names if not (directory / name).exists()]
    if not gone:
        return
    with contextlib.suppress(WriterBusy), appender.transaction():
        for name in gone:
            appender.db.execute(_FORGET, (name,))


class JournalIngester:
    """The child process that ingests the journals, and what the event loop knows of it."""

    def __init__(self, *, url: str, directory: Path, interval: float = INGEST_INTERVAL_SECONDS) -> None:
        self._url = url
        self._directory = directory
        self._interval = interval
        self._ctx = multiprocessing.get_context("spawn")
        # CLOCK_MONOTONIC is one clock for every process: the start of the child's last pass
        # that found nothing left to move, so everything written before then is in.
        self._through: Any = self._ctx.Value("d", 0.0, lock=False)
        self._conn: Any = None
        self._process: Any = None
        self._next_liveness = 0.0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def ingested_through(self) -> float:
        return float(self._through.value)

    def start(self) -> None:
        self._process, self._conn = spawn_with_pipe(
            self._ctx,
            target=run,
            name="consent-audit-ingester",
            url=self._url,
            directory=self._directory,
            interval=self._interval,
            through=self._through,
        )
        self._next_liveness = time.monotonic() + _LIVENESS_SECONDS

    def keep_alive(self, now: float) -> None:
        """Start another child if this one has died (checked at most once a second)."""
        if now < self._next_liveness:
            return
        self._next_liveness = now + _LIVENESS_SECONDS
        if self._process is not None and not self._process.is_alive():
            log.error("the audit journal ingester exited (code %s); starting another", self._process.exitcode)
            self._close()
            self.start()

    def wake(self) -> None:
        """Ask for a pass now instead of at the next interval."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send_bytes(b"w")

    def stop(self) -> None:
        """A last pass (the caller has closed its journal: all of it is final), then exit."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send_bytes(b"")
            if self._process is not None:
                self._process.join(timeout=30)
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=1)
            self._process = None


def run(*, url: str, directory: Path, interval: float, through: Any, conn: Any, parent: int) -> None:
    """The child: a pass every `interval` or when woken, a last one when told to stop."""
    from consent_service.db import make_engine
    from consent_service.services.changes import SqliteAuditAppender

    logging.basicConfig(level=logging.WARNING)
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    appender = SqliteAuditAppender(engine)
    gc.collect()
    gc.freeze()  # as in audit_process.py: set-up's objects stay out of every GC pass
    forget_finished(appender, directory)
    stopping = False
    try:
        while True:
            started = time.monotonic()
            wait = interval
            try:
                ingest(appender, directory)
                through.value = started
            except WriterBusy:
                time.sleep(_BUSY_RETRY_SECONDS)
                continue
            except Exception:
                # Whatever broke (a corrupt journal, a database gone) stays broken for a while:
                # one log line a second, not twenty. Checks are refused once rows lag MAX_LAG_SECONDS.
                log.exception("audit journal ingestion failed; trying again in %g s", _FAILED_RETRY_SECONDS)
                wait = _FAILED_RETRY_SECONDS
                if stopping:
                    return
            if stopping:
                return
            if os.getppid() != parent:  # its file is final now: one more pass takes it all
                stopping = True
                continue
            try:
                if conn.poll(wait):
                    while conn.poll(0):
                        stopping = stopping or conn.recv_bytes() == b""
            except (EOFError, OSError):
                stopping = True
    finally:
        appender.close()
        engine.dispose()
